# 249_worker_lock_timeout.pl - a lock_timeout set for the database bounds
# its sessions' lock waits and its handlers', not the workers' own.
#
# With ALTER DATABASE ... SET lock_timeout = '50ms', a session holding a
# lock on the inbox made the consumer fail with "canceling statement due
# to lock timeout" and exit, again at each start, for as long as it held
# the lock.  Now the workers wait as autovacuum does, and handle what
# came meanwhile once the lock goes; a handler still gets the database's
# lock_timeout.
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep);

kafka_bootstrap();
my $prefix = "t249.$$.";
my $node = new_node(
	'worker_lock_timeout',
	kafka => 1,
	conf => [
		"evbus.topic_prefix = '$prefix'", "evbus.group_name = 't249_$$'",
		"evbus.retry_interval = '100ms'", "evbus.retry_max_interval = '200ms'"
	]);
$node->safe_psql('postgres', 'CREATE EXTENSION evbus');
$node->safe_psql(
	'postgres', as_subscriber($node) . q{
CREATE TABLE effects (seq int);
CREATE TABLE guarded (n int);
CREATE FUNCTION on_event(payload jsonb) RETURNS void LANGUAGE sql
	AS $$ INSERT INTO public.effects VALUES ((payload->>'seq')::int) $$;
CREATE FUNCTION on_guarded(payload jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	LOCK TABLE public.guarded IN EXCLUSIVE MODE;
	INSERT INTO public.effects VALUES ((payload->>'seq')::int);
END $$;
SELECT evbus.subscribe('Event', 'on_event(jsonb)');
SELECT evbus.subscribe('Guarded', 'on_guarded(jsonb)');
});
$node->safe_psql('postgres', q{ALTER DATABASE postgres SET lock_timeout = '50ms'});
$node->restart;
ok( wait_for_sql($node, 'postgres',
		q{SELECT count(*) FROM pg_stat_activity WHERE backend_type IN ('evbus consumer', 'evbus publisher')},
		'2', 60),
	'the workers run, connected with the database\'s lock_timeout');

# a session holds the inbox and the published ranges for 3 s while events come
my $log_at = -s $node->logfile;
my $holder = $node->background_psql('postgres');
$holder->query_safe(
	q{BEGIN; SET LOCAL lock_timeout = 0;
	  LOCK TABLE evbus.inbox, evbus.outbox_published_0, evbus.outbox_published_1 IN SHARE MODE});
$node->safe_psql('postgres',
	q{SELECT count(evbus.publish('Event', jsonb_build_object('seq', g), 'k' || g % 3))
	    FROM generate_series(1, 20) g});
sleep 3;
is( $node->safe_psql('postgres',
		q{SELECT count(*) FROM pg_stat_activity
		   WHERE backend_type IN ('evbus consumer', 'evbus publisher') AND wait_event_type = 'Lock'}),
	'2', 'both workers wait for the lock');
$holder->query_safe('COMMIT');
ok(wait_for_sql($node, 'postgres', 'SELECT count(*) FROM effects', '20', 60),
	'once the lock goes, the 20 events are published and handled');
is($node->safe_psql('postgres', 'SELECT count(DISTINCT seq) FROM effects'), '20', 'each once');
my @failures = grep { /lock timeout|exited with exit code/ } split /\n/,
  slurp_file($node->logfile, $log_at);
note "log: $_" for @failures;
is(scalar(@failures), 0, 'no worker failed on a lock timeout, none exited');

# a handler waits for a lock: the database's lock_timeout applies to it
$holder->query_safe(q{BEGIN; SET LOCAL lock_timeout = 0; LOCK TABLE guarded IN EXCLUSIVE MODE});
$node->safe_psql('postgres', q{SELECT evbus.publish('Guarded', '{"seq": 100}')});
ok( wait_for_sql($node, 'postgres',
		q{SELECT last_error_code FROM evbus.inbox WHERE integration_event = 'Guarded'}, '55P03', 60),
	'the handler\'s lock wait timed out (55P03): a failed attempt');
$holder->query_safe('COMMIT');
$holder->quit;
ok(wait_for_sql($node, 'postgres', 'SELECT count(*) FROM effects WHERE seq = 100', '1', 60),
	'retried once the lock goes, the handler ran through');

$node->stop;
done_testing();

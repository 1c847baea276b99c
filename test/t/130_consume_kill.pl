# 130_consume_kill.pl - the process running a handler (the database's
# consumer worker) is killed with SIGKILL while the handler runs (it waits
# on a flag table, so the kill lands inside it).
# PostgreSQL restarts the whole cluster; afterwards the interrupted event is
# attempted again -- the killed attempt counts: the consumer noted the batch
# outside the database before running it (src/attempt_marker.c) -- and every
# one of the 300 events is handled exactly once: none lost, none twice (a
# table without a unique constraint counts handler effects).
# Then a handler that "crashes" every time (killed at each attempt) with
# max_retries = 1: after 2 attempts the event is dead-lettered without
# running again, so a poison message cannot crash-loop the server.
# After a clean restart nothing is suspect: the consumer, stopped between
# batches, emptied its marker (each start after a clean stop said it had
# stopped while handling a batch, and handled its last batch's messages
# the careful way).
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);

kafka_bootstrap();
my $prefix = "t130.$$.";
my $topic = "${prefix}Crashy";
my $group = "t130_$$";
my $node = new_node(
	'consume_kill',
	kafka => 1,
	conf => [
		"evbus.topic_prefix = '$prefix'",
		"evbus.group_name = '$group'",
		"evbus.retry_interval = '100ms'",
		"evbus.retry_max_interval = '500ms'",
		'restart_after_crash = on'
	]);
$node->safe_psql('postgres', 'CREATE EXTENSION evbus');

$node->safe_psql(
	'postgres', as_subscriber($node) . q{
CREATE TABLE effects (seq int, message_id uuid);   -- no unique constraint
CREATE TABLE control (hold boolean NOT NULL);
INSERT INTO control VALUES (true);
CREATE PROCEDURE on_crashy(payload jsonb, headers jsonb) LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO public.effects VALUES ((payload->>'seq')::int, (headers->>'cap-msg-id')::uuid);
	IF (payload->>'hold')::boolean THEN
		PERFORM pg_catalog.set_config('application_name', 'evbus-test-holding', true);
		WHILE (SELECT hold FROM public.control) LOOP
			PERFORM pg_catalog.pg_sleep(0.05);
		END LOOP;
	END IF;
	PERFORM pg_catalog.pg_sleep(0.002);
END $$;
SELECT evbus.subscribe('Crashy', 'on_crashy(jsonb,jsonb)');
CREATE PROCEDURE on_doomed(payload jsonb) LANGUAGE plpgsql AS $$
BEGIN
	PERFORM pg_catalog.set_config('application_name', 'evbus-test-holding', true);
	LOOP
		PERFORM pg_catalog.pg_sleep(0.05);
	END LOOP;
END $$;
SELECT evbus.subscribe('Doomed', 'on_doomed(jsonb)', max_retries => 1);
});

# kill the process running a holding handler (kill_holding_handler);
# then evbus runs again
my $crashes = 0;
sub kill_and_restart
{
	my ($what) = @_;
	my $pid = kill_holding_handler($node, ++$crashes, $what);
	ok( wait_for_sql($node, 'postgres',
			"SELECT count(*) > 0 FROM pg_stat_activity WHERE backend_type LIKE 'evbus%' AND pid <> $pid",
			't', 60),
		"$what: after the crash restart evbus runs again");
	return $pid;
}

my $n = 300;
my $hold = 150;
$node->safe_psql('postgres',
	qq{SELECT count(evbus.publish('Crashy',
	                              jsonb_build_object('seq', g, 'hold', g = $hold),
	                              'k' || (g % 10)))
	     FROM generate_series(1, $n) g});

# the handler of event $hold is running (its transaction, with the inbox
# row, is not committed): kill the process
my $before = $node->safe_psql('postgres', 'SELECT count(*) FROM effects');
note "$before effects committed before the kill";
my $log_at = -s $node->logfile;
kill_and_restart('held event');
like(slurp_file($node->logfile, $log_at), qr/the consumer stopped while handling a batch/,
	'after the crash the consumer knows it stopped while handling a batch');
is($node->safe_psql('postgres', "SELECT count(*) FROM effects WHERE seq = $hold"),
	'0', 'the interrupted handler left no effect');

# the interrupted attempt counts: the next one is attempt 2
my $t0 = time();
ok( wait_for_sql($node, 'postgres',
		qq{SELECT attempts FROM evbus.inbox WHERE (payload->>'seq')::int = $hold}, '2', 90),
	'the held event is attempted again, as its attempt 2 (the killed one counted)');
note sprintf('attempt 2 began %.1f s after the restart was seen', time() - $t0);
$node->safe_psql('postgres', 'UPDATE control SET hold = false');

ok(wait_for_sql($node, 'postgres', 'SELECT count(DISTINCT seq) FROM effects', $n, 90), "all $n events handled");
sleep 2;
is($node->safe_psql('postgres', 'SELECT count(*), count(DISTINCT seq), count(DISTINCT message_id) FROM effects'),
	"$n|$n|$n", 'each exactly once');
is( $node->safe_psql('postgres',
		q{SELECT count(*), count(*) FILTER (WHERE state = 'handled') FROM evbus.inbox}),
	"$n|$n", 'inbox: every event handled');
is($node->safe_psql('postgres', "SELECT attempts FROM evbus.inbox WHERE (payload->>'seq')::int = $hold"),
	'2', 'the held event took 2 attempts');
is($node->safe_psql('postgres', 'SELECT count(*) FROM evbus.dead_letters'), '0', 'no dead letter');

# a handler killed at every attempt, max_retries = 1: 2 attempts, then a
# dead letter without a third run
$node->safe_psql('postgres', q{SELECT evbus.publish('Doomed', '{"n": 1}')});
kill_and_restart('doomed event, attempt 1');
kill_and_restart('doomed event, attempt 2');
ok( wait_for_sql($node, 'postgres',
		q{SELECT count(*) FROM evbus.dead_letters WHERE integration_event = 'Doomed'}, '1', 90),
	'doomed event: dead-lettered after its 2 attempts');
is( $node->safe_psql('postgres',
		q{SELECT state, attempts, last_error_code FROM evbus.inbox WHERE integration_event = 'Doomed'}),
	'dead|2|interrupted', 'doomed event: dead, 2 attempts, error "interrupted"');
is( $node->safe_psql('postgres',
		q{SELECT attempts, error_code FROM evbus.dead_letters WHERE integration_event = 'Doomed'}),
	'2|interrupted', 'the dead letter says so too');
sleep 1;
is($node->safe_psql('postgres',
		q{SELECT count(*) FROM pg_stat_activity WHERE application_name = 'evbus-test-holding'}),
	'0', 'doomed event: its handler does not run a third time');

# stopped between batches, the consumer starts again suspecting nothing:
# $stop ends the server, then an event (seq $seq) is handled
sub stop_between_batches
{
	my ($what, $stop, $seq) = @_;
	my $log_at = -s $node->logfile;

	$stop->();
	$node->start;
	$node->safe_psql('postgres',
		qq{SELECT evbus.publish('Crashy', '{"seq": $seq, "hold": false}', 'k0')});
	ok(wait_for_sql($node, 'postgres', "SELECT count(*) FROM effects WHERE seq = $seq", '1', 90),
		"after $what an event is handled");
	unlike(slurp_file($node->logfile, $log_at), qr/stopped while handling a batch/,
		"after $what the consumer suspects nothing");
}

stop_between_batches('a clean stop', sub { $node->stop }, 0);

# no clean leave: the marker of the last batch went with its commit
ok( wait_for_sql($node, 'postgres',
		q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'evbus consumer' AND wait_event = 'Extension'},
		'1', 30),
	'the consumer waits between batches');
stop_between_batches('an immediate stop between batches', sub { $node->stop('immediate') }, -1);

$node->stop;
done_testing();

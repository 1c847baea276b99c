# 138_consume_kill_neighbours.pl - a handler that crashes its process, at
# every attempt, for one message of a batch: that message alone is charged
# with the crashes and dead-lettered as "interrupted"; the other messages
# of its batch, before and after it, are each handled once.  The same for
# a crash among retries, whose attempts are counted with their outcomes:
# the next start counts the attempt of the row whose call was running, so
# each innocent row's attempts are its failures and its success, no more.
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;

kafka_bootstrap();
my $prefix = "t138.$$.";
my $group = "t138_$$";
my $node = new_node(
	'consume_kill_neighbours',
	kafka => 1,
	conf => [
		"evbus.topic_prefix = '$prefix'",
		"evbus.group_name = '$group'",
		"evbus.retry_interval = '100ms'",
		"evbus.retry_max_interval = '500ms'",
		'restart_after_crash = on'
	]);
$node->safe_psql('postgres', 'CREATE EXTENSION evbus');
kafka_admin('topics', '--create', '--topic', "${prefix}$_", '--partitions', '1') for qw(Mixed Retried);

$node->safe_psql(
	'postgres', as_subscriber($node) . q{
CREATE TABLE effects (seq int);   -- no unique constraint
CREATE TABLE retried_effects (seq int);
CREATE TABLE control (failing boolean NOT NULL, hold boolean NOT NULL);
INSERT INTO control VALUES (true, true);
CREATE PROCEDURE on_retried(payload jsonb) LANGUAGE plpgsql AS $$
BEGIN
	IF (SELECT failing FROM public.control) THEN
		RAISE EXCEPTION 'failing while the flag is set';
	END IF;
	IF (payload->>'poison')::boolean THEN
		PERFORM pg_catalog.set_config('application_name', 'evbus-test-holding', true);
		WHILE (SELECT hold FROM public.control) LOOP
			PERFORM pg_catalog.pg_sleep(0.05);
		END LOOP;
	END IF;
	INSERT INTO public.retried_effects VALUES ((payload->>'seq')::int);
END $$;
SELECT evbus.subscribe('Retried', 'on_retried(jsonb)', max_retries => 100);
CREATE PROCEDURE on_mixed(payload jsonb) LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO public.effects VALUES ((payload->>'seq')::int);
	IF (payload->>'poison')::boolean THEN
		PERFORM pg_catalog.set_config('application_name', 'evbus-test-holding', true);
		LOOP
			PERFORM pg_catalog.pg_sleep(0.05);
		END LOOP;
	END IF;
END $$;
});

# the batch is in Kafka before the handler subscribes: one poll takes it all
my $n = 20;
my $poison = 10;
$node->safe_psql('postgres',
	qq{SELECT count(evbus.publish('Mixed', jsonb_build_object('seq', g, 'poison', g = $poison),
	                              'k' || g))
	     FROM generate_series(1, $n) g});
ok(wait_for_sql($node, 'postgres', 'SELECT count(*) FROM evbus.outbox', '0', 60),
	'the batch is published');
$node->safe_psql('postgres',
	as_subscriber($node) . q{SELECT evbus.subscribe('Mixed', 'on_mixed(jsonb)', max_retries => 1)});

my $crashes = 0;
kill_holding_handler($node, ++$crashes, "attempt $_") for 1 .. 2;

ok( wait_for_sql($node, 'postgres',
		q{SELECT count(*) FROM evbus.dead_letters WHERE integration_event = 'Mixed'}, '1', 90),
	'a dead letter');
ok(wait_for_sql($node, 'postgres', 'SELECT count(DISTINCT seq) FROM effects', $n - 1, 90),
	'the others are handled');
sleep 2;
is( $node->safe_psql('postgres',
		q{SELECT string_agg((payload->>'seq') || ':' || state || ':' || attempts || ':' || coalesce(last_error_code, ''), ' ' ORDER BY (payload->>'seq')::int)
		    FROM evbus.inbox WHERE state <> 'handled' OR attempts <> 1}),
	"$poison:dead:2:interrupted", 'only the poison was charged with the crashes; it alone is dead');
is($node->safe_psql('postgres', 'SELECT count(*), count(DISTINCT seq) FROM effects'),
	($n - 1) . '|' . ($n - 1), 'the others each handled once');
is( $node->safe_psql('postgres',
		q{SELECT message_id FROM evbus.dead_letters} ) eq
	  $node->safe_psql('postgres', qq{SELECT message_id FROM evbus.inbox WHERE (payload->>'seq')::int = $poison}),
	1, 'the dead letter is the poison');

# a crash among retries: every row fails a while, then the poison's call
# is killed in the retries' transaction that runs it
$node->safe_psql('postgres',
	qq{SELECT count(evbus.publish('Retried', jsonb_build_object('seq', g, 'poison', g = 5), 'r' || g))
	     FROM generate_series(1, 10) g});
ok( wait_for_sql($node, 'postgres',
		q{SELECT count(*) FROM evbus.inbox WHERE integration_event = 'Retried' AND state = 'pending' AND errors IS NOT NULL},
		'10', 90),
	'the 10 messages failed and wait for their retries');
# paused, then resumed at once: one retries' transaction takes all ten
$node->safe_psql('postgres', q{SELECT evbus.pause_subscription('Retried', 'on_retried(jsonb)')});
$node->safe_psql('postgres', q{SELECT pg_sleep(1.5)});
$node->safe_psql('postgres', 'UPDATE control SET failing = false');
$node->safe_psql('postgres', q{SELECT evbus.resume_subscription('Retried', 'on_retried(jsonb)')});
my $log_at = -s $node->logfile;
kill_holding_handler($node, ++$crashes, 'retried');
$node->safe_psql('postgres', 'UPDATE control SET hold = false');
ok(wait_for_sql($node, 'postgres', 'SELECT count(*) FROM retried_effects', '10', 90),
	'all 10 are handled, the poison too once it no longer holds');
my $poison_row = $node->safe_psql('postgres',
	q{SELECT id FROM evbus.inbox WHERE integration_event = 'Retried' AND (payload->>'poison')::boolean});
like(
	slurp_file($node->logfile, $log_at),
	qr/the consumer stopped in the handler call of inbox row $poison_row; that attempt counts/,
	'the next start counts the attempt of the poison\'s row, whose call was running');
is( $node->safe_psql('postgres',
		q{SELECT count(*) FROM evbus.inbox WHERE integration_event = 'Retried' AND NOT (payload->>'poison')::boolean
		     AND state = 'handled' AND attempts = pg_catalog.jsonb_array_length(errors) + 1}),
	'9', 'each innocent row counts its failures and its success, not the crash');
is( $node->safe_psql('postgres',
		q{SELECT attempts - pg_catalog.jsonb_array_length(errors) FROM evbus.inbox
		   WHERE integration_event = 'Retried' AND (payload->>'poison')::boolean}),
	'2', 'the poison counts the crash too');

$node->stop;
done_testing();

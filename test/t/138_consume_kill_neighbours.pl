# 138_consume_kill_neighbours.pl - a handler that crashes its process, at
# every attempt, for one message of a batch: that message alone is charged
# with the crashes and dead-lettered as "interrupted"; the other messages
# of its batch, before and after it, are each handled once.
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
kafka_admin('topics', '--create', '--topic', "${prefix}Mixed", '--partitions', '1');

$node->safe_psql(
	'postgres', as_subscriber($node) . q{
CREATE TABLE effects (seq int);   -- no unique constraint
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
for my $attempt (1 .. 2)
{
	ok( wait_for_sql($node, 'postgres',
			q{SELECT count(*) FROM pg_stat_activity WHERE application_name = 'evbus-test-holding'},
			'1', 90),
		"attempt $attempt: the poison's handler runs");
	my $pid = $node->safe_psql('postgres',
		q{SELECT pid FROM pg_stat_activity WHERE application_name = 'evbus-test-holding'});
	kill 'KILL', $pid;
	$crashes++;
	ok(wait_for_crash_restart($node, $crashes), "attempt $attempt: the server restarted");
}

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

$node->stop;
done_testing();

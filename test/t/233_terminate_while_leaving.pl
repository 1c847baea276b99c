# 233_terminate_while_leaving.pl - the consumer terminated while one of
# its Kafka consumers leaves its group exits cleanly.  Leaving (the
# group's topics changed) closes the Kafka consumer, then forgets the
# group's high watermarks in evbus.consumer_offsets; a termination there
# exited through consumer_exit, which closed the half-closed consumer a
# second time: "double free or corruption", signal 6, and the whole
# cluster restarted.
#
# A session holds the group's offset rows (FOR UPDATE), so that the
# consumer, leaving after a second subscription changed its topics, waits
# for them; then pg_terminate_backend.  The consumer must exit with no
# crash of the server, start again, and handle the events of both
# subscriptions once the rows are let go.
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;

kafka_bootstrap();
my $prefix = "t233.$$.";
my $group = "t233_$$";
my $node = new_node(
	'terminate_while_leaving',
	kafka => 1,
	conf => [ "evbus.topic_prefix = '$prefix'", "evbus.group_name = '$group'" ]);
$node->safe_psql('postgres', 'CREATE EXTENSION evbus');
kafka_admin('topics', '--create', '--topic', "${prefix}$_", '--partitions', '1',
	'--replication-factor', '1')
  for qw(First Second);
$node->safe_psql(
	'postgres', as_subscriber($node) . q{
CREATE TABLE received (topic text);
CREATE PROCEDURE record(payload jsonb, headers jsonb) LANGUAGE sql
	AS $$ INSERT INTO public.received VALUES (headers->>'evbus-topic') $$;
SELECT evbus.subscribe('First', 'record(jsonb, jsonb)');
SELECT evbus.publish('First', '{"n": 1}');
});
ok(wait_for_sql($node, 'postgres', 'SELECT count(*) FROM received', '1', 60),
	'the first event is handled');
ok( wait_for_sql(
		$node, 'postgres',
		'SELECT count(*) FROM evbus.consumer_offsets WHERE high_watermark IS NOT NULL', '1', 30),
	'its partition has a high watermark');
my $postmaster_started = $node->safe_psql('postgres', 'SELECT pg_postmaster_start_time()');
my $pid = $node->safe_psql('postgres', 'SELECT evbus.consumer_pid()');

# the group's offset rows held: leaving waits for them
my $holder = $node->background_psql('postgres');
$holder->query_safe('BEGIN');
$holder->query_safe('SELECT topic FROM evbus.consumer_offsets FOR UPDATE');
$node->safe_psql('postgres',
	as_subscriber($node) . q{SELECT evbus.subscribe('Second', 'record(jsonb, jsonb)')});
ok( wait_for_sql(
		$node, 'postgres',
		"SELECT wait_event_type FROM pg_stat_activity WHERE pid = $pid", 'Lock', 60),
	'the consumer, leaving with the old topics, waits for the offset rows');

$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)");
ok( wait_for_sql(
		$node, 'postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE pid = $pid", '0', 30),
	'terminated, the consumer exits');
$holder->query_safe('COMMIT');
$holder->quit;

$node->safe_psql('postgres', q{SELECT evbus.publish('First', '{"n": 2}'); SELECT evbus.publish('Second', '{"n": 3}')});
ok( wait_for_sql(
		$node, 'postgres',
		q{SELECT string_agg(topic, ',' ORDER BY topic) FROM received},
		"${prefix}First,${prefix}First,${prefix}Second", 90),
	'a new consumer handles the events of both subscriptions');
is($node->safe_psql('postgres', 'SELECT pg_postmaster_start_time()'),
	$postmaster_started, 'the server did not restart');
my $log = slurp_file($node->logfile);
unlike($log, qr/terminated by signal/, 'no process ended by a signal');
unlike($log, qr/double free|corruption/, 'no memory corruption reported');

$node->stop;
done_testing();

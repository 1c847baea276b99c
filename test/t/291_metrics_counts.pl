# 291_metrics_counts.pl - the numbers of evbus.metrics() are right.
# 40 events are staged by committed transactions (and more by a rolled
# back transaction and a rolled back savepoint, which count for nothing),
# published to a real Kafka broker and handled; 2 more are handled by a
# handler that always fails (max_retries 1: one retry, then the dead
# letters).  Then: staged, published, handled, retries and dead letters
# count exactly those; the acknowledgement latency histogram counts each
# acknowledged event once (its count, and its +Inf bucket, equal the
# published counter) with cumulative buckets; the handler duration
# histogram counts every handler run; the outbox depth and the consumer
# lag come back to 0; the depth counts held events among published ones
# (and only them); the broker is up.  evbus.stats, which no longer
# reads the whole inbox, gives the numbers a count of the whole inbox
# gives.  pg_monitor may call the function, PUBLIC may not.
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;

kafka_bootstrap();
my $prefix = "t291.$$.";
my $node = new_node(
	'metrics',
	kafka => 1,
	conf => [
		"evbus.topic_prefix = '$prefix'",
		"evbus.retry_interval = '100ms'",
		"evbus.retry_max_interval = '200ms'"
	]);
$node->safe_psql('postgres', 'CREATE EXTENSION evbus');
subscribe_recorder($node, 'Counted');
$node->safe_psql(
	'postgres', as_subscriber($node) . q{
CREATE PROCEDURE always_fails(payload jsonb, headers jsonb) LANGUAGE plpgsql
	AS $$ BEGIN RAISE EXCEPTION 'no'; END $$;
SELECT evbus.subscribe('Failing', 'always_fails(jsonb, jsonb)', max_retries => 1);
});

# the value of one series of this database (0 if it has none)
sub metric
{
	my ($name, $where) = @_;
	$where = $where ? "AND $where" : '';
	return $node->safe_psql('postgres',
		"SELECT coalesce(sum(value), 0) FROM evbus.metrics()"
		  . " WHERE database = current_database() AND metric = '$name' $where");
}

# 40 committed (4 transactions of 10), 10 rolled back, 5 to a savepoint
my $sql = '';
for my $tx (1 .. 4)
{
	$sql .= "BEGIN;\n";
	$sql .= "SELECT evbus.publish('Counted', jsonb_build_object('n', $tx * 100 + g)) FROM generate_series(1, 10) g;\n";
	if ($tx == 2)
	{
		$sql .= "SAVEPOINT s;\n";
		$sql .= "SELECT evbus.publish('Counted', '{\"gone\": true}') FROM generate_series(1, 5);\n";
		$sql .= "ROLLBACK TO SAVEPOINT s;\n";
	}
	$sql .= "COMMIT;\n";
}
$sql .= "BEGIN;\nSELECT evbus.publish('Counted', '{\"gone\": true}') FROM generate_series(1, 10);\nROLLBACK;\n";
$sql .= "SELECT evbus.publish('Failing', jsonb_build_object('n', g)) FROM generate_series(1, 2) g;\n";
$node->safe_psql('postgres', $sql);

ok(wait_for_sql($node, 'postgres', 'SELECT count(*) FROM received', '40', 120),
	'the 40 committed events were handled');
ok(wait_for_sql($node, 'postgres',
		q{SELECT count(*) FROM evbus.dead_letters WHERE direction = 'consume'}, '2', 60),
	'the failing ones were dead-lettered');
ok(wait_for_sql($node, 'postgres', 'SELECT count(*) FROM evbus.outbox', '0', 60),
	'the outbox is empty');

is(metric('evbus_staged_total'), '42', 'staged: the committed events only');
ok(wait_for_sql($node, 'postgres',
		q{SELECT value FROM evbus.metrics() WHERE database = current_database()
		   AND metric = 'evbus_published_total'}, '42', 30),
	'published: every acknowledged event');
my $count = metric('evbus_publish_ack_milliseconds_count');
is($count, '42', 'the latency histogram counts each acknowledged event once');
is(metric('evbus_publish_ack_milliseconds_bucket', q{le = '+Inf'}), $count,
	'its +Inf bucket equals its count');
ok(metric('evbus_publish_ack_milliseconds_sum') > 0, 'its sum is positive');
is( $node->safe_psql(
		'postgres', q{
SELECT bool_and(value >= coalesce(prev, 0)) AND count(*) = 11
  FROM (SELECT value, lag(value) OVER (ORDER BY ordinality) AS prev
		  FROM evbus.metrics() WITH ORDINALITY
		 WHERE database = current_database()
		   AND metric = 'evbus_publish_ack_milliseconds_bucket') b}),
	't', 'its 11 buckets are cumulative');
is(metric('evbus_publish_dead_total'), '0', 'no event was dead on the publishing side');

is(metric('evbus_handled_total'), '40', 'handled: the 40 events');
is(metric('evbus_retries_total'), '2', 'retries: one per failing event');
is(metric('evbus_consume_dead_total'), '2', 'dead letters: the failing events');
is(metric('evbus_handler_milliseconds_count'), '44',
	'the handler histogram counts every run (40 + 2 x 2)');

ok(wait_for_sql($node, 'postgres',
		q{SELECT value FROM evbus.metrics() WHERE database = current_database()
		   AND metric = 'evbus_outbox_depth'}, '0', 30),
	'the outbox depth is 0');

# the depth counts the rows waiting, not the published rows beside them in
# the outbox's table: 3 events of a paused integration event wait among
# the 43 published ones (src/outbox_scan.c, evbus_outbox_depth); Held is
# published once first (only a known integration event can be paused)
$node->safe_psql('postgres', q{SELECT evbus.publish('Held', '{"n": 0}')});
ok(wait_for_sql($node, 'postgres', 'SELECT count(*) FROM evbus.outbox', '0', 60),
	'the first Held event is published');
$node->safe_psql('postgres', q{
SELECT evbus.pause_publishing('Held');
SELECT evbus.publish('Held', jsonb_build_object('n', g)) FROM generate_series(1, 3) g;
});
ok(wait_for_sql($node, 'postgres',
		q{SELECT value FROM evbus.metrics() WHERE database = current_database()
		   AND metric = 'evbus_outbox_depth'}, '3', 30),
	'the outbox depth counts the 3 held events only');
is($node->safe_psql('postgres', 'SELECT count(*) FROM evbus.outbox'), '3',
	'as a count of evbus.outbox does');
ok(wait_for_sql($node, 'postgres',
		q{SELECT value > 0 FROM evbus.metrics() WHERE database = current_database()
		   AND metric = 'evbus_outbox_oldest_age_seconds'}, 't', 30),
	'the oldest event of the outbox has an age');
$node->safe_psql('postgres', q{SELECT evbus.resume_publishing('Held')});
ok(wait_for_sql($node, 'postgres',
		q{SELECT value FROM evbus.metrics() WHERE database = current_database()
		   AND metric = 'evbus_outbox_depth'}, '0', 30),
	'published once resumed: the depth is 0 again');
ok(wait_for_sql($node, 'postgres',
		qq{SELECT value FROM evbus.metrics() WHERE database = current_database()
		   AND metric = 'evbus_consumer_lag' AND group_name = 'postgres'
		   AND topic = '${prefix}Counted'}, '0', 30),
	'the lag of the group on the topic is 0');
ok(wait_for_sql($node, 'postgres',
		q{SELECT string_agg(worker || '=' || value, ',' ORDER BY worker) FROM evbus.metrics()
		   WHERE database = current_database() AND metric = 'evbus_broker_up'},
		'consumer=1,publisher=1', 30),
	'both workers see the broker up');
is( $node->safe_psql('postgres',
		q{SELECT string_agg(worker || '=' || value, ',' ORDER BY worker) FROM evbus.metrics()
		   WHERE database = current_database() AND metric = 'evbus_worker_up'}),
	'consumer=1,publisher=1', 'both workers run');

# evbus.stats counts the inbox's messages from evbus.inbox_messages and
# the partial indexes: the same numbers as a count of the whole inbox,
# after the consumer's writes, after rows are deleted (as the retention
# does) and after a TRUNCATE
my $recount = q{
SELECT group_name, topic,
	   count(*) FILTER (WHERE st = 'handled') AS handled,
	   count(*) FILTER (WHERE retrying) AS retrying,
	   count(*) FILTER (WHERE st = 'dead') AS dead,
	   count(*) FILTER (WHERE st = 'pending') AS pending
  FROM (SELECT group_name, topic,
			   CASE WHEN bool_or(state = 'pending') THEN 'pending'
					WHEN bool_or(state = 'dead') THEN 'dead' ELSE 'handled' END AS st,
			   bool_or(state = 'pending' AND attempts > 0) AS retrying
		  FROM evbus.inbox GROUP BY group_name, topic, dedup_key) m
 GROUP BY group_name, topic ORDER BY 1, 2};
my $from_stats = q{
SELECT group_name, topic, handled, retrying, dead, pending FROM evbus.stats
 WHERE side = 'consume' AND handled + retrying + dead + pending > 0 ORDER BY 1, 2};
my $expected = $node->safe_psql('postgres', $recount);
like($expected, qr/\|40\|0\|0\|0$/m, 'the inbox holds the 40 handled messages');
is($node->safe_psql('postgres', $from_stats), $expected, 'evbus.stats counts them all');

# a replay delivers the 40 messages again: no new message, though a
# handler subscribed since runs for each (its rows are new)
$node->safe_psql(
	'postgres', as_subscriber($node) . q{
CREATE PROCEDURE record_again(payload jsonb, headers jsonb) LANGUAGE sql
	AS $$ SELECT 1 $$;
SELECT evbus.subscribe('Counted', 'record_again(jsonb, jsonb)');
});
$node->safe_psql('postgres', q{SELECT evbus.replay('Counted', from_offset => 0)});
ok( wait_for_sql($node, 'postgres',
		q{SELECT count(*) FROM evbus.inbox WHERE handler LIKE 'public.record_again%' AND state = 'handled'},
		'40', 60),
	'the replayed messages ran the new handler');
is($node->safe_psql('postgres', $recount), $expected, 'still 40 handled messages in the inbox');
is($node->safe_psql('postgres', $from_stats), $expected, 'and in evbus.stats');
$node->safe_psql('postgres', q{
INSERT INTO evbus.inbox (group_name, dedup_key, integration_event, topic, kafka_partition,
						 kafka_offset, handler, headers, state, attempts)
SELECT 'postgres', 'extra-' || g, 'Counted', 'x.Counted', 0, g, h, '{}',
	   CASE WHEN h = 'b' AND g <= 3 THEN 'pending' WHEN h = 'b' AND g <= 5 THEN 'dead' ELSE 'handled' END,
	   CASE WHEN g = 1 THEN 1 ELSE 0 END
  FROM generate_series(1, 8) g, unnest(ARRAY['a', 'b']) h});
is($node->safe_psql('postgres', $from_stats), $node->safe_psql('postgres', $recount),
	'and messages of two handlers: pending, dead, retrying, handled');
$node->safe_psql('postgres', q{DELETE FROM evbus.inbox WHERE id IN (SELECT id FROM evbus.inbox WHERE topic LIKE '%.Counted' AND state = 'handled' ORDER BY id LIMIT 15)});
$node->safe_psql('postgres', q{DELETE FROM evbus.inbox WHERE dedup_key = 'extra-7' AND handler = 'a'});
is($node->safe_psql('postgres', $from_stats), $node->safe_psql('postgres', $recount),
	'after rows were deleted');
$node->safe_psql('postgres', 'TRUNCATE evbus.inbox');
is($node->safe_psql('postgres', $from_stats), '', 'after a TRUNCATE');

# while every row of a group's topic has one handler, its new rows are
# counted without a look at the inbox; a row of another handler ends that
# until the topic has no message left
my $insert = q{
INSERT INTO evbus.inbox (group_name, dedup_key, integration_event, topic, kafka_partition,
						 kafka_offset, handler, headers, state)
SELECT 'postgres', 'm-' || g, 'Counted', 'x.Counted', 0, g, '%s', '{}', 'handled'
  FROM generate_series(%d, %d) g};
my $counted = sub {
	my ($what) = @_;
	is($node->safe_psql('postgres', $from_stats), $node->safe_psql('postgres', $recount), $what);
};
my $sole = q{SELECT coalesce(handler, 'NULL') FROM evbus.inbox_messages WHERE topic = 'x.Counted'};
$node->safe_psql('postgres', sprintf($insert, 'a', 1, 5));
$node->safe_psql('postgres', sprintf($insert, 'a', 6, 6));
$counted->('one handler: each new row is a message');
is($node->safe_psql('postgres', $sole), 'a', 'the handler of all rows is known');
$node->safe_psql('postgres', q{DELETE FROM evbus.inbox WHERE topic = 'x.Counted' AND dedup_key IN ('m-1', 'm-2')});
$counted->('then each deleted row is a message gone, counted without a look at the inbox');
is($node->safe_psql('postgres', $sole), 'a', 'the handler stays known');
$node->safe_psql('postgres', sprintf($insert, 'b', 4, 8));
$counted->('a second handler: messages 4 to 6 are not new, 7 and 8 are');
is($node->safe_psql('postgres', $sole), 'NULL', 'no longer one handler');
$node->safe_psql('postgres', sprintf($insert, 'a', 7, 9));
$counted->('then rows are looked up among the others');
$node->safe_psql('postgres', q{DELETE FROM evbus.inbox WHERE topic = 'x.Counted'});
$node->safe_psql('postgres', sprintf($insert, 'c', 1, 3));
$counted->('once the topic has no message, one handler again');
is($node->safe_psql('postgres', $sole), 'c', 'and it is known');
$node->safe_psql('postgres', sprintf($insert, '', 3, 4));
$counted->('an undecodable message\'s row is another handler');
is($node->safe_psql('postgres', $sole), 'NULL', 'which ends it');

# who may read the numbers
$node->safe_psql('postgres',
	'CREATE ROLE watcher LOGIN IN ROLE pg_monitor; CREATE ROLE nobody LOGIN');
is( $node->safe_psql('postgres',
		q{SELECT count(*) > 0 FROM evbus.metrics()}, extra_params => [ '-U', 'watcher' ]),
	't', 'pg_monitor reads evbus.metrics()');
my ($ret, $out, $err) = $node->psql('postgres', 'SELECT count(*) FROM evbus.metrics()',
	extra_params => [ '-U', 'nobody' ]);
like($err, qr/permission denied for (function metrics|schema evbus)/,
	'PUBLIC may not');

done_testing();

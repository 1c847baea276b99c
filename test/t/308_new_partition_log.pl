# 308_new_partition_log.pl - a partition whose log began again at offset
# 0 is read from its beginning, not from the offset stored for its old log.
#
#  - The embedded broker starts empty with each server start.  Events
#    published after a restart, while the subscription is paused, fill the
#    new logs past the offsets stored before it: resumed, the consumer
#    handles every one of them and the foreign messages (no cap-msg-id,
#    de-duplicated by topic/partition/offset) at offsets the inbox knew.
#  - A Kafka topic deleted and created again: the consumer, at the stored
#    offset past the end of the new log, goes back to its beginning.  The
#    server log says so (WARNING), the stored offset follows, and the new
#    log's foreign messages, at offsets the inbox knew from the old one,
#    are handled.
#  - The same while the consumer is idle: the launcher's watch of its
#    partition, past the end of the new log, wakes it at the new log's
#    first message.
#  - Messages Kafka deleted (DeleteRecords, as retention does) before the
#    consumer read them: librdkafka's offset reset is a WARNING whose hint
#    says that they are lost to this database, and is counted in
#    evbus.metrics().
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);

# the subscriber's table and handler in node's database postgres, made
# once: got(n, foreign) for each message handled; subscribed to $event
sub subscribe_got
{
	my ($node, $event) = @_;
	my $app = as_subscriber($node);
	$node->safe_psql('postgres',
		q{GRANT EXECUTE ON FUNCTION evbus.pause_subscription(text, regprocedure, text),
			evbus.resume_subscription(text, regprocedure, text) TO evbus_app});
	$node->safe_psql(
		'postgres', $app . qq{
CREATE TABLE IF NOT EXISTS got (n int, foreign_message boolean);
CREATE OR REPLACE PROCEDURE got_one(payload jsonb, headers jsonb) LANGUAGE sql AS
	\$\$ INSERT INTO public.got VALUES ((payload->>'n')::int, NOT headers ? 'cap-msg-id') \$\$;
SELECT evbus.subscribe('$event', 'got_one(jsonb, jsonb)');
});
	return $app;
}

# produce one foreign message per n, without headers, into partition 0
sub kcat_produce_foreign
{
	my ($brokers, $topic, @n) = @_;
	open(my $fh, '|-', 'kcat', '-P', '-q', '-b', $brokers, '-t', $topic, '-p', '0')
	  or die "cannot run kcat: $!";
	print $fh qq({"n": $_}\n) for @n;
	close $fh or die "kcat -P failed: $?";
}

# a node on the test broker consuming the topic of one partition
# PREFIX.EVENT (created first), its foreign messages N produced into it
# and handled; returns (node, topic)
sub kafka_node_with
{
	my ($name, $prefix, $event, $conf, @n) = @_;
	my $topic = "$prefix$event";
	kafka_admin('topics', '--create', '--topic', $topic, '--partitions', '1');
	my $node = new_node($name, kafka => 1, conf => [ "evbus.topic_prefix = '$prefix'", @$conf ]);
	$node->safe_psql('postgres', 'CREATE EXTENSION evbus');
	subscribe_got($node, $event);
	kcat_produce_foreign(kafka_bootstrap(), $topic, @n);
	ok(wait_for_sql($node, 'postgres', 'SELECT count(*) FROM got', scalar(@n), 60),
		scalar(@n) . ' foreign messages handled');
	return ($node, $topic);
}

# delete the topic, create it again (unless the consumer did already),
# produce foreign messages N into it, and check that node handled them,
# each once, after those it had
sub recreate_and_check
{
	my ($node, $topic, $had, @n) = @_;
	kafka_admin('topics', '--delete', '--topic', $topic);
	kafka_admin('topics', '--create', '--if-not-exists', '--topic', $topic, '--partitions', '1');
	kcat_produce_foreign(kafka_bootstrap(), $topic, @n);
	ok(wait_for_sql($node, 'postgres', 'SELECT count(*) FROM got', scalar(@$had) + scalar(@n), 60),
		"the new log's foreign messages, at offsets 0 to " . $#n . ', are handled');
	is($node->safe_psql('postgres', q{SELECT string_agg(n::text, ',' ORDER BY n) FROM got}),
		join(',', @$had, @n), 'each once');
}

# --- the embedded broker after a restart ---------------------------------------------
{
	my $node = new_node('newlog_embedded', conf => [ "evbus.brokers = 'embedded'" ]);
	$node->safe_psql('postgres', 'CREATE EXTENSION evbus');
	my $app = subscribe_got($node, 'Ev');
	my $stage = sub {
		my ($from, $to) = @_;
		$node->safe_psql('postgres',
			qq{SELECT count(evbus.publish('Ev', jsonb_build_object('n', g), 'k' || g))
			     FROM generate_series($from, $to) g});
	};

	$stage->(1, 6);
	ok(wait_for_sql($node, 'postgres', 'SELECT count(*) FROM got', '6', 60), 'six events handled');
	my $brokers = $node->safe_psql('postgres', 'SELECT evbus.brokers()');
	kcat_produce_foreign($brokers, 'Ev', 101, 102);
	ok(wait_for_sql($node, 'postgres', 'SELECT count(*) FROM got WHERE foreign_message', '2', 60),
		'two foreign messages handled');
	my $stored = $node->safe_psql('postgres', 'SELECT sum(next_offset) FROM evbus.consumer_offsets');
	is($stored, '8', 'the offsets stored add up to the 8 messages');

	# paused, so that the new logs fill before the consumer reads them
	is($node->safe_psql('postgres', $app . q{SELECT evbus.pause_subscription('Ev')}), '1', 'paused');
	$node->restart;
	$stage->(7, 36);
	ok(wait_for_sql($node, 'postgres', 'SELECT count(*) FROM evbus.outbox', '0', 60),
		'30 events published to the new embedded broker');
	$brokers = $node->safe_psql('postgres', 'SELECT evbus.brokers()');
	kcat_produce_foreign($brokers, 'Ev', 103, 104);
	is($node->safe_psql('postgres', $app . q{SELECT evbus.resume_subscription('Ev')}), '1', 'resumed');

	ok(wait_for_sql($node, 'postgres', 'SELECT count(*) FROM got', '40', 60),
		'every message of the new logs is handled')
	  or diag('missing: '
		  . $node->safe_psql('postgres',
			  q{SELECT string_agg(g::text, ' ') FROM generate_series(1, 36) g
			     WHERE g NOT IN (SELECT n FROM got)}
			  . q{ UNION ALL SELECT string_agg(g::text, ' ') FROM generate_series(101, 104) g
			     WHERE g NOT IN (SELECT n FROM got)}));
	is($node->safe_psql('postgres', 'SELECT count(DISTINCT n) FROM got'), '40', 'each once');
	is($node->safe_psql('postgres', 'SELECT count(*) FROM got WHERE foreign_message'),
		'4', 'the foreign messages of both logs among them');
	$node->stop;
}

# --- a Kafka topic deleted and created again ------------------------------------------
{
	kafka_bootstrap();
	my $prefix = "t308.$$.";
	my ($node, $topic) =
	  kafka_node_with('newlog_kafka', $prefix, 'Gone', ["evbus.group_name = 't308_$$'"], 1 .. 3);
	ok( wait_for_sql(
			$node, 'postgres',
			qq{SELECT next_offset FROM evbus.consumer_offsets WHERE topic = '$topic'}, '3', 30),
		'offset 3 stored');

	# the consumer's metadata requests create the topic again at once, with
	# the broker's 3 partitions (allow.auto.create.topics)
	recreate_and_check($node, $topic, [ 1 .. 3 ], 4, 5);
	ok( $node->log_contains(
			qr/WARNING:  evbus: group "t308_$$": \Q$topic\E\[0\] went back from offset 3 to 0: its log began again/
		),
		'the server log says the partition went back');
	ok( wait_for_sql(
			$node, 'postgres',
			qq{SELECT next_offset FROM evbus.consumer_offsets WHERE topic = '$topic' AND kafka_partition = 0},
			'2', 30),
		'and the stored offset follows the new log');

	# --- messages Kafka deleted before the consumer read them ---------------------
	my $gone = "${prefix}Deleted";
	kafka_admin('topics', '--create', '--topic', $gone, '--partitions', '1');
	my $app = subscribe_got($node, 'Deleted');
	kcat_produce_foreign(kafka_bootstrap(), $gone, 11, 12);
	ok(wait_for_sql($node, 'postgres', 'SELECT count(*) FROM got WHERE n > 10', '2', 60),
		'two messages of another topic handled');
	is($node->safe_psql('postgres', $app . q{SELECT evbus.pause_subscription('Deleted')}),
		'1', 'its subscription paused');
	sleep 2;    # the consumer notices within its next pass
	kcat_produce_foreign(kafka_bootstrap(), $gone, 13, 14, 15);
	my $json = "$PostgreSQL::Test::Utils::tmp_check/t308_delete.json";
	open(my $fh, '>', $json) or die "cannot write $json: $!";
	print $fh qq({"partitions": [{"topic": "$gone", "partition": 0, "offset": 4}], "version": 1}\n);
	close $fh;
	kafka_admin('delete-records', '--offset-json-file', $json);
	is($node->safe_psql('postgres', $app . q{SELECT evbus.resume_subscription('Deleted')}),
		'1', 'resumed after Kafka deleted the messages at offsets 2 and 3 (unread)');
	ok(wait_for_sql($node, 'postgres', 'SELECT count(*) FROM got WHERE n > 10', '3', 60),
		'the message left at offset 4 is handled');
	ok( $node->log_contains(
			qr/WARNING:  evbus: kafka OFFSET: .*\Q$gone\E \[0\]: offset reset \(at offset 2.*\n.*HINT:  The partition no longer has the offset the consumer was at\. Before the start of its log: Kafka deleted those messages/
		),
		'the server log says that messages may be lost, as a WARNING with a hint');
	cmp_ok(
		$node->safe_psql('postgres',
			q{SELECT sum(value) FROM evbus.metrics() WHERE metric = 'evbus_consume_offset_resets_total'}),
		'>=', 2, 'evbus_consume_offset_resets_total counts the resets of both topics');
	$node->stop;
}

# --- a topic deleted and created again while its consumer is idle ---------------------
{
	my ($node, $topic) =
	  kafka_node_with('newlog_idle', "t308i.$$.", 'Idle', ["evbus.idle_timeout = '2s'"], 21 .. 23);
	ok( wait_for_sql(
			$node, 'postgres',
			q{SELECT state FROM evbus.worker_status() WHERE worker = 'consumer'}, 'idle', 60),
		'the consumer goes idle, the launcher watching its partition from offset 3');

	# the launcher's watch wakes the consumer at the first of them
	recreate_and_check($node, $topic, [ 21 .. 23 ], 24, 25);
	$node->stop;
}

done_testing();

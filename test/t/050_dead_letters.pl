# 050_dead_letters.pl - a permanent publish error (the broker refuses a
# message as too large for its topic, even compressed) moves the event to
# evbus.dead_letters at once, with the error, and NOTIFYs
# evbus_dead_letter; the other events of the topic and of its key flow on;
# evbus.retry() requeues the dead event, which is published once the topic
# accepts it.
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;

kafka_bootstrap();
my $prefix = "t050.$$.";
my $topic = "${prefix}Small";
kafka_admin('topics', '--create', '--topic', $topic, '--partitions', '1',
	'--config', 'max.message.bytes=1000');

my $node = new_node('dead', kafka => 1, conf => [ "evbus.topic_prefix = '$prefix'" ]);
$node->safe_psql('postgres', 'CREATE EXTENSION evbus');

my $listener = $node->background_psql('postgres');
$listener->query_safe('LISTEN evbus_dead_letter');

my $ids = $node->safe_psql(
	'postgres', q{
SELECT evbus.publish('Small', '{"n": 1}', 'k');
SELECT evbus.publish('Small', jsonb_build_object('n', 2, 'blob', (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 300) g)), 'k');
SELECT evbus.publish('Small', '{"n": 3}', 'k');
});
my (undef, $big) = split /\n/, $ids;

ok($node->poll_query_until('postgres', 'SELECT count(*) = 0 FROM evbus.outbox'),
	'outbox drained: nothing stuck behind the refused event');
is( $node->safe_psql('postgres',
		q{SELECT message_id, direction, topic, event_key, payload->>'n', error_code FROM evbus.dead_letters}),
	"$big|publish|$topic|k|2|MSG_SIZE_TOO_LARGE",
	'the refused event is a dead letter with its payload and the error');
like($node->safe_psql('postgres', 'SELECT error_message FROM evbus.dead_letters'),
	qr/too large/i, 'with a readable error message');

my @msgs = kcat_consume($topic, 2, 30);
is_deeply([ map { $_->{payload} } @msgs ], [ '{"n":1}', '{"n":3}' ],
	'the other events of the key were published, in order');

# psql prints pending notifications after the next command's result
my $notified = $listener->query_safe('SELECT 1');
like($notified, qr/Asynchronous notification "evbus_dead_letter" with payload "\Q$big\E"/,
	'NOTIFY evbus_dead_letter with the message id');
$listener->quit;

is($node->safe_psql('postgres', "SELECT staged, published, dead, pending FROM evbus.stats WHERE topic = '$topic'"),
	'3|2|1|0', 'evbus.stats counts the dead letter');

# the topic is fixed; the operator requeues the event
kafka_admin('configs', '--alter', '--entity-type', 'topics', '--entity-name', $topic,
	'--add-config', 'max.message.bytes=100000');
is($node->safe_psql('postgres', "SELECT evbus.retry('$big')"), 't', 'evbus.retry() finds the dead letter');
is($node->safe_psql('postgres', "SELECT evbus.retry('$big')"), 'f', 'and only once');
ok($node->poll_query_until('postgres', 'SELECT count(*) = 0 FROM evbus.outbox'), 'requeued event drained');
is($node->safe_psql('postgres', 'SELECT count(*) FROM evbus.dead_letters'), '0', 'no dead letter left');
@msgs = kcat_consume($topic, 3, 30);
is(scalar @msgs, 3, 'the requeued event is in Kafka');
is($msgs[2]{headers}{'cap-msg-id'}, $big, 'with its original message id');
is($node->safe_psql('postgres', "SELECT staged, published, dead, pending FROM evbus.stats WHERE topic = '$topic'"),
	'3|3|0|0', 'evbus.stats after the retry');

$node->stop;
done_testing();

# 052_refused_batch_order.pl - a broker that refuses whole record batches
# (a batch larger than the topic's max.message.bytes) must not reorder a
# key's events.  One event is too large for the topic even alone, and it
# takes the others of its batch with it.  librdkafka's idempotent producer,
# left to itself, resends the batches that followed a refused one as soon
# as it has renumbered them, before evbus can produce the refused batch's
# events again one by one: later events of the key overtake earlier ones
# (without the guard below this test fails with "key b: seq 101 after
# 179").  The producer
# runs with enable.gapless.guarantee, so a refused batch stops it instead;
# the worker rebuilds it and produces every unconfirmed event again, in
# order.  The event too large alone is dead-lettered; the rest arrive, in
# the order staged per key, without a dead letter.
use strict;
use warnings;

use EvbusTest;
use File::Spec;
use PostgreSQL::Test::Utils;
use Test::More;

kafka_bootstrap();
my $prefix = "t052.$$.";
my $topic = "${prefix}Narrow";
kafka_admin('topics', '--create', '--topic', $topic, '--partitions', '2',
	'--config', 'max.message.bytes=700');

# Batches of at most two events: a claim becomes several produce requests
# per partition, in flight together, as a busy producer's are.
my $dir = File::Spec->rel2abs(PostgreSQL::Test::Utils::tempdir());
write_kafka_properties("$dir/small-batches.properties", 'batch.num.messages=2');

my $node = new_node('narrow', kafka => 1,
	conf => [
		"evbus.topic_prefix = '$prefix'",
		"evbus.kafka_config_file = '$dir/small-batches.properties'"
	]);
$node->safe_psql('postgres', 'CREATE EXTENSION evbus');

# 60 transactions of three events, keys a and b alternating; one event
# (seq 100, key a) far too large for the topic (md5 text barely
# compresses).
my $script = '';
for my $t (0 .. 59)
{
	my @ev;
	for my $i (0 .. 2)
	{
		my $seq = $t * 3 + $i;
		my $key = $seq % 2 ? 'b' : 'a';
		my $size = $seq == 100 ? 40 : 3;
		push @ev,
		  "evbus.publish('Narrow', jsonb_build_object('seq', $seq, 'r', "
		  . "(SELECT string_agg(md5(random()::text), '') FROM generate_series(1, $size))), '$key')";
	}
	$script .= 'SELECT ' . join(', ', @ev) . ";\n";
}
$node->safe_psql('postgres', $script);

ok($node->poll_query_until('postgres', 'SELECT count(*) = 0 FROM evbus.outbox'),
	'outbox drained');
is($node->safe_psql('postgres', q{SELECT payload->>'seq', error_code FROM evbus.dead_letters}),
	'100|MSG_SIZE_TOO_LARGE', 'only the event too large alone is a dead letter');

# the outbox is drained: everything is in Kafka; read it all (to the end)
my @msgs = kcat_consume($topic, 100000, 2);
my ($seen, $dups, $order_ok) = first_arrivals_by_key(@msgs);
is(scalar(keys %$seen), 179, 'every other event arrived');
ok(!$seen->{100}, 'the dead letter did not');
ok($order_ok, 'per key, first arrivals are in the order staged');
note("$dups duplicates (same message id) after producer rebuilds");
like(slurp_file($node->logfile), qr/the broker refused a record batch, so the Kafka producer stops/,
	'the refused batch stopped the producer');

is($node->safe_psql('postgres', "SELECT staged, published, dead, pending FROM evbus.stats WHERE topic = '$topic'"),
	'180|179|1|0', 'evbus.stats');
ok($node->safe_psql('postgres', 'SELECT evbus.publisher_pid() IS NOT NULL'), 'the worker kept running');

$node->stop;
done_testing();

# 260_inflight_refusal_order.pl - a record batch the broker refuses must
# not let a later batch of the same key, already sent, overtake it.
#
# The gap-less guarantee (test 052) stops the producer at a refused batch,
# but only what is queued behind it: up to five produce requests per
# partition may be on the wire already.  A broker that knows the producer
# id on the partition refuses those (out of order sequence), but one that
# does not (a new producer, and every rebuild makes one; or the broker
# forgot the id) appends a first batch whatever its sequence number.  So
# when the first batch of a new producer on a partition is refused, the
# batches sent after it land, and the refused batch's events, produced
# again after the rebuild, arrive after later events of their key (without
# the per-key gate of publish_keys.c this test fails with "key k0: seq 0
# after 4", round after round).
#
# Each round stages, in one transaction, events of four keys in turn, the
# second of them too large for the topic even alone, while publishing is
# paused; then publishing resumes with a new producer, and the round is
# produced before the producer has its id: with batches of two events,
# several requests per partition go out together.  Whatever reaches Kafka
# must be, per key, in the order staged; the events too large alone are
# the only dead letters.
use strict;
use warnings;

use EvbusTest;
use File::Spec;
use PostgreSQL::Test::Utils;
use Test::More;

kafka_bootstrap();
my $prefix = "t260.$$.";
my $topic = "${prefix}Narrow";
kafka_admin('topics', '--create', '--topic', $topic, '--partitions', '2',
	'--config', 'max.message.bytes=700');

my $dir = File::Spec->rel2abs(PostgreSQL::Test::Utils::tempdir());
write_kafka_properties("$dir/small-batches.properties", 'batch.num.messages=2');

my $node = new_node('inflight', kafka => 1,
	conf => [
		"evbus.topic_prefix = '$prefix'",
		"evbus.kafka_config_file = '$dir/small-batches.properties'"
	]);
$node->safe_psql('postgres', 'CREATE EXTENSION evbus');

my $rounds = 6;
my $per_round = 24;
my %big;
for my $r (0 .. $rounds - 1)
{
	my @ev;
	for my $i (0 .. $per_round - 1)
	{
		my $seq = $r * $per_round + $i;
		my $key = 'k' . ($i % 4);
		my $size = $i == 1 ? 40 : 3;
		$big{$seq} = 1 if $i == 1;
		push @ev,
		  "evbus.publish('Narrow', jsonb_build_object('seq', $seq, 'r', "
		  . "(SELECT string_agg(md5(random()::text), '') FROM generate_series(1, $size))), '$key')";
	}
	# staged while publishing is paused, the round is produced at once to
	# a new producer, before it has its producer id: the batches pile up
	# and go out together, with no response in between
	my $log_offset = -s $node->logfile;
	$node->safe_psql('postgres', q{ALTER SYSTEM SET evbus.brokers = ''; SELECT pg_reload_conf()});
	$node->wait_for_log(qr/closing the Kafka producer/, $log_offset);
	$node->safe_psql('postgres', 'SELECT ' . join(', ', @ev));
	$node->safe_psql('postgres', q{ALTER SYSTEM RESET evbus.brokers; SELECT pg_reload_conf()});
	ok($node->poll_query_until('postgres', 'SELECT count(*) = 0 FROM evbus.outbox'),
		"round $r: outbox drained");
}

my $total = $rounds * $per_round;
my $nbig = scalar(keys %big);
is( $node->safe_psql(
		'postgres',
		q{SELECT count(*), count(*) FILTER (WHERE error_code = 'MSG_SIZE_TOO_LARGE'),
		         string_agg(payload->>'seq', ',' ORDER BY (payload->>'seq')::int)
		    FROM evbus.dead_letters}),
	"$nbig|$nbig|" . join(',', sort { $a <=> $b } keys %big),
	'only the events too large alone are dead letters');

my @msgs = kcat_consume($topic, 100000, 2);
my ($seen, $dups, $order_ok) = first_arrivals_by_key(@msgs);
is(scalar(keys %$seen), $total - $nbig, 'every other event arrived');
ok(!grep({ $seen->{$_} } keys %big), 'no dead letter did');
ok($order_ok, 'per key, first arrivals are in the order staged');
note("$dups duplicates (same message id) after producer rebuilds");

is($node->safe_psql('postgres', "SELECT staged, published, dead, pending FROM evbus.stats WHERE topic = '$topic'"),
	"$total|" . ($total - $nbig) . "|$nbig|0", 'evbus.stats');
ok($node->safe_psql('postgres', 'SELECT evbus.publisher_pid() IS NOT NULL'), 'the worker kept running');

$node->stop;
done_testing();

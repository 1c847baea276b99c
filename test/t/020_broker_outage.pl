# 020_broker_outage.pl - the Kafka broker stops while events are staged and
# published, then comes back: nothing is lost, nothing is dead-lettered, no
# retry is consumed, and per-key order holds as read back from Kafka.
#
# Meanwhile a subscription is paused: the consumer asks the broker for the
# paused partition's high watermark (for the lag) every 5 s, and must
# still end when terminated while the broker is down.  librdkafka's
# rd_kafka_query_watermark_offsets (before 2.3.0) waited for as long as
# the leader was down, whatever its timeout: the consumer ignored its
# termination, and a fast shutdown waited, until the broker came back.
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

private_kafka();	# it stops its broker: one of its own
my $prefix = "t020.$$.";
my $topic = "${prefix}Outage";
my $node = new_node('outage', kafka => 1,
	conf => [ "evbus.topic_prefix = '$prefix'", 'evbus.batch_size = 500' ]);
$node->safe_psql('postgres', 'CREATE EXTENSION evbus');

# Stage $n events in transactions of 100, keys k0..k9, seq increasing per key.
my $staged = 0;
sub stage
{
	my ($n) = @_;
	for (my $i = 0; $i < $n; $i += 100)
	{
		my $from = $staged + $i;
		$node->safe_psql(
			'postgres', qq{
SELECT count(evbus.publish('Outage', jsonb_build_object('k', 'k' || (g % 10), 'seq', g), 'k' || (g % 10)))
  FROM generate_series($from, $from + 99) g});
	}
	$staged += $n;
}

# the paused subscription, its partition assigned first
kafka_admin('topics', '--create', '--topic', "${prefix}Quiet", '--partitions', '1',
	'--replication-factor', '1');
subscribe_recorder($node, 'Quiet');
$node->safe_psql('postgres', q{SELECT evbus.publish('Quiet', '{"n": 1}')});
ok(wait_for_sql($node, 'postgres', 'SELECT count(*) FROM received', '1', 90),
	'the subscription of Quiet handles its event');
$node->safe_psql('postgres', q{SELECT evbus.pause_subscription('Quiet')});

stage(3000);
# stop the broker while the worker is busy with these
kafka_stop();
note 'broker stopped';
stage(3000);

my $pending = $node->safe_psql('postgres', 'SELECT count(*) FROM evbus.outbox');
cmp_ok($pending, '>', 0, "events wait in the outbox while the broker is down ($pending pending)");
sleep 3;
is($node->safe_psql('postgres', 'SELECT count(*) FROM evbus.dead_letters'),
	'0', 'a broker outage dead-letters nothing');
is($node->safe_psql('postgres', 'SELECT count(*) FROM evbus.outbox'),
	$pending, 'and drops nothing from the outbox');

# the consumer has asked for the paused high watermark with the broker down
sleep 6;
my $consumer = $node->safe_psql('postgres', 'SELECT evbus.consumer_pid()');
$node->safe_psql('postgres', "SELECT pg_terminate_backend($consumer)");
my $t0 = time;
sleep 0.1 while kill(0, $consumer) && time - $t0 < 40;
my $took = time - $t0;
cmp_ok($took, '<', 20, 'the consumer with a paused subscription exits when terminated, the broker down');
note sprintf('the consumer exited %.1f s after its termination', $took);

kafka_start();
note 'broker restarted';
stage(1000);
$node->safe_psql('postgres',
	q{SELECT evbus.resume_subscription('Quiet'); SELECT evbus.publish('Quiet', '{"n": 2}')});
ok(wait_for_sql($node, 'postgres', 'SELECT count(*) FROM received', '2', 90),
	'resumed, the subscription of Quiet handles the next event');

ok($node->poll_query_until('postgres', 'SELECT count(*) = 0 FROM evbus.outbox'),
	'outbox drained after the broker came back');
is($node->safe_psql('postgres', 'SELECT count(*) FROM evbus.dead_letters'),
	'0', 'still no dead letter');

my @messages = kcat_consume($topic, $staged + 1000, 20);
my %copies;
my %last_seq;
my $order_ok = 1;
for my $m (@messages)
{
	my ($k, $seq) = $m->{payload} =~ /"k":"(k\d)","seq":(\d+)/ or next;
	next if $copies{$seq}++;    # a duplicate: order is judged on first copies
	if (defined $last_seq{$k} && $seq < $last_seq{$k})
	{
		$order_ok = 0;
		diag "key $k: seq $seq after $last_seq{$k}";
	}
	$last_seq{$k} = $seq;
}
my @missing = grep { !$copies{$_} } 0 .. $staged - 1;
is(scalar @missing, 0, "no event lost: all $staged events are in Kafka")
  or diag "missing: @missing[0 .. ($#missing < 9 ? $#missing : 9)]";
ok($order_ok, 'per-key order preserved through the outage');
my $duplicates = scalar(@messages) - scalar(keys %copies);
note "Kafka holds $duplicates duplicate(s) of $staged events";
is($node->safe_psql('postgres', "SELECT published FROM evbus.stats WHERE topic = '$topic'"),
	$staged, 'evbus.stats: every event published once');

$node->stop;
done_testing();

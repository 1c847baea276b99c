# 020_broker_outage.pl - the Kafka broker stops while events are staged and
# published, then comes back: nothing is lost, nothing is dead-lettered, no
# retry is consumed, and per-key order holds as read back from Kafka.
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;

kafka_bootstrap();
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

kafka_start();
note 'broker restarted';
stage(1000);

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

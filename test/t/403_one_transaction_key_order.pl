# 403_one_transaction_key_order.pl - two events of one key staged by one
# transaction reach Kafka in the order staged, while many such
# transactions commit at once.
#
# The first event's id is passed over by the publisher's cursor while its
# transaction runs (a hole, looked up again at each step); the second one
# lies past the cursor when the transaction commits.  A step looked the
# holes up with one snapshot, then read past the cursor with a newer one:
# a commit in between had the second event claimed, and produced, before
# the first (a per-key order violation the fault campaign found once).
# Now the claims of a step read with one snapshot.
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;

kafka_bootstrap();
my $prefix = "t403.$$.";
my $topic = "${prefix}Pair";
kafka_admin('topics', '--create', '--topic', $topic, '--partitions', '3');
my $node = new_node('one_transaction', kafka => 1, conf => ["evbus.topic_prefix = '$prefix'"]);
$node->safe_psql('postgres', 'CREATE EXTENSION evbus');

# each transaction: a key of its own, event 1, a pause, event 2
my $script = pgbench_script(
	'403_pairs', q{\set k random(1, 1000000000000)
BEGIN;
SELECT evbus.publish('Pair', '{"seq": 1}', 'k' || :k);
SELECT pg_sleep(0.001);
SELECT evbus.publish('Pair', '{"seq": 2}', 'k' || :k);
COMMIT;
});
my ($ok, $pairs, $err) = run_pgbench($node, $script, '-c', '8', '-T', '8');
ok($ok && $pairs > 0, "eight sessions committed $pairs transactions") or diag($err);
ok(wait_for_sql($node, 'postgres', 'SELECT count(*) FROM evbus.outbox', '0', 120),
	'the publisher drains the outbox');

my @msgs = kcat_consume($topic, 2 * $pairs, 120);
cmp_ok(scalar(@msgs), '>=', 2 * $pairs, 'every event is in Kafka');
my (%first, $out_of_order);
for my $m (@msgs)
{
	my ($seq) = $m->{payload} =~ /"seq":\s*(\d+)/;
	# the first arrival of each event counts (one produced again may follow)
	next if $first{ $m->{key} }{$seq}++;
	if ($seq == 2 && !$first{ $m->{key} }{1})
	{
		$out_of_order++;
		diag("key $m->{key}: event 2 at $m->{partition}/$m->{offset} before event 1")
		  if $out_of_order <= 5;
	}
}
is($out_of_order // 0, 0, 'for every key, event 1 reached Kafka before event 2');

$node->stop;
done_testing();

# 401_publisher_start_key_order.pl - per-key order holds for a transaction
# that was running when the publisher first read the outbox.
#
# Found by the fault campaign (test 400, seed 13): its first event, of key
# K, was published after the second event of K although the second was
# staged only once the first had committed (the two transactions were
# serialized by a row lock).  When the publisher starts (the server's
# start, a crash restart), the first rows it claims may lie above the id
# of an event whose transaction is still running.  The ids skipped over
# later are remembered and looked up again before any later row is
# produced; those below the first claimed row were left to the sweep,
# which runs once per evbus.poll_interval.  So a later event of K,
# committed in between, went out first.
#
# Here, once on a fresh server and once after a restart (with published
# history below), with evbus.poll_interval long enough that the sweep
# cannot hide the difference:
#   1. a transaction stages E1 (key K) and stays open;
#   2. another event (key other) commits and is published: the
#      publisher's first claim, above E1's id;
#   3. E1's transaction commits, then E2 (key K) is staged and committed;
#   4. Kafka must hold E1 before E2.
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;

kafka_bootstrap();
my $prefix = "t401.$$.";
my $node = new_node(
	'startorder',
	kafka => 1,
	conf => [ "evbus.topic_prefix = '$prefix'", "evbus.poll_interval = '60s'" ]);
$node->safe_psql('postgres', 'CREATE EXTENSION evbus');

# scenario(name): the steps above on topic ${prefix}Ord<name>; returns
# the seqs of key K in the order Kafka holds them
sub scenario
{
	my ($name) = @_;
	my $event = "Ord$name";
	my $open = $node->background_psql('postgres');
	$open->query_safe('BEGIN');
	$open->query_safe(qq{SELECT evbus.publish('$event', '{"seq": 1}', 'K')});
	$node->safe_psql('postgres', qq{SELECT evbus.publish('$event', '{"seq": 0}', 'other')});
	ok(wait_for_sql($node, 'postgres', 'SELECT count(*) FROM evbus.outbox', '0', 30),
		"$name: the other key's event is published while E1's transaction runs");
	$open->query_safe('COMMIT');
	$open->quit;
	$node->safe_psql('postgres', qq{SELECT evbus.publish('$event', '{"seq": 2}', 'K')});
	my @msgs = kcat_consume("$prefix$event", 3, 90);
	return map { $_->{payload} =~ /"seq":(\d+)/ ? $1 : '?' } grep { ($_->{key} // '') eq 'K' } @msgs;
}

is(join(',', scenario('Fresh')), '1,2', 'fresh server: E1 before E2 in Kafka');

# a restart: the publisher starts again, with published events below
$node->restart;
is(join(',', scenario('Restarted')), '1,2', 'after a restart: E1 before E2 in Kafka');

$node->stop;
done_testing();

# 402_long_transaction_key_order.pl - per-key order holds for a
# transaction that commits more than 10 s after it staged its event.
#
# Seen while studying what the fault campaign (test 400) found: ids the
# publisher's forward scan skips over (a transaction still running) are
# remembered and looked up before the rows past the cursor, but only for
# 10 s; after that only the sweep, once per evbus.poll_interval, finds
# them.  A transaction of key K that runs longer (a slow batch, a prepared
# transaction left behind by a restart), then the next transaction of K,
# serialized behind it by a row lock: the later event was published
# first.  A remembered id is now forgotten only once every transaction
# that could have staged it has ended.
#
#   1. a transaction stages E1 (key K) and stays open 12 s;
#   2. meanwhile events of another key commit and are published (the
#      forward scan passes E1's id);
#   3. E1's transaction commits, then E2 (key K) is staged and committed;
#   4. Kafka must hold E1 before E2 (evbus.poll_interval is 60 s: the
#      sweep cannot hide the difference).
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep);

kafka_bootstrap();
my $prefix = "t402.$$.";
my $node = new_node(
	'longtx',
	kafka => 1,
	conf => [ "evbus.topic_prefix = '$prefix'", "evbus.poll_interval = '60s'" ]);
$node->safe_psql('postgres', 'CREATE EXTENSION evbus');

# the publisher's first claim, so that E1's id is above it (test 401 is
# about ids below it)
$node->safe_psql('postgres', q{SELECT evbus.publish('Ord', '{"seq": 0}', 'first')});
ok(wait_for_sql($node, 'postgres', 'SELECT count(*) FROM evbus.outbox', '0', 30), 'the first event is published');

my $open = $node->background_psql('postgres');
$open->query_safe('BEGIN');
$open->query_safe(q{SELECT evbus.publish('Ord', '{"seq": 1}', 'K')});
for my $i (1 .. 12)
{
	$node->safe_psql('postgres', qq{SELECT evbus.publish('Ord', '{"seq": 0, "i": $i}', 'other')});
	sleep 1;
}
ok(wait_for_sql($node, 'postgres', 'SELECT count(*) FROM evbus.outbox', '0', 30),
	'the other key\'s events are published while E1\'s transaction runs');
$open->query_safe('COMMIT');
$open->quit;
$node->safe_psql('postgres', q{SELECT evbus.publish('Ord', '{"seq": 2}', 'K')});

my @msgs = kcat_consume("${prefix}Ord", 15, 90);
my @k = map { $_->{payload} =~ /"seq":(\d+)/ ? $1 : '?' } grep { ($_->{key} // '') eq 'K' } @msgs;
is(join(',', @k), '1,2', 'E1 before E2 in Kafka');

$node->stop;
done_testing();

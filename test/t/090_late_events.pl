# 090_late_events.pl - events the forward scan cannot see when it passes
# them are published later by the sweep: a deliver_at beyond the time a
# skipped id is remembered (10 s), and a transaction that commits more than
# 10 s after taking its id.  The deferred event goes through the sweep's
# last, short page, which an earlier version never published (the slow
# transaction's id is looked up as long as it runs: test 402, which also
# guards the order of its key).  The outbox tables rotate
# every 3 s, so the slow transaction stays open while the table it wrote to
# is truncated (once staging released its lock at once, and the event was
# lost), and the deferred event is moved to the other table.
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);

kafka_bootstrap();
my $prefix = "t090.$$.";
my $node = new_node('late', kafka => 1, conf => [ "evbus.topic_prefix = '$prefix'", "evbus.outbox_rotation = '3s'" ]);
$node->safe_psql('postgres', 'CREATE EXTENSION evbus');

# a transaction that takes its id now and commits in 12 s
my $slow = $node->background_psql('postgres');
$slow->query_safe('BEGIN');
my $slow_id = $slow->query_safe(q{SELECT evbus.publish('Late', '{"who": "slow"}', 'slow')});
my $t0 = time();

# an event due in 12 s, and a stream of events the cursor moves past
my $deferred_id = $node->safe_psql('postgres',
	q{SELECT evbus.publish('Late', '{"who": "deferred"}', 'deferred', NULL, now() + interval '12 seconds')});
for my $i (1 .. 5)
{
	$node->safe_psql('postgres', qq{SELECT evbus.publish('Late', '{"who": "prompt", "i": $i}', 'prompt')});
	sleep 0.5;
}
my @early = kcat_consume("${prefix}Late", 5, 20);
is(scalar @early, 5, 'the prompt events are published at once');

sleep 12 - (time() - $t0) if time() - $t0 < 12;
$slow->query_safe('COMMIT');
$slow->quit;

ok($node->poll_query_until('postgres', 'SELECT count(*) = 0 FROM evbus.outbox'),
	'the outbox drains: nothing is left behind');
my @all = kcat_consume("${prefix}Late", 7, 30);
my %ids = map { $_->{headers}{'cap-msg-id'} => 1 } @all;
ok($ids{$slow_id}, 'the transaction that committed 12 s after taking its id is published');
ok($ids{$deferred_id}, 'the event deferred by 12 s is published');
note sprintf('all published %.1f s after the start', time() - $t0);

$node->stop;
done_testing();

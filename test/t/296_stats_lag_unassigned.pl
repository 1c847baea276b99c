# 296_stats_lag_unassigned.pl - the lag evbus.stats shows while this
# database's consumer holds no partition of the topic: not known (NULL),
# never the last value seen, which read 0 while messages waited.
# 1. 10 events are handled; the first read of evbus.stats that counts
#    them handled has the lag too, 0 (stored with the batch's offsets).
# 1b. Another member joins the group (kcat, for another topic) and
#    leaves: through both rebalances the consumer keeps its partition,
#    and its lag, read every 0.1 s, is never NULL.
# 2. The consumer is killed with SIGKILL (the cluster restarts).  Its dead
#    member keeps the group's partition until its session times out
#    (10 s), so the new consumer waits without one while 20 new events
#    are published.  Until they are handled, no read of the lag (every
#    0.1 s, with the published and handled counts) is 0 while published
#    events are not handled, and at least one is NULL; then it comes back
#    to 0 and evbus.metrics() has the group's lag.
# 3. The handler is unsubscribed: the consumer leaves the group, and with
#    5 more events in Kafka the lag reads NULL, not 0, and evbus.metrics()
#    has no lag for the group.
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);

kafka_bootstrap();
my $prefix = "t296.$$.";
my $topic = "${prefix}Lagging";
my $group = "t296_$$";
my $node = new_node(
	'stats_lag',
	kafka => 1,
	conf => [
		"evbus.topic_prefix = '$prefix'",
		"evbus.group_name = '$group'",
		'restart_after_crash = on'
	]);
$node->safe_psql('postgres', 'CREATE EXTENSION evbus');
kafka_admin('topics', '--create', '--topic', $topic, '--partitions', '1',
	'--replication-factor', '1');
subscribe_recorder($node, 'Lagging');

my $lag_sql = qq{SELECT coalesce(lag::text, 'null') || '|' || handled
	FROM evbus.stats WHERE side = 'consume' AND topic = '$topic'};
# the lag, the handled and the published events, in one snapshot
my $read_sql = qq{SELECT coalesce(c.lag::text, 'null') || '|' || c.handled || '|' || p.published
	FROM evbus.stats c, evbus.stats p
	WHERE c.side = 'consume' AND c.topic = '$topic' AND p.side = 'publish' AND p.topic = '$topic'};
my $metric_sql = qq{SELECT count(*) FROM evbus.metrics()
	WHERE metric = 'evbus_consumer_lag' AND group_name = '$group'};

sub publish
{
	my ($n) = @_;
	$node->safe_psql('postgres',
		"SELECT count(evbus.publish('Lagging', jsonb_build_object('n', g))) FROM generate_series(1, $n) g");
}

# 1. handled, lag 0: the high watermark is stored with the batch's
# offsets, so the first read that sees the 10 handled sees the lag too
publish(10);
my $first = '';
my $deadline1 = time() + 60;
while (time() < $deadline1)
{
	$first = $node->safe_psql('postgres', $lag_sql);
	last if $first =~ /\|10$/;
	sleep 0.05;
}
is($first, '0|10', 'step 1: 10 handled, and in the same read the lag, 0');

# 1b. another member (kcat) joins the group for another topic, then
# leaves: the group rebalances twice, and the consumer keeps its
# partition each time; its lag stays known throughout
my $other = "${prefix}Other";
kafka_admin('topics', '--create', '--topic', $other, '--partitions', '1',
	'--replication-factor', '1');
my $kcat_log = "${PostgreSQL::Test::Utils::tmp_check}/t296_kcat.log";
append_to_file($kcat_log, '');
my $kcat_pid = fork() // die "fork: $!";
if (!$kcat_pid)
{
	open(STDOUT, '>', '/dev/null');
	open(STDERR, '>>', $kcat_log);
	exec('kcat', '-b', kafka_bootstrap(), '-G', $group, $other) or die "kcat: $!";
}
my %during;
my $lag_now = sub {
	my ($lag) = split /\|/, $node->safe_psql('postgres', $lag_sql);
	$during{ $lag eq 'null' ? 'null' : 'known' }++;
};
my $until = time() + 30;
$lag_now->(), sleep 0.1 until time() > $until || slurp_file($kcat_log) =~ /assigned/;
$lag_now->(), sleep 0.1 for 1 .. 30;
kill 'TERM', $kcat_pid;
waitpid($kcat_pid, 0);
$lag_now->(), sleep 0.1 for 1 .. 50;
note 'step 1b: lag reads: ' . join(', ', map { "$_ $during{$_}" } sort keys %during);
like(slurp_file($kcat_log), qr/rebalanced/, 'step 1b: another member joined: the group rebalanced');
ok(!$during{null}, 'step 1b: the lag stayed known through both rebalances');

# 2. killed: the new consumer waits for the dead member's session to end
my $pid = $node->safe_psql('postgres',
	q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'evbus consumer'});
ok($pid, "step 2: the consumer runs (pid $pid)");
kill 'KILL', $pid;
ok(wait_for_crash_restart($node, 1), 'step 2: the server restarted after the crash');
ok( wait_for_sql($node, 'postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'evbus consumer' AND pid <> $pid",
		'1', 60),
	'step 2: a new consumer runs');
publish(20);
my (%seen, @zero_early);
my $deadline = time() + 90;
while (time() < $deadline)
{
	my $read = $node->safe_psql('postgres', $read_sql);
	my ($lag, $handled, $published) = split /\|/, $read;
	$seen{ $lag eq 'null' ? 'null' : $lag > 0 ? 'more' : 'zero' }++;
	# in Kafka and not handled, yet a lag of 0
	push @zero_early, $read if $lag eq '0' && $handled < $published;
	last if $handled == 30 && $lag eq '0';
	sleep 0.1;
}
note 'step 2: lag reads: ' . join(', ', map { "$_ $seen{$_}" } sort keys %seen);
is(scalar(@zero_early), 0, 'step 2: the lag never read 0 while events waited')
  or diag 'reads (lag|handled|published): ' . join(' ', @zero_early[ 0 .. ($#zero_early < 9 ? $#zero_early : 9) ]);
ok($seen{null}, 'step 2: it read NULL while the consumer held no partition');
is($node->safe_psql('postgres', $lag_sql), '0|30', 'step 2: all 30 handled, lag 0 again');
ok(wait_for_sql($node, 'postgres', $metric_sql, '1', 30),
	'step 2: evbus.metrics() has the group\'s lag again');

# 3. unsubscribed: the consumer leaves the group
$node->safe_psql('postgres',
	as_subscriber($node) . q{SELECT evbus.unsubscribe('Lagging', 'record_received(jsonb, jsonb)')});
ok( wait_for_sql($node, 'postgres',
		qq{SELECT count(*) FROM evbus.consumer_offsets WHERE group_name = '$group' AND high_watermark IS NOT NULL},
		'0', 30),
	'step 3: the group\'s high watermarks are forgotten when it leaves');
publish(5);
sleep 6;
is($node->safe_psql('postgres', $lag_sql), 'null|30', 'step 3: with 5 events waiting, the lag reads NULL');
is($node->safe_psql('postgres', $metric_sql), '0', 'step 3: evbus.metrics() has no lag for the group');

$node->stop;
done_testing();

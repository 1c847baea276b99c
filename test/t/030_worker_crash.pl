# 030_worker_crash.pl - the worker is killed with SIGKILL in the middle of
# publishing a batch.  PostgreSQL restarts the whole cluster (any backend
# dying by a signal does that); afterwards every committed event is
# published, and any duplicate carries the same cap-msg-id as its original.
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;

kafka_bootstrap();
my $prefix = "t030.$$.";
my $topic = "${prefix}Crash";
my $node = new_node('crash', kafka => 1,
	conf => [ "evbus.topic_prefix = '$prefix'", 'evbus.batch_size = 1000', 'restart_after_crash = on' ]);
$node->safe_psql('postgres', 'CREATE EXTENSION evbus');

my $n = 50000;
# stage with publishing paused, then let the worker loose and kill it mid-way
$node->safe_psql('postgres', q{ALTER SYSTEM SET evbus.brokers = ''; SELECT pg_reload_conf()});
$node->safe_psql('postgres',
	qq{SELECT count(evbus.publish('Crash', jsonb_build_object('seq', g), 'k' || (g % 7))) FROM generate_series(1, $n) g});
$node->safe_psql('postgres', q{ALTER SYSTEM RESET evbus.brokers; SELECT pg_reload_conf()});

# Kill as soon as the first acknowledgements are counted: the worker's pid
# and the count come from one query, and the kill follows it at once.  A
# drain runs at 150,000 events/s or more, so the queries go through one
# open session: a new psql per query (tens of ms on a loaded machine) can
# miss the whole drain.
my ($pid, $published) = (0, 0);
my $poller = $node->background_psql('postgres');
my $deadline = time() + 120;
while (time() < $deadline)
{
	($pid, $published) = split /\|/, $poller->query_safe(
		qq{SELECT evbus.publisher_pid(), coalesce(sum(published), 0) FROM evbus.stats WHERE topic = '$topic'});
	last if $published > 0 && $pid;
}
ok($published > 0, 'publishing has started')
  or BAIL_OUT('the worker published nothing in 120 s');
kill 'KILL', $pid;
note "killed worker $pid after $published of $n events";
# the crash restart ends the poller's session too
eval { $poller->quit };
cmp_ok($published, '<', $n, 'the kill lands mid-way');
ok(wait_for_crash_restart($node, 1), 'the server restarted after the crash');

ok($node->poll_query_until('postgres', 'SELECT count(*) = 0 FROM evbus.outbox'),
	'after the crash restart the outbox drains');
ok($node->safe_psql('postgres', 'SELECT evbus.publisher_pid() IS NOT NULL') eq 't',
	'a new worker runs');

my @messages = kcat_consume($topic, $n + 100000, 15);
my %id_of;
my $consistent = 1;
for my $m (@messages)
{
	my ($seq) = $m->{payload} =~ /"seq":(\d+)/;
	my $id = $m->{headers}{'cap-msg-id'};
	if (defined $id_of{$seq} && $id_of{$seq} ne $id)
	{
		$consistent = 0;
		diag "seq $seq published with two ids: $id_of{$seq} and $id";
	}
	$id_of{$seq} = $id;
}
is(scalar(keys %id_of), $n, "all $n events are in Kafka");
ok($consistent, 'every duplicate carries the cap-msg-id of its original');
note sprintf('%d duplicate(s) after the crash', scalar(@messages) - $n);

$node->stop;
done_testing();

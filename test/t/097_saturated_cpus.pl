# 097_saturated_cpus.pl - while the CPUs are contended the worker claims
# less often (evbus.publish_linger_busy, 200 ms by default), and still
# publishes every committed event exactly once; once the load is gone it
# returns to evbus.publish_linger.
#
# The load: pgbench without a rate limit, four clients per CPU (at least
# 8), each transaction staging one event, beside two busy loops per CPU.
# The busy loops make the contention certain whatever the machine's disks
# and clocks: pgbench alone left the CPUs contended too little for the
# worker to notice within 8 s on a machine with fast disks.  The worker reads the
# share of time runnable tasks waited for a CPU (/proc/pressure/cpu,
# src/cpu_pressure.c) and says at DEBUG1 when it switches; the test reads
# the same file over the load and reports the share it saw.  Where the
# kernel gives no CPU pressure (not Linux, or no PSI) the test is skipped,
# and where it shows the load as contention less than 30 % of the time the
# switch is not asked for: the worker then never switches.
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;

plan skip_all => 'no CPU pressure stall information (/proc/pressure/cpu)'
  unless (eval { slurp_file('/proc/pressure/cpu') } // '') =~ /^some .* total=\d+/;

kafka_bootstrap();
my $prefix = "t097.$$.";
my $topic = "${prefix}Busy";
my $cpus = `getconf _NPROCESSORS_ONLN` || 2;
chomp $cpus;
my $clients = 4 * $cpus < 8 ? 8 : 4 * $cpus;
my $node = new_node('busy', kafka => 1,
	conf => [
		"evbus.topic_prefix = '$prefix'", 'log_min_messages = debug1',
		'max_connections = ' . ($clients + 10)
	]);
$node->safe_psql('postgres', 'CREATE EXTENSION evbus');

my $script = pgbench_script('097_busy', <<'SQL');
\set k random(1, 1000)
SELECT evbus.publish('Busy', jsonb_build_object('k', :k::int, 'at', clock_timestamp()), :k::text);
SQL

# cpu_stall_us(): the host's total CPU stall time ("some"), microseconds
sub cpu_stall_us
{
	my ($total) = slurp_file('/proc/pressure/cpu') =~ /^some .* total=(\d+)/;
	return $total;
}

# two busy loops per CPU, until the load is over (or the test dies)
my @burners;
END { kill 'KILL', @burners if @burners; }
for (1 .. 2 * $cpus)
{
	my $pid = fork() // die "fork: $!";
	if ($pid == 0)
	{
		1 while 1;
	}
	push @burners, $pid;
}

# the worker switches within a few 1-s windows of contention; the load
# goes on (at most three rounds) until it has said so
my $log_offset = -s $node->logfile;
my ($committed, $switched, $ok, $err) = (0, 0);
my ($stall_before, $started) = (cpu_stall_us(), time());
for my $round (1 .. 3)
{
	my $n;
	($ok, $n, $err) = run_pgbench($node, $script, '-c', $clients, '-j', $cpus,
		'-T', $round == 1 ? '8' : '4');
	last unless $ok;
	$committed += $n // 0;
	$switched = slurp_file($node->logfile, $log_offset) =~
	  /evbus: CPUs contended \(something waited for a CPU \d+% of the time\): lingering evbus.publish_linger_busy/;
	last if $switched;
}
my $stalled_pct =
  100 * (cpu_stall_us() - $stall_before) / 1e6 / ((time() - $started) || 1);
kill 'KILL', @burners;
waitpid($_, 0) for @burners;
@burners = ();

ok($ok, "pgbench ran ($clients clients and " . 2 * $cpus . " busy loops on $cpus CPUs)")
  or diag($err);
ok($committed > 1000, "pgbench committed $committed transactions");
diag(sprintf('something waited for a CPU %.0f%% of the time under the load', $stalled_pct));
my $log = slurp_file($node->logfile, $log_offset);

# A kernel that showed the load as contention less than the worker's
# threshold (30 %, src/cpu_pressure.c) asks nothing of the worker: a
# container whose CPU quota is smaller than the CPUs it sees, say, where
# throttled tasks do not count as waiting.  Then there is nothing to check
# but that every event is published.
my $unseen = !$switched && $stalled_pct < 30;
SKIP:
{
	skip(sprintf('the kernel showed the load as CPU contention only %.0f%% of the time',
			$stalled_pct), 1)
	  if $unseen;
	ok($switched, 'the worker saw the CPUs contended and lingers longer')
	  or diag(join("\n", grep { /evbus: CPUs/ } split /\n/, $log) || 'the worker never said the CPUs were contended');
}

ok(wait_for_sql($node, 'postgres', 'SELECT count(*) = 0 FROM evbus.outbox', 't', 60),
	'the outbox drains');
my @msgs = kcat_consume($topic, $committed + 1000, 5);
my %seen;
$seen{ $_->{headers}{'cap-msg-id'} }++ for @msgs;
is(scalar @msgs, $committed, 'as many messages in Kafka as committed transactions');
is(scalar keys %seen, $committed, 'each committed event is in Kafka');

# the load is gone: a trickle of events from one session finds the short
# linger back.  Other processes (the broker's JVM after the burst, say) can
# contend for the CPUs again for a moment, so the trickle goes on, a few
# seconds at a time, until the last switch logged is the one back (at
# most 30 s).  It runs even when the worker never switched: its events
# must be published all the same.
my ($back, $last_busy);
for my $try (1 .. 10)
{
	($ok, undef, $err) = run_pgbench($node, $script, '-c', '1', '-R', '20', '-T', '3');
	diag($err) unless $ok;
	$log = slurp_file($node->logfile, $log_offset);
	$last_busy = rindex($log, 'evbus: CPUs contended');
	$back = index($log, 'evbus: CPUs no longer contended', $last_busy);
	last if $back > $last_busy;
}
ok(wait_for_sql($node, 'postgres', 'SELECT count(*) = 0 FROM evbus.outbox', 't', 30),
	'the trickle is published');
SKIP:
{
	skip 'the worker never lingered longer', 1 if $unseen;
	ok($back > $last_busy, 'the worker returns to the short linger after the load')
	  or diag(join("\n", grep { /evbus: CPUs/ } split /\n/, $log));
}

$node->stop;
done_testing();

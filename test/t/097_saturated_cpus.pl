# 097_saturated_cpus.pl - while the CPUs are contended the worker claims
# less often (evbus.publish_linger_busy, 50 ms by default), and still
# publishes every committed event exactly once; once the load is gone it
# returns to evbus.publish_linger.
#
# The load: pgbench without a rate limit, four clients per CPU (at least
# 8), each transaction staging one event.  The worker reads the share of
# time runnable tasks waited for a CPU (/proc/pressure/cpu,
# src/cpu_pressure.c) and says at DEBUG1 when it switches.  Where the
# kernel gives no CPU pressure (not Linux, or no PSI) the test is skipped:
# the worker then never switches.
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

my $log_offset = -s $node->logfile;
my ($ok, $committed, $err) =
  run_pgbench($node, $script, '-c', $clients, '-j', $cpus, '-T', '8');
ok($ok, "pgbench ran ($clients clients on $cpus CPUs)") or diag($err);
ok($committed && $committed > 1000, "pgbench committed $committed transactions");

my $log = slurp_file($node->logfile, $log_offset);
like($log, qr/evbus: CPUs contended \(something waited for a CPU \d+% of the time\): lingering evbus.publish_linger_busy/,
	'the worker saw the CPUs contended and lingers longer');

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
# most 30 s).
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
ok($back > $last_busy, 'the worker returns to the short linger after the load')
  or diag(join("\n", grep { /evbus: CPUs/ } split /\n/, $log));

$node->stop;
done_testing();

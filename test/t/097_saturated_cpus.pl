# 097_saturated_cpus.pl - under heavy staging on saturated CPUs the
# publisher's claims carry many events each, and it lingers longer between
# them (src/publish_pacing.c: a claim of 20 events or more per millisecond
# of the linger doubles it, up to 40 ms); every committed event is
# still published exactly once; once the load is gone, small claims bring
# the linger back to evbus.publish_linger.  The pacing follows the claims
# alone: the former switch on the host's CPU pressure
# (evbus.publish_linger_busy) is still accepted in postgresql.conf, does
# nothing, and draws a WARNING.
#
# The load: pgbench without a rate limit, four clients per CPU (at least
# 8), each transaction staging EVENTS events, beside two busy loops per
# CPU.  The test asserts what the worker logs at DEBUG1 when the linger
# changes (the events of the claim that changed it), never a duration.
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;

use constant EVENTS => 50;		# events staged per transaction

kafka_bootstrap();
my $prefix = "t097.$$.";
my $topic = "${prefix}Busy";
my $cpus = `getconf _NPROCESSORS_ONLN` || 2;
chomp $cpus;
my $clients = 4 * $cpus < 8 ? 8 : 4 * $cpus;
my $node = new_node('busy', kafka => 1,
	conf => [
		"evbus.topic_prefix = '$prefix'", 'log_min_messages = debug1',
		'max_connections = ' . ($clients + 10),
		# deprecated: still loads, and the publisher says it does nothing
		"evbus.publish_linger_busy = '200ms'"
	]);
$node->safe_psql('postgres', 'CREATE EXTENSION evbus');
is($node->safe_psql('postgres', 'SHOW evbus.publish_linger'),
	'1ms', 'evbus.publish_linger is 1 ms by default');

my $script = pgbench_script('097_busy', <<"SQL");
\\set k random(1, 1000)
SELECT count(evbus.publish('Busy', jsonb_build_object('k', :k::int, 'g', g, 'at', clock_timestamp()), (:k * 100 + g)::text)) FROM generate_series(1, @{[EVENTS]}) g;
SQL

# lingers(log): the (events, linger ms) of each lengthening of the linger
sub lingers
{
	my ($log) = @_;
	my @l;
	push @l, [ $1, $2 ]
	  while $log =~ /evbus: a claim carried (\d+) events: claims linger (\d+) ms/g;
	return @l;
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

# the load goes on (at most three rounds of 5 s) until the worker has
# lengthened its linger
my $log_offset = -s $node->logfile;
my ($committed, $ok, $err, @grown) = (0);
for my $round (1 .. 3)
{
	my $n;
	($ok, $n, $err) = run_pgbench($node, $script, '-c', $clients, '-j', $cpus,
		'-T', '5');
	last unless $ok;
	$committed += $n // 0;
	@grown = lingers(slurp_file($node->logfile, $log_offset));
	last if @grown;
}
kill 'KILL', @burners;
waitpid($_, 0) for @burners;
@burners = ();

ok($ok, "pgbench ran ($clients clients and " . 2 * $cpus . " busy loops on $cpus CPUs)")
  or diag($err);
ok($committed > 100, "pgbench committed $committed transactions of " . EVENTS . ' events');
my $log = slurp_file($node->logfile, $log_offset);
ok(slurp_file($node->logfile) =~
	  /WARNING:  evbus.publish_linger_busy is deprecated and has no effect/,
	'evbus.publish_linger_busy is accepted and said to do nothing');
ok($log !~ /CPUs contended/, 'no switch on the host\'s CPU pressure');

# under the load: claims of many events, and a longer linger
ok(@grown > 0, 'under heavy staging the worker lingers longer')
  or diag('no lengthening of the linger logged');
# the linger doubled (or reached 40 ms from 20 or more): the claim carried
# 20 events per millisecond of the linger before it, 10 per ms of the new one
ok(!grep({ $_->[0] < 10 * $_->[1] } @grown),
	'each lengthening followed a claim of 20 events or more per ms of the linger')
  or diag(join(', ', map { "$_->[0] events -> $_->[1] ms" } @grown));
ok(!grep({ $_->[1] > 40 } @grown), 'the linger stays within 40 ms')
  or diag(join(', ', map { "$_->[0] events -> $_->[1] ms" } @grown));

# every committed event, exactly once (message ids read back from Kafka)
my $events = $committed * EVENTS;
ok(wait_for_sql($node, 'postgres', 'SELECT count(*) = 0 FROM evbus.outbox', 't', 120),
	'the outbox drains');
my ($seen, $distinct) = (0, 0);
for my $try (1 .. 10)
{
	my %ids;
	my $out = `timeout 120 kcat -C -b @{[kafka_bootstrap()]} -t $topic -e -q -o beginning -m 5 -f '%h\\n' 2>/dev/null`;
	$seen = 0;
	while ($out =~ /cap-msg-id=([0-9a-f-]+)/g)
	{
		$seen++;
		$ids{$1}++;
	}
	$distinct = scalar keys %ids;
	last if $seen >= $events;
	sleep 1;
}
is($seen, $events, 'as many messages in Kafka as committed events');
is($distinct, $events, 'each committed event is in Kafka once');

# the load is gone: a trickle of events from one session makes small
# claims, which bring the linger back to evbus.publish_linger
($ok, undef, $err) = run_pgbench($node, pgbench_script('097_trickle', <<'SQL'),
SELECT evbus.publish('Busy', jsonb_build_object('trickle', true));
SQL
	'-c', '1', '-R', '20', '-T', '3');
ok($ok, 'the trickle ran') or diag($err);
ok(wait_for_sql($node, 'postgres', 'SELECT count(*) = 0 FROM evbus.outbox', 't', 30),
	'the trickle is published');
$log = slurp_file($node->logfile, $log_offset);
my @changes = $log =~ /(evbus: a claim carried \d+ events: claims linger [^\n]*)/g;
like($changes[-1] // '', qr/claims linger evbus.publish_linger \(1 ms\) again/,
	'small claims bring the linger back to evbus.publish_linger')
  or diag(join("\n", @changes));

$node->stop;
done_testing();

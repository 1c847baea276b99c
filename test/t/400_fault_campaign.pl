# 400_fault_campaign.pl - a randomized, seeded fault campaign: while a
# workload stages, publishes and handles events in two databases, a random
# schedule of faults hits the evbus workers, PostgreSQL, a three-broker
# Kafka cluster and the network between them (test/lib/EvbusCampaign.pm
# lists them; every message is handled by a per-message handler and by a
# batch handler, test/campaign/workload.sql); then every fault is healed,
# the system must drain within a bound, and the campaign's checker reads
# the whole history back (what committed, what Kafka holds, what the
# handlers did) and must find no violation; and no server process may
# have crashed.
#
# EVBUS_CAMPAIGN_SEED picks the seed (else a random one, printed): a seed
# gives the same sequence of faults (how many fit depends on the timing);
# EVBUS_CAMPAIGN_DURATION the seconds of load and faults (default 100),
# EVBUS_CAMPAIGN_RATE the producers' transactions per second per database
# (default 30).
# On a violation the seed is printed and the history directory is left in
# the test's log directory (tmp_check/log/400_hist).  The test starts and
# stops its own cluster and toxiproxy, in its own temporary directory.
use strict;
use warnings;

use EvbusTest;
use EvbusCampaign;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

plan skip_all => "no toxiproxy: run 'bash test/campaign/toxiproxy.sh fetch' (test/run-tests.sh does)"
  unless -x $EvbusCampaign::TOXIPROXY_SERVER;

my $t0 = time();
my $seed = $ENV{EVBUS_CAMPAIGN_SEED} // int(rand(2**31));
my $duration = $ENV{EVBUS_CAMPAIGN_DURATION} // 100;
diag("fault campaign seed $seed (EVBUS_CAMPAIGN_SEED=$seed reproduces the schedule)");

my $campaign = EvbusCampaign->new(
	seed => $seed,
	duration => $duration,
	rate => $ENV{EVBUS_CAMPAIGN_RATE},
	dir => PostgreSQL::Test::Utils::tempdir('campaign'));

# stopped even when the test dies
END { $campaign->teardown if $campaign; }

$campaign->setup;
$campaign->run;
isnt($campaign->{drain_s}, 'timeout', "drained after the last fault ($campaign->{drain_s} s)");
my ($rc, $summary) = $campaign->check;
note($summary);
# the checker's summary, for bench/campaign.sh and whoever reads the logs
open my $fh, '>', "${PostgreSQL::Test::Utils::log_path}/400_summary.txt" or die $!;
print $fh $summary;
close $fh;
note('faults: ' . $campaign->fault_summary);
note("events staged: $campaign->{events_staged}");
is($rc, 0, 'the checker finds no violation') or do {
	my $keep = "${PostgreSQL::Test::Utils::log_path}/400_hist";
	system('cp', '-a', $campaign->{hist}, $keep);
	diag("seed $seed: violations; history in $keep");
	diag($summary);
};

# the batch form was called with several messages at once, not only one
# at a time: else its failures would test nothing a per-message handler's
# do not
for my $db (@EvbusCampaign::DBS)
{
	my $calls = $campaign->psql($db,
		"SELECT count(*) FILTER (WHERE messages > 1) || ' of ' || count(*) || ', up to ' || max(messages) FROM campaign.batch_calls"
	) // 'none';
	like($calls, qr/^[1-9]\d* of /, "$db: calls of the batch handler with several messages ($calls)");
}

# no server process crashed: the faults kill with SIGKILL only (a worker,
# a handler's backend); another signal (SIGSEGV, SIGABRT) or a PANIC is
# a bug, which the restart after it would otherwise hide
my @crashes;
open my $server_log, '<', $campaign->{node}->logfile or die $!;
while (my $line = <$server_log>)
{
	push @crashes, $line
	  if (index($line, 'terminated by signal') >= 0 && $line !~ /terminated by signal 9:/)
	  || index($line, 'PANIC:') >= 0;
}
close $server_log;
is(scalar(@crashes), 0, 'no server process crashed (signals other than the faults\' SIGKILL, PANIC)')
  or diag(join("\n", @crashes[ 0 .. ($#crashes < 4 ? $#crashes : 4) ]));
note(sprintf('campaign took %.0f s', time() - $t0));
done_testing();

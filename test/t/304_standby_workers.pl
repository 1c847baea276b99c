# 304_standby_workers.pl - no evbus worker on a hot standby, and the
# publisher and consumer of every database with evbus run within about a
# second of a promotion (pg_promote(), no restart).  Nothing evbus logs on
# the standby is an error.
use strict;
use warnings;

use EvbusTest;
use EvbusFailover;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);

kafka_bootstrap();
my ($primary, $standby) = failover_pair(
	'main', 'standby',
	conf => ["evbus.topic_prefix = 't304.$$.'"],
	setup => sub {
		my $node = shift;
		$node->safe_psql('postgres', 'CREATE DATABASE other');
		$node->safe_psql('other', 'CREATE EXTENSION evbus');
		ok( wait_for_sql(
				$node, 'postgres',
				q{SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'evbus%'},
				'5', 30),
			'the primary runs a launcher, two publishers and two consumers');
	});

# the standby: hot, and no evbus process (pg_stat_activity and ps)
sleep 3;
is($standby->safe_psql('postgres', 'SELECT pg_is_in_recovery()'), 't', 'the standby is in recovery');
is( $standby->safe_psql('postgres',
		q{SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'evbus%'}),
	'0', 'no evbus worker on the standby');
my $pid = $standby->safe_psql('postgres', 'SELECT pg_backend_pid()');
my $ps = `ps -o pid=,args= --ppid \$(ps -o ppid= -p $pid)`;
unlike($ps, qr/evbus/, 'no evbus process under the standby\'s postmaster') or diag $ps;

# promote without a restart: the workers of both databases start at once
$primary->stop('immediate');
my $start = time();
$standby->safe_psql('postgres', 'SELECT pg_promote(true, 10)');
my $running = 0;
while (time() - $start < 10)
{
	$running = $standby->safe_psql('postgres',
		q{SELECT count(*) FROM pg_stat_activity
		  WHERE backend_type IN ('evbus publisher', 'evbus consumer')});
	last if $running == 4;
	sleep 0.05;
}
my $took = time() - $start;
is($running, 4, 'two publishers and two consumers run on the promoted standby');
note sprintf('workers running %.2f s after pg_promote()', $took);
cmp_ok($took, '<', 3, 'within about a second of the promotion (< 3 s)');
is( $standby->safe_psql('other',
		q{SELECT string_agg(worker || ' ' || state, ', ' ORDER BY worker) FROM evbus.worker_status()}),
	'consumer running, publisher running', 'evbus.worker_status() agrees');

my @errors = grep { /evbus/ && /(ERROR|FATAL|PANIC|WARNING):/ } split /\n/, slurp_file($standby->logfile);
is(scalar @errors, 0, 'nothing evbus logged on the standby or at promotion is an error')
  or diag join("\n", @errors);

done_testing();

# 098_reload_storm.pl - reloads while evbus works: a SIGHUP reaches every
# worker at any point (inside a librdkafka call, a handler, a commit) and
# each worker reads its settings again.  While 6,000 events are staged,
# published and handled, 400 reloads come 10 ms apart: every event is
# handled exactly once, none is dead-lettered, the outbox drains, no
# process logs an ERROR or FATAL, none ends by a signal, and the workers
# that ran before the storm still run after it.
use strict;
use warnings;

use EvbusTest;
use IPC::Run;
use PostgreSQL::Test::Utils;
use Test::More;

kafka_bootstrap();
my $prefix = "t098.$$.";
my $node = new_node(
	'reload_storm',
	kafka => 1,
	conf => [ "evbus.topic_prefix = '$prefix'", "evbus.group_name = 't098_$$'" ]);
$node->safe_psql('postgres', 'CREATE EXTENSION evbus');
kafka_admin('topics', '--create', '--topic', "${prefix}Stormy", '--partitions', '3',
	'--replication-factor', '1');
subscribe_recorder($node, 'Stormy');
$node->safe_psql('postgres', q{SELECT evbus.publish('Stormy', '{"n": 0}', 'k0')});
ok(wait_for_sql($node, 'postgres', 'SELECT count(*) FROM received', '1', 90),
	'before the storm, an event is handled');
my $workers_before = $node->safe_psql('postgres',
	q{SELECT string_agg(pid::text, ',' ORDER BY pid) FROM pg_stat_activity WHERE backend_type IN ('evbus launcher', 'evbus publisher', 'evbus consumer')});
my $log_at = -s $node->logfile;

my $storm = pgbench_script('reload_storm', "SELECT pg_reload_conf();\n\\sleep 10 ms\n");
my ($out, $err) = ('', '');
my $h = IPC::Run::start(
	[
		'pgbench', '-n', '-t', '400', '-f', $storm,
		'-h', $node->host, '-p', $node->port, 'postgres'
	],
	'>', \$out, '2>', \$err);
for my $t (0 .. 11)
{
	my $from = $t * 500 + 1;
	my $to = $from + 499;
	$node->safe_psql('postgres',
		qq{SELECT count(evbus.publish('Stormy', jsonb_build_object('n', g), 'k' || (g % 10)))
		     FROM generate_series($from, $to) g});
}
ok($h->finish, 'pgbench sent 400 reloads') or diag $err;
like($out, qr/number of transactions actually processed: 400/, 'all 400 of them');

ok(wait_for_sql($node, 'postgres', 'SELECT count(*) FROM received', '6001', 120),
	'every event is handled');
is($node->safe_psql('postgres', 'SELECT count(DISTINCT message_id), count(DISTINCT payload) FROM received'),
	'6001|6001', 'each exactly once');
is($node->safe_psql('postgres', 'SELECT count(*) FROM evbus.outbox'), '0', 'the outbox is drained');
is($node->safe_psql('postgres', 'SELECT count(*) FROM evbus.dead_letters'), '0', 'no dead letter');
is( $node->safe_psql('postgres',
		q{SELECT string_agg(pid::text, ',' ORDER BY pid) FROM pg_stat_activity WHERE backend_type IN ('evbus launcher', 'evbus publisher', 'evbus consumer')}),
	$workers_before, 'the workers of before the storm still run');
my $log = slurp_file($node->logfile, $log_at);
my $reloads = () = $log =~ /received SIGHUP, reloading configuration files/g;
cmp_ok($reloads, '>=', 100, "the postmaster logged the reloads ($reloads)");
unlike($log, qr/\] (?:ERROR|FATAL|PANIC):/, 'no ERROR, FATAL or PANIC in the log');
unlike($log, qr/terminated by signal|was terminated by/, 'no process ended by a signal');
$node->stop;
done_testing();

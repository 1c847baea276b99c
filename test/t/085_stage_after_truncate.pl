# 085_stage_after_truncate.pl - a session keeps staging while the outbox
# tables are truncated under it (the worker truncates the idle half at
# every evbus.outbox_rotation; here another session does it).  Staging
# caches the outbox's oids per backend; a TRUNCATE committed after the
# staging transaction began sends an invalidation that arrives while
# staging opens the table, and an earlier version then used the reset
# cache ("could not open relation with OID 0").
#
# Then many new sessions stage while another keeps invalidating the outbox
# tables' relcache entries (as autovacuum's ANALYZE of them does, or the
# worker's TRUNCATE).  Filling the cache looks three names up, and each
# lookup can process invalidations: an earlier version reset the cache in
# the middle of filling it and failed the staging transaction with "the
# outbox tables of evbus are missing" (seen once in a benchmark).
use strict;
use warnings;

use EvbusTest;
use IPC::Run;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = new_node('truncate');
$node->safe_psql('postgres', 'CREATE EXTENSION evbus');

my $stager = $node->background_psql('postgres');
$stager->query_safe(q{SELECT evbus.publish('Before', '{"n": 1}')});

for my $round (1 .. 3)
{
	$stager->query_safe('BEGIN');
	$node->safe_psql('postgres', 'TRUNCATE evbus.outbox_0, evbus.outbox_1');
	my ($out, $ret) = $stager->query(qq{SELECT evbus.publish('After', '{"round": $round}') IS NOT NULL});
	is($out, 't', "round $round: a transaction begun before another session's TRUNCATE stages");
	$stager->query_safe('COMMIT');
}
is($node->safe_psql('postgres', q{SELECT count(*) FROM evbus.outbox WHERE integration_event = 'After'}),
	'1', 'the last event is in the outbox');
$stager->quit;

my $stage = pgbench_script('085_stage', <<'SQL');
SELECT evbus.publish('Stress', '{"n": 1}');
SQL
my $invalidate = pgbench_script('085_invalidate', <<'SQL');
ALTER TABLE evbus.outbox_0 ALTER COLUMN payload SET STATISTICS 100;
ALTER TABLE evbus.outbox_1 ALTER COLUMN payload SET STATISTICS 100;
SQL
my ($inval_out, $inval_err) = ('', '');
my $invalidator = IPC::Run::start(
	[
		'pgbench', '-n', '-c', '1', '-T', '7', '-f', $invalidate,
		'-h', $node->host, '-p', $node->port, 'postgres'
	],
	'>', \$inval_out, '2>', \$inval_err);
# -C: a new session (an empty cache) for every transaction
my ($ok, $committed, $err) =
  run_pgbench($node, $stage, '-C', '-c', '4', '-j', '2', '-T', '5');
$invalidator->finish;
my ($invalidations) = $inval_out =~ /number of transactions actually processed: (\d+)/;
ok($ok, 'new sessions stage while the outbox tables are invalidated') or diag($err);
ok($invalidations && $invalidations > 100,
	'the outbox tables were invalidated ' . ($invalidations // 0) . ' times meanwhile')
  or diag($inval_err);
is($node->safe_psql('postgres', q{SELECT count(*) FROM evbus.outbox WHERE integration_event = 'Stress'}),
	$committed, "each of the $committed transactions staged its event");

$node->stop;
done_testing();

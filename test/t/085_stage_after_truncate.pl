# 085_stage_after_truncate.pl - a session keeps staging while the outbox
# tables are truncated under it (the worker truncates the idle half at
# every evbus.outbox_rotation; here another session does it).  Staging
# caches the outbox's oids per backend; a TRUNCATE committed after the
# staging transaction began sends an invalidation that arrives while
# staging opens the table, and an earlier version then used the reset
# cache ("could not open relation with OID 0").
use strict;
use warnings;

use EvbusTest;
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

$node->stop;
done_testing();

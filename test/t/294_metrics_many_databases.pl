# 294_metrics_many_databases.pl - evbus.metrics() keeps the numbers of
# every database with evbus, up to the databases the launcher keeps
# track of, not only the first 64 (beyond those, a database had no
# series at all, not even evbus_worker_up).
# 70 databases with evbus, each staging one event (no broker: nothing
# is published): evbus.metrics(), read from any one of them, has an
# evbus_staged_total of 1 and an evbus_worker_up for each of the 70; the
# metrics' shared memory is reported by pg_shmem_allocations.
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $ndb = 70;
my @dbs = map { sprintf('m%02d', $_) } 1 .. $ndb;
my $node = new_node(
	'metrics_dbs',
	conf => [
		"evbus.brokers = ''",
		"evbus.idle_timeout = '1s'",
		'max_worker_processes = 8'
	]);
for my $db (@dbs)
{
	$node->safe_psql('postgres', "CREATE DATABASE $db");
	$node->safe_psql($db, q{CREATE EXTENSION evbus; SELECT evbus.publish('Counted', '{"n": 1}')});
}
my $staged = q{SELECT count(DISTINCT database) FROM evbus.metrics()
	WHERE metric = 'evbus_staged_total' AND value = 1 AND database LIKE 'm__'};
is($node->safe_psql('m01', $staged), $ndb, "evbus_staged_total of 1 for each of the $ndb databases");
is( $node->safe_psql(
		'm70', q{SELECT count(DISTINCT database) FROM evbus.metrics()
		  WHERE metric = 'evbus_worker_up' AND database LIKE 'm__'}),
	$ndb, "evbus_worker_up for each of them");
my $size = $node->safe_psql('postgres',
	q{SELECT size FROM pg_shmem_allocations WHERE name = 'evbus metrics'});
note "evbus metrics: $size bytes of shared memory";
ok($size > 0 && $size < 8 * 1024 * 1024, 'the metrics take less than 8 MB of shared memory');

$node->stop;
done_testing();

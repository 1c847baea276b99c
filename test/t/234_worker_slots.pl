# 234_worker_slots.pl - more databases than background worker slots.
#
# The launcher looks for evbus one database at a time and starts workers
# only where it is installed, so an evbus database late in pg_database
# gets its workers however many other databases there are.  When the
# slots are taken by other evbus databases, the starved database says so
# (once in the server log, and in evbus.worker_status() in the database
# itself), and its workers start within seconds once slots free up.
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;

# launcher + two databases' workers (2 each) = 5: no room for a third.
# Workers that never go idle keep their slots (without it, a quiet worker
# gives its slot to a waiting one: 239_slots_take_turns.pl)
my $node = new_node(
	'worker_slots',
	conf => [
		"evbus.brokers = 'embedded'",
		'evbus.idle_timeout = 0',
		'max_worker_processes = 5',
		'max_logical_replication_workers = 0',
		'max_parallel_workers = 0'
	]);

# both workers of db run (waits up to 10 s); evbus.worker_status() as text
sub both_workers
{
	my ($db) = @_;
	return wait_for_sql($node, $db, 'SELECT evbus.publisher_pid() > 0 AND evbus.consumer_pid() > 0', 't', 10);
}

sub status
{
	my ($db) = @_;
	return $node->safe_psql($db,
		q{SELECT string_agg(worker || ':' || state, ',' ORDER BY worker) FROM evbus.worker_status()});
}

# ten databases; evbus only in the last one
for my $i (1 .. 10)
{
	$node->safe_psql('postgres', sprintf('CREATE DATABASE d%02d', $i));
}
$node->safe_psql('d10', 'CREATE EXTENSION evbus');
$node->safe_psql('d10', q{SELECT evbus.publish('Late', '{"n": 1}')});
$node->restart;

ok(wait_for_sql($node, 'd10', 'SELECT count(*) FROM evbus.outbox', '0', 30),
	'after a restart, the outbox of the last database drains');
ok(both_workers('d10'), 'it has both workers');
is(status('d10'), 'consumer:running,publisher:running', 'evbus.worker_status(): both running');
is($node->safe_psql('postgres',
		q{SELECT count(*) FROM pg_stat_activity WHERE backend_type IN ('evbus publisher', 'evbus consumer') AND datname <> 'd10'}),
	'0', 'no worker stays in a database without evbus');

# --- the slots are taken by evbus databases -----------------------------------
$node->safe_psql('d01', 'CREATE EXTENSION evbus');
ok(both_workers('d01'), 'd01 has its workers: the slots are full');
my $log_offset = -s $node->logfile;
my ($ret, $out, $err) = $node->psql('d02', 'CREATE EXTENSION evbus');
is($ret, 0, 'CREATE EXTENSION in a third database succeeds');
like($err, qr/no free background worker slot/, 'with a warning that its worker cannot start');
$node->safe_psql('d02', q{SELECT evbus.publish('Starved', '{"n": 1}')});
sleep 8;	# several retries of the launcher
is($node->safe_psql('d02', 'SELECT count(*) FROM evbus.outbox'), '1', 'd02 has no worker: its event waits');
is($node->safe_psql('d02', q{SELECT state FROM evbus.worker_status() WHERE worker = 'publisher'}),
	'no free slot', 'evbus.worker_status() says why');
like($node->safe_psql('d02', q{SELECT detail FROM evbus.worker_status() WHERE worker = 'publisher'}),
	qr/max_worker_processes/, 'and what to raise');
my $log = substr(slurp_file($node->logfile), $log_offset);
my $warnings = () = $log =~ /could not start the evbus \w+ for database "d02"/g;
is($warnings, 1, 'the server log says it once, not at every retry');

# a slot frees up: the starved database gets its workers
$node->safe_psql('d01', 'DROP EXTENSION evbus');
ok(wait_for_sql($node, 'd02', 'SELECT count(*) FROM evbus.outbox', '0', 20),
	'once slots are free, the outbox of the starved database drains');
ok(both_workers('d02'), 'and it has both workers');
is(status('d02'), 'consumer:running,publisher:running', 'evbus.worker_status(): both running');
$log = substr(slurp_file($node->logfile), $log_offset);
like($log, qr/evbus: publisher started for database "d02"/, 'the log says it started');

# --- at startup, with every slot taken before the launcher reaches d10 -----
# d01 and d02 have evbus again and come first in pg_database: after a
# restart their workers take every slot, and the launcher cannot even
# look at d03 .. d10.  (An event staged in d10 before the restart would
# be published by its running workers, which record it before they exit:
# 235_publisher_stop.pl.)
$node->safe_psql('d01', 'CREATE EXTENSION evbus');
$node->restart;
ok( wait_for_sql($node, 'postgres',
		q{SELECT count(*) FROM pg_stat_activity WHERE backend_type IN ('evbus publisher', 'evbus consumer')}, '4', 30),
	'after a restart, d01 and d02 have their workers');
ok( wait_for_sql($node, 'd10',
		q{SELECT state FROM evbus.worker_status() WHERE worker = 'publisher'}, 'no free slot', 10),
	'd10 reports that its worker finds no free slot');
$node->safe_psql('d10', q{SELECT evbus.publish('Late', '{"n": 2}')});
sleep 3;	# several retries of the launcher
is($node->safe_psql('d10', 'SELECT count(*) FROM evbus.outbox'), '1', 'its event waits');
$node->safe_psql('d01', 'DROP EXTENSION evbus');
ok(wait_for_sql($node, 'd10', 'SELECT count(*) FROM evbus.outbox', '0', 20),
	'once slots are free, it drains');
ok(both_workers('d10'), 'with both workers');

$node->stop;
done_testing();

# 328_database_commands.pl - the commands that need a database without
# connections work on a database with evbus, whose workers are connected
# to it: ALTER DATABASE ... RENAME TO (also in a transaction block rolled
# back), ALTER DATABASE ... SET TABLESPACE and CREATE DATABASE ... TEMPLATE
# (earlier they failed: "database is being accessed by other users").  The
# workers are stopped for the command and start again after it; events
# staged before and after are handled.  A role that may not run the
# command (not the owner) gets PostgreSQL's error and leaves the workers
# alone (same pids).  The copy does not start workers of its own (test
# 326_database_copy.pl).
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;

kafka_bootstrap();
my $prefix = "t328.$$.";
my $node = new_node(
	'commands',
	kafka => 1,
	conf => [
		"evbus.topic_prefix = '$prefix'", "evbus.idle_timeout = 0",
		"evbus.group_name = 't328_$$'"
	]);
new_shop($node, 'Moved');
$node->safe_psql('postgres', 'CREATE ROLE mallory LOGIN CREATEDB');

# handled($db, $n): an event n = $n published in $db is handled there
sub handled
{
	my ($db, $n) = @_;
	$node->safe_psql($db, qq{SELECT evbus.publish('Moved', '{"n": $n}', 'k')});
	return wait_for_sql($node, $db, qq{SELECT count(*) = 1 FROM received WHERE payload = '{"n": $n}'});
}

# workers($db): "publisher pid/consumer pid" once both run, after a wait
sub workers
{
	my ($db) = @_;
	wait_for_sql($node, $db,
		'SELECT evbus.publisher_pid() IS NOT NULL AND evbus.consumer_pid() IS NOT NULL');
	return $node->safe_psql($db, q{SELECT evbus.publisher_pid() || '/' || evbus.consumer_pid()});
}

ok(handled('shop', 1), 'an event is handled');
my $pids = workers('shop');

# a role that does not own the database: refused, the workers left alone
my ($ret, $out, $err) = $node->psql('postgres', 'SET ROLE mallory; ALTER DATABASE shop RENAME TO stolen');
like($err, qr/must be owner of database shop/, "another role's rename is refused");
($ret, $out, $err) = $node->psql('postgres', 'SET ROLE mallory; CREATE DATABASE stolen TEMPLATE shop');
like($err, qr/permission denied to copy database "shop"/, "and its copy");
is(workers('shop'), $pids, 'the workers were left alone');

# a rename rolled back
($ret, $out, $err) =
  $node->psql('postgres', 'BEGIN; ALTER DATABASE shop RENAME TO shop_tmp; ROLLBACK;');
is($ret, 0, 'a rename in a transaction block runs') or diag $err;
ok(handled('shop', 2), 'rolled back: the workers are back and handle events');

# a rename
($ret, $out, $err) = $node->psql('postgres', 'ALTER DATABASE shop RENAME TO shop2');
is($ret, 0, 'ALTER DATABASE ... RENAME TO works') or diag $err;
ok(handled('shop2', 3), 'the renamed database handles events');
isnt(workers('shop2'), $pids, 'with workers started again');

# a move to another tablespace
my $location = PostgreSQL::Test::Utils::tempdir();
$node->safe_psql('postgres', "CREATE TABLESPACE elsewhere LOCATION '$location'");
$node->safe_psql('shop2', q{SELECT evbus.publish('Moved', '{"n": 4}', 'k')});
($ret, $out, $err) = $node->psql('postgres', 'ALTER DATABASE shop2 SET TABLESPACE elsewhere');
is($ret, 0, 'ALTER DATABASE ... SET TABLESPACE works') or diag $err;
ok(wait_for_sql($node, 'shop2', q{SELECT count(*) = 1 FROM received WHERE payload = '{"n": 4}'}),
	'the event staged before the move is handled');
ok(handled('shop2', 5), 'and one staged after');

# a copy
($ret, $out, $err) = $node->psql('postgres', 'CREATE DATABASE shop_copy TEMPLATE shop2');
is($ret, 0, 'CREATE DATABASE ... TEMPLATE works') or diag $err;
ok(handled('shop2', 6), 'the original handles events');
ok($node->wait_for_log(qr/evbus: database "shop_copy" is a copy of database "shop2"/),
	'the copy starts no workers of its own');
is($node->safe_psql('shop_copy', q{SELECT count(*) FROM received WHERE payload = '{"n": 6}'}),
	'0', 'nor handles anything');
$node->stop;
done_testing();

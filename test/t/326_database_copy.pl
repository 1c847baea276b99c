# 326_database_copy.pl - a copy of a database with evbus, made on the same
# server with CREATE DATABASE ... TEMPLATE (or a dump of it restored into
# another database there), holds the original's outbox,
# inbox and subscriptions with their consumer groups.  Its workers do not
# start (a WARNING names both databases, evbus.worker_status() says why),
# so it neither publishes what it holds nor takes partitions from the
# original's consumer group: the original handles every new message, also
# after a server restart (an earlier version handled none of them there:
# the copy's consumer took them all).  evbus.adopt_copy(), not granted to
# PUBLIC and refused in a database that is no copy, makes the copy one of
# its own: its workers start.  A copy whose original was dropped (a copy
# made to rename) takes the rows over at its first start, with a LOG line,
# and so does a database made from a template (a new tenant's); a second
# copy of the dropped original is then a copy of the first.
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep);

kafka_bootstrap();
my $prefix = "t326.$$.";
my $topic = "${prefix}Copied";
kafka_admin('topics', '--create', '--topic', $topic, '--partitions', '3');
my $node = new_node(
	'copy',
	kafka => 1,
	conf => [
		"evbus.topic_prefix = '$prefix'", "evbus.idle_timeout = '2s'",
		"evbus.group_name = 't326_$$'"
	]);
new_shop($node, 'Copied');

# publish($db, $from, $to): events n = $from .. $to, each of its own key
sub publish
{
	my ($db, $from, $to) = @_;
	$node->safe_psql($db,
		join('', map { "SELECT evbus.publish('Copied', '{\"n\": $_}', 'k$_');" } $from .. $to));
}

# copy_when_idle($copy, $of): CREATE DATABASE $copy TEMPLATE $of, once no
# session is connected to $of (its workers went idle)
sub copy_when_idle
{
	my ($copy, $of) = @_;
	for (1 .. 60)
	{
		my ($ret) = $node->psql('postgres', "CREATE DATABASE $copy TEMPLATE $of");
		return 1 if $ret == 0;
		sleep 0.5;
	}
	return 0;
}

# adopt_in_own_group($db): the copy $db subscribes in a group named after
# itself, then evbus.adopt_copy() makes it a database of its own
sub adopt_in_own_group
{
	my ($db) = @_;
	$node->safe_psql(
		$db, qq{
SET ROLE evbus_app;
SELECT evbus.unsubscribe('Copied', 'record_received(jsonb)');
SELECT evbus.subscribe('Copied', 'record_received(jsonb)', '$db');
RESET ROLE;
SELECT evbus.adopt_copy();
});
	return;
}

sub received
{
	my ($db) = @_;
	return $node->safe_psql($db, 'SELECT count(*) FROM received');
}

publish('shop', 0, 0);
ok(wait_for_sql($node, 'shop', 'SELECT count(*) = 1 FROM received'), 'the original handles an event');
ok(copy_when_idle('shop_copy', 'shop'), 'CREATE DATABASE shop_copy TEMPLATE shop, once shop is idle');

ok( $node->wait_for_log(
		qr/WARNING:  evbus: database "shop_copy" is a copy of database "shop": its evbus workers do not start/
	),
	'the launcher finds the copy: a WARNING names it and its original');
is( $node->safe_psql(
		'shop_copy', q{SELECT string_agg(worker || ':' || state || ':' || (pid IS NULL), ',' ORDER BY worker)
		  FROM evbus.worker_status()}),
	'consumer:stopped:true,publisher:stopped:true',
	'evbus.worker_status() in the copy: both stopped');
like($node->safe_psql('shop_copy', q{SELECT detail FROM evbus.worker_status() WHERE worker = 'publisher'}),
	qr/is a copy of another database.*evbus\.adopt_copy\(\)/, 'and says why');

publish('shop_copy', 100, 100);
publish('shop', 1, 30);
ok(wait_for_sql($node, 'shop', 'SELECT count(*) = 31 FROM received'),
	'the original handles every new message');
sleep 2;
is(received('shop_copy'), '1', 'the copy handles none');
is($node->safe_psql('shop_copy', 'SELECT count(*) FROM evbus.outbox'),
	'1', 'and publishes nothing: its event waits in its outbox');

# a server start looks again
my $log_offset = -s $node->logfile;
$node->restart;
publish('shop', 31, 60);
ok(wait_for_sql($node, 'shop', 'SELECT count(*) = 61 FROM received'),
	'after a restart the original still handles every new message');
is(received('shop_copy'), '1', 'the copy none');
ok($node->wait_for_log(qr/is a copy of database "shop"/, $log_offset),
	'the restarted server finds the copy again');
my $warnings = () = slurp_file($node->logfile) =~ /is a copy of database "shop"/g;
is($warnings, 2, 'one WARNING per server start');

# evbus.adopt_copy(): refused to PUBLIC and outside a copy
$node->safe_psql('postgres', 'CREATE ROLE stranger LOGIN');
is(sqlstate_of($node, 'shop_copy', 'SET ROLE stranger; SELECT evbus.adopt_copy()'),
	'42501', 'evbus.adopt_copy() is not granted to PUBLIC');
is(sqlstate_of($node, 'shop', 'SELECT evbus.adopt_copy()'),
	'55000', 'nor does it take a database that is no copy');

# the copy adopted, with a group of its own
my $id_sql = 'SELECT string_agg(database_id::text, \',\') FROM evbus.database_identity';
my $shop_id = $node->safe_psql('shop', $id_sql);
is($node->safe_psql('shop_copy', $id_sql), $shop_id, "the copy carries the original's database id");
adopt_in_own_group('shop_copy');
my $copy_id = $node->safe_psql('shop_copy', $id_sql);
like($copy_id, qr/^[0-9a-f-]{36}$/, 'adopted: the copy has one database id');
isnt($copy_id, $shop_id, 'a new one: its consumers are not the original\'s copies in Kafka');
ok(wait_for_sql($node, 'shop_copy', 'SELECT count(*) = 0 FROM evbus.outbox'),
	'adopted: the copy publishes its event');
ok(wait_for_sql($node, 'shop', q{SELECT count(*) = 1 FROM received WHERE payload = '{"n": 100}'}),
	'which the original handles');
ok( wait_for_sql(
		$node, 'shop_copy', q{SELECT count(*) = 1 FROM received WHERE payload = '{"n": 100}'}),
	'and the copy, in its own group');
publish('shop', 61, 70);
ok(wait_for_sql($node, 'shop', 'SELECT count(*) = 72 FROM received'),
	'the original handles every message');
ok(wait_for_sql($node, 'shop_copy', q{SELECT count(*) = 10 FROM received WHERE (payload->>'n')::int BETWEEN 61 AND 70}),
	'the adopted copy too');

# a dump of shop restored into another database of the server: a copy too
my $dump = "${PostgreSQL::Test::Utils::tmp_check}/326_shop.dump";
$node->command_ok([ 'pg_dump', '-Fc', '-f', $dump, '-d', $node->connstr('shop') ], 'pg_dump of shop');
$node->safe_psql('postgres', 'CREATE DATABASE shop_restored');
$node->command_ok([ 'pg_restore', '-d', $node->connstr('shop_restored'), $dump ],
	'restored into shop_restored');
ok( $node->wait_for_log(
		qr/WARNING:  evbus: database "shop_restored" is a copy of database "shop": its evbus workers do not start/
	),
	'a dump restored beside its original is a copy too');
publish('shop', 71, 71);
ok(wait_for_sql($node, 'shop', q{SELECT count(*) = 1 FROM received WHERE payload = '{"n": 71}'}),
	'the original handles the next message');
sleep 2;
is($node->safe_psql('shop_restored', q{SELECT count(*) FROM received WHERE payload = '{"n": 71}'}),
	'0', 'the restored copy does not');

# a database made from a template with evbus (a new tenant's) is one of
# its own: templates run no workers
kafka_admin('topics', '--create', '--topic', "${prefix}Tenant", '--partitions', '1');
new_shop($node, 'Tenant', 'tenant_template', 'tenant_group');
ok( wait_for_sql(
		$node, 'tenant_template', 'SELECT count(*) = 1 FROM evbus.database_identity'),
	'the template entered itself, as its workers started');
$node->safe_psql('postgres', 'ALTER DATABASE tenant_template IS_TEMPLATE true');
# its workers may still run: the copy stops them, and the launcher starts
# no worker in a template again
ok(copy_when_idle('tenant_1', 'tenant_template'), 'a tenant made from the template');
$node->safe_psql('tenant_1', q{SELECT evbus.publish('Tenant', '{"n": 1}', 'k')});
ok(wait_for_sql($node, 'tenant_1', 'SELECT count(*) = 0 FROM evbus.outbox'),
	'the tenant publishes');
ok($node->log_contains(qr/LOG:  evbus: database "tenant_1" takes over evbus's rows of another database/),
	'having taken the rows over');
ok(!$node->log_contains(qr/"tenant_1" is a copy/), 'without a WARNING');
my $template_id = $node->safe_psql('tenant_template', $id_sql);
my $tenant_id = $node->safe_psql('tenant_1', $id_sql);
like($tenant_id, qr/^[0-9a-f-]{36}$/, 'the tenant has one database id');
isnt($tenant_id, $template_id,
	"not the template's: tenants of one template are no copies of each other in Kafka");

# a copy whose original is dropped takes the rows over
ok(copy_when_idle('shop_renamed', 'shop'), 'another copy of shop');
$node->safe_psql('postgres', 'DROP DATABASE shop');
publish('shop_renamed', 72, 72);
ok(wait_for_sql($node, 'shop_renamed', q{SELECT count(*) = 1 FROM received WHERE payload = '{"n": 72}'}),
	'its original dropped, the copy publishes and handles');
ok($node->log_contains(qr/LOG:  evbus: database "shop_renamed" takes over evbus's rows of another database/),
	'and says that it took the rows over');

# shop_restored, the restored dump, is a second copy of the dropped shop:
# at the next server start it is a copy of shop_renamed, which took shop's
# rows over first.  An earlier version let it take them over too: two
# databases acting as shop, each handling the messages of the partitions
# its consumer took.
$log_offset = -s $node->logfile;
$node->restart;
ok( $node->wait_for_log(
		qr/WARNING:  evbus: database "shop_restored" is a copy of database "shop_renamed": its evbus workers do not start/,
		$log_offset),
	'after a restart, a second copy of the dropped shop is a copy of the first, which took its rows over');
publish('shop_renamed', 73, 90);
ok( wait_for_sql(
		$node, 'shop_renamed', q{SELECT count(*) = 18 FROM received WHERE (payload->>'n')::int BETWEEN 73 AND 90}),
	'shop_renamed handles every new message');
sleep 2;
is($node->safe_psql('shop_restored', q{SELECT count(*) FROM received WHERE (payload->>'n')::int BETWEEN 73 AND 90}),
	'0', 'the second copy none');
ok(!$node->log_contains(qr/"shop_restored" takes over/), 'and took nothing over');
adopt_in_own_group('shop_restored');
publish('shop_renamed', 91, 91);
ok( wait_for_sql(
		$node, 'shop_restored', q{SELECT count(*) = 1 FROM received WHERE payload = '{"n": 91}'}),
	'adopted, the second copy handles in a group of its own');
ok(wait_for_sql($node, 'shop_renamed', q{SELECT count(*) = 1 FROM received WHERE payload = '{"n": 91}'}),
	'and shop_renamed in its group');
$node->stop;
done_testing();

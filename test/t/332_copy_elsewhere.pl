# 332_copy_elsewhere.pl - a copy of a database started on another server
# with the same Kafka joins the original's consumer group and takes some
# of its partitions: both servers say so in a WARNING that names the
# other's member, counted in evbus_consume_copy_warnings_total, and the
# original says when the copy has left.  A
# restart of the original after an immediate shutdown, whose previous
# consumer stays in the group until its session times out, is no copy.
#
# The copy is a physical backup of the original started as a second
# cluster (same system identifier and database OID), as a test
# environment made from production's backup would be; then a dump of the
# original restored on a third server (another system identifier and
# OID, the same database id in evbus.database_identity).  On the old code
# neither log says anything while a copy handles messages of the
# original's group.
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);

kafka_bootstrap();
my $prefix = "t332.$$.";
my $group = "t332_$$";
my $copy_warning =
  qr/WARNING:  evbus: consumer group "$group" has a member from a copy of this database\n.*DETAIL:  Member "[^"]+" \(client "evbus-\d+-consumer-[0-9a-f]{32}-[0-9a-f]{8}", host "[^"]*"\)/;
my @conf = (
	"evbus.topic_prefix = '$prefix'", "evbus.group_name = '$group'",
	# describe the group every 2 s rather than every minute
	"evbus.copy_check_interval = '2s'");

my $original = new_node(
	'original',
	kafka => 1,
	init => { allows_streaming => 1 },
	conf => \@conf);
$original->safe_psql('postgres', 'CREATE EXTENSION evbus');
kafka_admin('topics', '--create', '--topic', "${prefix}Order", '--partitions', '4');
$original->safe_psql(
	'postgres', as_subscriber($original) . q{
CREATE TABLE effects (n int PRIMARY KEY);
CREATE PROCEDURE on_order(payload jsonb) LANGUAGE sql
	AS $$ INSERT INTO public.effects VALUES ((payload->>'n')::int) $$;
SELECT evbus.subscribe('Order', 'on_order(jsonb)');
});

# publish(node, from, to): events n = from .. to, one key each
sub publish
{
	my ($node, $from, $to) = @_;
	$node->safe_psql('postgres',
		"SELECT count(evbus.publish('Order', jsonb_build_object('n', i), 'k' || i)) FROM generate_series($from, $to) i"
	);
}

publish($original, 1, 20);
ok(wait_for_sql($original, 'postgres', 'SELECT count(*) FROM effects', '20', 60),
	'the original handles its events');

# --- a copy started elsewhere: both servers warn ---------------------------
$original->backup('b');
my $copy = PostgreSQL::Test::Cluster->new('copy');
$copy->init_from_backup($original, 'b');
$copy->start;
is($copy->safe_psql('postgres', 'SELECT count(*) FROM effects'), '20', 'the copy holds the effects');

my $original_offset = -s $original->logfile;
ok(wait_for_sql($copy, 'postgres',
		q{SELECT count(*) > 0 FROM pg_stat_activity WHERE backend_type = 'evbus consumer'}, 't', 60),
	'the copy runs a consumer');
# the copy takes partitions: messages of the original's group are handled there
publish($original, 21, 100);
ok( wait_for_sql(
		$original, 'postgres',
		q{SELECT count(*) FROM evbus.outbox}, '0', 60),
	'the original publishes the new events');
ok($original->wait_for_log($copy_warning, $original_offset),
	"the original's log names the copy's member");
ok($copy->wait_for_log($copy_warning, 0), "the copy's log names the original's member");
my $warnings = q{SELECT sum(value) FROM evbus.metrics() WHERE metric = 'evbus_consume_copy_warnings_total'};
cmp_ok($original->safe_psql('postgres', $warnings), '>=', 1,
	'the original counts the WARNING in evbus_consume_copy_warnings_total');
cmp_ok($copy->safe_psql('postgres', $warnings), '>=', 1, 'so does the copy');
my $split = wait_for_sql($copy, 'postgres', 'SELECT count(*) > 20 FROM effects', 't', 30);
ok($split, 'the copy handled messages of the group (what the WARNING is about)');

# --- the copy stops: the original says so ------------------------------------
$original_offset = -s $original->logfile;
$copy->stop('fast');
ok( $original->wait_for_log(
		qr/LOG:  evbus: the member "[^"]+" of a copy of this database left consumer group "$group"/,
		$original_offset),
	'the original logs that the copy left');
ok(wait_for_sql($original, 'postgres', 'SELECT count(*) FROM effects', '100', 90),
	'the original handles the rest once the copy is gone')
  or diag($original->safe_psql('postgres', 'SELECT count(*) FROM effects'));

# --- a restart after an immediate shutdown is no copy --------------------------
# The previous run's consumer stays in the group until its session times
# out (10 s); the new one sees it there, but not for long enough.
$original->stop('immediate');
$original_offset = -s $original->logfile;
$original->start;
publish($original, 101, 110);
ok(wait_for_sql($original, 'postgres', 'SELECT count(*) FROM effects', '110', 90),
	'the restarted original handles new events');
# The previous run's member has left (the rebalance that let the new
# consumer in evicted it at its session timeout): it was seen for less
# than the session timeout and margin, and is not seen again in the
# descriptions of the next seconds.
sleep 5;
unlike(substr(slurp_file($original->logfile), $original_offset),
	qr/has a member from a copy of this database/,
	"no WARNING for the previous run's member");

# --- a dump restored on another server: found too ------------------------------
my $dump = "${PostgreSQL::Test::Utils::tmp_check}/332_original.dump";
$original->command_ok([ 'pg_dump', '-Fc', '-f', $dump, '-d', $original->connstr('postgres') ],
	'pg_dump of the original');
my $restored = new_node('restored', kafka => 1, conf => \@conf);
$restored->safe_psql('postgres', 'CREATE ROLE evbus_app');
$restored->safe_psql('postgres', 'CREATE DATABASE shop');
$original_offset = -s $original->logfile;
$restored->command_ok([ 'pg_restore', '-d', $restored->connstr('shop'), $dump ],
	'restored on a third server');
my $identity = 'SELECT system_identifier || \' \' || database_id FROM evbus.database_identity';
# the dumped row alone until the workers start after the restore
ok( wait_for_sql(
		$restored, 'shop',
		q{SELECT count(*) FILTER (WHERE system_identifier = (SELECT system_identifier FROM pg_control_system()))
		   || '/' || count(*) FROM evbus.database_identity}, '1/1', 30),
	'the restored database took the rows over');
my ($original_system, $original_id) = split / /, $original->safe_psql('postgres', $identity);
my ($restored_system, $restored_id) = split / /, $restored->safe_psql('shop', $identity);
isnt($restored_system, $original_system, 'under its own system identifier');
is($restored_id, $original_id, "with the original's database id");
publish($original, 111, 150);
ok($original->wait_for_log($copy_warning, $original_offset),
	"the original's log names the restored copy's member");
ok($restored->wait_for_log($copy_warning, 0), "the restored copy's log names the original's member");
$restored->stop('fast');

done_testing();

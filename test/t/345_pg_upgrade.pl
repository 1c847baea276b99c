# 345_pg_upgrade.pl - pg_upgrade of a server with evbus (15 to 15, into a
# fresh data directory, copying the files) keeps converters,
# subscriptions, offsets, the inbox and the events still to publish: evbus
# stores no reg* column (pg_upgrade refuses those), and nothing in its
# tables depends on oids.
#
# The old server has evbus in two databases, each with a converter, a
# handler subscribed by an application role, a handled history (events
# published and handled), and events staged while publishing was paused
# (evbus.brokers = '').  pg_upgrade --check, then pg_upgrade, as
# PostgreSQL's own src/bin/pg_upgrade/t/002_pg_upgrade.pl drives it (the
# same installation's binaries for -b and -B), with evbus preloaded in
# both servers.  No evbus worker runs in the servers pg_upgrade starts
# (binary upgrade mode), which would publish, handle and write evbus's
# tables in the middle of the upgrade.  The new server, started with the
# broker set, publishes the pending events once (no event published
# before is published again: cap-msg-id unique), handles nothing twice,
# handles new events, and runs the handlers as the role that subscribed
# them, under the database id of before (by which a copy of it is found
# in its consumer groups).
use strict;
use warnings;

use Cwd;
use EvbusTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);

kafka_bootstrap();
my $prefix = "t345.$$.";
my @dbs = qw(alpha beta);
my ($history, $pending, $later) = (20, 30, 10);

# topic of database db's integration event
sub topic_of { return "${prefix}Upgraded_$_[0]"; }

my $old = new_node(
	'old',
	kafka => 1,
	conf => ["evbus.topic_prefix = '$prefix'"]);
for my $db (@dbs)
{
	$old->safe_psql('postgres', "CREATE DATABASE $db");
	$old->safe_psql($db, 'CREATE EXTENSION evbus');
	$old->safe_psql(
		$db, qq{
CREATE FUNCTION upgraded_converter(payload jsonb) RETURNS jsonb LANGUAGE sql
	AS \$\$ SELECT jsonb_build_object('n', (payload->>'n')::int, 'db', '$db') \$\$;
SELECT evbus.register_converter('UpgradedDomain', 'Upgraded_$db',
                                'upgraded_converter(jsonb)');
});
	$old->safe_psql(
		$db, as_subscriber($old, $db) . qq{
CREATE TABLE received (message_id uuid, n int, db text, run_as name);
CREATE PROCEDURE record_upgraded(payload jsonb, headers jsonb) LANGUAGE sql
	AS \$\$ INSERT INTO public.received
	      VALUES ((headers->>'cap-msg-id')::uuid, (payload->>'n')::int,
	              payload->>'db', current_user) \$\$;
SELECT evbus.subscribe('Upgraded_$db', 'record_upgraded(jsonb, jsonb)');
});
}

# raise(node, db, from, to): events n = from..to, one transaction
sub raise_events
{
	my ($node, $db, $from, $to) = @_;
	$node->safe_psql($db,
		qq{SELECT evbus.raise('UpgradedDomain', pg_catalog.jsonb_build_object('n', i), i::text)
		   FROM pg_catalog.generate_series($from, $to) i});
}

# --- a handled history -------------------------------------------------------------
for my $db (@dbs)
{
	raise_events($old, $db, 1, $history);
	ok(wait_for_sql($old, $db, 'SELECT count(*) FROM received', $history, 90),
		"$db: $history events published and handled before the upgrade");
}

# --- events pending, publishing paused ---------------------------------------------
$old->append_conf('postgresql.conf', "evbus.brokers = ''\n");
$old->reload;
ok(wait_for_sql($old, 'postgres', q{SELECT pg_catalog.current_setting('evbus.brokers') = ''}),
	'publishing paused');
sleep 2;    # the workers take the reload
raise_events($old, $_, $history + 1, $history + $pending) for @dbs;
sleep 3;
for my $db (@dbs)
{
	is($old->safe_psql($db, 'SELECT count(*) FROM evbus.outbox'), $pending,
		"$db: $pending events wait in the outbox");
}
my %database_id = map { $_ => $old->safe_psql($_, 'SELECT database_id FROM evbus.database_identity') } @dbs;
$old->stop;

# --- pg_upgrade ----------------------------------------------------------------------
my $new = new_node('new', start => 0);
my $bindir = $old->config_data('--bindir');
my $cwd = getcwd();
chdir ${PostgreSQL::Test::Utils::tmp_check};
my @upgrade = (
	# copying the files is PostgreSQL 15's default mode (--copy is 16's)
	'pg_upgrade', '--no-sync', '--retain',
	'-d', $old->data_dir, '-D', $new->data_dir,
	'-b', $bindir, '-B', $bindir,
	'-s', $new->host, '-p', $old->port, '-P', $new->port);
my $checked = run_log([ @upgrade, '--check' ]);
ok($checked, 'pg_upgrade --check accepts the evbus cluster');
my $upgraded = $checked && run_log(\@upgrade);
ok($upgraded, 'pg_upgrade');
chdir $cwd;
unless ($upgraded)
{
	# pg_upgrade keeps its logs in the new data directory when it fails
	diag "$_:\n" . slurp_file($_)
	  for glob($new->data_dir . '/pg_upgrade_output.d/*/log/*.log');
	BAIL_OUT('pg_upgrade failed');
}

# the servers pg_upgrade ran, old and new, in binary upgrade mode (its
# logs are kept: --retain): no evbus worker ran there, which would
# publish, handle and write evbus's tables in the middle of the upgrade,
# and nothing failed
my $upgrade_logs = '';
$upgrade_logs .= slurp_file($_)
  for glob($new->data_dir . '/pg_upgrade_output.d/*/log/pg_upgrade_server.log');
ok($upgrade_logs =~ /-b /, "pg_upgrade's server logs are there");
unlike($upgrade_logs, qr/evbus: (publisher|consumer) |background worker "evbus/,
	'no evbus worker runs in the servers pg_upgrade starts');
unlike($upgrade_logs, qr/\b(ERROR|FATAL|PANIC):|terminated by signal/,
	'no error in the servers pg_upgrade ran');

# --- the new server, with the broker -------------------------------------------------
$new->append_conf('postgresql.conf',
	"evbus.topic_prefix = '$prefix'\nevbus.brokers = '" . kafka_bootstrap() . "'\n");
$new->start;
for my $db (@dbs)
{
	is($new->safe_psql($db, q{SELECT extversion FROM pg_extension WHERE extname = 'evbus'}),
		'0.2', "$db: evbus is there");
	is($new->safe_psql($db, q{SELECT count(*) FROM evbus.converters}), '1',
		"$db: the converter is there");
	is($new->safe_psql($db, q{SELECT count(*) FROM evbus.subscriptions}), '1',
		"$db: the subscription is there");
	ok(wait_for_sql($new, $db, 'SELECT count(*) = 0 FROM evbus.outbox', 't', 90),
		"$db: the pending events are published");
	ok(wait_for_sql($new, $db, 'SELECT count(*) FROM received', $history + $pending, 90),
		"$db: and handled");
	is($new->safe_psql($db, 'SELECT database_id FROM evbus.database_identity'),
		$database_id{$db}, "$db: the database id is the old server's (its Kafka client ids too)");
}

# new events flow
raise_events($new, $_, $history + $pending + 1, $history + $pending + $later) for @dbs;
my $total = $history + $pending + $later;
for my $db (@dbs)
{
	ok(wait_for_sql($new, $db, 'SELECT count(*) FROM received', $total, 90),
		"$db: new events are published and handled");
	my @msgs = kcat_consume(topic_of($db), $total, 60);
	is(scalar @msgs, $total, "$db: $total messages on its topic");
	my %ids = map { ($_->{headers}{'cap-msg-id'} // '') => 1 } @msgs;
	is(scalar keys %ids, $total, "$db: each published once (cap-msg-id unique)");
	is(scalar(kcat_consume(topic_of($db), $total + 1, 5)), $total, "$db: and nothing more");
	is( $new->safe_psql(
			$db, q{SELECT count(*) || '/' || count(DISTINCT message_id) || '/'
			       || count(DISTINCT n) || '/' || string_agg(DISTINCT db, ',') || '/'
			       || string_agg(DISTINCT run_as, ',') FROM received}),
		"$total/$total/$total/$db/evbus_app",
		"$db: each event handled once, as the role that subscribed");
}
sleep 2;
for my $db (@dbs)
{
	is($new->safe_psql($db, 'SELECT count(*) FROM received'), $total,
		"$db: nothing handled twice later");
}
unlike(slurp_file($new->logfile), qr/\b(ERROR|FATAL|PANIC):|terminated by signal/,
	'the new server logs no error');

$new->stop;
done_testing();

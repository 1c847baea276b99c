# 238_idle_databases.pl - an idle database holds no evbus process.
#
# Several databases of one server publish to one topic and each
# subscribes to it (its own group: its name).  Once nothing happened for
# evbus.idle_timeout, their publishers exit; worker_status() says "idle".
# An event raised in any of them afterwards is published at its COMMIT
# (which wakes the database) and handled exactly once by every database.
# A database whose event has a deliver_at to come goes idle all the same
# and publishes it when it is due; COMMIT PREPARED wakes its database.
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);

kafka_bootstrap();
my $prefix = "t238.$$.";
my $ndb = 5;
my @dbs = map { sprintf('db%02d', $_) } 1 .. $ndb;
my $node = new_node(
	'idle',
	kafka => 1,
	conf => [
		"evbus.topic_prefix = '$prefix'",
		"evbus.idle_timeout = '2s'",
		'max_prepared_transactions = 5',
		'max_worker_processes = 24'
	]);

for my $db (@dbs)
{
	$node->safe_psql('postgres', "CREATE DATABASE $db");
	$node->safe_psql($db, 'CREATE EXTENSION evbus');
	$node->safe_psql(
		$db, as_subscriber($node, $db) . q{
CREATE TABLE received (message_id uuid, payload jsonb);
CREATE PROCEDURE record_received(payload jsonb, headers jsonb) LANGUAGE sql
	AS $$ INSERT INTO public.received VALUES ((headers->>'cap-msg-id')::uuid, payload) $$;
SELECT evbus.subscribe('Ping', 'record_received(jsonb, jsonb)');
});
}

# every database has received n events, each once
sub all_received
{
	my ($n, $timeout) = @_;
	for my $db (@dbs)
	{
		return 0
		  unless wait_for_sql($node, $db,
			'SELECT count(*) || \'/\' || count(DISTINCT message_id) FROM received',
			"$n/$n", $timeout // 60);
	}
	return 1;
}

sub workers
{
	my ($type) = @_;
	return $node->safe_psql('postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'evbus $type'");
}

# --- a burst, then idle --------------------------------------------------------
$node->safe_psql($_, qq{SELECT evbus.publish('Ping', '{"from": "$_"}')}) for @dbs;
ok(all_received($ndb), "each of $ndb databases handled every event once");

ok(wait_for_sql($node, 'postgres',
		q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'evbus publisher'},
		'0', 30),
	'after evbus.idle_timeout, no database holds a publisher');
is($node->safe_psql('db03', q{SELECT state FROM evbus.worker_status() WHERE worker = 'publisher'}),
	'idle', 'evbus.worker_status() says "idle"');
like(slurp_file($node->logfile),
	qr/publisher for database "db03" exits: nothing to publish/,
	'the server log says why the publisher exited');

# --- a commit wakes its database ---------------------------------------------
my $t0 = time();
$node->safe_psql('db02', q{SELECT evbus.publish('Ping', '{"from": "db02", "n": 2}')});
ok(wait_for_sql($node, 'db02', 'SELECT count(*) FROM evbus.outbox', '0', 10),
	'an event committed in an idle database is published');
note(sprintf('commit to published outbox: %.3f s', time() - $t0));
ok(all_received($ndb + 1), 'and handled by every database, once');

# --- deliver_at: idle until it is due ---------------------------------------
ok(wait_for_sql($node, 'db04',
		q{SELECT state FROM evbus.worker_status() WHERE worker = 'publisher'}, 'idle', 30),
	'db04 is idle again');
$node->safe_psql('db04',
	q{SELECT evbus.publish('Ping', '{"from": "db04", "late": true}', deliver_at => now() + interval '10 s')});
ok(wait_for_sql($node, 'db04',
		q{SELECT state || ' ' || (detail LIKE '%starts again%at%')::text FROM evbus.worker_status() WHERE worker = 'publisher'},
		'idle true', 20),
	'with an event due in 10 s, db04 goes idle until then');
is($node->safe_psql('db01', q{SELECT count(*) FROM received WHERE payload ? 'late'}), '0',
	'the event is not published before it is due');
ok(all_received($ndb + 2, 40), 'when it is due, db04 wakes and publishes it');

# --- COMMIT PREPARED wakes its database ----------------------------------------
ok(wait_for_sql($node, 'db05',
		q{SELECT state FROM evbus.worker_status() WHERE worker = 'publisher'}, 'idle', 30),
	'db05 is idle');
$node->safe_psql('db05', q{
BEGIN;
SELECT evbus.publish('Ping', '{"from": "db05", "prepared": true}');
PREPARE TRANSACTION 'p238';
});
sleep 3;	# over evbus.idle_timeout
$node->safe_psql('db05', q{COMMIT PREPARED 'p238'});
ok(wait_for_sql($node, 'db05', 'SELECT count(*) FROM evbus.outbox', '0', 5),
	'the event of COMMIT PREPARED in an idle database is published at once');
ok(all_received($ndb + 3), 'and handled by every database, once');

done_testing();

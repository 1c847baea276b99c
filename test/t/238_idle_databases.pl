# 238_idle_databases.pl - an idle database holds no evbus process.
#
# Twenty databases of one server, with fewer background worker slots than
# two per database, publish to one topic and each subscribes to it (its
# own group: its name).  Once nothing happened for evbus.idle_timeout,
# their publishers and consumers exit; worker_status() says "idle".  An
# event raised in any of them afterwards is published at its COMMIT
# (which wakes the database) and handled exactly once by every database:
# the launcher watches the idle consumers' partitions and wakes them at
# the first new message.  A database whose event has a deliver_at to
# come, or whose handler has a retry due later, goes idle all the same
# and wakes when it is due; COMMIT PREPARED wakes its database.
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);

kafka_bootstrap();
my $prefix = "t238.$$.";
my $ndb = 20;
my @dbs = map { sprintf('db%02d', $_) } 1 .. $ndb;
my $node = new_node(
	'idle',
	kafka => 1,
	conf => [
		"evbus.topic_prefix = '$prefix'",
		"evbus.idle_timeout = '2s'",
		"evbus.retry_interval = '10s'",
		'max_prepared_transactions = 5',
		'max_worker_processes = 12'
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
ok(all_received($ndb, 120), "each of $ndb databases handled every event once");

ok(wait_for_sql($node, 'postgres',
		q{SELECT count(*) FROM pg_stat_activity WHERE backend_type IN ('evbus publisher', 'evbus consumer')},
		'0', 60),
	'after evbus.idle_timeout, no database holds an evbus process');
is($node->safe_psql('db03',
		q{SELECT string_agg(worker || ':' || state, ',' ORDER BY worker) FROM evbus.worker_status()}),
	'consumer:idle,publisher:idle', 'evbus.worker_status() says "idle"');
is($node->safe_psql('db03',
		q{SELECT string_agg(worker || ':' || value, ',' ORDER BY worker) FROM evbus.metrics() WHERE metric = 'evbus_worker_up' AND database = 'db03'}),
	'consumer:1,publisher:1', 'evbus_worker_up: an idle worker is not down');
is($node->safe_psql('db03', q{SELECT lag FROM evbus.stats WHERE side = 'consume'}),
	'0', 'evbus.stats: the lag of an idle consumer is known, 0');
my $log = slurp_file($node->logfile);
like($log, qr/publisher for database "db03" exits: nothing to publish/,
	'the server log says why the publisher exited');
like($log, qr/consumer for database "db03" exits: nothing to handle/,
	'and why the consumer did');

# --- a commit wakes its database ---------------------------------------------
my $t0 = time();
$node->safe_psql('db02', q{SELECT evbus.publish('Ping', '{"from": "db02", "n": 2}')});
ok(wait_for_sql($node, 'db02', 'SELECT count(*) FROM evbus.outbox', '0', 10),
	'an event committed in an idle database is published');
note(sprintf('commit to published outbox: %.3f s', time() - $t0));
ok(all_received($ndb + 1, 90), 'and handled by every idle database, once');

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
ok(all_received($ndb + 2, 90), 'when it is due, db04 wakes and publishes it');

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
ok(all_received($ndb + 3, 90), 'and handled by every database, once');

# --- a retry due later: the consumer goes idle until then -----------------------
$node->safe_psql(
	'db06', q{
CREATE SEQUENCE flaky_runs;
CREATE TABLE flaky_done (payload jsonb);
GRANT ALL ON flaky_runs, flaky_done TO evbus_app;
SET ROLE evbus_app;
CREATE PROCEDURE flaky(payload jsonb) LANGUAGE plpgsql AS $$
BEGIN
	-- a sequence: the failed attempt's rollback does not undo it
	IF nextval('public.flaky_runs') = 1 THEN
		RAISE EXCEPTION 'first attempt fails';
	END IF;
	INSERT INTO public.flaky_done VALUES (payload);
END $$;
SELECT evbus.subscribe('Flaky', 'flaky(jsonb)');
});
$node->safe_psql('db06', q{SELECT evbus.publish('Flaky', '{"n": 1}')});
ok(wait_for_sql($node, 'db06',
		q{SELECT count(*) FROM evbus.inbox WHERE state = 'pending' AND attempts = 1}, '1', 30),
	'the first attempt failed: a retry is due in about 10 s');
ok(wait_for_sql($node, 'db06',
		q{SELECT state || ' ' || (detail LIKE '%, or at %')::text FROM evbus.worker_status() WHERE worker = 'consumer'},
		'idle true', 20),
	'the consumer goes idle until the retry is due');
is($node->safe_psql('db06', 'SELECT count(*) FROM flaky_done'), '0', 'the retry has not run yet');
ok(wait_for_sql($node, 'db06', 'SELECT count(*) FROM flaky_done', '1', 40),
	'when the retry is due, the consumer wakes and handles the message');


done_testing();

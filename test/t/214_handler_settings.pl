# 214_handler_settings.pl - a handler's settings do not outlive it.
# Handler a_sets (role alice) changes settings for the session with
# set_config(..., false): TimeZone, synchronous_commit, work_mem,
# search_path.  Handler b_reads (role bob) of the same event runs after it
# (handlers of an event run in signature order) and records what it sees.
# For each of two events, both handlers see the settings a handler starts
# from (a new connection's: the server's), never what a_sets left behind;
# a_sets too, at the second event.
# Nor does a handler leave a session-level advisory lock behind: c_locks
# takes one and returns, or fails, without releasing it; another session
# takes the lock right after (one taken by a failing handler was held for
# as long as the consumer ran).
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);

kafka_bootstrap();
my $prefix = "t214.$$.";
my $group = "t214_$$";
my $node = new_node(
	'settings',
	kafka => 1,
	conf => [ "evbus.topic_prefix = '$prefix'", "evbus.group_name = '$group'", "TimeZone = 'UTC'" ]);
$node->safe_psql('postgres', 'CREATE EXTENSION evbus');

sub sql { return $node->safe_psql('postgres', $_[0]); }

sql(q{
CREATE ROLE alice;
CREATE ROLE bob;
GRANT USAGE ON SCHEMA evbus TO alice, bob;
GRANT CREATE ON SCHEMA public TO alice, bob;
GRANT EXECUTE ON FUNCTION evbus.subscribe(text, regprocedure, text, integer) TO alice, bob;
CREATE TABLE seen (id bigint GENERATED ALWAYS AS IDENTITY, handler text, n int, settings text);
GRANT INSERT ON seen TO alice, bob;
CREATE FUNCTION public.settings_now() RETURNS text LANGUAGE sql AS $$
	SELECT pg_catalog.concat_ws(' ', pg_catalog.current_setting('TimeZone'),
		pg_catalog.current_setting('synchronous_commit'), pg_catalog.current_setting('work_mem'),
		pg_catalog.replace(pg_catalog.current_setting('search_path'), ' ', ''))
$$;

SET ROLE alice;
CREATE PROCEDURE a_sets(payload jsonb, headers jsonb) LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO public.seen (handler, n, settings)
	VALUES ('a_sets', (payload->>'n')::int, public.settings_now());
	PERFORM pg_catalog.set_config('TimeZone', 'Pacific/Chatham', false);
	PERFORM pg_catalog.set_config('synchronous_commit', 'off', false);
	PERFORM pg_catalog.set_config('work_mem', '77MB', false);
	PERFORM pg_catalog.set_config('search_path', 'public', false);
END $$;
SELECT evbus.subscribe('Settings', 'public.a_sets(jsonb,jsonb)');
SET ROLE bob;
CREATE PROCEDURE b_reads(payload jsonb, headers jsonb) LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO public.seen (handler, n, settings)
	VALUES ('b_reads', (payload->>'n')::int, public.settings_now());
END $$;
SELECT evbus.subscribe('Settings', 'public.b_reads(jsonb,jsonb)');
});

my $start = 'UTC on ' . sql(q{SELECT current_setting('work_mem') || ' ' || replace(current_setting('search_path'), ' ', '')});
note "a handler starts from: $start";
ok(wait_for_sql($node, 'postgres', q{SELECT evbus.consumer_pid() IS NOT NULL}, 't', 30), 'the consumer runs');
sql(q{SELECT evbus.publish('Settings', '{"n": 1}', 'k')});
ok(wait_for_sql($node, 'postgres', q{SELECT count(*) FROM seen WHERE n = 1}, '2', 60), 'event 1: both handlers ran');
sql(q{SELECT evbus.publish('Settings', '{"n": 2}', 'k')});
ok(wait_for_sql($node, 'postgres', q{SELECT count(*) FROM seen WHERE n = 2}, '2', 60), 'event 2: both handlers ran');

is(sql(q{SELECT string_agg(handler || ' ' || n, ',' ORDER BY id) FROM seen}),
	'a_sets 1,b_reads 1,a_sets 2,b_reads 2', 'a_sets runs before b_reads');
is(sql(q{SELECT settings FROM seen WHERE handler = 'b_reads' AND n = 1}), $start,
	"event 1: b_reads (another role) does not see a_sets's settings");
is(sql(q{SELECT settings FROM seen WHERE handler = 'a_sets' AND n = 2}), $start,
	'event 2: a_sets starts again from the same settings, not from what it left');
is(sql(q{SELECT settings FROM seen WHERE handler = 'b_reads' AND n = 2}), $start,
	'event 2: nor does b_reads see them');
is(sql(q{SELECT count(DISTINCT settings) FROM seen}), '1', 'every handler saw the same settings');

# --- session-level advisory locks --------------------------------------------
sql(q{
SET ROLE alice;
CREATE FUNCTION c_locks(payload jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	PERFORM pg_catalog.pg_advisory_lock(214);
	IF (payload->>'fail')::boolean THEN
		RAISE EXCEPTION 'failing with the lock held';
	END IF;
	INSERT INTO public.seen (handler, n) VALUES ('c_locks', (payload->>'n')::int);
END $$;
SELECT evbus.subscribe('Locks', 'public.c_locks(jsonb)', NULL, 0);
});
my $take_lock = q{SET lock_timeout = '5s'; SELECT pg_advisory_lock(214); SELECT pg_advisory_unlock(214)};
sql(q{SELECT evbus.publish('Locks', '{"n": 3}')});
ok(wait_for_sql($node, 'postgres', q{SELECT count(*) FROM seen WHERE handler = 'c_locks'}, '1', 60),
	'a handler took an advisory lock and returned');
my ($ret, $out, $err) = $node->psql('postgres', $take_lock);
is($ret, 0, 'another session takes the lock') or diag $err;
sql(q{SELECT evbus.publish('Locks', '{"n": 4, "fail": true}')});
ok(wait_for_sql($node, 'postgres', q{SELECT count(*) FROM evbus.dead_letters}, '1', 60),
	'a handler took it and failed');
($ret, $out, $err) = $node->psql('postgres', $take_lock);
is($ret, 0, 'another session takes the lock again') or diag $err;

$node->stop;
done_testing();

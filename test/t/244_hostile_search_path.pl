# 244_hostile_search_path.pl - a role's search_path cannot make evbus run
# its operators as the extension's owner.
#
# evbus's SQL runs as the extension owner (a superuser, as a rule): in a
# session, for the SQL API's writes, and in the workers.  An operator
# written without its schema resolves through the search_path, where an
# operator of the caller's own schema, named first, wins over
# pg_catalog's: its function then runs with the owner's rights.  So:
#  1. a role granted evbus.retry, with search_path = its schema, then
#     pg_catalog, and a text = operator there, retried a dead message;
#  2. the owner of a database (no superuser) set that database's
#     search_path so (ALTER DATABASE ... SET search_path), with a bigint =
#     operator, and staged an event for later: the publisher, looking
#     whether it may go idle, compared ids with it.
# Each time the operator's function ran as a superuser and made the role
# one.  evbus's own SQL now runs with search_path = pg_catalog, pg_temp
# in both places, whatever the session or the database says; the role's
# operator is never called.
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;

kafka_bootstrap();
my $prefix = "t244.$$.";
kafka_admin('topics', '--create', '--topic', "${prefix}Failing", '--partitions', '1');
my $node = new_node(
	'hostile_search_path',
	kafka => 1,
	conf => [ "evbus.topic_prefix = '$prefix'", "evbus.idle_timeout = '2s'" ]);

$node->safe_psql(
	'postgres', q{
CREATE ROLE mallory LOGIN;
CREATE DATABASE mall OWNER mallory;
});
$node->safe_psql('mall', 'CREATE EXTENSION evbus');
$node->safe_psql(
	'mall', q{
GRANT USAGE ON SCHEMA evbus TO mallory;
GRANT EXECUTE ON FUNCTION evbus.retry(text),
	evbus.publish(text, jsonb, text, jsonb, timestamptz) TO mallory;
});
$node->safe_psql(
	'mall', as_subscriber($node, 'mall') . q{
CREATE FUNCTION always_fails(payload jsonb) RETURNS void LANGUAGE plpgsql
	AS $$ BEGIN RAISE EXCEPTION 'no'; END $$;
SELECT evbus.subscribe('Failing', 'always_fails(jsonb)', NULL, 0);
});

# mallory's schema: = operators whose function makes her a superuser when
# it runs as one
$node->safe_psql(
	'mall', q{
SET ROLE mallory;
CREATE SCHEMA trap;
CREATE FUNCTION trap.escalate() RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
	IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) current_user) THEN
		EXECUTE 'ALTER ROLE mallory SUPERUSER';
	END IF;
	RETURN true;
END $$;
CREATE FUNCTION trap.texteq(a text, b text) RETURNS boolean LANGUAGE sql
	AS $$ SELECT trap.escalate() AND a OPERATOR(pg_catalog.=) b $$;
CREATE FUNCTION trap.int8eq(a bigint, b bigint) RETURNS boolean LANGUAGE sql
	AS $$ SELECT trap.escalate() AND a OPERATOR(pg_catalog.=) b $$;
CREATE OPERATOR trap.= (LEFTARG = text, RIGHTARG = text, FUNCTION = trap.texteq);
CREATE OPERATOR trap.= (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = trap.int8eq);
});
my $superuser = q{SELECT rolsuper FROM pg_roles WHERE rolname = 'mallory'};

# --- 1. a granted function, with the caller's search_path ----------------------
my $id = $node->safe_psql('mall', q{SELECT evbus.publish('Failing', '{"n": 1}')});
ok(wait_for_sql($node, 'mall', qq{SELECT state FROM evbus.inbox WHERE message_id = '$id'}, 'dead', 60),
	'a message is dead');
is( $node->safe_psql(
		'mall', qq{SET ROLE mallory; SET search_path = trap, pg_catalog; SELECT evbus.retry('$id')}),
	't',
	'mallory retries it with her operators first in her search_path');
is($node->safe_psql('postgres', $superuser), 'f', 'and is no superuser');
# (so that what follows does not hang on the first part)
$node->safe_psql('postgres', 'ALTER ROLE mallory NOSUPERUSER');

# --- 2. the database's search_path, in the workers -------------------------------
$node->safe_psql('mall', q{SET ROLE mallory; ALTER DATABASE mall SET search_path = trap, pg_catalog});
restart_workers($node, 'mall');
ok(wait_for_sql($node, 'postgres',
		q{SELECT count(*) FROM pg_stat_activity WHERE datname = 'mall' AND backend_type = 'evbus publisher'},
		'1', 30),
	'the publisher starts again with the database search_path');
# an event for later keeps the publisher looking at its deliver_at
$node->safe_psql('mall',
	q{SET ROLE mallory; SELECT evbus.publish('Failing', '{"n": 2}', NULL, NULL, now() + interval '1 hour')});
ok(wait_for_sql($node, 'postgres',
		q{SELECT count(*) FROM pg_stat_activity WHERE datname = 'mall' AND backend_type = 'evbus publisher'},
		'0', 30),
	'the publisher goes idle, the event waiting for its time');
is($node->safe_psql('postgres', $superuser), 'f', 'mallory is still no superuser');
$node->stop;
done_testing();

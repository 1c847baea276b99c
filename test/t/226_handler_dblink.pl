# 226_handler_dblink.pl - a dblink connection one role's handler left open
# is not there for another role's handler.
# The handlers of every subscriber of a database run in its one consumer
# process, and dblink keeps its connections for the process, logged in as
# whoever opened them.  Handler a_opens (role alice, who logs in with a
# password) opens a connection by name and the unnamed one, and returns;
# handler b_uses (role bob) of the same event runs right after it
# (handlers of an event run in signature order) and tries both.  bob finds
# no connection, and neither statement runs as alice (before, both ran as
# alice).  A role's own handlers keep their connection from one call to
# the next: a_keeps (alice), called for two events in a row, finds at the
# second the connection it opened at the first.
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;

kafka_bootstrap();
my $prefix = "t226.$$.";
my $group = "t226_$$";
my $node = new_node(
	'dblink',
	kafka => 1,
	conf => [ "evbus.topic_prefix = '$prefix'", "evbus.group_name = '$group'" ]);

# alice logs in with her password (dblink lets a role that is not a
# superuser connect only with one); everyone else as before
my $hba = $node->data_dir . '/pg_hba.conf';
my $rules = slurp_file($hba);
open(my $fh, '>', $hba) or die "$hba: $!";
print $fh "local all alice scram-sha-256\n$rules";
close $fh;
$node->reload;
$node->safe_psql('postgres', 'CREATE EXTENSION evbus; CREATE EXTENSION dblink');

sub sql { return $node->safe_psql('postgres', $_[0]); }

my $conninfo = 'host=' . $node->host . ' port=' . $node->port . ' dbname=postgres user=alice password=alice226';
sql(qq{
CREATE ROLE alice LOGIN PASSWORD 'alice226';
CREATE ROLE bob;
GRANT USAGE ON SCHEMA evbus TO alice, bob;
GRANT CREATE ON SCHEMA public TO alice, bob;
GRANT EXECUTE ON FUNCTION evbus.subscribe(text, regprocedure, text, integer) TO alice, bob;
CREATE TABLE seen (id bigint GENERATED ALWAYS AS IDENTITY, handler text, n int, what text);
GRANT INSERT ON seen TO alice, bob;

SET ROLE alice;
CREATE PROCEDURE a_opens(payload jsonb, headers jsonb) LANGUAGE plpgsql AS \$\$
BEGIN
	PERFORM public.dblink_connect('keep', '$conninfo');
	PERFORM public.dblink_connect('$conninfo');
	INSERT INTO public.seen (handler, n, what)
	SELECT 'a_opens', (payload->>'n')::int, u FROM public.dblink('keep', 'SELECT current_user') AS t(u name);
END \$\$;
SELECT evbus.subscribe('Sessions', 'public.a_opens(jsonb,jsonb)');
CREATE PROCEDURE a_keeps(payload jsonb, headers jsonb) LANGUAGE plpgsql AS \$\$
DECLARE
	open text := pg_catalog.array_to_string(public.dblink_get_connections(), ',');
BEGIN
	INSERT INTO public.seen (handler, n, what) VALUES ('a_keeps', (payload->>'n')::int, COALESCE(open, ''));
	IF open IS NULL THEN
		PERFORM public.dblink_connect('mine', '$conninfo');
	END IF;
END \$\$;
SELECT evbus.subscribe('AliceOnly', 'public.a_keeps(jsonb,jsonb)');

SET ROLE bob;
CREATE PROCEDURE b_uses(payload jsonb, headers jsonb) LANGUAGE plpgsql AS \$\$
DECLARE
	n int := (payload->>'n')::int;
	r text;
BEGIN
	INSERT INTO public.seen (handler, n, what)
	VALUES ('b_uses', n, 'open: ' || COALESCE(pg_catalog.array_to_string(public.dblink_get_connections(), ','), ''));
	BEGIN
		SELECT u INTO r FROM public.dblink('keep', 'SELECT current_user') AS t(u name);
	EXCEPTION WHEN OTHERS THEN
		r := 'error';
	END;
	INSERT INTO public.seen (handler, n, what) VALUES ('b_uses', n, 'named: ' || r);
	BEGIN
		SELECT u INTO r FROM public.dblink('SELECT current_user') AS t(u name);
	EXCEPTION WHEN OTHERS THEN
		r := 'error';
	END;
	INSERT INTO public.seen (handler, n, what) VALUES ('b_uses', n, 'unnamed: ' || r);
END \$\$;
SELECT evbus.subscribe('Sessions', 'public.b_uses(jsonb,jsonb)');
});

ok(wait_for_sql($node, 'postgres', q{SELECT evbus.consumer_pid() IS NOT NULL}, 't', 30), 'the consumer runs');
sql(q{SELECT evbus.publish('Sessions', '{"n": 1}', 'k')});
ok(wait_for_sql($node, 'postgres', q{SELECT count(*) FROM seen WHERE n = 1}, '4', 60), 'both handlers ran');
is(sql(q{SELECT what FROM seen WHERE handler = 'a_opens'}), 'alice', "alice's handler connected, as alice");
is( sql(q{SELECT string_agg(what, '; ' ORDER BY id) FROM seen WHERE handler = 'b_uses'}),
	'open: ; named: error; unnamed: error',
	"bob's handler, next, finds no connection: neither the named one nor the unnamed one runs its statement as alice");
is(sql(q{SELECT count(*) FROM evbus.inbox WHERE state <> 'handled'}), '0', 'both handled, first time');

sql(q{SELECT evbus.publish('AliceOnly', '{"n": 2}', 'k')});
ok(wait_for_sql($node, 'postgres', q{SELECT count(*) FROM seen WHERE n = 2}, '1', 60), 'a_keeps ran');
sql(q{SELECT evbus.publish('AliceOnly', '{"n": 3}', 'k')});
ok(wait_for_sql($node, 'postgres', q{SELECT count(*) FROM seen WHERE n = 3}, '1', 60), 'a_keeps ran again');
is(sql(q{SELECT string_agg(what, ',' ORDER BY n) FROM seen WHERE handler = 'a_keeps'}), ',mine',
	"alice's handler, called again with no other role's in between, finds the connection it opened");

$node->stop;
done_testing();

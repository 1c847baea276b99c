# 170_consume_privileges.pl - a handler runs as the role that subscribed it,
# never as the worker's superuser.
#  - one handler, subscribed in two groups: by alice (no INSERT grant on
#    the ledger) and by bob (with the grant).  For bob's group it writes the
#    ledger as bob (not a superuser); for alice's group the attempt fails
#    with a permission error (last_error_code 42501) and the event is
#    dead-lettered, nothing written.
#  - a handler subscribed by alice that tries RESET ROLE / SET SESSION
#    AUTHORIZATION to get back to the worker's own role fails and writes
#    nothing (security-restricted context).
#  - a role without EXECUTE on evbus.subscribe cannot subscribe (42501).
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);

kafka_bootstrap();
my $prefix = "t170.$$.";
my $alice_group = "t170_alice_$$";
my $bob_group = "t170_bob_$$";
my $node = new_node(
	'privileges',
	kafka => 1,
	conf => [
		"evbus.topic_prefix = '$prefix'",
		"evbus.retry_interval = '100ms'",
		"evbus.retry_max_interval = '500ms'"
	]);
$node->safe_psql('postgres', 'CREATE EXTENSION evbus');

sub sql { return $node->safe_psql('postgres', $_[0]); }

my $superuser = sql('SELECT current_user');
sql(q{
-- the handlers belong to a role that alice and bob are members of
CREATE ROLE t170_handlers;
CREATE ROLE alice LOGIN IN ROLE t170_handlers;
CREATE ROLE bob LOGIN IN ROLE t170_handlers;
CREATE ROLE carol LOGIN;
GRANT USAGE ON SCHEMA evbus TO alice, bob, carol;
GRANT EXECUTE ON FUNCTION evbus.subscribe(text, regprocedure, text, integer) TO alice, bob;
GRANT EXECUTE ON FUNCTION evbus.unsubscribe(text, regprocedure, text) TO alice, bob;

-- is_superuser: whether current_user is a superuser (the GUC is_superuser
-- would tell about the session user, the worker's own role)
CREATE TABLE ledger (n int, who name, is_superuser text, at timestamptz DEFAULT clock_timestamp());
GRANT INSERT ON ledger TO bob;

-- SECURITY INVOKER (the default): runs with the rights of whoever runs it
CREATE FUNCTION record_it(payload jsonb, headers jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO public.ledger (n, who, is_superuser)
	VALUES ((payload->>'n')::int, current_user, (SELECT rolsuper::text FROM pg_catalog.pg_roles WHERE rolname = current_user));
END $$;

CREATE FUNCTION escalate_reset_role(payload jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	EXECUTE 'RESET ROLE';
	INSERT INTO public.ledger (n, who, is_superuser)
	VALUES ((payload->>'n')::int, current_user, (SELECT rolsuper::text FROM pg_catalog.pg_roles WHERE rolname = current_user));
END $$;
CREATE FUNCTION escalate_session_auth(payload jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	EXECUTE 'SET SESSION AUTHORIZATION DEFAULT';
	INSERT INTO public.ledger (n, who, is_superuser)
	VALUES ((payload->>'n')::int, current_user, (SELECT rolsuper::text FROM pg_catalog.pg_roles WHERE rolname = current_user));
END $$;
ALTER FUNCTION record_it(jsonb, jsonb) OWNER TO t170_handlers;
ALTER FUNCTION escalate_reset_role(jsonb) OWNER TO t170_handlers;
ALTER FUNCTION escalate_session_auth(jsonb) OWNER TO t170_handlers;
});

# each role subscribes for itself (SET ROLE: its current_user)
sql(qq{
SET ROLE alice;
SELECT evbus.subscribe('Priv', 'public.record_it(jsonb,jsonb)', '$alice_group', 0);
SELECT evbus.subscribe('Escalate', 'public.escalate_reset_role(jsonb)', '$alice_group', 0);
SELECT evbus.subscribe('Escalate2', 'public.escalate_session_auth(jsonb)', '$alice_group', 0);
RESET ROLE;
SET ROLE bob;
SELECT evbus.subscribe('Priv', 'public.record_it(jsonb,jsonb)', '$bob_group', 0);
RESET ROLE;
});
is( sql(q{SELECT group_name, integration_event, run_as::text FROM evbus.subscriptions ORDER BY 1, 2}),
	"$alice_group|Escalate|alice\n$alice_group|Escalate2|alice\n$alice_group|Priv|alice\n$bob_group|Priv|bob",
	'subscriptions run as the roles that subscribed them');
is(sqlstate_of($node, 'postgres', q{SET ROLE carol; SELECT evbus.subscribe('Priv', 'public.record_it(jsonb,jsonb)', 'carols')}),
	'42501', 'a role without EXECUTE on evbus.subscribe cannot subscribe');

my $id = sql(q{SELECT evbus.publish('Priv', '{"n": 1}')});
ok( wait_for_sql($node, 'postgres',
		qq{SELECT state FROM evbus.inbox WHERE message_id = '$id' AND group_name = '$bob_group'}, 'handled', 60),
	"bob's group: handled");
is(sql(q{SELECT n, who, is_superuser FROM ledger}), '1|bob|false',
	'the handler wrote the ledger as bob, not as a superuser');
ok( wait_for_sql($node, 'postgres',
		qq{SELECT state FROM evbus.inbox WHERE message_id = '$id' AND group_name = '$alice_group'}, 'dead', 60),
	"alice's group: the attempt failed (max_retries 0: dead)");
is(sql(qq{SELECT last_error_code FROM evbus.inbox WHERE message_id = '$id' AND group_name = '$alice_group'}),
	'42501', "alice's group: permission error 42501");
like(sql(qq{SELECT last_error_message FROM evbus.inbox WHERE message_id = '$id' AND group_name = '$alice_group'}),
	qr/permission denied for table ledger/, "alice's group: the message names the table");
is(sql(qq{SELECT error_code FROM evbus.dead_letters WHERE message_id = '$id' AND group_name = '$alice_group'}),
	'42501', "alice's group: dead letter with 42501");
is(sql(q{SELECT count(*) FROM ledger WHERE who <> 'bob'}), '0', 'nothing written on behalf of alice');

# --- no way back to the worker's role ------------------------------------------
my $e1 = sql(q{SELECT evbus.publish('Escalate', '{"n": 2}')});
my $e2 = sql(q{SELECT evbus.publish('Escalate2', '{"n": 3}')});
for ([ $e1, 'RESET ROLE' ], [ $e2, 'SET SESSION AUTHORIZATION DEFAULT' ])
{
	my ($mid, $what) = @$_;
	ok( wait_for_sql($node, 'postgres',
			qq{SELECT state FROM evbus.inbox WHERE message_id = '$mid'}, 'dead', 60),
		"$what in a handler: the attempt fails");
	note "$what: " . sql(qq{SELECT last_error_code || ' ' || last_error_message FROM evbus.inbox WHERE message_id = '$mid'});
}
is(sql(q{SELECT count(*) FROM ledger WHERE n IN (2, 3)}), '0',
	'nothing was written after trying to leave the subscriber\'s role');
is(sql(q{SELECT count(*) FROM ledger WHERE who = '} . $superuser . q{' OR is_superuser = 'true'}), '0',
	'no handler ever ran as a superuser');

# bob's handler still works after all of it: the worker's role was not changed
my $id2 = sql(q{SELECT evbus.publish('Priv', '{"n": 4}')});
ok( wait_for_sql($node, 'postgres',
		qq{SELECT state FROM evbus.inbox WHERE message_id = '$id2' AND group_name = '$bob_group'}, 'handled', 30),
	"bob's group: the next event handled");
is(sql(q{SELECT who, is_superuser FROM ledger WHERE n = 4}), 'bob|false', 'still as bob');

$node->stop;
done_testing();

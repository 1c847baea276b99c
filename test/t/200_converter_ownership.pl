# 200_converter_ownership.pl - a converter belongs to the role that
# registered it, and runs as that role, never as whoever raises.
#
# The reproduction: alice, granted the producing API, replaces bob's
# converter with her own function, or registers a new pair on bob's domain
# event; a superuser then inserts into bob's table, whose evbus.capture
# trigger raises that domain event.  An earlier version ran every
# converter as the raising role, so alice's function ran as the superuser
# and made alice a superuser.  Now replacing or removing another role's
# pair is refused (42501), alice's own converter runs as alice (its
# ALTER ROLE fails, its current_user is alice), a function owned by an
# unrelated role cannot be registered, and a converter whose function
# changed owner since is refused when it is called.
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = new_node('converter_ownership');
$node->safe_psql(
	'postgres', q{
CREATE EXTENSION evbus;
CREATE ROLE alice LOGIN;
CREATE ROLE bob LOGIN;
CREATE ROLE bob_deputy LOGIN IN ROLE bob;
CREATE ROLE carol LOGIN;
GRANT USAGE ON SCHEMA evbus TO alice, bob, bob_deputy, carol;
GRANT EXECUTE ON FUNCTION evbus.register_converter(text, text, regprocedure),
                          evbus.unregister_converter(text, text),
                          evbus.raise(text, jsonb, text),
                          evbus.capture()
   TO alice, bob, bob_deputy, carol;
GRANT CREATE ON SCHEMA public TO alice, bob;
});

# psql as a role; returns (exit code, stdout, stderr)
sub as_role
{
	my ($role, $sql) = @_;
	my ($ret, $out, $err) =
	  $node->psql('postgres', "SET ROLE $role;\n\\set VERBOSITY verbose\n$sql");
	return ($ret, $out, $err);
}

# bob: a table captured into a domain event, and its converter
my ($ret, $out, $err) = as_role(
	'bob', q{
CREATE TABLE public.bob_orders (id int PRIMARY KEY, total numeric);
CREATE TRIGGER bob_orders_created AFTER INSERT ON public.bob_orders
	FOR EACH ROW EXECUTE FUNCTION evbus.capture('BobOrderCreated', 'id');
CREATE FUNCTION public.bob_order_created(payload jsonb) RETURNS jsonb
LANGUAGE sql AS $$ SELECT jsonb_build_object('orderId', payload->'id', 'by', current_user) $$;
SELECT evbus.register_converter('BobOrderCreated', 'OrderCreated',
                                'public.bob_order_created(jsonb)');
});
is($ret, 0, 'bob registers his converter') or diag $err;

# alice: a function that tries to make her superuser and records who ran it
($ret, $out, $err) = as_role(
	'alice', q{
CREATE TABLE public.alice_loot (who name, outcome text);
CREATE FUNCTION public.alice_escalate(payload jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
	outcome text;
BEGIN
	BEGIN
		EXECUTE 'ALTER ROLE alice SUPERUSER';
		outcome := 'altered';
	EXCEPTION WHEN OTHERS THEN
		outcome := SQLSTATE;
	END;
	INSERT INTO public.alice_loot VALUES (current_user, outcome);
	RETURN jsonb_build_object('seen', payload);
END $$;
});
is($ret, 0, 'alice creates her function') or diag $err;

# 1. alice cannot replace bob's pair
($ret, $out, $err) = as_role('alice',
	q{SELECT evbus.register_converter('BobOrderCreated', 'OrderCreated', 'public.alice_escalate(jsonb)')});
like($err, qr/ERROR:\s+42501: .*"bob"/, "alice cannot replace bob's pair (42501, naming bob)");
like($err, qr/HINT:.*bob/, 'the hint names the owner role');

# 2. nor remove it
($ret, $out, $err) = as_role('alice', q{SELECT evbus.unregister_converter('BobOrderCreated', 'OrderCreated')});
like($err, qr/ERROR:\s+42501/, "alice cannot unregister bob's pair (42501)");
is( $node->safe_psql(
		'postgres', q{SELECT converter || ' ' || registered_by FROM evbus.converters
		 WHERE domain_event = 'BobOrderCreated' AND integration_event = 'OrderCreated'}),
	'public.bob_order_created(pg_catalog.jsonb) bob',
	"bob's pair is untouched");

# 3. alice may add her own pair on bob's domain event: it runs as alice
($ret, $out, $err) = as_role('alice',
	q{SELECT evbus.register_converter('BobOrderCreated', 'AliceCopy', 'public.alice_escalate(jsonb)')});
is($ret, 0, "alice registers her own pair on bob's domain event") or diag $err;

# the superuser raises the domain event through bob's capture trigger
$node->safe_psql('postgres', 'INSERT INTO public.bob_orders VALUES (1, 99.90)');
is($node->safe_psql('postgres', q{SELECT rolsuper FROM pg_roles WHERE rolname = 'alice'}),
	'f', 'alice is not superuser after a superuser raised her converter');
is($node->safe_psql('postgres', q{SELECT who || ' ' || outcome FROM public.alice_loot}),
	'alice 42501', 'her converter ran as alice (current_user), and its ALTER ROLE was refused');
is( $node->safe_psql(
		'postgres', q{SELECT string_agg(integration_event || ' ' || (payload->>'by'), ',' ORDER BY integration_event)
		 FROM evbus.outbox WHERE integration_event = 'OrderCreated'}),
	'OrderCreated bob',
	"bob's converter ran as bob");
is($node->safe_psql('postgres', q{SELECT count(*) FROM evbus.outbox WHERE integration_event = 'AliceCopy'}),
	'1', "alice's converter staged its event (registering one lets a role see the payloads)");

# 4. a member of the owner role may replace and remove the pair
($ret, $out, $err) = as_role('bob_deputy',
	q{SELECT evbus.register_converter('BobOrderCreated', 'OrderCreated', 'public.bob_order_created(jsonb)')});
is($ret, 0, "a member of bob replaces bob's pair") or diag $err;
is( $node->safe_psql(
		'postgres', q{SELECT registered_by FROM evbus.converters
		 WHERE domain_event = 'BobOrderCreated' AND integration_event = 'OrderCreated'}),
	'bob_deputy',
	'the pair now belongs to the role that replaced it');
($ret, $out, $err) = as_role('bob', q{SELECT evbus.unregister_converter('BobOrderCreated', 'OrderCreated')});
like($err, qr/ERROR:\s+42501: .*"bob_deputy"/, 'bob, not a member of bob_deputy, cannot remove it now');
($ret, $out, $err) = as_role('bob_deputy', q{SELECT evbus.unregister_converter('BobOrderCreated', 'OrderCreated')});
is($out, 't', 'bob_deputy removes it');

# 5. a function owned by an unrelated role cannot be registered
($ret, $out, $err) = as_role('carol',
	q{SELECT evbus.register_converter('CarolEvent', 'CarolIntegration', 'public.alice_escalate(jsonb)')});
like($err, qr/ERROR:\s+42501: .*HINT:.*alice/s, "carol cannot register alice's function (42501, hint names alice)");
is($node->safe_psql('postgres', q{SELECT count(*) FROM evbus.converters WHERE domain_event = 'CarolEvent'}),
	'0', 'nothing registered');

# 6. a function that changed owner since it was registered is refused when
# called: the raising transaction aborts, nothing is staged
($ret, $out, $err) = as_role('bob',
	q{SELECT evbus.register_converter('BobOrderShipped', 'OrderShipped', 'public.bob_order_created(jsonb)')});
is($ret, 0, 'bob registers a second pair') or diag $err;
$node->safe_psql('postgres', 'ALTER FUNCTION public.bob_order_created(jsonb) OWNER TO alice');
($ret, $out, $err) = $node->psql(
	'postgres', q{\set VERBOSITY verbose
BEGIN;
SELECT evbus.raise('BobOrderShipped', '{"id": 2}');
COMMIT;});
like($err, qr/ERROR:\s+42501: .*bob_order_created\(jsonb\).*"alice"/,
	'a converter whose function now belongs to alice is refused when raised');
is($node->safe_psql('postgres', q{SELECT count(*) FROM evbus.outbox WHERE integration_event = 'OrderShipped'}),
	'0', 'nothing staged');

$node->stop;
done_testing();

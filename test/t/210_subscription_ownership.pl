# 210_subscription_ownership.pl - a subscription belongs to its subscriber,
# and each handler of an event is a unit of its own.
#  - mallory can neither re-subscribe bob's handler (to run it as herself
#    or change its retries) nor unsubscribe it: 42501, the subscription
#    still runs as bob;
#  - mallory's handler that always fails, subscribed with max_retries 0 to
#    the same event in the same group, is dead-lettered alone: bob's
#    handler is not rolled back, not retried, not dead-lettered, and the
#    dead letter names mallory's handler;
#  - per-key order holds per handler: while one handler retries event 1 of
#    key k1, its event 2 of k1 waits for that handler only; another
#    handler of the same events handles both at once, and key k2 flows for
#    both; once the gate opens, the waiting handler runs k1 in order;
#  - exactly once per (group, message, handler): a handler that succeeded
#    is never run again while a sibling is retried.
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);

kafka_bootstrap();
my $prefix = "t210.$$.";
my $group = "t210_$$";
my $node = new_node(
	'ownership',
	kafka => 1,
	conf => [
		"evbus.topic_prefix = '$prefix'",
		"evbus.group_name = '$group'",
		"evbus.retry_interval = '100ms'",
		"evbus.retry_max_interval = '300ms'"
	]);
$node->safe_psql('postgres', 'CREATE EXTENSION evbus');

sub sql { return $node->safe_psql('postgres', $_[0]); }

sql(q{
CREATE ROLE bob;
CREATE ROLE mallory;
GRANT USAGE ON SCHEMA evbus TO bob, mallory;
GRANT CREATE ON SCHEMA public TO bob, mallory;
GRANT EXECUTE ON FUNCTION evbus.subscribe(text, regprocedure, text, integer),
	evbus.unsubscribe(text, regprocedure, text) TO bob, mallory;

SET ROLE bob;
CREATE TABLE bob_effects (handler text, n int, event_key text, message_id uuid,
                          id bigint GENERATED ALWAYS AS IDENTITY);
CREATE SEQUENCE bob_calls;
CREATE SEQUENCE steady_calls;
CREATE TABLE gate (open boolean NOT NULL);
INSERT INTO gate VALUES (false);
GRANT SELECT ON bob_effects TO PUBLIC;
CREATE PROCEDURE bob_handler(payload jsonb, headers jsonb) LANGUAGE plpgsql AS $$
BEGIN
	PERFORM pg_catalog.nextval('public.bob_calls');
	INSERT INTO public.bob_effects (handler, n, message_id)
	VALUES ('bob', (payload->>'n')::int, (headers->>'cap-msg-id')::uuid);
END $$;
CREATE PROCEDURE gated(payload jsonb, headers jsonb) LANGUAGE plpgsql AS $$
BEGIN
	IF payload->>'key' = 'k1' AND NOT (SELECT open FROM public.gate) THEN
		RAISE EXCEPTION 'gate closed' USING ERRCODE = 'EV210';
	END IF;
	INSERT INTO public.bob_effects (handler, n, event_key)
	VALUES ('gated', (payload->>'n')::int, payload->>'key');
END $$;
CREATE PROCEDURE steady(payload jsonb, headers jsonb) LANGUAGE plpgsql AS $$
BEGIN
	PERFORM pg_catalog.nextval('public.steady_calls');
	INSERT INTO public.bob_effects (handler, n, event_key)
	VALUES ('steady', (payload->>'n')::int, payload->>'key');
END $$;
SELECT evbus.subscribe('Paid', 'public.bob_handler(jsonb,jsonb)', max_retries => 5);
SELECT evbus.subscribe('Ordered', 'public.gated(jsonb,jsonb)', max_retries => 1000);
SELECT evbus.subscribe('Ordered', 'public.steady(jsonb,jsonb)', max_retries => 1000);

SET ROLE mallory;
CREATE FUNCTION mallory_fails(payload jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	RAISE EXCEPTION 'mallory always fails' USING ERRCODE = 'EV666';
END $$;
SELECT evbus.subscribe('Paid', 'public.mallory_fails(jsonb)', max_retries => 0);
});

# --- mallory cannot take bob's subscription over, change it or remove it ----------
is(sqlstate_of($node, 'postgres', q{SET ROLE mallory; SELECT evbus.subscribe('Paid', 'public.bob_handler(jsonb,jsonb)')}),
	'42501', "mallory cannot re-subscribe bob's handler (to run it as herself)");
is( sqlstate_of($node, 'postgres',
		q{SET ROLE mallory; SELECT evbus.subscribe('Paid', 'public.bob_handler(jsonb,jsonb)', NULL, 0)}),
	'42501', "mallory cannot change the retries of bob's subscription");
is(sqlstate_of($node, 'postgres', q{SET ROLE mallory; SELECT evbus.unsubscribe('Paid', 'public.bob_handler(jsonb,jsonb)')}),
	'42501', "mallory cannot unsubscribe bob's handler");
my (undef, undef, $refusal) =
  $node->psql('postgres', q{SET ROLE mallory; SELECT evbus.unsubscribe('Paid', 'public.bob_handler(jsonb,jsonb)')});
like($refusal, qr/DETAIL:.*belongs to role bob.*HINT:.*role bob/s,
	'the refusal names bob, the owner, in its detail and hint');
is( sql(q{SELECT handler || ' ' || run_as || ' ' || max_retries FROM evbus.subscriptions
           WHERE integration_event = 'Paid' ORDER BY handler}),
	"public.bob_handler(pg_catalog.jsonb,pg_catalog.jsonb) bob 5\npublic.mallory_fails(pg_catalog.jsonb) mallory 0",
	"bob's subscription is intact: runs as bob, 5 retries");

# --- mallory's failing handler does not take bob's work with it ----------------
ok(wait_for_sql($node, 'postgres', q{SELECT evbus.consumer_pid() IS NOT NULL}, 't', 30), 'the consumer runs');
my $paid = sql(q{SELECT evbus.publish('Paid', '{"n": 1}', 'p1')});
ok( wait_for_sql($node, 'postgres',
		qq{SELECT string_agg(split_part(handler, '(', 1) || ':' || state, ',' ORDER BY handler)
		     FROM evbus.inbox WHERE message_id = '$paid'},
		'public.bob_handler:handled,public.mallory_fails:dead', 60),
	"bob's handler handled the event, mallory's was dead-lettered alone");
sleep 1;
is(sql(qq{SELECT count(*) FROM bob_effects WHERE handler = 'bob' AND message_id = '$paid'}), '1',
	"bob's effect committed once");
is(sql(q{SELECT last_value FROM bob_calls}), '1', "bob's handler ran once: not retried with mallory's");
is( sql(qq{SELECT handler || ' ' || error_code || ' ' || attempts FROM evbus.dead_letters WHERE message_id = '$paid'}),
	'public.mallory_fails(pg_catalog.jsonb) EV666 1',
	"one dead letter, naming mallory's handler; none for bob's");
is( sql(qq{SELECT attempts || ' ' || coalesce(last_error_code, '-') FROM evbus.inbox
           WHERE message_id = '$paid' AND handler LIKE 'public.bob_handler%'}),
	'1 -', "bob's row: one attempt, no error");

# --- per-key order per handler ------------------------------------------------------
# one transaction, so this is also their order in the partition (one key
# per partition is not needed: k1 and k2 may share one)
sql(q{
BEGIN;
SELECT evbus.publish('Ordered', '{"key": "k1", "n": 1}', 'k1');
SELECT evbus.publish('Ordered', '{"key": "k1", "n": 2}', 'k1');
SELECT evbus.publish('Ordered', '{"key": "k2", "n": 1}', 'k2');
COMMIT;
});
ok( wait_for_sql($node, 'postgres',
		q{SELECT string_agg(event_key || '/' || n, ',' ORDER BY event_key, id) FROM bob_effects WHERE handler = 'steady'},
		'k1/1,k1/2,k2/1', 60),
	'steady handles k1/1, k1/2 and k2/1 at once, in order, while gated retries k1/1');
ok( wait_for_sql($node, 'postgres',
		q{SELECT string_agg(event_key || '/' || n, ',' ORDER BY id) FROM bob_effects WHERE handler = 'gated'},
		'k2/1', 30),
	'gated handles k2/1: another key flows');
ok( wait_for_sql($node, 'postgres',
		q{SELECT attempts > 1 FROM evbus.inbox WHERE handler LIKE 'public.gated%' AND event_key = 'k1' AND payload->>'n' = '1'},
		't', 30),
	'gated retries k1/1');
is( sql(q{SELECT state || ' ' || attempts FROM evbus.inbox
           WHERE handler LIKE 'public.gated%' AND event_key = 'k1' AND payload->>'n' = '2'}),
	'pending 0', 'k1/2 waits for gated (no attempt yet) behind k1/1');
is(sql(q{SELECT count(*) FROM bob_effects WHERE handler = 'gated' AND event_key = 'k1'}), '0',
	'gated ran nothing of k1 yet');
sql(q{UPDATE gate SET open = true});
ok( wait_for_sql($node, 'postgres',
		q{SELECT string_agg(event_key || '/' || n, ',' ORDER BY id) FROM bob_effects WHERE handler = 'gated'},
		'k2/1,k1/1,k1/2', 60),
	'the gate open, gated handles k1/1 then k1/2');
sleep 1;
is(sql(q{SELECT last_value FROM steady_calls}), '3',
	'steady ran once per event: never again while gated was retried');
is( sql(q{SELECT string_agg(split_part(handler, '(', 1) || ':' || state, ',' ORDER BY handler, id)
           FROM evbus.inbox WHERE topic = '} . $prefix . q{Ordered'}),
	'public.gated:handled,public.gated:handled,public.gated:handled,'
	  . 'public.steady:handled,public.steady:handled,public.steady:handled',
	'every (event, handler) handled');

$node->stop;
done_testing();

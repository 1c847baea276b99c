# 192_handlers_in_one_go.pl - a per-message handler runs once per message,
# and the messages of one received batch go through it in one go: a SQL
# function, called directly, parses its body once for the batch, each call
# still in a subtransaction of its own.  It must make no difference:
#  - Exactly once, in order, as the subscriber, with the subscriber's
#    settings for every message: 30 events of three keys, one staging
#    transaction, on ONE partition, handled once each, in Kafka order
#    (each key in staging order); each call sees the role's own work_mem
#    although the call before it changed it with set_config(..., false).
#  - A failing message: it retries and dead-letters alone with its own
#    SQLSTATE (22012), every other event is handled exactly once, its
#    key's later events wait for it and run after its dead letter, and the
#    handler is called once per recorded attempt (a sequence, which no
#    rollback resets, counts the calls: 11 + 3).
#  - Messages that waited in the inbox (their subscription paused) run
#    through the retries' transactions, in one go too: exactly once, in
#    order, as the subscriber with its settings.
#  - EXECUTE revoked from the subscriber on its own handler: the executor
#    refused that call; the direct call refuses it too (42501), nothing runs.
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;

kafka_bootstrap();
my $prefix = "t192.$$.";
my $group = "t192_$$";
kafka_admin('topics', '--create', '--topic', "${prefix}$_", '--partitions', '1')
  for qw(Each Failing Denied Waited);

my $node = new_node(
	'handlers_in_one_go',
	kafka => 1,
	conf => [
		"evbus.topic_prefix = '$prefix'",
		"evbus.group_name = '$group'",
		"evbus.retry_interval = '100ms'",
		"evbus.retry_max_interval = '300ms'"
	]);
$node->safe_psql('postgres', 'CREATE EXTENSION evbus');

sub sql { return $node->safe_psql('postgres', $_[0]); }

sql(as_subscriber($node) . q{
ALTER ROLE evbus_app SET work_mem = '3MB';
CREATE TABLE effects (id bigint GENERATED ALWAYS AS IDENTITY, event text, seq int,
                      event_key text, message_id uuid, work_mem text,
                      run_as name DEFAULT current_user);
-- a SQL function: called through fmgr, one parse per batch
CREATE SEQUENCE calls;
CREATE FUNCTION on_each(payload jsonb, headers jsonb) RETURNS void LANGUAGE sql AS $$
	SELECT pg_catalog.nextval('public.calls') WHERE payload->>'event' = 'Failing';
	INSERT INTO public.effects (event, seq, event_key, message_id, work_mem)
	VALUES (payload->>'event', (payload->>'seq')::int, payload->>'key',
	        (headers->>'cap-msg-id')::uuid, pg_catalog.current_setting('work_mem'));
	SELECT pg_catalog.set_config('work_mem', '7MB', false);
	SELECT 1 / (CASE WHEN (payload->>'poison')::boolean THEN 0 ELSE 1 END);
$$;
CREATE FUNCTION on_denied(payload jsonb, headers jsonb) RETURNS void LANGUAGE sql AS $$
	INSERT INTO public.effects (event, seq) VALUES ('Denied', (payload->>'seq')::int);
$$;
SELECT evbus.subscribe('Each', 'on_each(jsonb,jsonb)');
SELECT evbus.subscribe('Failing', 'on_each(jsonb,jsonb)', max_retries => 2);
SELECT evbus.subscribe('Denied', 'on_denied(jsonb,jsonb)', max_retries => 0);
});

sub stage { stage_keyed($node, @_); }

# handled_as_it_must(event, way): the checks of 30 events of event that
# on_each handled, named after the way they went
sub handled_as_it_must
{
	my ($event, $way) = @_;
	ok(wait_for_sql($node, 'postgres', qq{SELECT count(*) FROM effects WHERE event = '$event'}, '30', 60),
		"$way: all 30 events handled");
	sleep 1;
	is(sql(qq{SELECT count(*), count(DISTINCT seq), count(DISTINCT message_id) FROM effects WHERE event = '$event'}),
		'30|30|30', "$way: each exactly once");
	is(handled_out_of_order($node, $event), '0', "$way: in Kafka order, each key in staging order");
	is( sql(qq{SELECT count(*) FROM effects f JOIN evbus.inbox i ON i.message_id = f.message_id::text
	            WHERE f.event = '$event' AND (i.payload->>'seq')::int <> f.seq}),
		'0', "$way: each call got its own message's headers");
	is(sql(qq{SELECT string_agg(DISTINCT run_as, ',') FROM effects WHERE event = '$event'}), 'evbus_app',
		"$way: ran as the subscriber");
	is(sql(qq{SELECT string_agg(DISTINCT work_mem, ',') FROM effects WHERE event = '$event'}), '3MB',
		"$way: every call started from the role's settings (the previous call's set_config undone)");
	is( sql(qq{SELECT count(*) FILTER (WHERE state = 'handled' AND attempts = 1) FROM evbus.inbox
	            WHERE integration_event = '$event' AND handler LIKE '%on_each%'}),
		'30', "$way: inbox: 30 handled in their first attempt");
	return;
}

# --- exactly once, in one go ------------------------------------------------------
stage('Each', 30);
handled_as_it_must('Each', 'received');

# --- a failing message: one at a time -------------------------------------------------
# 12 events; seq 4 (key k1) always fails; k1's later events are 7 and 10
stage('Failing', 12, 4, '"poison": true');
ok( wait_for_sql($node, 'postgres',
		q{SELECT count(*) FROM evbus.dead_letters WHERE integration_event = 'Failing'}, '1', 60),
	'the failing message is dead-lettered');
ok( wait_for_sql($node, 'postgres',
		q{SELECT count(DISTINCT seq) FROM effects WHERE event = 'Failing' AND seq <> 4}, '11', 60),
	'the 11 other events are handled');
sleep 1;
is( sql(q{SELECT attempts, error_code FROM evbus.dead_letters WHERE integration_event = 'Failing'}),
	'3|22012', 'the dead letter: 3 attempts (max_retries 2), the handler\'s SQLSTATE');
is(sql(q{SELECT count(*), count(DISTINCT seq) FROM effects WHERE event = 'Failing' AND seq <> 4}),
	'11|11', 'the others handled exactly once (the rolled back subtransaction left no effect)');
is(sql(q{SELECT count(*) FROM effects WHERE event = 'Failing' AND seq = 4}), '0',
	'the failing message left no effect');
is(sql(q{SELECT last_value FROM calls}), '14',
	'the handler was called once per recorded attempt: 11 + 3');
is(sql(q{SELECT string_agg(seq::text, ',' ORDER BY id) FROM effects WHERE event = 'Failing' AND event_key = 'k1'}),
	'1,7,10', 'key k1: its events in order, the later ones after the dead letter');
for my $k (qw(k0 k2))
{
	is(sql(qq{SELECT string_agg(seq::text, ',' ORDER BY id) FROM effects WHERE event = 'Failing' AND event_key = '$k'}),
		$k eq 'k0' ? '3,6,9,12' : '2,5,8,11', "key $k handled in order");
}

# --- the retries' way, in one go too --------------------------------------------------
# on_each's subscription of Waited paused (on_other's is not, so the topic is
# fetched): the 30 messages wait in the inbox; resumed, they run through the
# retries' transactions, a handler's rows in one go there too
sql(as_subscriber($node) . q{
CREATE FUNCTION on_other(payload jsonb, headers jsonb) RETURNS void LANGUAGE sql AS 'SELECT';
SELECT evbus.subscribe('Waited', 'on_each(jsonb,jsonb)');
SELECT evbus.subscribe('Waited', 'on_other(jsonb,jsonb)');
});
sql(q{SELECT evbus.pause_subscription('Waited', 'on_each(jsonb,jsonb)')});
stage('Waited', 30);
ok( wait_for_sql($node, 'postgres',
		q{SELECT count(*) FROM evbus.inbox WHERE integration_event = 'Waited' AND state = 'pending'}, '30', 60),
	'paused: the 30 messages wait in the inbox');
sql(q{SELECT evbus.resume_subscription('Waited', 'on_each(jsonb,jsonb)')});
handled_as_it_must('Waited', 'retries');

# --- EXECUTE revoked ------------------------------------------------------------------
sql(q{REVOKE EXECUTE ON FUNCTION on_denied(jsonb, jsonb) FROM PUBLIC, evbus_app});
stage('Denied', 5);
ok( wait_for_sql($node, 'postgres',
		q{SELECT count(*) FROM evbus.dead_letters WHERE integration_event = 'Denied'}, '5', 60),
	'the messages of a handler its subscriber may not execute are dead-lettered');
is(sql(q{SELECT string_agg(DISTINCT error_code, ',') FROM evbus.dead_letters WHERE integration_event = 'Denied'}),
	'42501', 'with 42501, as the executor refuses it');
is(sql(q{SELECT count(*) FROM effects WHERE event = 'Denied'}), '0', 'and it never ran');
is(sql(q{SELECT count(*) FROM evbus.dead_letters WHERE integration_event NOT IN ('Failing', 'Denied')}), '0',
	'no other dead letter');

$node->stop;
done_testing();

# 190_batch_handler.pl - a batch handler, (payloads jsonb[], headers
# jsonb[]), receives the messages of a received batch at once, in Kafka
# order, with each message's headers at the same index as its payload.
# All events are on ONE partition: Kafka order is the offsets' order, and
# within a key it is the staging order (keys may interleave differently).
#  - Exactly once, and in one call: 30 events of three keys, one staging
#    transaction, are handled once each, in calls of more than one message,
#    as the subscriber, and the headers array matches the payloads array.
#  - A poison message: the batch call fails, the consumer falls back to one
#    message at a time (one-element arrays); the poison message retries and
#    dead-letters like a per-message handler's failure, every other event
#    is handled once, and its key's later events wait for it and are
#    handled after its dead letter, in order.
#  - kill -9 of the consumer inside a batch call: after the crash restart
#    every event of that batch is handled exactly once (the killed call
#    left no effect) and the held one took 2 attempts.
# The handler records what it handled in a table with an identity column
# (the handling order) and no unique constraint (it counts effects).
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);

kafka_bootstrap();
my $prefix = "t190.$$.";
my $group = "t190_$$";
kafka_admin('topics', '--create', '--topic', "${prefix}$_", '--partitions', '1')
  for qw(Batched Poisoned Held);

my $node = new_node(
	'batch_handler',
	kafka => 1,
	conf => [
		"evbus.topic_prefix = '$prefix'",
		"evbus.group_name = '$group'",
		"evbus.retry_interval = '100ms'",
		"evbus.retry_max_interval = '300ms'",
		'restart_after_crash = on'
	]);
$node->safe_psql('postgres', 'CREATE EXTENSION evbus');

sub sql { return $node->safe_psql('postgres', $_[0]); }

sql(as_subscriber($node) . q{
CREATE TABLE effects (id bigint GENERATED ALWAYS AS IDENTITY, event text, seq int,
                      event_key text, message_id uuid, call_size int,
                      run_as name DEFAULT current_user);
CREATE TABLE control (hold boolean NOT NULL);
INSERT INTO control VALUES (true);
CREATE PROCEDURE on_batch(payloads jsonb[], headers jsonb[]) LANGUAGE plpgsql AS $$
DECLARE
	i int;
BEGIN
	FOR i IN 1 .. pg_catalog.array_length(payloads, 1) LOOP
		INSERT INTO public.effects (event, seq, event_key, message_id, call_size)
		VALUES (payloads[i]->>'event', (payloads[i]->>'seq')::int, payloads[i]->>'key',
				(headers[i]->>'cap-msg-id')::uuid, pg_catalog.array_length(payloads, 1));
		IF (payloads[i]->>'poison')::boolean THEN
			RAISE EXCEPTION 'event % is poison', payloads[i]->>'seq' USING ERRCODE = 'EV190';
		END IF;
		IF (payloads[i]->>'hold')::boolean THEN
			PERFORM pg_catalog.set_config('application_name', 'evbus-test-holding', true);
			WHILE (SELECT hold FROM public.control) LOOP
				PERFORM pg_catalog.pg_sleep(0.05);
			END LOOP;
		END IF;
	END LOOP;
END $$;
SELECT evbus.subscribe('Batched', 'on_batch(jsonb[],jsonb[])');
SELECT evbus.subscribe('Poisoned', 'on_batch(jsonb[],jsonb[])', max_retries => 2);
SELECT evbus.subscribe('Held', 'on_batch(jsonb[],jsonb[])');
});

sub stage { stage_keyed($node, @_); }

# each event's own headers: the message id recorded with a payload is that
# payload's message id in the inbox
sub headers_match
{
	my ($event) = @_;
	return sql(qq{SELECT count(*) FROM effects f JOIN evbus.inbox i ON i.message_id = f.message_id::text
	               WHERE f.event = '$event' AND (i.payload->>'seq')::int <> f.seq});
}

# --- exactly once, in batches -----------------------------------------------------
stage('Batched', 30);
ok(wait_for_sql($node, 'postgres', q{SELECT count(*) FROM effects WHERE event = 'Batched'}, '30', 60),
	'all 30 events handled');
sleep 1;
is(sql(q{SELECT count(*), count(DISTINCT seq), count(DISTINCT message_id) FROM effects WHERE event = 'Batched'}),
	'30|30|30', 'each exactly once');
cmp_ok(sql(q{SELECT max(call_size) FROM effects WHERE event = 'Batched'}), '>', 1,
	'the handler received several messages in one call');
is(handled_out_of_order($node, 'Batched'), '0', 'in Kafka order, each key in staging order');
is(headers_match('Batched'), '0', 'headers[i] is the headers of payloads[i]');
is(sql(q{SELECT string_agg(DISTINCT run_as, ',') FROM effects WHERE event = 'Batched'}), 'evbus_app',
	'the batch handler ran as its subscriber');
is(sql(q{SELECT count(*) FILTER (WHERE state = 'handled' AND attempts = 1) FROM evbus.inbox WHERE integration_event = 'Batched'}),
	'30', 'inbox: 30 handled in their first attempt');

# --- a poison message: fall back to one at a time -----------------------------------
# 12 events; seq 4 (key k1) always fails; k1's later events are 7 and 10
stage('Poisoned', 12, 4, '"poison": true');
ok( wait_for_sql($node, 'postgres',
		q{SELECT count(*) FROM evbus.dead_letters WHERE integration_event = 'Poisoned'}, '1', 60),
	'the poison message is dead-lettered');
ok( wait_for_sql($node, 'postgres',
		q{SELECT count(DISTINCT seq) FROM effects WHERE event = 'Poisoned' AND seq <> 4}, '11', 60),
	'the 11 other events are handled');
sleep 1;
is( sql(q{SELECT attempts, error_code FROM evbus.dead_letters WHERE integration_event = 'Poisoned'}),
	'3|EV190', 'the dead letter: 3 attempts (max_retries 2), the handler\'s SQLSTATE');
is( sql(q{SELECT (payload->>'seq') || ':' || state FROM evbus.inbox WHERE integration_event = 'Poisoned' AND state <> 'handled'}),
	'4:dead', 'only the poison message is dead in the inbox');
is(sql(q{SELECT count(*), count(DISTINCT seq) FROM effects WHERE event = 'Poisoned' AND seq <> 4}),
	'11|11', 'the others handled exactly once (the failed batch call left no effect)');
is(sql(q{SELECT count(*) FROM effects WHERE event = 'Poisoned' AND seq = 4}), '0',
	'the poison message left no effect');
is(sql(q{SELECT string_agg(seq::text, ',' ORDER BY id) FROM effects WHERE event = 'Poisoned' AND event_key = 'k1'}),
	'1,7,10', 'key k1: its events in order, the later ones after the dead letter');
for my $k (qw(k0 k2))
{
	is(sql(qq{SELECT string_agg(seq::text, ',' ORDER BY id) FROM effects WHERE event = 'Poisoned' AND event_key = '$k'}),
		$k eq 'k0' ? '3,6,9,12' : '2,5,8,11', "key $k handled in order");
}
is( sql(q{SELECT bool_and(f.id > (SELECT max(id) FROM effects WHERE event = 'Poisoned' AND event_key <> 'k1'))
          FROM effects f WHERE f.event = 'Poisoned' AND f.event_key = 'k1' AND f.seq > 4}),
	't', 'key k1 waited for its failing event; the other keys did not');
is(headers_match('Poisoned'), '0', 'headers match their payloads through the fallback');

# --- kill -9 inside a batch call --------------------------------------------------
stage('Held', 20, 10, '"hold": true');
ok( wait_for_sql($node, 'postgres',
		q{SELECT count(*) FROM pg_stat_activity WHERE application_name = 'evbus-test-holding'}, '1', 60),
	'a batch call holds at event 10');
my $pid = sql(q{SELECT pid FROM pg_stat_activity WHERE application_name = 'evbus-test-holding'});
note "killing pid $pid inside the batch handler";
kill 'KILL', $pid;
ok(wait_for_crash_restart($node, 1), 'the server restarted after the crash');
ok( wait_for_sql($node, 'postgres',
		qq{SELECT count(*) > 0 FROM pg_stat_activity WHERE backend_type LIKE 'evbus%' AND pid <> $pid},
		't', 60),
	'evbus runs again');
is(sql(q{SELECT count(*) FROM effects WHERE event = 'Held' AND seq = 10}), '0',
	'the killed call left no effect');
sql('UPDATE control SET hold = false');
ok(wait_for_sql($node, 'postgres', q{SELECT count(DISTINCT seq) FROM effects WHERE event = 'Held'}, '20', 90),
	'all 20 events handled after the restart');
sleep 1;
is(sql(q{SELECT count(*), count(DISTINCT seq), count(DISTINCT message_id) FROM effects WHERE event = 'Held'}),
	'20|20|20', 'each exactly once');
is(sql(q{SELECT attempts FROM evbus.inbox WHERE integration_event = 'Held' AND (payload->>'seq')::int = 10}),
	'2', 'the held event took 2 attempts (the killed one counted)');
is(sql(q{SELECT count(*) FROM evbus.inbox WHERE integration_event = 'Held' AND state = 'handled'}),
	'20', 'inbox: all 20 handled');
is(headers_match('Held'), '0', 'headers match their payloads after the crash');
is(sql(q{SELECT count(*) FROM evbus.dead_letters WHERE integration_event <> 'Poisoned'}), '0',
	'no other dead letter');

$node->stop;
done_testing();

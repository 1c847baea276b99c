# 248_handler_subtransactions.pl - no transaction of the consumer holds 64
# subtransaction ids or more.
#
# Each call of a per-message handler runs in a subtransaction, and one that
# writes takes a subtransaction id.  PostgreSQL caches 64 of them per
# transaction; past that the transaction "overflows", and while it runs
# every snapshot on the server (and on its hot standbys) checks recent
# transaction ids in pg_subtrans.  The consumer used to handle up to 500
# messages per transaction, one subtransaction each.  A handler that
# writes records the consumer's transaction (pg_current_xact_id()); with
# a backlog in Kafka:
#  - two per-message handlers of one topic, 600 messages: fewer than 64
#    calls in any transaction, each message handled once by each;
#  - the messages that wait (retries, a key's later events, requeued dead
#    letters): 300 dead letters of distinct keys requeued at once by
#    evbus.retry: fewer than 64 calls in any transaction;
#  - a handler with a subtransaction of its own (a PL/pgSQL EXCEPTION
#    block) takes two ids per call: fewer than 32 calls in any
#    transaction, the first one too (the consumer stops calling when the
#    transaction holds 56 ids; from then on it polls fewer messages);
#  - a batch handler is not held back: it still receives more than 64
#    messages in one call;
#  - a batch handler whose batch fails is called again one message at a
#    time, each call a subtransaction: fewer than 64 such calls in any
#    transaction (the rest wait for the next), each message handled once.
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;

kafka_bootstrap();
my $prefix = "t248.$$.";
my $group = "t248_$$";
kafka_admin('topics', '--create', '--topic', "${prefix}$_", '--partitions', '1')
  for qw(Each Waited Batch Guarded Failing);

my $node = new_node(
	'handler_subtransactions',
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
CREATE TABLE calls (handler text, seq int, xact xid8, messages int);
CREATE TABLE control (failing boolean NOT NULL);
INSERT INTO control VALUES (true);
CREATE FUNCTION first_handler(payload jsonb, headers jsonb) RETURNS void LANGUAGE sql AS $$
	INSERT INTO public.calls VALUES ('first', (payload->>'seq')::int, pg_catalog.pg_current_xact_id(), 1);
$$;
CREATE FUNCTION second_handler(payload jsonb, headers jsonb) RETURNS void LANGUAGE sql AS $$
	INSERT INTO public.calls VALUES ('second', (payload->>'seq')::int, pg_catalog.pg_current_xact_id(), 1);
$$;
CREATE PROCEDURE waited_handler(payload jsonb) LANGUAGE plpgsql AS $$
BEGIN
	IF (SELECT failing FROM public.control) THEN
		RAISE EXCEPTION 'failing while the flag is set';
	END IF;
	INSERT INTO public.calls VALUES ('waited', (payload->>'seq')::int, pg_catalog.pg_current_xact_id(), 1);
END $$;
CREATE PROCEDURE guarded_handler(payload jsonb) LANGUAGE plpgsql AS $$
BEGIN
	BEGIN
		INSERT INTO public.calls VALUES ('guarded', (payload->>'seq')::int, pg_catalog.pg_current_xact_id(), 1);
	EXCEPTION WHEN unique_violation THEN
		NULL;
	END;
END $$;
CREATE SEQUENCE failed_batch_size;
CREATE FUNCTION failing_batch(payloads jsonb[], headers jsonb[]) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	IF EXISTS (SELECT FROM pg_catalog.unnest(payloads) p WHERE (p->>'seq')::int = 250) THEN
		IF pg_catalog.cardinality(payloads) > 1 THEN
			/* a sequence keeps its value when the call rolls back */
			PERFORM pg_catalog.setval('public.failed_batch_size', pg_catalog.cardinality(payloads));
		END IF;
		RAISE EXCEPTION 'message 250 fails';
	END IF;
	INSERT INTO public.calls
	SELECT 'failing', (p->>'seq')::int, pg_catalog.pg_current_xact_id(), pg_catalog.cardinality(payloads)
	  FROM pg_catalog.unnest(payloads) p;
END $$;
CREATE FUNCTION batch_handler(payloads jsonb[], headers jsonb[]) RETURNS void LANGUAGE sql AS $$
	INSERT INTO public.calls VALUES ('batch', NULL, pg_catalog.pg_current_xact_id(),
	                                 pg_catalog.cardinality(payloads));
$$;
});

# the backlog is in Kafka before anything subscribes
sql(q{SELECT count(evbus.publish('Each', jsonb_build_object('seq', g), 'k' || g % 10))
        FROM generate_series(1, 600) g});
sql(q{SELECT count(evbus.publish('Batch', jsonb_build_object('seq', g), 'k' || g % 10))
        FROM generate_series(1, 1000) g});
ok(wait_for_sql($node, 'postgres', 'SELECT count(*) FROM evbus.outbox', '0', 60),
	'the backlog is published');

sql(as_subscriber($node) . q{
SELECT evbus.subscribe('Each', 'first_handler(jsonb,jsonb)');
SELECT evbus.subscribe('Each', 'second_handler(jsonb,jsonb)');
SELECT evbus.subscribe('Batch', 'batch_handler(jsonb[],jsonb[])');
});
ok( wait_for_sql($node, 'postgres',
		q{SELECT count(*) FROM calls WHERE handler IN ('first', 'second')}, '1200', 90),
	'two per-message handlers: 600 messages handled by each');
is( sql(q{SELECT count(DISTINCT seq) FILTER (WHERE handler = 'first'),
                 count(DISTINCT seq) FILTER (WHERE handler = 'second') FROM calls}),
	'600|600', 'each message once by each handler');
my ($most, $xacts) = split /\|/, sql(q{
	SELECT max(n), count(*) FROM (SELECT xact, count(*) AS n FROM calls
	                               WHERE handler IN ('first', 'second') GROUP BY xact) t});
note "per-message calls: at most $most in one transaction, $xacts transactions";
cmp_ok($most, '<', 64, 'fewer than 64 handler calls in any transaction');

ok(wait_for_sql($node, 'postgres', q{SELECT sum(messages) FROM calls WHERE handler = 'batch'}, '1000', 90),
	'the batch handler got all 1,000 messages');
my $largest = sql(q{SELECT max(messages) FROM calls WHERE handler = 'batch'});
note "the largest batch: $largest messages";
cmp_ok($largest, '>', 64, 'a batch handler still receives more than 64 messages in one call');

# a handler with an EXCEPTION block: two subtransaction ids per call
sql(q{SELECT count(evbus.publish('Guarded', jsonb_build_object('seq', g), 'k' || g % 10))
        FROM generate_series(1, 600) g});
ok(wait_for_sql($node, 'postgres', 'SELECT count(*) FROM evbus.outbox', '0', 60),
	'600 events for the guarded handler are published');
sql(as_subscriber($node) . q{SELECT evbus.subscribe('Guarded', 'guarded_handler(jsonb)')});
ok(wait_for_sql($node, 'postgres', q{SELECT count(DISTINCT seq) FROM calls WHERE handler = 'guarded'}, '600', 90),
	'the guarded handler handled the 600');
my ($over, $most_after) = split /\|/, sql(q{
	SELECT count(*) FILTER (WHERE n >= 32), max(n) FILTER (WHERE n < 32)
	  FROM (SELECT xact, count(*) AS n FROM calls WHERE handler = 'guarded' GROUP BY xact) t});
note "guarded: $over transaction(s) of 32 calls or more, the others at most $most_after";
is($over, '0', 'no transaction made 32 calls or more (64 ids), the first one included');
is(sql(q{SELECT count(*) FROM calls WHERE handler = 'guarded'}), '600', 'each call once');

# the messages that wait: 300 dead letters, requeued at once
sql(as_subscriber($node) . q{
SELECT evbus.subscribe('Waited', 'waited_handler(jsonb)', max_retries => 0);
});
sql(q{SELECT count(evbus.publish('Waited', jsonb_build_object('seq', g), 'w' || g))
        FROM generate_series(1, 300) g});
ok( wait_for_sql($node, 'postgres',
		q{SELECT count(*) FROM evbus.dead_letters WHERE integration_event = 'Waited'}, '300', 90),
	'300 messages failed and are dead letters');
sql('UPDATE control SET failing = false');
is(sql(q{SELECT evbus.retry(side => 'consume', integration_event => 'Waited')}), '300',
	'evbus.retry requeues the 300');
ok(wait_for_sql($node, 'postgres', q{SELECT count(*) FROM calls WHERE handler = 'waited'}, '300', 90),
	'requeued, the 300 messages are handled');
($most, $xacts) = split /\|/, sql(q{
	SELECT max(n), count(*) FROM (SELECT xact, count(*) AS n FROM calls
	                               WHERE handler = 'waited' GROUP BY xact) t});
note "waited: at most $most in one transaction, $xacts transactions";
cmp_ok($most, '<', 64, 'fewer than 64 calls of waiting messages in any transaction');
is(sql(q{SELECT count(DISTINCT seq) FROM calls WHERE handler = 'waited'}), '300',
	'each waiting message handled once');
is(sql('SELECT count(*) FROM evbus.dead_letters'), '0', 'no dead letter left');

# a batch handler whose batch fails: one message at a time, a bounded few per transaction
sql(q{SELECT count(evbus.publish('Failing', jsonb_build_object('seq', g), 'f' || g % 10))
        FROM generate_series(1, 600) g});
ok(wait_for_sql($node, 'postgres', 'SELECT count(*) FROM evbus.outbox', '0', 60),
	'600 events for the failing batch handler are published');
sql(as_subscriber($node)
	  . q{SELECT evbus.subscribe('Failing', 'failing_batch(jsonb[],jsonb[])', max_retries => 0)});
ok( wait_for_sql($node, 'postgres',
		q{SELECT count(*) FROM evbus.dead_letters WHERE integration_event = 'Failing'}, '1', 90),
	'the failing message is a dead letter');
ok(wait_for_sql($node, 'postgres', q{SELECT count(*) FROM calls WHERE handler = 'failing'}, '599', 90),
	'the 599 others are handled');
is( sql(q{SELECT count(DISTINCT seq), count(*) FILTER (WHERE seq = 250) FROM calls WHERE handler = 'failing'}),
	'599|0', 'each of them once, the failing one never');
my $failed_batch = sql('SELECT last_value FROM failed_batch_size');
my ($alone, $xacts_alone) = split /\|/, sql(q{
	SELECT max(n), count(*) FROM (SELECT xact, count(*) AS n FROM calls
	                               WHERE handler = 'failing' AND messages = 1 GROUP BY xact) t});
note "failing batch: a batch of $failed_batch failed; then at most $alone one-message calls "
  . "in one transaction, $xacts_alone transactions";
cmp_ok($failed_batch, '>', 64, 'the batch that failed held more than 64 messages');
cmp_ok($alone, '<', 64, 'fewer than 64 one-message calls in any transaction');

$node->stop;
done_testing();

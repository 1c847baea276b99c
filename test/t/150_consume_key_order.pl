# 150_consume_key_order.pl - per-key order through handler retries (I4).
# All events are on ONE partition (the topic is created with one), so
# "other keys flow" cannot come from other partitions.
#  - Key "bad": its first event fails while a gate is closed and is retried;
#    its later events wait ('pending', never attempted) and are handled after
#    it, in order, once the gate opens.  Keys "good-a/b/c", interleaved with
#    them in the same partition, are all handled while "bad" still fails.
#  - Key "x" (max_retries 2): its first event always fails; once it is dead
#    the later events of "x" are handled, in order, after the dead letter.
#  - Key "hot": 300 events wait behind its first, which fails while the
#    gate is closed; once it opens they run in order, many in each
#    transaction (they went one per transaction, two commits each), and
#    hot/150 failing once on the way holds the rest back behind it.
# The handler records what it handled in a table with an identity column,
# which gives the handling order.
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);

kafka_bootstrap();
my $prefix = "t150.$$.";
my $group = "t150_$$";
my $topic = "${prefix}Ordered";
kafka_admin('topics', '--create', '--topic', $topic, '--partitions', '1');

my $node = new_node(
	'key_order',
	kafka => 1,
	conf => [
		"evbus.topic_prefix = '$prefix'",
		"evbus.group_name = '$group'",
		"evbus.retry_interval = '100ms'",
		"evbus.retry_max_interval = '500ms'"
	]);
$node->safe_psql('postgres', 'CREATE EXTENSION evbus');

sub sql { return $node->safe_psql('postgres', $_[0]); }

sql(as_subscriber($node) . q{
CREATE TABLE handled_log (id bigint GENERATED ALWAYS AS IDENTITY, event_key text, n int,
                          message_id uuid, at timestamptz DEFAULT clock_timestamp(),
                          xact xid8 DEFAULT pg_catalog.pg_current_xact_id());
CREATE TABLE gate (open boolean NOT NULL);
INSERT INTO gate VALUES (false);
CREATE SEQUENCE fail_once_calls;
CREATE PROCEDURE record_order(payload jsonb, headers jsonb) LANGUAGE plpgsql AS $$
BEGIN
	IF (payload->>'fail_once')::boolean THEN
		IF pg_catalog.nextval('public.fail_once_calls') = 1 THEN
			RAISE EXCEPTION 'event % of key % fails once', payload->>'n', payload->>'key' USING ERRCODE = 'EV012';
		END IF;
	END IF;
	IF (payload->>'always_fail')::boolean THEN
		RAISE EXCEPTION 'event % of key % always fails', payload->>'n', payload->>'key' USING ERRCODE = 'EV010';
	END IF;
	IF (payload->>'fail')::boolean AND NOT (SELECT open FROM public.gate) THEN
		RAISE EXCEPTION 'gate closed for key %', payload->>'key' USING ERRCODE = 'EV011';
	END IF;
	INSERT INTO public.handled_log (event_key, n, message_id)
	VALUES (payload->>'key', (payload->>'n')::int, (headers->>'cap-msg-id')::uuid);
END $$;
SELECT evbus.subscribe('Ordered', 'record_order(jsonb,jsonb)', max_retries => 1000);
SELECT evbus.subscribe('OrderedDead', 'record_order(jsonb,jsonb)', max_retries => 2);
});

# --- a failing key holds back its own later events only --------------------------
# one transaction, so this is also the order in the partition:
# bad/1 (fails), good-a/1, good-b/1, good-c/1, bad/2, good-a/2, ...
my @keys = qw(bad good-a good-b good-c);
my $stage = "BEGIN;\n";
for my $i (1 .. 5)
{
	for my $k (@keys)
	{
		my $fail = ($k eq 'bad' && $i == 1) ? 'true' : 'false';
		$stage .= "SELECT evbus.publish('Ordered', '{\"key\": \"$k\", \"n\": $i, \"fail\": $fail}', '$k');\n";
	}
}
$stage .= "COMMIT;\n";
sql($stage);

ok(wait_for_sql($node, 'postgres', q{SELECT count(*) FROM handled_log WHERE event_key LIKE 'good-%'}, '15', 60),
	'all 15 events of the other keys are handled while key bad fails');
is(sql(q{SELECT count(*) FROM handled_log WHERE event_key = 'bad'}), '0',
	'no event of key bad is handled while its first one fails');
ok( wait_for_sql($node, 'postgres',
		q{SELECT state = 'pending' AND attempts >= 2 FROM evbus.inbox WHERE payload->>'key' = 'bad' AND payload->>'n' = '1'},
		't', 30),
	'bad/1 is pending and being retried');
# A retry of bad/1 counts the attempts of the rows it may run (bad/1 and
# its followers) in a transaction of its own before it runs them, and
# takes the followers' back when bad/1 fails (inbox_due.c, inbox_retry.c):
# between the two a reader sees bad/2..5 at 1.  Between retries they are
# at 0; one that had run would stay at 1 or more.
ok( wait_for_sql($node, 'postgres',
		q{SELECT string_agg(payload->>'n' || ':' || state || ':' || attempts, ',' ORDER BY kafka_offset)
            FROM evbus.inbox WHERE payload->>'key' = 'bad' AND payload->>'n' <> '1'},
		'2:pending:0,3:pending:0,4:pending:0,5:pending:0', 10),
	'bad/2..5 wait as pending, never attempted');
sleep 1.5;
is(sql(q{SELECT count(*) FROM handled_log WHERE event_key = 'bad'}), '0',
	'still none of key bad handled 1.5 s later');
my $attempts_closed = sql(q{SELECT attempts FROM evbus.inbox WHERE payload->>'key' = 'bad' AND payload->>'n' = '1'});
note "bad/1: $attempts_closed attempts while the gate was closed";

sql(q{UPDATE gate SET open = true});
ok(wait_for_sql($node, 'postgres', q{SELECT count(*) FROM handled_log}, '20', 30), 'all 20 events handled once the gate opens');
is(sql(q{SELECT string_agg(n::text, ',' ORDER BY id) FROM handled_log WHERE event_key = 'bad'}),
	'1,2,3,4,5', 'key bad handled in order, its first event first');
for my $k (qw(good-a good-b good-c))
{
	is(sql(qq{SELECT string_agg(n::text, ',' ORDER BY id) FROM handled_log WHERE event_key = '$k'}),
		'1,2,3,4,5', "key $k handled in order");
}
is( sql(q{SELECT max(id) FILTER (WHERE event_key <> 'bad') < min(id) FILTER (WHERE event_key = 'bad') FROM handled_log}),
	't', 'every event of the other keys was handled before the retry of bad/1 succeeded');
is(sql(q{SELECT count(*), count(DISTINCT message_id) FROM handled_log}), '20|20', 'each event handled once');
cmp_ok(sql(q{SELECT attempts FROM evbus.inbox WHERE payload->>'key' = 'bad' AND payload->>'n' = '1'}),
	'>', $attempts_closed - 1, 'bad/1 attempts kept counting');
is(sql(q{SELECT count(*) FROM evbus.inbox WHERE topic = '} . $topic . q{' AND payload->>'key' = 'bad' AND state = 'handled' AND attempts = 1 AND payload->>'n' <> '1'}),
	'4', 'bad/2..5 each handled in their first attempt');

# --- a dead event releases its key ------------------------------------------------
sql(q{
BEGIN;
SELECT evbus.publish('OrderedDead', '{"key": "x", "n": 1, "always_fail": true}', 'x');
SELECT evbus.publish('OrderedDead', '{"key": "x", "n": 2}', 'x');
SELECT evbus.publish('OrderedDead', '{"key": "y", "n": 1}', 'y');
SELECT evbus.publish('OrderedDead', '{"key": "x", "n": 3}', 'x');
COMMIT;
});
ok(wait_for_sql($node, 'postgres', q{SELECT count(*) FROM handled_log WHERE event_key IN ('x', 'y')}, '3', 60),
	'x/2, x/3 and y/1 handled');
is(sql(q{SELECT state, attempts FROM evbus.inbox WHERE payload->>'key' = 'x' AND payload->>'n' = '1'}),
	'dead|3', 'x/1 is dead after max_retries + 1 = 3 attempts');
is(sql(q{SELECT string_agg(n::text, ',' ORDER BY id) FROM handled_log WHERE event_key = 'x'}),
	'2,3', 'then the later events of key x, in order');
is( sql(q{SELECT bool_and(h.at >= d.dead_at) FROM handled_log h,
                  (SELECT dead_at FROM evbus.dead_letters WHERE payload->>'key' = 'x') d
            WHERE h.event_key = 'x'}),
	't', 'x/2 and x/3 were handled after x/1 was dead-lettered');
is(sql(q{SELECT count(*) FROM evbus.dead_letters}), '1', 'one dead letter in all');

# --- a key's backlog runs in order, many in a transaction -----------------------
sql(q{UPDATE gate SET open = false});
sql(q{SELECT count(evbus.publish('Ordered', jsonb_build_object('key', 'hot', 'n', g, 'fail', g = 1,
                                                               'fail_once', g = 150), 'hot'))
        FROM generate_series(1, 300) g});
ok( wait_for_sql($node, 'postgres',
		q{SELECT count(*) FILTER (WHERE state = 'pending') FROM evbus.inbox WHERE payload->>'key' = 'hot'},
		'300', 60),
	'hot/1 fails while the gate is closed, the 299 others wait behind it');
sql(q{UPDATE gate SET open = true});
ok(wait_for_sql($node, 'postgres', q{SELECT count(*) FROM handled_log WHERE event_key = 'hot'}, '300', 60),
	'once it opens, the 300 are handled');
is( sql(q{SELECT string_agg(n::text, ',' ORDER BY id) = string_agg(n::text, ',' ORDER BY n),
                 count(DISTINCT n) FROM handled_log WHERE event_key = 'hot'}),
	't|300', 'in order, each once');
is(sql(q{SELECT attempts FROM evbus.inbox WHERE payload->>'key' = 'hot' AND payload->>'n' = '150'}),
	'2', 'hot/150 failed once on the way, and the later ones waited for its retry');
my $xacts = sql(q{SELECT count(DISTINCT xact) FROM handled_log WHERE event_key = 'hot'});
note "key hot: 300 events handled in $xacts transactions";
cmp_ok($xacts, '<', 30, 'many of a key in one transaction');

$node->stop;
done_testing();

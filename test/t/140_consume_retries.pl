# 140_consume_retries.pl - failing handlers: retries with backoff, dead
# letters, NOTIFY, evbus.retry, several handlers of one event each a unit
# of its own, transaction control and the handler timeout.
#  - a handler failing twice then succeeding: handled once, attempts = 3,
#    the two errors recorded;
#  - a handler that always fails, max_retries 3: exactly 4 attempts, not
#    back to back (backoff), then a dead letter with the payload and every
#    error, NOTIFY evbus_dead_letter with its message id, inbox 'dead';
#    evbus.retry() requeues it and it is handled once the handler succeeds;
#  - without a max_retries argument the setting evbus.max_retries applies;
#  - two handlers of one event are two units: a failure of one is retried
#    for that handler only, the other's effect is committed once;
#  - COMMIT inside a handler procedure is a failure recorded like any other;
#  - a handler running longer than evbus.handler_timeout is cancelled
#    (57014) and that is a failure like any other;
#  - messages arriving together: every handler call is a recorded attempt
#    (no handler runs more often than its attempts say);
#  - a handler's error message of 90 MB is kept cut to 8 kB, saying how
#    long it was, in the inbox, each attempt's errors, the dead letter and
#    the log (kept whole three times over, it made the dead letter's row
#    too large: the consumer exited).
# A sequence (not rolled back) counts handler calls; effects go to a table
# without a unique constraint.
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);

kafka_bootstrap();
my $prefix = "t140.$$.";
my $group = "t140_$$";
my $node = new_node(
	'retries',
	kafka => 1,
	conf => [
		"evbus.topic_prefix = '$prefix'",
		"evbus.group_name = '$group'",
		"evbus.retry_interval = '100ms'",
		"evbus.retry_max_interval = '500ms'",
		'evbus.max_retries = 1',
		"evbus.handler_timeout = '1s'"
	]);
$node->safe_psql('postgres', 'CREATE EXTENSION evbus');

sub sql { return $node->safe_psql('postgres', $_[0]); }

sql(as_subscriber($node) . q{
CREATE TABLE effects (handler text, message_id uuid);   -- no unique constraint
CREATE TABLE flag (ok boolean NOT NULL);
INSERT INTO flag VALUES (false);
CREATE SEQUENCE flaky_calls;
CREATE SEQUENCE doomed_calls;
CREATE SEQUENCE default_calls;
CREATE SEQUENCE multi_a_calls;
CREATE SEQUENCE multi_b_calls;
CREATE SEQUENCE txc_calls;

CREATE PROCEDURE flaky(payload jsonb, headers jsonb) LANGUAGE plpgsql AS $$
BEGIN
	IF pg_catalog.nextval('public.flaky_calls') <= 2 THEN
		RAISE EXCEPTION 'flaky failure %', pg_catalog.currval('public.flaky_calls') USING ERRCODE = 'EV001';
	END IF;
	INSERT INTO public.effects VALUES ('flaky', (headers->>'cap-msg-id')::uuid);
END $$;

CREATE PROCEDURE doomed(payload jsonb, headers jsonb) LANGUAGE plpgsql AS $$
BEGIN
	PERFORM pg_catalog.nextval('public.doomed_calls');
	IF NOT (SELECT ok FROM public.flag) THEN
		RAISE EXCEPTION 'doomed event %', payload->>'n' USING ERRCODE = 'EV002';
	END IF;
	INSERT INTO public.effects VALUES ('doomed', (headers->>'cap-msg-id')::uuid);
END $$;

CREATE FUNCTION default_fails(payload jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	PERFORM pg_catalog.nextval('public.default_calls');
	RAISE EXCEPTION 'always' USING ERRCODE = 'EV003';
END $$;

-- each of the two fails on its own first call only
CREATE PROCEDURE multi_a(payload jsonb, headers jsonb) LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO public.effects VALUES ('multi_a', (headers->>'cap-msg-id')::uuid);
	IF pg_catalog.nextval('public.multi_a_calls') = 1 THEN
		RAISE EXCEPTION 'multi_a first call' USING ERRCODE = 'EV004';
	END IF;
END $$;
CREATE PROCEDURE multi_b(payload jsonb, headers jsonb) LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO public.effects VALUES ('multi_b', (headers->>'cap-msg-id')::uuid);
	IF pg_catalog.nextval('public.multi_b_calls') = 1 THEN
		RAISE EXCEPTION 'multi_b first call' USING ERRCODE = 'EV005';
	END IF;
END $$;

CREATE PROCEDURE tx_control(payload jsonb, headers jsonb) LANGUAGE plpgsql AS $$
BEGIN
	PERFORM pg_catalog.nextval('public.txc_calls');
	INSERT INTO public.effects VALUES ('txc', (headers->>'cap-msg-id')::uuid);
	COMMIT;
	INSERT INTO public.effects VALUES ('txc-after-commit', (headers->>'cap-msg-id')::uuid);
END $$;

CREATE PROCEDURE slow(payload jsonb, headers jsonb) LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO public.effects VALUES ('slow', (headers->>'cap-msg-id')::uuid);
	PERFORM pg_catalog.pg_sleep(5);
END $$;

SELECT evbus.subscribe('Flaky', 'flaky(jsonb,jsonb)', max_retries => 5);
SELECT evbus.subscribe('Doomed', 'doomed(jsonb,jsonb)', max_retries => 3);
SELECT evbus.subscribe('DefaultRetries', 'default_fails(jsonb)');
SELECT evbus.subscribe('Multi', 'multi_a(jsonb,jsonb)', max_retries => 5);
SELECT evbus.subscribe('Multi', 'multi_b(jsonb,jsonb)', max_retries => 5);
SELECT evbus.subscribe('TxControl', 'tx_control(jsonb,jsonb)', max_retries => 0);
SELECT evbus.subscribe('Slow', 'slow(jsonb,jsonb)', max_retries => 0);
});

my $listener = $node->background_psql('postgres');
$listener->query_safe('LISTEN evbus_dead_letter');
# every evbus process (launcher, publisher worker, consumer): none may crash
my $evbus_pids_sql = q{SELECT string_agg(backend_type || ' ' || pid, ', ' ORDER BY backend_type, pid)
                         FROM pg_stat_activity WHERE backend_type LIKE 'evbus%'};
ok(wait_for_sql($node, 'postgres', q{SELECT evbus.consumer_pid() IS NOT NULL}, 't', 30), 'the consumer runs');
my $worker = sql($evbus_pids_sql);
note "evbus processes: $worker";

my $flaky = sql(q{SELECT evbus.publish('Flaky', '{"n": 1}')});
my $doomed = sql(q{SELECT evbus.publish('Doomed', '{"n": 1}', 'doomed-key', '{"tenant": "acme"}')});
my $default = sql(q{SELECT evbus.publish('DefaultRetries', '{"n": 1}')});
my $multi = sql(q{SELECT evbus.publish('Multi', '{"n": 1}')});
my $txc = sql(q{SELECT evbus.publish('TxControl', '{"n": 1}')});
my $slow = sql(q{SELECT evbus.publish('Slow', '{"n": 1}')});

sub inbox
{
	my ($id, $cols) = @_;
	return sql("SELECT $cols FROM evbus.inbox WHERE message_id = '$id'");
}

# --- fails twice, then succeeds --------------------------------------------------
ok(wait_for_sql($node, 'postgres', "SELECT state FROM evbus.inbox WHERE message_id = '$flaky'", 'handled', 60),
	'flaky: handled in the end');
is(inbox($flaky, 'attempts'), '3', 'flaky: attempts = 3');
is(sql(q{SELECT last_value FROM flaky_calls}), '3', 'flaky: the handler was called 3 times');
is(sql(qq{SELECT count(*) FROM effects WHERE handler = 'flaky'}), '1', 'flaky: its effect committed once');
is(inbox($flaky, 'jsonb_array_length(errors)'), '2', 'flaky: both failed attempts are in the error history');
is( inbox($flaky,
		q{(errors->0)::text ~ 'EV001' AND (errors->0)::text ~ 'flaky failure 1'
		  AND (errors->1)::text ~ 'EV001' AND (errors->1)::text ~ 'flaky failure 2'}),
	't', 'flaky: the history has each attempt\'s SQLSTATE and message, in order');

# --- always fails: max_retries 3 -> 4 attempts, dead letter, NOTIFY -------------
ok(wait_for_sql($node, 'postgres', "SELECT state FROM evbus.inbox WHERE message_id = '$doomed'", 'dead', 60),
	'doomed: inbox state dead');
is(inbox($doomed, 'attempts'), '4', 'doomed: attempts = max_retries + 1 = 4');
is(inbox($doomed, 'last_error_code || \' \' || last_error_message'), 'EV002 doomed event 1',
	'doomed: last error code and message');
is(inbox($doomed, 'jsonb_array_length(errors)'), '4', 'doomed: 4 errors in the history');
sleep 1.5;
is(sql(q{SELECT last_value FROM doomed_calls}), '4', 'doomed: exactly 4 calls, none after the last attempt');
is(sql(qq{SELECT count(*) FROM effects WHERE handler = 'doomed'}), '0', 'doomed: no effect');
is( sql(qq{SELECT direction, group_name, integration_event, topic, event_key, payload->>'n',
                headers->>'cap-msg-id', headers->>'tenant', attempts, jsonb_array_length(errors), error_code
           FROM evbus.dead_letters WHERE message_id = '$doomed'}),
	"consume|$group|Doomed|${prefix}Doomed|doomed-key|1|$doomed|acme|4|4|EV002",
	'doomed: dead letter with group, event, topic, key, payload, headers, attempts, errors, SQLSTATE');
like(sql(qq{SELECT error_message FROM evbus.dead_letters WHERE message_id = '$doomed'}),
	qr/doomed event 1/, 'doomed: dead letter has the error message');
# 3 retries at about 100 + 200 + 400 ms (+-20%): not back to back
my $span = sql(qq{SELECT extract(epoch FROM d.dead_at - i.received_at)
                  FROM evbus.dead_letters d JOIN evbus.inbox i USING (message_id) WHERE message_id = '$doomed'});
cmp_ok($span, '>=', 0.5, "doomed: retries are spaced by the backoff ($span s from receipt to dead letter)");
cmp_ok($span, '<', 10, 'doomed: and not by far more than evbus.retry_max_interval allows');

my $notified = $listener->query_safe('SELECT 1');
like($notified, qr/Asynchronous notification "evbus_dead_letter" with payload "\Q$doomed\E"/,
	'NOTIFY evbus_dead_letter with the message id');

# the key moves on: a later event of the same key is handled
sql(q{UPDATE flag SET ok = true});
my $doomed2 = sql(q{SELECT evbus.publish('Doomed', '{"n": 2}', 'doomed-key')});
ok(wait_for_sql($node, 'postgres', "SELECT state FROM evbus.inbox WHERE message_id = '$doomed2'", 'handled', 30),
	'doomed: a later event of the dead key is handled');

# evbus.retry brings it back; the handler succeeds now
is(sql(qq{SELECT evbus.retry('$doomed')}), 't', 'evbus.retry finds the dead event');
ok(wait_for_sql($node, 'postgres', "SELECT state FROM evbus.inbox WHERE message_id = '$doomed'", 'handled', 30),
	'doomed: handled after evbus.retry');
is(inbox($doomed, 'attempts'), '1', 'doomed: attempts were reset by evbus.retry');
is(sql(qq{SELECT count(*) FROM effects WHERE handler = 'doomed' AND message_id = '$doomed'}), '1',
	'doomed: its effect committed once');
is(sql(q{SELECT last_value FROM doomed_calls}), '6', 'doomed: 4 + 1 + 1 calls in all');
note 'dead letters of the retried event left: '
  . sql(qq{SELECT count(*) FROM evbus.dead_letters WHERE message_id = '$doomed'});
is(sql(q{SELECT evbus.retry(gen_random_uuid())}), 'f', 'evbus.retry of an unknown message id: false');

# --- no max_retries argument: evbus.max_retries (1 here) ------------------------------
ok(wait_for_sql($node, 'postgres', "SELECT state FROM evbus.inbox WHERE message_id = '$default'", 'dead', 60),
	'default max_retries: dead in the end');
is(inbox($default, 'attempts'), '2', 'default max_retries: evbus.max_retries = 1 gives 2 attempts');
is(sql(q{SELECT last_value FROM default_calls}), '2', 'default max_retries: 2 calls');

# --- two handlers, two units ------------------------------------------------------
ok( wait_for_sql($node, 'postgres',
		"SELECT string_agg(state, ',') FROM evbus.inbox WHERE message_id = '$multi'", 'handled,handled', 60),
	'multi: handled in the end, for each handler');
is(inbox($multi, q{string_agg(handler || ' ' || attempts, ',' ORDER BY handler)}),
	'public.multi_a(pg_catalog.jsonb,pg_catalog.jsonb) 2,public.multi_b(pg_catalog.jsonb,pg_catalog.jsonb) 2',
	'multi: one inbox row per handler, 2 attempts each (each failed once)');
is(sql(q{SELECT handler, count(*) FROM effects WHERE handler LIKE 'multi%' GROUP BY 1 ORDER BY 1}),
	"multi_a|1\nmulti_b|1",
	'multi: each handler\'s effect committed once (its failed attempt rolled back its own effect only)');
is(sql(q{SELECT (SELECT last_value FROM multi_a_calls) + (SELECT last_value FROM multi_b_calls)}), '4',
	'multi: each handler ran once per attempt of its own (4 calls in all)');

# --- transaction control inside a handler -----------------------------------------
ok(wait_for_sql($node, 'postgres', "SELECT state FROM evbus.inbox WHERE message_id = '$txc'", 'dead', 60),
	'COMMIT in a handler: the attempt failed (max_retries 0: dead)');
is(inbox($txc, 'attempts || \' \' || last_error_code'), '1 2D000',
	'COMMIT in a handler: recorded as SQLSTATE 2D000 (invalid transaction termination)');
is(sql(qq{SELECT error_code FROM evbus.dead_letters WHERE message_id = '$txc'}), '2D000',
	'COMMIT in a handler: dead letter with the error');
is(sql(qq{SELECT count(*) FROM effects WHERE handler LIKE 'txc%'}), '0',
	'COMMIT in a handler: nothing the handler did was committed');
is(sql(q{SELECT last_value FROM txc_calls}), '1', 'COMMIT in a handler: called once');

# --- handler timeout ----------------------------------------------------------------
ok(wait_for_sql($node, 'postgres', "SELECT state FROM evbus.inbox WHERE message_id = '$slow'", 'dead', 60),
	'slow handler: the attempt failed');
is(inbox($slow, 'last_error_code'), '57014', 'slow handler: cancelled by evbus.handler_timeout (57014)');
is(sql(qq{SELECT count(*) FROM effects WHERE handler = 'slow'}), '0', 'slow handler: no effect');

# --- calls = attempts, also when messages arrive together ------------------------
# Five events published before anyone subscribes arrive in one fetch; the
# third always fails.  Each handler call is an attempt: the four good ones
# are called once, the bad one max_retries + 1 = 2 times -- 6 calls, not
# more (running the batch optimistically and then again message by message
# would call every handler once more than the attempts recorded).
sql(as_subscriber($node) . q{
CREATE SEQUENCE batch_calls;
CREATE PROCEDURE batch_member(payload jsonb, headers jsonb) LANGUAGE plpgsql AS $$
BEGIN
	PERFORM pg_catalog.nextval('public.batch_calls');
	IF (payload->>'fail')::boolean THEN
		RAISE EXCEPTION 'batch member % fails', payload->>'n' USING ERRCODE = 'EV006';
	END IF;
	INSERT INTO public.effects VALUES ('batch', (headers->>'cap-msg-id')::uuid);
END $$;
});
sql(q{SELECT count(evbus.publish('Batch', jsonb_build_object('n', g, 'fail', g = 3), 'b' || g))
        FROM generate_series(1, 5) g});
ok(wait_for_sql($node, 'postgres', q{SELECT count(*) = 0 FROM evbus.outbox}, 't', 30), 'batch: published');
sql(as_subscriber($node) . q{SELECT evbus.subscribe('Batch', 'batch_member(jsonb,jsonb)', max_retries => 1)});
ok( wait_for_sql($node, 'postgres',
		qq{SELECT string_agg(payload->>'n' || ':' || state || ':' || attempts, ',' ORDER BY payload->>'n')
		     FROM evbus.inbox WHERE topic = '${prefix}Batch'},
		'1:handled:1,2:handled:1,3:dead:2,4:handled:1,5:handled:1', 60),
	'batch: the good ones handled in one attempt, the bad one dead after 2');
is(sql(q{SELECT count(*) FROM effects WHERE handler = 'batch'}), '4', 'batch: 4 effects');
sleep 1;
is(sql(q{SELECT last_value FROM batch_calls}), '6',
	'batch: the handler was called 6 times, once per recorded attempt');

# --- a handler's error message of 90 MB -----------------------------------------------
sql(as_subscriber($node) . q{
CREATE PROCEDURE loud(payload jsonb) LANGUAGE plpgsql AS $$
BEGIN
	RAISE EXCEPTION 'é%', pg_catalog.repeat('x', 90000000);
END $$;
SELECT evbus.subscribe('Loud', 'loud(jsonb)', max_retries => 2);
});
my $log_offset = -s $node->logfile;
sql(q{SELECT evbus.publish('Loud', '{}')});
ok( wait_for_sql($node, 'postgres', q{SELECT count(*) FROM evbus.dead_letters WHERE integration_event = 'Loud'},
		'1', 90),
	'loud: dead-lettered');
is( sql(q{SELECT attempts || ' ' || error_code || ' ' || (octet_length(error_message) < 8300)
             || ' ' || (error_message LIKE 'éxxx%xxx... (90000002 bytes in all)')
             || ' ' || (pg_column_size(errors) < 100000)
           FROM evbus.dead_letters WHERE integration_event = 'Loud'}),
	'3 P0001 true true true',
	'loud: after 3 attempts, each error cut to 8 kB, saying how long it was');
is( sql(q{SELECT (octet_length(last_error_message) < 8300) || ' ' || (pg_column_size(errors) < 100000)
           FROM evbus.inbox WHERE integration_event = 'Loud'}),
	'true true', 'loud: so is the inbox row');
ok(-s $node->logfile - $log_offset < 1000000, 'loud: the log got less than 1 MB');

# --- the worker survived all of it ---------------------------------------------------
is(sql($evbus_pids_sql), $worker, 'the evbus processes never restarted');
$node->log_check('no crash in the server log', 0,
	log_unlike => [qr/terminated by signal|server process .* was terminated|PANIC/]);
is( sql(qq{SELECT handled, retrying, dead, pending FROM evbus.stats WHERE side = 'consume' AND topic = '${prefix}Doomed'}),
	'2|0|0|0', 'evbus.stats: both Doomed events handled in the end');
is( sql(qq{SELECT handled, retrying, dead, pending FROM evbus.stats WHERE side = 'consume' AND topic = '${prefix}DefaultRetries'}),
	'0|0|1|0', 'evbus.stats counts the dead event');

$listener->quit;
$node->stop;
done_testing();

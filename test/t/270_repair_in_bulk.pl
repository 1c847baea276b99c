# 270_repair_in_bulk.pl - after a burst of failures: evbus.failures counts
# them by side, integration event, group and error code (dead letters, and
# handlers waiting for a retry); evbus.retry by filter requeues only the
# dead letters that match and returns how many; evbus.discard, by filter
# and by message id, gives up on dead letters with a reason and leaves an
# audit row each in evbus.repair_log; a filter that names nothing is
# refused unless match_all => true; evbus.retry(text) and (uuid) still
# work as before.
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;

kafka_bootstrap();
my $prefix = "t270.$$.";
my $group = "t270_$$";
kafka_admin('topics', '--create', '--topic', "${prefix}Small", '--partitions', '1',
	'--config', 'max.message.bytes=1000');

my $node = new_node(
	'repair_in_bulk',
	kafka => 1,
	conf => [
		"evbus.topic_prefix = '$prefix'",
		"evbus.group_name = '$group'",
		"evbus.retry_interval = '100ms'",
		"evbus.retry_max_interval = '200ms'"
	]);
$node->safe_psql('postgres', 'CREATE EXTENSION evbus');

sub sql { return $node->safe_psql('postgres', $_[0]); }
my $me = sql('SELECT current_user');

# a handler that fails with the SQLSTATE in the payload's "fail" while the
# gate is closed
sql(as_subscriber($node) . q{
CREATE TABLE handled (event text, n int);
CREATE TABLE gate (open boolean NOT NULL);
INSERT INTO gate VALUES (false);
CREATE PROCEDURE flaky(payload jsonb, headers jsonb) LANGUAGE plpgsql AS $$
BEGIN
	IF payload ? 'fail' AND NOT (SELECT open FROM public.gate) THEN
		RAISE EXCEPTION 'refused %', payload->>'n' USING ERRCODE = payload->>'fail';
	END IF;
	INSERT INTO public.handled VALUES (headers->>'cap-msg-name', (payload->>'n')::int);
END $$;
SELECT evbus.subscribe('Paid', 'flaky(jsonb,jsonb)', max_retries => 0);
SELECT evbus.subscribe('Shipped', 'flaky(jsonb,jsonb)', max_retries => 0);
SELECT evbus.subscribe('Slow', 'flaky(jsonb,jsonb)', max_retries => 100000);
});

my @paid = split /\n/, sql(q{
SELECT evbus.publish('Paid', jsonb_build_object('n', g, 'fail', CASE WHEN g <= 3 THEN 'EV001' ELSE 'EV002' END))
  FROM generate_series(1, 4) g ORDER BY g;
});
sql(q{
SELECT evbus.publish('Shipped', jsonb_build_object('n', g, 'fail', 'EV001')) FROM generate_series(1, 2) g;
SELECT evbus.publish('Slow', '{"n": 1, "fail": "EV003"}');
SELECT evbus.publish('Small', jsonb_build_object('blob', (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 300) g)));
});

ok(wait_for_sql($node, 'postgres', q{SELECT count(*) FROM evbus.dead_letters}, '7', 90),
	'6 consume side and 1 publish side dead letters');
ok( wait_for_sql($node, 'postgres',
		q{SELECT count(*) FROM evbus.inbox WHERE integration_event = 'Slow' AND attempts >= 2}, '1', 30),
	'Slow is being retried');

# --- evbus.failures ----------------------------------------------------------
is( sql(q{SELECT string_agg(concat_ws('|', side, state, integration_event, group_name, error_code, count),
                            ',' ORDER BY side, state, integration_event, error_code)
            FROM evbus.failures}),
	"consume|dead|Paid|$group|EV001|3,consume|dead|Paid|$group|EV002|1,"
	  . "consume|dead|Shipped|$group|EV001|2,consume|retrying|Slow|$group|EV003|1,"
	  . "publish|dead|Small|MSG_SIZE_TOO_LARGE|1",
	'evbus.failures counts dead letters and retrying handlers by side, event, group and code');
is( sql(q{SELECT bool_and(first_seen <= last_seen) AND bool_and(sample_message_id IS NOT NULL) FROM evbus.failures}),
	't', 'each kind has first and last seen and a sample message id');
is( sql(qq{SELECT sample_message_id FROM evbus.failures WHERE error_code = 'EV002'}),
	$paid[3], 'the sample of a kind is one of its messages');

# --- a filter that names nothing, or a wrong one, is refused ---------------------
is(sqlstate_of($node, 'postgres', 'SELECT evbus.retry()'), '22023', 'evbus.retry() with no filter is refused');
is(sqlstate_of($node, 'postgres', q{SELECT evbus.discard(reason => 'oops')}), '22023',
	'evbus.discard with no filter is refused');
is(sqlstate_of($node, 'postgres', q{SELECT evbus.retry(side => NULL, error_code => NULL)}), '22023',
	'nor do NULLs name anything');
is(sqlstate_of($node, 'postgres', q{SELECT evbus.retry(side => 'sideways')}), '22023', 'an unknown side is refused');
is(sqlstate_of($node, 'postgres', q{SELECT evbus.retry(side => 'publish', group_name => 'g')}), '22023',
	'a group on the publish side is refused');
is(sqlstate_of($node, 'postgres', q{SELECT evbus.discard(integration_event => 'Paid', reason => NULL)}), '22004',
	'a discard without a reason is refused');
is(sql(q{SELECT count(*) FROM evbus.dead_letters}), '7', 'nothing was touched');

# --- the old forms of evbus.retry are unchanged ---------------------------------
is(sql(q{SELECT evbus.retry('no-such-message')}), 'f', 'evbus.retry(text) still resolves');
is(sql(q{SELECT evbus.retry('01890a5d-ac96-774b-bcce-b302099a8057'::uuid)}), 'f', 'evbus.retry(uuid) still resolves');

# --- retry by filter touches only what matches -----------------------------------
sql(q{UPDATE gate SET open = true});
is( sql(q{SELECT evbus.retry(side => 'consume', integration_event => 'Paid', error_code => 'EV001',
                             dead_since => now() - interval '1 hour')}),
	'3', 'retry by filter returns how many it requeued');
ok(wait_for_sql($node, 'postgres', q{SELECT string_agg(n::text, ',' ORDER BY n) FROM handled WHERE event = 'Paid'}, '1,2,3', 30),
	'the three are handled');
is( sql(q{SELECT string_agg(integration_event || ':' || error_code, ',' ORDER BY integration_event, error_code)
            FROM evbus.dead_letters}),
	'Paid:EV002,Shipped:EV001,Shipped:EV001,Small:MSG_SIZE_TOO_LARGE', 'the others are still dead');
is(sql(q{SELECT evbus.retry(integration_event => 'Paid', dead_until => now() - interval '1 hour')}), '0',
	'a time range that matches nothing retries nothing');

# --- discard by id and by filter, with the audit trail ----------------------------
is(sql(qq{SELECT evbus.discard('$paid[3]', 'amount was negative')}), 't', 'evbus.discard by message id');
is(sql(qq{SELECT evbus.discard('$paid[3]'::uuid, 'again')}), 'f', 'once');
is(sql(q{SELECT evbus.discard(integration_event => 'Shipped', reason => 'carrier gone')}), '2',
	'evbus.discard by filter returns how many');
is( sql(q{SELECT string_agg(concat_ws('|', action, integration_event, group_name, handler, error_code,
                                      payload->>'n', reason, done_by, session_role), ',' ORDER BY integration_event, payload->>'n')
            FROM evbus.repair_log}),
	"discard|Paid|$group|public.flaky(pg_catalog.jsonb,pg_catalog.jsonb)|EV002|4|amount was negative|$me|$me,"
	  . "discard|Shipped|$group|public.flaky(pg_catalog.jsonb,pg_catalog.jsonb)|EV001|1|carrier gone|$me|$me,"
	  . "discard|Shipped|$group|public.flaky(pg_catalog.jsonb,pg_catalog.jsonb)|EV001|2|carrier gone|$me|$me",
	'each discard leaves who, when, why and what in evbus.repair_log');
is(sql(qq{SELECT message_id FROM evbus.repair_log WHERE payload->>'n' = '4'}), $paid[3], 'with the message id');
is( sql(q{SELECT string_agg(DISTINCT state, ',') FROM evbus.inbox WHERE integration_event IN ('Shipped') OR payload->>'n' = '4' AND integration_event = 'Paid'}),
	'discarded', 'the discarded messages are neither dead nor pending in the inbox');
is(sql(qq{SELECT evbus.retry('$paid[3]')}), 'f', 'a discarded message is not retried');
is(sql(q{SELECT string_agg(integration_event, ',') FROM evbus.failures WHERE state = 'dead'}), 'Small',
	'evbus.failures no longer shows them');

# match_all acts on everything (here: the publish side dead letter)
is(sql(q{SELECT evbus.discard(reason => 'test', match_all => true)}), '1', 'match_all => true discards every dead letter');
is(sql(q{SELECT dead FROM evbus.stats WHERE side = 'publish' AND topic LIKE '%Small'}), '0',
	'a discarded publish side dead letter is no longer counted dead');
ok(wait_for_sql($node, 'postgres', q{SELECT count(*) FROM handled WHERE event = 'Slow'}, '1', 30),
	'Slow is handled on its own once the gate opens');
is(sql(q{SELECT count(*) FROM evbus.failures}), '0', 'no failure left');
is(sql(q{SELECT count(*) FROM handled}), '4', 'nothing discarded was handled');

$node->stop;
done_testing();

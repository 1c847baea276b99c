# 113_inbox_write.pl - the consumer's inbox rows are what an INSERT would
# write, whichever way they go in.
#
# The consumer writes a batch's inbox rows straight into the table
# (inbox_write.c) where it knows the table, else through SQL.
#  - Straight in: two handlers of one event, one of them paused.  Each
#    message gets a handled row for the running handler (attempts 1,
#    handled_at = received_at = the transaction's time, no next attempt)
#    and a pending row for the paused one (attempts 0, due at once), with
#    the message's topic, partition, offset, key, payload and headers;
#    ids are unique and follow Kafka's order within a partition; the
#    counting trigger's transition table saw every row
#    (evbus.inbox_messages); resumed, the paused handler runs them.
#  - Through SQL: with an operator's BEFORE INSERT row trigger on
#    evbus.inbox, the trigger sees every new row; with a column added to
#    evbus.inbox, new rows get its default.  Both removed, rows go
#    straight in again, and a dropped column is no obstacle; a payload of
#    192 kB goes in whole, out of line (TOAST).
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;

kafka_bootstrap();
my $prefix = "t113.$$.";
my $node = new_node('inbox_write', kafka => 1, conf => ["evbus.topic_prefix = '$prefix'"]);
$node->safe_psql('postgres', 'CREATE EXTENSION evbus');
subscribe_recorder($node, 'Written');
$node->safe_psql('postgres',
	q{GRANT EXECUTE ON FUNCTION evbus.pause_subscription(text, regprocedure, text),
	  evbus.resume_subscription(text, regprocedure, text) TO evbus_app});
$node->safe_psql(
	'postgres', as_subscriber($node) . q{
CREATE TABLE later (seq int);
CREATE FUNCTION record_later(payload jsonb) RETURNS void LANGUAGE sql
	AS $$ INSERT INTO public.later VALUES ((payload->>'seq')::int) $$;
SELECT evbus.subscribe('Written', 'record_later(jsonb)');
SELECT evbus.pause_subscription('Written', 'record_later(jsonb)');
});
my $topic = "${prefix}Written";

# --- straight in --------------------------------------------------------------
stage_keyed($node, 'Written', 30);
wait_for_sql($node, 'postgres', q{SELECT count(*) FROM evbus.inbox}, '60', 60);
is($node->safe_psql('postgres', 'SELECT count(*) FROM received'), '30',
	'the running handler handled 30 messages');

# inbox_rows(condition): how many rows of evbus.inbox meet it
sub inbox_rows
{
	return $node->safe_psql('postgres', "SELECT count(*) FROM evbus.inbox WHERE $_[0]");
}
is( inbox_rows(
		q{handler LIKE 'public.record_received(%' AND state = 'handled' AND attempts = 1
		  AND handled_at = received_at AND next_attempt_at IS NULL}),
	'30', '30 rows handled in one attempt, handled_at = received_at, no next attempt');
is( inbox_rows(
		q{handler LIKE 'public.record_later(%' AND state = 'pending' AND attempts = 0
		  AND next_attempt_at = received_at AND handled_at IS NULL}),
	'30', '30 rows of the paused handler pending, no attempt, due at once');
is( $node->safe_psql(
		'postgres', qq{
SELECT count(*) FROM evbus.inbox i
 WHERE i.group_name = 'postgres' AND i.integration_event = 'Written' AND i.topic = '$topic'
   AND i.dedup_key = i.message_id AND i.message_id = i.headers->>'cap-msg-id'
   AND i.event_key = i.payload->>'key' AND i.payload->>'event' = 'Written'
   AND i.kafka_partition = (i.headers->>'evbus-partition')::int
   AND i.kafka_offset = (i.headers->>'evbus-offset')::bigint
   AND i.received_at >= now() - interval '5 min'
   AND i.last_error_code IS NULL AND i.last_error_message IS NULL AND i.errors IS NULL
   AND EXISTS (SELECT FROM received r WHERE r.message_id::text = i.message_id
                                       AND r.payload = i.payload)}), '60',
	'every row carries its message: topic, partition, offset, key, payload, headers');
is( $node->safe_psql(
		'postgres', q{
SELECT count(DISTINCT id) = count(*)
   AND bool_and(ordered)
  FROM (SELECT id, coalesce(lag(kafka_offset) OVER w < kafka_offset
                            AND lag(id) OVER w < id, true) AS ordered
          FROM evbus.inbox WHERE handler LIKE 'public.record_received(%'
        WINDOW w AS (PARTITION BY kafka_partition ORDER BY kafka_offset)) s}), 't',
	'ids are unique and follow Kafka order within a partition');
is( $node->safe_psql(
		'postgres', qq{SELECT messages || '|' || coalesce(handler, 'NULL')
		    FROM evbus.inbox_messages WHERE topic = '$topic'}),
	'30|NULL', 'the counting trigger counted 30 messages of two handlers');

$node->safe_psql('postgres',
	as_subscriber($node) . q{SELECT evbus.resume_subscription('Written', 'record_later(jsonb)')});
wait_for_sql($node, 'postgres', q{SELECT count(*) FROM later}, '30', 60);
is($node->safe_psql('postgres', q{SELECT count(*) FROM evbus.inbox WHERE state <> 'handled'}),
	'0', 'resumed, the paused handler handled its 30 rows');
$node->safe_psql('postgres',
	as_subscriber($node) . q{SELECT evbus.unsubscribe('Written', 'record_later(jsonb)')});

# --- through SQL: an operator's row trigger -------------------------------------
$node->safe_psql(
	'postgres', q{
CREATE TABLE inbox_audit (dedup_key text, handler text, state text);
CREATE FUNCTION audit_inbox() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO public.inbox_audit VALUES (NEW.dedup_key, NEW.handler, NEW.state);
	RETURN NEW;
END $$;
CREATE TRIGGER audited BEFORE INSERT ON evbus.inbox FOR EACH ROW EXECUTE FUNCTION audit_inbox();
});
stage_keyed($node, 'Written', 10);
wait_for_sql($node, 'postgres', q{SELECT count(*) FROM received}, '40', 60);
is( $node->safe_psql(
		'postgres', q{
SELECT count(*) FROM inbox_audit a
  JOIN evbus.inbox i USING (dedup_key, handler, state)
 WHERE i.state = 'handled'}), '10',
	'a BEFORE INSERT row trigger on evbus.inbox saw each of the 10 new rows');

# --- through SQL: a column the consumer does not know ---------------------------
$node->safe_psql(
	'postgres', q{
DROP TRIGGER audited ON evbus.inbox;
ALTER TABLE evbus.inbox ADD COLUMN note text DEFAULT 'from its default';
});
stage_keyed($node, 'Written', 10);
wait_for_sql($node, 'postgres', q{SELECT count(*) FROM received}, '50', 60);
is( $node->safe_psql(
		'postgres', q{SELECT count(*) || '|' || count(*) FILTER (WHERE note IS DISTINCT FROM 'from its default')
		    FROM evbus.inbox}),
	'80|0', 'the 10 rows written with a column added to evbus.inbox get its default');

# --- straight in again, past a dropped column ------------------------------------
$node->safe_psql('postgres', q{ALTER TABLE evbus.inbox DROP COLUMN note});
stage_keyed($node, 'Written', 10);
wait_for_sql($node, 'postgres', q{SELECT count(*) FROM received}, '60', 60);
is( $node->safe_psql(
		'postgres', q{
SELECT count(*) || '|' || count(*) FILTER (WHERE attempts = 1 AND handled_at = received_at)
  FROM evbus.inbox WHERE state = 'handled'}), '90|60',
	'with the column dropped again, 90 rows handled, the 60 of the running handler at once');
is($node->safe_psql('postgres', 'SELECT count(DISTINCT message_id) FROM received'), '60',
	'each message handled once');
is( $node->safe_psql(
		'postgres', qq{SELECT messages FROM evbus.inbox_messages WHERE topic = '$topic'}),
	'60', 'the counting trigger counted every message once');
# --- straight in: a payload stored out of line (TOAST) -----------------------------
$node->safe_psql('postgres', q{
SELECT evbus.publish('Written', jsonb_build_object('event', 'Written', 'seq', 0,
	'blob', (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 6000) g)), 'big')});
wait_for_sql($node, 'postgres', q{SELECT count(*) FROM received}, '61', 60);
is( $node->safe_psql(
		'postgres', q{
SELECT length(i.payload->>'blob') || '|' || (pg_column_size(i.payload) > 8192)
       || '|' || (i.payload = r.payload) || '|' || i.state
  FROM evbus.inbox i JOIN received r ON r.message_id::text = i.message_id
 WHERE i.event_key = 'big'}), '192000|true|true|handled',
	'a 192 kB payload goes in whole, stored out of line, as the handler got it');

unlike(slurp_file($node->logfile),
	qr/TRAP|terminated by signal|could not insert into the inbox|reference leak/,
	'no backend crashed, no inbox insert failed, no relation or buffer left open');

done_testing();

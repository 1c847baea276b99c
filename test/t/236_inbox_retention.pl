# 236_inbox_retention.pl - the consumer trims the inbox: a dead message's
# row goes with its dead letter (evbus.dead_letter_retention), a handled
# message's row after evbus.inbox_retention, found through the handled_at
# index, as fast as rows come; the publisher expires dead letters in
# bounded statements.  Before, dead rows stayed in the inbox for ever.
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;

kafka_bootstrap();
my $prefix = "t236.$$.";
my $node = new_node(
	'inbox_retention',
	kafka => 1,
	conf => [
		"evbus.topic_prefix = '$prefix'",
		"evbus.group_name = 't236_$$'",
		"evbus.dead_letter_retention = '3s'",
		"evbus.inbox_retention = '1h'",
		"evbus.idle_timeout = '1h'"
	]);
$node->safe_psql('postgres', 'CREATE EXTENSION evbus');
$node->safe_psql(
	'postgres', as_subscriber($node) . q{
CREATE TABLE got (n int);
CREATE PROCEDURE on_kept(payload jsonb) LANGUAGE plpgsql AS $$
BEGIN
	IF (payload->>'fail')::boolean THEN
		RAISE EXCEPTION 'refused %', payload->>'n';
	END IF;
	INSERT INTO public.got VALUES ((payload->>'n')::int);
END $$;
SELECT evbus.subscribe('Kept', 'on_kept(jsonb)', max_retries => 0);
SELECT evbus.publish('Kept', '{"n": 1, "fail": false}', 'a');
SELECT evbus.publish('Kept', '{"n": 2, "fail": true}', 'b');
});

ok( wait_for_sql($node, 'postgres',
		q{SELECT string_agg(state, ',' ORDER BY state) FROM evbus.inbox}, 'dead,handled', 60),
	'one message handled, one dead');
is($node->safe_psql('postgres', q{SELECT count(*) FROM evbus.dead_letters WHERE direction = 'consume'}),
	'1', 'the dead one has its dead letter');

# the consumer trims the inbox every few seconds
ok( wait_for_sql($node, 'postgres',
		q{SELECT count(*) FROM evbus.inbox WHERE state = 'dead'}, '0', 30),
	'the dead inbox row is gone after evbus.dead_letter_retention');
is($node->safe_psql('postgres', q{SELECT count(*) FROM evbus.inbox WHERE state = 'handled'}),
	'1', 'the handled row stays: evbus.inbox_retention (1h) has not passed');

# a dead row whose dead letter is still within its retention stays
$node->safe_psql('postgres', q{ALTER SYSTEM SET evbus.dead_letter_retention = '1h'; SELECT pg_reload_conf()});
$node->safe_psql('postgres', q{SELECT evbus.publish('Kept', '{"n": 3, "fail": true}', 'c')});
ok( wait_for_sql($node, 'postgres',
		q{SELECT count(*) FROM evbus.inbox WHERE state = 'dead'}, '1', 60),
	'a second message is dead');
sleep 7;
is($node->safe_psql('postgres', q{SELECT count(*) FROM evbus.inbox WHERE state = 'dead'}),
	'1', 'its row stays while its dead letter is kept');

# handled rows go by evbus.inbox_retention
$node->safe_psql('postgres', q{ALTER SYSTEM SET evbus.inbox_retention = '1s'; SELECT pg_reload_conf()});
ok( wait_for_sql($node, 'postgres',
		q{SELECT count(*) FROM evbus.inbox WHERE state = 'handled'}, '0', 30),
	'the handled row is gone after evbus.inbox_retention');
is($node->safe_psql('postgres', q{SELECT count(*) FROM evbus.inbox WHERE state = 'dead'}),
	'1', 'the dead row is kept by evbus.dead_letter_retention, not evbus.inbox_retention');

# the trim finds the due rows through the handled_at index whatever the
# statistics: an inbox of 300,000 rows that has none (new, restored,
# upgraded) is not read whole at each trim (every 5 s) to find nothing due
$node->safe_psql(
	'postgres', q{
ALTER SYSTEM SET evbus.inbox_retention = '1h';
SELECT pg_reload_conf();
ALTER TABLE evbus.inbox SET (autovacuum_enabled = off);
INSERT INTO evbus.inbox (group_name, dedup_key, message_id, integration_event, topic,
		kafka_partition, kafka_offset, handler, event_key, payload, headers, state, handled_at)
SELECT 'bulk', 'm' || i, 'm' || i, 'Bulk', 'Bulk', 0, i, 'public.on_kept(jsonb)', 'k',
	   '{}', '{}', 'handled', pg_catalog.now()
  FROM pg_catalog.generate_series(1, 300000) i;
});
is($node->safe_psql('postgres', q{SELECT reltuples < 0 FROM pg_class WHERE oid = 'evbus.inbox'::regclass}),
	't', 'the inbox has no statistics');
my $read_query = q{SELECT seq_tup_read FROM pg_stat_all_tables WHERE relid = 'evbus.inbox'::regclass};
my $read_before = $node->safe_psql('postgres', $read_query);

# finding the dead rows whose dead letter is gone reads every dead letter:
# with evbus.dead_letter_retention at 1h it runs every 10 min, not at
# each trim (it ran when the setting changed, above)
$node->safe_psql(
	'postgres', q{
INSERT INTO evbus.dead_letters (message_id, direction, integration_event, topic, group_name,
		handler, kafka_partition, kafka_offset, error_code, error_message)
SELECT 'gone' || i, 'consume', 'Kept', 'Kept', 'other', 'public.on_kept(jsonb)', 0, i, 'P0001', 'x'
  FROM pg_catalog.generate_series(1, 1000) i;
});
my $dead_letters_query = q{SELECT coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0)
	FROM pg_stat_all_tables WHERE relid = 'evbus.dead_letters'::regclass};
my $dead_letters_before = $node->safe_psql('postgres', $dead_letters_query);
sleep 12;
is($node->safe_psql('postgres', q{SELECT count(*) FROM pg_stat_activity WHERE application_name = 'evbus consumer'}),
	'1', 'the consumer ran meanwhile');
my $read = $node->safe_psql('postgres', $read_query) - $read_before;
cmp_ok($read, '<', 100000, "two trims read $read rows of the inbox sequentially, not the whole of it");
is($node->safe_psql('postgres', $dead_letters_query) - $dead_letters_before,
	0, 'and no dead letter');
is($node->safe_psql('postgres', q{SELECT count(*) FROM evbus.inbox WHERE group_name = 'bulk'}),
	'300000', 'none of them is due');

# the trim keeps up with any rate: a call deletes at most 10,000 handled
# rows, and while more are due it runs again at once, not 5 s later (a
# consumer handling more than 2,000 messages a second grew its inbox for
# ever; these 300,000 rows took 150 s to go), and with the statistics of
# an inbox that size each of them no longer reads the whole inbox
$node->safe_psql('postgres', 'ANALYZE evbus.inbox');
$read_before = $node->safe_psql('postgres', $read_query);
$node->safe_psql('postgres', q{ALTER SYSTEM SET evbus.inbox_retention = '1s'; SELECT pg_reload_conf()});
my $trim_started = time;
# (waiting on evbus.inbox_messages, evbus.stats's counts: a count of the
# inbox would itself read it whole)
ok( wait_for_sql($node, 'postgres',
		q{SELECT messages FROM evbus.inbox_messages WHERE group_name = 'bulk'}, '0', 60),
	'300,000 due rows are gone within 60 s, not 30 trims 5 s apart');
note sprintf('the trim took %d s', time - $trim_started);
$read = $node->safe_psql('postgres', $read_query) - $read_before;
cmp_ok($read, '<', 300000,
	"the trims read $read rows sequentially, not the inbox at each trim");
is($node->safe_psql('postgres', q{SELECT count(*) FROM evbus.inbox WHERE group_name = 'bulk'}),
	'0', 'none is left');
$node->safe_psql('postgres', q{SELECT evbus.publish('Kept', '{"n": 4, "fail": false}', 'd')});
ok( wait_for_sql($node, 'postgres', q{SELECT count(*) FROM public.got WHERE n = 4}, '1', 60),
	'and the consumer goes on handling messages');

# the publisher expires dead letters oldest first, at most 10,000 per
# statement, again a second later while more are due: one statement for
# all of them held up publishing (0.3 s per 300,000).  A trigger of the
# test's own counts each statement's rows.
$node->safe_psql(
	'postgres', q{
CREATE TABLE public.expired (n bigint);
CREATE FUNCTION public.count_expired() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO public.expired SELECT count(*) FROM gone;
	RETURN NULL;
END $$;
CREATE TRIGGER dead_letters_expired AFTER DELETE ON evbus.dead_letters
	REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION public.count_expired();
INSERT INTO evbus.dead_letters (message_id, direction, integration_event, error_code,
		error_message, dead_at)
SELECT 'old' || i, 'publish', 'Old', 'E', 'x', pg_catalog.now() - interval '2 hours'
  FROM pg_catalog.generate_series(1, 25000) i;
ALTER SYSTEM SET evbus.dead_letter_retention = '10s';
SELECT pg_reload_conf();
});
ok( wait_for_sql($node, 'postgres',
		q{SELECT count(*) FROM evbus.dead_letters WHERE message_id LIKE 'old%'}, '0', 60),
	'25,000 expired dead letters are gone');
my ($largest, $statements) =
  split /\|/, $node->safe_psql('postgres', 'SELECT max(n), count(*) FROM public.expired');
cmp_ok($largest, '<=', 10000, "no statement deleted more than 10,000 ($largest)");
cmp_ok($statements, '>=', 3, "they went in $statements statements");

$node->stop;
done_testing();

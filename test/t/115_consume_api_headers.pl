# 115_consume_api_headers.pl - the consuming side's SQL API and what a
# handler receives.
#  - evbus.subscribe refuses a handler of the wrong signature (42P13) and
#    records the right ones (procedure or function, with or without headers);
#    evbus.unsubscribe returns true, then false.
#  - The headers passed to a handler: every Kafka header of the message as a
#    string (cap-msg-id, cap-msg-name, cap-senttime, evbus-source,
#    traceparent, user headers) plus evbus-topic, evbus-partition,
#    evbus-offset (numbers) and evbus-group; the payload is the event's.
#  - The handler runs as the subscribing role, with the search_path a
#    connection of that role would have (the server's: "$user", public).
#  - Subscriptions added or removed are picked up by the running worker.
#  - CAP interop: a message from Kafka's Java console producer with
#    cap-msg-id/cap-msg-name headers is handled, and sent twice with the same
#    cap-msg-id it is handled once; a foreign message without any cap-*
#    header is handled and de-duplicated by topic/partition/offset; headers
#    in any order, a name given twice (the last value wins) and a forged
#    evbus-offset reach the handler as one object with evbus's offset.
#  - evbus.stats has a 'consume' row per topic and group.
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);

kafka_bootstrap();
my $prefix = "t115.$$.";
my $node = new_node(
	'api',
	kafka => 1,
	conf => [
		"evbus.topic_prefix = '$prefix'",
		"evbus.retry_interval = '100ms'",
		"evbus.retry_max_interval = '500ms'"
	]);
$node->safe_psql('postgres', 'CREATE EXTENSION evbus');

my $as_app = as_subscriber($node);
my $me = 'evbus_app';

$node->safe_psql(
	'postgres', $as_app . q{
CREATE TABLE seen (id bigint GENERATED ALWAYS AS IDENTITY, handler text, payload jsonb,
                   headers jsonb, who name, path text);
CREATE PROCEDURE h_full(payload jsonb, headers jsonb) LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO public.seen (handler, payload, headers, who, path)
	VALUES ('full', payload, headers, current_user, current_setting('search_path'));
END $$;
CREATE FUNCTION h_payload_only(payload jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO public.seen (handler, payload, who, path)
	VALUES ('payload_only', payload, current_user, current_setting('search_path'));
END $$;
CREATE FUNCTION bad_text(payload text) RETURNS void LANGUAGE sql AS 'SELECT';
CREATE FUNCTION bad_second(payload jsonb, headers text) RETURNS void LANGUAGE sql AS 'SELECT';
CREATE FUNCTION bad_three(payload jsonb, headers jsonb, extra jsonb) RETURNS void LANGUAGE sql AS 'SELECT';
CREATE FUNCTION bad_none() RETURNS void LANGUAGE sql AS 'SELECT';
CREATE PROCEDURE bad_proc(payload int) LANGUAGE sql AS 'SELECT';
});

# --- subscribe / unsubscribe ---------------------------------------------------
for my $bad ('bad_text(text)', 'bad_second(jsonb,text)', 'bad_three(jsonb,jsonb,jsonb)',
	'bad_none()', 'bad_proc(integer)')
{
	is(sqlstate_of($node, 'postgres', "${as_app}SELECT evbus.subscribe('Hdr', '$bad')"),
		'42P13', "subscribe refuses handler $bad with 42P13");
}
is($node->safe_psql('postgres', 'SELECT count(*) FROM evbus.subscriptions'),
	'0', 'no subscription recorded for a refused handler');

$node->safe_psql('postgres', $as_app . q{SELECT evbus.subscribe('Hdr', 'h_full(jsonb,jsonb)')});
is( $node->safe_psql('postgres',
		q{SELECT integration_event, group_name, handler::text, is_procedure, takes_headers, run_as::text
		    FROM evbus.subscriptions}),
	"Hdr|postgres|public.h_full(pg_catalog.jsonb,pg_catalog.jsonb)|t|t|$me",
	'subscription: default group is the database name, runs as the caller');

# --- one event with everything in its headers ------------------------------------
my $traceparent = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01';
my $id1 = $node->safe_psql(
	'postgres', qq{
SET evbus.traceparent = '$traceparent';
SELECT evbus.publish('Hdr', '{"n": 1, "note": "caf\\u00e9", "list": [1, 2.5, null]}', 'key-1',
                     '{"tenant": "acme"}');
});
ok(wait_for_sql($node, 'postgres', q{SELECT count(*) FROM seen}, '1', 60), 'handler ran for the event');
is( $node->safe_psql('postgres',
		q{SELECT payload = '{"n": 1, "note": "caf\u00e9", "list": [1, 2.5, null]}' FROM seen}),
	't', 'handler got the payload');

my @kafka = kcat_consume("${prefix}Hdr", 1, 20);
my $part = $kafka[0]{partition} // -1;
my $off = $kafka[0]{offset} // -1;
my %h = map { split /\t/, $_, 2 } split /\n/, $node->safe_psql('postgres',
	q{SELECT key || E'\t' || CASE jsonb_typeof(value) WHEN 'string' THEN value #>> '{}'
	                            ELSE jsonb_typeof(value) || ':' || value::text END
	    FROM seen, jsonb_each(headers) WHERE handler = 'full'});
note join(', ', map { "$_=$h{$_}" } sort keys %h);
is($h{'cap-msg-id'}, $id1, 'header cap-msg-id is the message id');
is($h{'cap-msg-name'}, 'Hdr', 'header cap-msg-name is the integration event');
like($h{'cap-senttime'} // '', qr/^\d{4}-\d\d-\d\d/, 'header cap-senttime');
is($h{'evbus-source'}, 'postgres', 'header evbus-source is the producing database');
is($h{traceparent}, $traceparent, 'header traceparent');
is($h{tenant}, 'acme', 'user header');
is($h{'evbus-topic'}, "${prefix}Hdr", 'header evbus-topic is the full Kafka topic');
is($h{'evbus-partition'}, "number:$part", 'header evbus-partition is a number, the partition');
is($h{'evbus-offset'}, "number:$off", 'header evbus-offset is a number, the offset');
is($h{'evbus-group'}, 'postgres', 'header evbus-group is the group');
is( $node->safe_psql('postgres',
		q{SELECT count(*) FROM seen, jsonb_each(headers)
		   WHERE key NOT IN ('evbus-partition', 'evbus-offset') AND jsonb_typeof(value) <> 'string'}),
	'0', 'every other header is a string');
is( $node->safe_psql('postgres',
		q{SELECT message_id, event_key, kafka_partition, kafka_offset, dedup_key, state FROM evbus.inbox}),
	"$id1|key-1|$part|$off|$id1|handled",
	'inbox: message id, key, partition, offset; dedup key is the message id');

my ($who, $path) = split /\|/, $node->safe_psql('postgres', 'SELECT who, path FROM seen');
is($who, $me, 'handler runs as the role that subscribed it');
$path =~ s/\s+//g;
is($path, '"$user",public', 'handler runs with the search_path of a connection');

# --- subscriptions change while the worker runs ----------------------------------
$node->safe_psql('postgres', $as_app . q{SELECT evbus.subscribe('Hdr', 'h_payload_only(jsonb)')});
is( $node->safe_psql('postgres',
		q{SELECT is_procedure, takes_headers FROM evbus.subscriptions WHERE handler::regprocedure = 'h_payload_only(jsonb)'::regprocedure}),
	'f|f', 'a function taking only the payload is accepted');
$node->safe_psql('postgres', q{SELECT evbus.publish('Hdr', '{"n": 2}')});
ok( wait_for_sql($node, 'postgres',
		q{SELECT string_agg(handler || ':' || (payload->>'n'), ',' ORDER BY handler, payload->>'n') FROM seen},
		'full:1,full:2,payload_only:2', 30),
	'a new subscription is picked up without a restart; both handlers run for the next event');

is($node->safe_psql('postgres', $as_app . q{SELECT evbus.unsubscribe('Hdr', 'h_full(jsonb,jsonb)')}),
	't', 'unsubscribe: true');
is($node->safe_psql('postgres', $as_app . q{SELECT evbus.unsubscribe('Hdr', 'h_full(jsonb,jsonb)')}),
	'f', 'unsubscribe again: false');
$node->safe_psql('postgres', q{SELECT evbus.publish('Hdr', '{"n": 3}')});
ok( wait_for_sql($node, 'postgres',
		q{SELECT count(*) FROM seen WHERE handler = 'payload_only' AND payload->>'n' = '3'}, '1', 30),
	'the remaining handler ran for the event published after unsubscribe');
sleep 1;
is($node->safe_psql('postgres', q{SELECT count(*) FROM seen WHERE handler = 'full' AND payload->>'n' = '3'}),
	'0', 'the removed handler did not');

# --- CAP interop: Kafka's Java console producer ----------------------------------
my $cap_topic = "${prefix}CapEvent";
$node->safe_psql('postgres', $as_app . q{SELECT evbus.subscribe('CapEvent', 'h_full(jsonb,jsonb)')});
my $u1 = $node->safe_psql('postgres', 'SELECT gen_random_uuid()');
my $u2 = $node->safe_psql('postgres', 'SELECT gen_random_uuid()');
java_produce($cap_topic,
	"cap-msg-id:$u1,cap-msg-name:CapEvent\tcap-key\t{\"n\":1,\"from\":\"cap\"}",
	"\\N\tforeign-key\t{\"n\":3,\"from\":\"foreign\"}");
# the same CAP message again (a second producer, as after a CAP retry), a new
# one, and the same foreign value again (a different message: new offset)
java_produce($cap_topic,
	"cap-msg-id:$u1,cap-msg-name:CapEvent\tcap-key\t{\"n\":1,\"from\":\"cap\"}",
	"cap-msg-id:$u2,cap-msg-name:CapEvent\tcap-key\t{\"n\":2,\"from\":\"cap\"}",
	"\\N\tforeign-key\t{\"n\":3,\"from\":\"foreign\"}");
ok( wait_for_sql($node, 'postgres',
		qq{SELECT sum(next_offset) FROM evbus.consumer_offsets WHERE topic = '$cap_topic'}, '5', 60),
	'the group has consumed all 5 messages of the CAP topic');
is( $node->safe_psql('postgres',
		qq{SELECT payload->>'n', count(*) FROM seen WHERE headers->>'evbus-topic' = '$cap_topic' GROUP BY 1 ORDER BY 1}),
	"1|1\n2|1\n3|2",
	'CAP message sent twice with one cap-msg-id handled once; the two foreign messages each once');
is( $node->safe_psql('postgres',
		qq{SELECT headers->>'cap-msg-id', headers->>'cap-msg-name' FROM seen
		    WHERE headers->>'evbus-topic' = '$cap_topic' AND payload->>'n' = '1'}),
	"$u1|CapEvent", 'the handler sees the CAP headers');
is( $node->safe_psql('postgres',
		qq{SELECT count(*) FROM evbus.inbox WHERE topic = '$cap_topic' AND message_id = '$u1' AND dedup_key = '$u1'}),
	'1', 'inbox: one row for the CAP message id');
my @foreign = split /\n/, $node->safe_psql('postgres',
	qq{SELECT coalesce(message_id::text, 'NULL') || ' ' || dedup_key || ' ' || kafka_partition || ' ' || kafka_offset
	     FROM evbus.inbox WHERE topic = '$cap_topic' AND payload->>'from' = 'foreign' ORDER BY kafka_offset});
is(scalar @foreign, 2, 'inbox: two rows for the foreign messages');
my $dedup_ok = 1;
for (@foreign)
{
	my ($mid, $key, $p, $o) = split / /;
	$dedup_ok = 0 unless $key eq "$cap_topic/$p/$o";
}
ok($dedup_ok, 'foreign messages are de-duplicated by topic/partition/offset') or diag join("\n", @foreign);

# Headers in no particular order, one name twice, one evbus sets itself: the
# handler gets each name once, the last value of a name given twice, and
# evbus's own evbus-offset (inbox_decode.c pushes them in the order of a
# Jsonb object's keys).
java_produce($cap_topic,
	"zz-later:1,b:first,evbus-offset:99,a:x,b:second\tunordered-key\t{\"n\":5,\"from\":\"unordered\"}");
ok( wait_for_sql($node, 'postgres',
		qq{SELECT count(*) FROM seen WHERE headers->>'evbus-topic' = '$cap_topic' AND payload->>'n' = '5'}, '1', 60),
	'the message with unordered headers is handled');
is( $node->safe_psql('postgres',
		qq{SELECT s.headers - 'evbus-topic' - 'evbus-partition' - 'evbus-offset' - 'evbus-group',
		          (s.headers->'evbus-offset')::bigint = i.kafka_offset
		     FROM seen s JOIN evbus.inbox i ON i.payload = s.payload AND i.topic = '$cap_topic'
		    WHERE s.payload->>'n' = '5'}),
	'{"a": "x", "b": "second", "zz-later": "1"}|t',
	'each header name once, the last value of a repeated one, evbus-offset set by evbus');

# --- evbus.stats ----------------------------------------------------------------------
ok( wait_for_sql($node, 
		'postgres',
		qq{SELECT string_agg(topic || ' ' || group_name || ' ' || handled || ' ' || retrying || ' ' || dead
		                     || ' ' || pending || ' ' || coalesce(lag::text, 'NULL'), E'\\n' ORDER BY topic)
		     FROM evbus.stats WHERE side = 'consume'},
		"$cap_topic postgres 5 0 0 0 0\n${prefix}Hdr postgres 3 0 0 0 0", 30),
	'evbus.stats: one consume row per topic and group, everything handled, no lag');

$node->stop;
done_testing();

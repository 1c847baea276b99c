# 284_replay.pl - evbus.replay(): read a topic again for a group.
#  - From an offset, without rerun: the consumer rewinds its stored offsets,
#    reads every message again, and the inbox knows them: nothing runs twice.
#  - From a time, without rerun: only the partitions' offsets from that time
#    are rewound; nothing runs twice.
#  - From a time, with rerun: the handler runs again, once, for the
#    messages from that time, in per-key order, and sees the headers
#    evbus-replay and evbus-replay-id.
#  - Refusals: both from_time and from_offset, a negative offset (22023),
#    an unknown group (42704), another role's subscription (42501).
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);

kafka_bootstrap();
my $prefix = "t284.$$.";
my $group = "t284_$$";
my $topic = "${prefix}Replayed";
kafka_admin('topics', '--create', '--topic', $topic, '--partitions', '2');

my $node = new_node(
	'replay',
	kafka => 1,
	conf => [ "evbus.topic_prefix = '$prefix'", "evbus.group_name = '$group'" ]);
$node->safe_psql('postgres', 'CREATE EXTENSION evbus');

sub sql { return $node->safe_psql('postgres', $_[0]); }

my $app = as_subscriber($node);
sql(q{GRANT EXECUTE ON FUNCTION evbus.replay(text, text, timestamptz, bigint, boolean) TO evbus_app;
	CREATE ROLE evbus_other;
	GRANT USAGE ON SCHEMA evbus TO evbus_other;
	GRANT EXECUTE ON FUNCTION evbus.replay(text, text, timestamptz, bigint, boolean) TO evbus_other});
sql($app . q{
CREATE TABLE log (id bigint GENERATED ALWAYS AS IDENTITY, event_key text, seq int,
                  replay text, replay_id text);
CREATE PROCEDURE h(payload jsonb, headers jsonb) LANGUAGE sql AS
	$$ INSERT INTO public.log (event_key, seq, replay, replay_id)
	   VALUES (payload->>'key', (payload->>'seq')::int, headers->>'evbus-replay', headers->>'evbus-replay-id') $$;
SELECT evbus.subscribe('Replayed', 'h(jsonb,jsonb)');
});

sub stage
{
	my ($from, $to) = @_;
	sql(qq{SELECT count(evbus.publish('Replayed', jsonb_build_object('key', 'k' || (g % 3), 'seq', g), 'k' || (g % 3)))
	         FROM generate_series($from, $to) g});
}

my $stored_sql = qq{SELECT sum(next_offset) FROM evbus.consumer_offsets WHERE topic = '$topic'};

# wait for replay $id to be done; returns the number of messages it rewound
sub replay_done
{
	my ($id) = @_;
	ok(wait_for_sql($node, 'postgres', "SELECT done_at IS NOT NULL FROM evbus.replays WHERE id = $id", 't', 30),
		"replay $id is done");
	return sql(qq{SELECT coalesce(sum((r.value->>1)::int - (r.value->>0)::int), 0)
	                FROM evbus.replays, jsonb_each(rewound) r WHERE id = $id});
}

stage(1, 20);
ok(wait_for_sql($node, 'postgres', q{SELECT count(*) FROM log}, '20', 60), '20 messages handled');
sleep 1.5;
my $from_time = sql(q{SELECT now()});
sleep 0.5;
stage(21, 30);
ok(wait_for_sql($node, 'postgres', q{SELECT count(*) FROM log}, '30', 60), '30 messages handled');
ok(wait_for_sql($node, 'postgres', $stored_sql, '30'), 'the stored offsets are at the end');

# --- refusals --------------------------------------------------------------------------
is(sqlstate_of($node, 'postgres', $app . qq{SELECT evbus.replay('Replayed', from_time => '$from_time', from_offset => 0)}),
	'22023', 'from_time and from_offset together: 22023');
is(sqlstate_of($node, 'postgres', $app . q{SELECT evbus.replay('Replayed', from_offset => -1)}),
	'22023', 'a negative offset: 22023');
is(sqlstate_of($node, 'postgres', $app . q{SELECT evbus.replay('Replayed')}),
	'22023', 'neither from_time nor from_offset: 22023');
is(sqlstate_of($node, 'postgres', $app . q{SELECT evbus.replay('Replayed', 'no_such_group', from_offset => 0)}),
	'42704', 'an unknown group: 42704');
is(sqlstate_of($node, 'postgres', q{SET ROLE evbus_other; SELECT evbus.replay('Replayed', from_offset => 0)}),
	'42501', "another role's subscription: 42501");
for my $t ('infinity', '-infinity', '1969-12-31 23:59:59.999+00')
{
	is(sqlstate_of($node, 'postgres', $app . qq{SELECT evbus.replay('Replayed', from_time => '$t')}),
		'22023', "from_time $t: 22023");
}

# a replay row with an infinite from_time, written by hand: the consumer
# did it (nothing to read again) rather than fail at every pass
my $consumer_pid = sql('SELECT evbus.consumer_pid()');
my $by_hand = sql(q{INSERT INTO evbus.replays (group_name, integration_event, from_time, rerun, requested_by)
                    SELECT group_name, 'Replayed', 'infinity', false, current_user
                      FROM evbus.subscriptions WHERE integration_event = 'Replayed' LIMIT 1
                    RETURNING id});
is(replay_done($by_hand), '0', 'a replay from an infinite time rewinds nothing');
sleep 1;
is(sql('SELECT evbus.consumer_pid()'), $consumer_pid, 'the consumer goes on, the same process');

# --- from an offset, without rerun: read again, nothing runs twice ------------------
my $id = sql($app . q{SELECT evbus.replay('Replayed', from_offset => 0)});
is(replay_done($id), '30', 'from offset 0: all 30 messages are read again');
ok(wait_for_sql($node, 'postgres', $stored_sql, '30'), 'the consumer reads up to the end again');
sleep 2;
is(sql(q{SELECT count(*) FROM log}), '30', 'nothing ran twice');

# --- from a time, without rerun ----------------------------------------------------------
$id = sql($app . qq{SELECT evbus.replay('Replayed', from_time => '$from_time')});
is(replay_done($id), '10', 'from a time: the 10 messages since are read again');
ok(wait_for_sql($node, 'postgres', $stored_sql, '30'), 'up to the end');
sleep 2;
is(sql(q{SELECT count(*) FROM log}), '30', 'nothing ran twice');

# --- from a time, with rerun: the handler runs again, and can tell ------------------------
$id = sql($app . qq{SELECT evbus.replay('Replayed', from_time => '$from_time', rerun => true)});
is(replay_done($id), '10', 'with rerun, the same 10 messages');
ok(wait_for_sql($node, 'postgres', q{SELECT count(*) FROM log}, '40', 30), 'the handler ran again for them');
is( sql(q{SELECT string_agg(seq::text, ',' ORDER BY seq), min(replay), min(replay_id) = max(replay_id)
	        FROM log WHERE id > 30}),
	"21,22,23,24,25,26,27,28,29,30|true|t", 'once each, for the messages since from_time, with evbus-replay');
is(sql(q{SELECT min(replay_id) FROM log WHERE id > 30}), $id, 'and evbus-replay-id, the replay\'s id');
is( sql(q{SELECT count(*) FROM (SELECT seq, lag(seq) OVER (PARTITION BY event_key ORDER BY id) AS prev
	                              FROM log WHERE id > 30) s WHERE seq < prev}),
	'0', 'in per-key order');
sleep 2;
is(sql(q{SELECT count(*) FROM log}), '40', 'once: the messages read again did not run a third time');

# --- afterwards, new messages flow as usual ------------------------------------------------
stage(31, 35);
ok(wait_for_sql($node, 'postgres', q{SELECT count(*) FROM log}, '45', 60), 'new messages are handled');
is(sql(q{SELECT count(*) FROM log WHERE seq > 30 AND replay IS NULL}), '5', 'once, without evbus-replay');

ok(!$node->log_contains(qr/went back from offset/),
	'the replays\' seeks back are not taken for a partition whose log began again');

$node->stop;
done_testing();

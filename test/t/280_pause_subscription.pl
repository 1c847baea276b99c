# 280_pause_subscription.pl - evbus.pause_subscription / resume_subscription.
#  - One of two handlers of a topic paused: the other keeps handling; the
#    paused one's messages wait in the inbox (pending, never attempted).
#  - Every handler of the topic paused: the consumer stops fetching it, so
#    its lag grows in evbus.stats, while another topic of the group flows.
#  - The consumer restarted while paused stays paused.
#  - Resumed: every message is handled once by each handler, in per-key
#    order, and the lag returns to 0.
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);

kafka_bootstrap();
my $prefix = "t280.$$.";
my $group = "t280_$$";
my $topic = "${prefix}Paused";
kafka_admin('topics', '--create', '--topic', $topic, '--partitions', '2');
kafka_admin('topics', '--create', '--topic', "${prefix}Other", '--partitions', '1');

my $node = new_node(
	'pause_subscription',
	kafka => 1,
	conf => [ "evbus.topic_prefix = '$prefix'", "evbus.group_name = '$group'" ]);
$node->safe_psql('postgres', 'CREATE EXTENSION evbus');

sub sql { return $node->safe_psql('postgres', $_[0]); }

my $app = as_subscriber($node);
sql(q{GRANT EXECUTE ON FUNCTION evbus.pause_subscription(text, regprocedure, text),
	evbus.resume_subscription(text, regprocedure, text) TO evbus_app});
sql($app . q{
CREATE TABLE log (id bigint GENERATED ALWAYS AS IDENTITY, handler text, event_key text, seq int);
CREATE PROCEDURE h1(payload jsonb, headers jsonb) LANGUAGE sql AS
	$$ INSERT INTO public.log (handler, event_key, seq) VALUES ('h1', payload->>'key', (payload->>'seq')::int) $$;
CREATE PROCEDURE h2(payload jsonb, headers jsonb) LANGUAGE sql AS
	$$ INSERT INTO public.log (handler, event_key, seq) VALUES ('h2', payload->>'key', (payload->>'seq')::int) $$;
CREATE PROCEDURE h3(payload jsonb, headers jsonb) LANGUAGE sql AS
	$$ INSERT INTO public.log (handler, event_key, seq) VALUES ('h3', payload->>'key', (payload->>'seq')::int) $$;
SELECT evbus.subscribe('Paused', 'h1(jsonb,jsonb)');
SELECT evbus.subscribe('Paused', 'h2(jsonb,jsonb)');
SELECT evbus.subscribe('Other', 'h3(jsonb,jsonb)');
});

sub stage
{
	my ($event, $from, $to) = @_;
	sql(qq{SELECT count(evbus.publish('$event', jsonb_build_object('key', 'k' || (g % 3), 'seq', g), 'k' || (g % 3)))
	         FROM generate_series($from, $to) g});
}

sub handled
{
	my ($handler) = @_;
	return sql(qq{SELECT count(*) FROM log WHERE handler = '$handler'});
}

my $lag_sql = qq{SELECT lag FROM evbus.stats WHERE side = 'consume' AND topic = '$topic'};

stage('Paused', 1, 10);
ok(wait_for_sql($node, 'postgres', q{SELECT count(*) FROM log}, '20', 60), 'before the pause both handlers run');

# --- one handler of the topic paused ---------------------------------------------
is(sql($app . q{SELECT evbus.pause_subscription('Paused', 'h1(jsonb,jsonb)')}), '1', 'h1 paused');
stage('Paused', 11, 30);
ok(wait_for_sql($node, 'postgres', q{SELECT count(*) FROM log WHERE handler = 'h2'}, '30', 60),
	'the other handler of the topic keeps running');
is(handled('h1'), '10', 'the paused handler runs for nothing');
is( sql(q{SELECT count(*), sum(attempts) FROM evbus.inbox WHERE handler LIKE '%h1%' AND state = 'pending'}),
	'20|0', 'its messages wait in the inbox, pending, never attempted');

# --- every handler of the topic paused: no fetch, the lag grows --------------------
is(sql($app . q{SELECT evbus.pause_subscription('Paused')}), '1', 'h2 paused too (h1 was)');
sleep 2;	# the consumer notices within its next pass
stage('Paused', 31, 60);
stage('Other', 1, 10);
ok(wait_for_sql($node, 'postgres', q{SELECT count(*) FROM log WHERE handler = 'h3'}, '10', 60),
	'another topic of the group flows');
ok(wait_for_sql($node, 'postgres', $lag_sql, '30', 30), 'the lag of the paused topic grows to 30 in evbus.stats');
is(handled('h1') . '/' . handled('h2'), '10/30', 'no paused handler ran');
is(sql(qq{SELECT count(*) FROM evbus.inbox WHERE topic = '$topic' AND (payload->>'seq')::int > 30}),
	'0', 'the paused topic is not fetched');

# --- restarted while paused ----------------------------------------------------------
$node->restart;
stage('Paused', 61, 70);
ok(wait_for_sql($node, 'postgres', $lag_sql, '40', 30), 'after a restart, still paused: the lag grows to 40');
sleep 2;
is(handled('h1') . '/' . handled('h2'), '10/30', 'no paused handler ran after the restart');

# --- resumed -------------------------------------------------------------------------
is(sql($app . q{SELECT evbus.resume_subscription('Paused')}), '2', 'both resumed');
ok(wait_for_sql($node, 'postgres', q{SELECT count(*) FROM log WHERE handler IN ('h1', 'h2')}, '140', 60),
	'every message handled by both handlers');
is( sql(q{SELECT count(*) FROM (SELECT handler, seq FROM log GROUP BY 1, 2 HAVING count(*) > 1) d}),
	'0', 'each once');
is( sql(q{SELECT count(*) FROM (SELECT handler, event_key, seq,
	                                   lag(seq) OVER (PARTITION BY handler, event_key ORDER BY id) AS prev
	                              FROM log) s WHERE seq < prev}),
	'0', 'in per-key order, per handler');
ok(wait_for_sql($node, 'postgres', $lag_sql, '0', 30), 'the lag returns to 0');
is(sql(q{SELECT count(*) FROM evbus.subscriptions WHERE paused_at IS NOT NULL}), '0', 'nothing paused');

$node->stop;
done_testing();

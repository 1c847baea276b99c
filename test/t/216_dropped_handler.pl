# 216_dropped_handler.pl - a subscribed handler and the role it runs as do
# not go missing, and if they do, their messages fail and retry, never
# vanish.
#  - DROP FUNCTION of a subscribed handler is refused (2BP01, hint:
#    unsubscribe first), also within DROP OWNED;
#  - DROP ROLE of the role a subscription runs as is refused in the
#    database that has the subscription (2BP01);
#  - a handler dropped anyway (the event trigger disabled): its messages
#    fail (42883) and are retried, and the offsets move on; the function
#    created again, the subscription revives and they are handled;
#  - a handler renamed away and its name taken by a function returning a
#    set of 20 million rows: it runs, and the consumer keeps none of the
#    rows (its peak memory stays under 300 MB; it kept them all before);
#  - the role dropped from another database: its messages fail and are
#    retried, then dead-lettered with the error, never lost.
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);

kafka_bootstrap();
my $prefix = "t216.$$.";
my $group = "t216_$$";
my $node = new_node(
	'dropped',
	kafka => 1,
	conf => [
		"evbus.topic_prefix = '$prefix'",
		"evbus.group_name = '$group'",
		"evbus.retry_interval = '100ms'",
		"evbus.retry_max_interval = '300ms'"
	]);
$node->safe_psql('postgres', 'CREATE EXTENSION evbus');
$node->safe_psql('postgres', 'CREATE DATABASE other');

sub sql { return $node->safe_psql('postgres', $_[0]); }

# a handler that records each message it handles in effects, under its name
sub recording_handler
{
	my ($name) = @_;
	return qq{CREATE PROCEDURE $name(payload jsonb, headers jsonb) LANGUAGE plpgsql AS \$\$
BEGIN
	INSERT INTO public.effects VALUES ('$name', (payload->>'n')::int);
END \$\$;
};
}

# bob owns nothing and holds no grant of his own: only his subscriptions
# keep him (the team owns the handlers and holds the grants)
sql(q{
CREATE ROLE team;
CREATE ROLE bob IN ROLE team;
GRANT USAGE ON SCHEMA evbus TO team;
GRANT CREATE ON SCHEMA public TO team;
GRANT EXECUTE ON FUNCTION evbus.subscribe(text, regprocedure, text, integer),
	evbus.unsubscribe(text, regprocedure, text) TO team;
CREATE TABLE effects (handler text, n int);
GRANT INSERT ON effects TO team;
SET ROLE team;
} . recording_handler('vanishing') . recording_handler('bobs') . q{
SET ROLE bob;
SELECT evbus.subscribe('Vanishing', 'public.vanishing(jsonb,jsonb)', max_retries => 1000);
SELECT evbus.subscribe('Orphaned', 'public.bobs(jsonb,jsonb)', max_retries => 2);
});

# --- refused drops ------------------------------------------------------------------
is(sqlstate_of($node, 'postgres', q{DROP PROCEDURE vanishing(jsonb, jsonb)}), '2BP01',
	'DROP of a subscribed handler is refused');
my (undef, undef, $err) = $node->psql('postgres', q{DROP PROCEDURE vanishing(jsonb, jsonb)});
like($err, qr/HINT:.*[Uu]nsubscribe/, 'the hint says to unsubscribe first');
is(sqlstate_of($node, 'postgres', q{DROP OWNED BY team}), '2BP01', 'DROP OWNED of a subscribed handler is refused');
is(sql(q{SELECT count(*) FROM pg_proc WHERE proname IN ('vanishing', 'bobs')}), '2', 'both handlers still exist');
is(sqlstate_of($node, 'postgres', q{DROP ROLE bob}), '2BP01',
	'DROP ROLE of a role subscriptions run as is refused in their database');
(undef, undef, $err) = $node->psql('postgres', q{DROP ROLE bob});
like($err, qr/HINT:.*[Uu]nsubscribe/, 'the hint says to unsubscribe first');

# --- a handler dropped anyway: fail and retry, revived by CREATE ---------------------
ok(wait_for_sql($node, 'postgres', q{SELECT evbus.consumer_pid() IS NOT NULL}, 't', 30), 'the consumer runs');
sql(q{SELECT evbus.publish('Vanishing', '{"n": 1}')});
ok(wait_for_sql($node, 'postgres', q{SELECT count(*) FROM effects WHERE handler = 'vanishing'}, '1', 60),
	'the handler runs while it exists');
sql(q{
DO $$
BEGIN
	IF EXISTS (SELECT FROM pg_event_trigger WHERE evtname = 'evbus_refuse_handler_drop') THEN
		ALTER EVENT TRIGGER evbus_refuse_handler_drop DISABLE;
	END IF;
END $$;
DROP PROCEDURE vanishing(jsonb, jsonb);
});
my $m2 = sql(q{SELECT evbus.publish('Vanishing', '{"n": 2}')});
my $m3 = sql(q{SELECT evbus.publish('Vanishing', '{"n": 3}')});
ok( wait_for_sql($node, 'postgres',
		qq{SELECT bool_and(state = 'pending' AND attempts >= 2 AND last_error_code = '42883')
		     FROM evbus.inbox WHERE message_id IN ('$m2', '$m3')},
		't', 60),
	'the handler gone: its messages fail with 42883 and are retried');
ok( wait_for_sql($node, 'postgres',
		qq{SELECT sum(next_offset) FROM evbus.consumer_offsets WHERE topic = '${prefix}Vanishing'}, '3', 30),
	'the offsets moved on: the messages wait in the inbox');
sql(q{
SET ROLE team;
} . recording_handler('vanishing') . q{
RESET ROLE;
ALTER EVENT TRIGGER evbus_refuse_handler_drop ENABLE;
});
ok( wait_for_sql($node, 'postgres',
		q{SELECT string_agg(n::text, ',' ORDER BY n) FROM effects WHERE handler = 'vanishing'}, '1,2,3', 60),
	'created again: the subscription revives and both messages are handled');

# --- a set-returning function in a handler's place ----------------------------------
sql(q{
SET ROLE team;
} . recording_handler('swapped') . q{
SET ROLE bob;
SELECT evbus.subscribe('Swapped', 'public.swapped(jsonb,jsonb)', max_retries => 0);
SET ROLE team;
ALTER PROCEDURE swapped(jsonb, jsonb) RENAME TO swapped_before;
CREATE FUNCTION swapped(payload jsonb, headers jsonb) RETURNS SETOF int LANGUAGE sql AS $$
	INSERT INTO public.effects VALUES ('swapped set', (payload->>'n')::int);
	SELECT pg_catalog.generate_series(1, 20000000)
$$;
});
my $consumer = sql(q{SELECT evbus.consumer_pid()});
sql(q{SELECT evbus.publish('Swapped', '{"n": 5}')});
ok( wait_for_sql($node, 'postgres', q{SELECT count(*) FROM effects WHERE handler = 'swapped set'}, '1', 120),
	'the set-returning function in its place runs');
my ($peak_kb) = slurp_file("/proc/$consumer/status") =~ /^VmHWM:\s+(\d+) kB/m;
cmp_ok($peak_kb, '<', 300 * 1024, 'the consumer kept none of its 20 million rows: peak memory under 300 MB');
note "consumer peak memory: $peak_kb kB";
is(sql(q{SELECT evbus.consumer_pid()}), $consumer, 'the same consumer runs on');

# --- the role dropped from another database -------------------------------------------
$node->safe_psql('other', 'DROP ROLE bob');
is(sql(q{SELECT count(*) FROM pg_roles WHERE rolname = 'bob'}), '0', 'bob is dropped (from another database)');
my $m4 = sql(q{SELECT evbus.publish('Orphaned', '{"n": 4}')});
ok(wait_for_sql($node, 'postgres', qq{SELECT state FROM evbus.inbox WHERE message_id = '$m4'}, 'dead', 60),
	'its messages fail, are retried and dead-lettered');
is(sql(qq{SELECT attempts || ' ' || error_code FROM evbus.dead_letters WHERE message_id = '$m4'}), '3 42704',
	'dead letter after max_retries + 1 attempts, with the error (undefined role)');
is(sql(q{SELECT count(*) FROM effects WHERE handler = 'bobs'}), '0', 'the handler never ran');

$node->stop;
done_testing();

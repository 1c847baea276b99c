# 274_park_key.pl - per subscription, what a dead letter does to its key.
# All events are on ONE partition, so "another key flows" cannot come from
# another partition.
#  - 'park': key k's event 1 dies (its handler fails max_retries + 1
#    times); k's events 2 and 3 wait, neither handled nor dead, while key o
#    flows; after evbus.retry, with the handler fixed, k's events 1, 2 and
#    3 are handled in that order.  A second parked key moves on once its
#    dead event is discarded.
#  - 'skip' (the default): the later events of the dead one's key go on,
#    as before.
#  - evbus.subscriptions shows the choice; subscribing again may change
#    it; the four-argument evbus.subscribe keeps it.
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep);

kafka_bootstrap();
my $prefix = "t274.$$.";
my $group = "t274_$$";
for my $t (qw(Parked Skipped ParkedMany))
{
	kafka_admin('topics', '--create', '--topic', "$prefix$t", '--partitions', '1');
}

my $node = new_node(
	'park_key',
	kafka => 1,
	conf => [
		"evbus.topic_prefix = '$prefix'",
		"evbus.group_name = '$group'",
		"evbus.retry_interval = '100ms'",
		"evbus.retry_max_interval = '200ms'"
	]);
$node->safe_psql('postgres', 'CREATE EXTENSION evbus');

sub sql { return $node->safe_psql('postgres', $_[0]); }

sql(as_subscriber($node) . q{
CREATE TABLE handled_log (id bigint GENERATED ALWAYS AS IDENTITY, event text, event_key text, n int);
CREATE TABLE gate (open boolean NOT NULL);
INSERT INTO gate VALUES (false);
CREATE PROCEDURE record_order(payload jsonb, headers jsonb) LANGUAGE plpgsql AS $$
BEGIN
	IF (payload->>'always_fail')::boolean OR
	   ((payload->>'fail')::boolean AND NOT (SELECT open FROM public.gate)) THEN
		RAISE EXCEPTION 'event % of key % fails', payload->>'n', payload->>'key' USING ERRCODE = 'EV030';
	END IF;
	INSERT INTO public.handled_log (event, event_key, n)
	VALUES (headers->>'cap-msg-name', payload->>'key', (payload->>'n')::int);
END $$;
});
sql(q{GRANT EXECUTE ON FUNCTION evbus.subscribe(text, regprocedure, evbus.on_dead_letter, text, integer) TO evbus_app});
sql(q{SET ROLE evbus_app;
SELECT evbus.subscribe('Parked', 'record_order(jsonb,jsonb)', on_dead_letter => 'park', max_retries => 1);
SELECT evbus.subscribe('Skipped', 'record_order(jsonb,jsonb)', max_retries => 1);
});
is(sql(q{SELECT string_agg(integration_event || ':' || on_dead_letter, ',' ORDER BY integration_event) FROM evbus.subscriptions}),
	'Parked:park,Skipped:skip', 'evbus.subscriptions shows what a dead letter does');

# --- park: the key waits for its dead event ------------------------------------
sub publish_all
{
	my ($event, @events) = @_;
	my $stage = "BEGIN;\n";
	for my $e (@events)
	{
		my ($k, $n, $extra) = @$e;
		$extra = $extra ? ", $extra" : '';
		$stage .= "SELECT evbus.publish('$event', '{\"key\": \"$k\", \"n\": $n$extra}', '$k');\n";
	}
	return sql($stage . "COMMIT;\n");
}
publish_all('Parked', [ 'k', 1, '"fail": true' ], [ 'k', 2 ], [ 'o', 1 ], [ 'k', 3 ], [ 'o', 2 ]);

ok(wait_for_sql($node, 'postgres', q{SELECT count(*) FROM evbus.dead_letters WHERE payload->>'key' = 'k'}, '1', 60),
	'k/1 is dead-lettered after max_retries + 1 attempts');
ok(wait_for_sql($node, 'postgres', q{SELECT string_agg(n::text, ',' ORDER BY id) FROM handled_log WHERE event_key = 'o'}, '1,2', 30),
	'key o flows');
sleep 1.5;
is(sql(q{SELECT count(*) FROM handled_log WHERE event_key = 'k'}), '0', 'no event of key k is handled');
is( sql(q{SELECT string_agg(payload->>'n' || ':' || state || ':' || attempts, ',' ORDER BY kafka_offset)
            FROM evbus.inbox WHERE payload->>'key' = 'k'}),
	'1:pending:2,2:pending:0,3:pending:0', 'k/1 is parked; k/2 and k/3 wait, never attempted');
is(sql(q{SELECT count(*) FROM evbus.dead_letters}), '1', 'k/2 and k/3 are not dead');
is(sql(q{SELECT state, count FROM evbus.failures}), 'dead|1', 'evbus.failures shows the dead letter');

sql(q{UPDATE gate SET open = true});
my $k1 = sql(q{SELECT message_id FROM evbus.dead_letters WHERE payload->>'key' = 'k'});
is(sql(qq{SELECT evbus.retry('$k1')}), 't', 'the operator retries k/1');
ok(wait_for_sql($node, 'postgres', q{SELECT string_agg(n::text, ',' ORDER BY id) FROM handled_log WHERE event_key = 'k'}, '1,2,3', 30),
	'k/1, k/2 and k/3 are handled, in order');

# a second parked key moves on once its dead event is discarded
publish_all('Parked', [ 'q', 1, '"always_fail": true' ], [ 'q', 2 ]);
ok(wait_for_sql($node, 'postgres', q{SELECT count(*) FROM evbus.dead_letters WHERE payload->>'key' = 'q'}, '1', 60),
	'q/1 is dead-lettered');
sleep 1.5;
is(sql(q{SELECT count(*) FROM handled_log WHERE event_key = 'q'}), '0', 'q/2 waits behind it');
my $q1 = sql(q{SELECT message_id FROM evbus.dead_letters WHERE payload->>'key' = 'q'});
is(sql(qq{SELECT evbus.discard('$q1', 'q/1 can never succeed')}), 't', 'the operator discards q/1');
ok(wait_for_sql($node, 'postgres', q{SELECT string_agg(n::text, ',' ORDER BY id) FROM handled_log WHERE event_key = 'q'}, '2', 30),
	'then q/2 is handled');
is(sql(qq{SELECT state FROM evbus.inbox WHERE message_id = '$q1'}), 'discarded', 'q/1 is discarded');

# More parked keys than one transaction of the retries takes: 100 keys
# whose first event fails at once (max_retries 0) and whose second waits,
# all pending while the subscription is paused (another handler of the
# event keeps its topic read), then resumed.  The retries walk the rows in
# installments of a transaction each, going on where the last stopped;
# every first event parked there stops its key in the walks that follow,
# so no second event runs.
sql(q{SET ROLE evbus_app;
CREATE FUNCTION noop(payload jsonb) RETURNS void LANGUAGE sql AS $$ SELECT $$;
SELECT evbus.subscribe('ParkedMany', 'record_order(jsonb,jsonb)', on_dead_letter => 'park', max_retries => 0);
SELECT evbus.subscribe('ParkedMany', 'noop(jsonb)');
});
sql(q{SELECT evbus.pause_subscription('ParkedMany', 'record_order(jsonb,jsonb)')});
publish_all('ParkedMany', (map { [ "p$_", 1, '"always_fail": true' ] } 1 .. 100), (map { [ "p$_", 2 ] } 1 .. 100));
ok( wait_for_sql($node, 'postgres',
		q{SELECT count(*) FROM evbus.inbox WHERE integration_event = 'ParkedMany' AND state = 'pending'}, '200', 60),
	'200 events of 100 keys wait while the subscription is paused');
sql(q{SELECT evbus.resume_subscription('ParkedMany', 'record_order(jsonb,jsonb)')});
ok( wait_for_sql($node, 'postgres',
		q{SELECT count(*) FROM evbus.dead_letters WHERE integration_event = 'ParkedMany'}, '100', 60),
	'the first event of each of the 100 keys is dead-lettered and parks its key');
sleep 1.5;
is(sql(q{SELECT count(*) FROM handled_log WHERE event = 'ParkedMany'}), '0', 'no second event runs behind its parked key');
is( sql(q{SELECT string_agg(payload->>'n' || ':' || state || ':' || attempts || ':' || count, ',' ORDER BY payload->>'n')
            FROM (SELECT payload, state, attempts, count(*) OVER (PARTITION BY payload->>'n') AS count,
                         row_number() OVER (PARTITION BY payload->>'n') AS r
                    FROM evbus.inbox WHERE integration_event = 'ParkedMany' AND handler LIKE '%record_order%') i
           WHERE r = 1}),
	'1:pending:1:100,2:pending:0:100', 'the first events are parked after one attempt, the second never attempted');

# --- skip: unchanged --------------------------------------------------------------
publish_all('Skipped', [ 's', 1, '"always_fail": true' ], [ 's', 2 ], [ 's', 3 ]);
ok(wait_for_sql($node, 'postgres', q{SELECT string_agg(n::text, ',' ORDER BY id) FROM handled_log WHERE event_key = 's'}, '2,3', 60),
	'skip: the later events of the key go on');
is(sql(q{SELECT state FROM evbus.inbox WHERE payload->>'key' = 's' AND payload->>'n' = '1'}), 'dead', 'skip: s/1 is dead');

# --- subscribing again ------------------------------------------------------------
sql(q{SET ROLE evbus_app; SELECT evbus.subscribe('Skipped', 'record_order(jsonb,jsonb)', on_dead_letter => 'park')});
is(sql(q{SELECT on_dead_letter FROM evbus.subscriptions WHERE integration_event = 'Skipped'}), 'park',
	'subscribing again changes it');
sql(q{SET ROLE evbus_app; SELECT evbus.subscribe('Skipped', 'record_order(jsonb,jsonb)', max_retries => 3)});
is(sql(q{SELECT on_dead_letter || ':' || max_retries FROM evbus.subscriptions WHERE integration_event = 'Skipped'}),
	'park:3', 'the four-argument form keeps it');
is(sqlstate_of($node, 'postgres', q{SELECT evbus.subscribe('Skipped', 'record_order(jsonb,jsonb)', on_dead_letter => 'drop')}),
	'22P02', 'an unknown choice is refused');

$node->stop;
done_testing();

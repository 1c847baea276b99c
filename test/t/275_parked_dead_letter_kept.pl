# 275_parked_dead_letter_kept.pl - the dead letter of a parked key stays
# past evbus.dead_letter_retention, until it is retried or discarded.
#
# A parked message (on_dead_letter => 'park') holds the later events of
# its key for its handler.  Its dead letter used to expire like any
# other: the key stayed held, but evbus.failures and evbus.dead_letters no
# longer showed why, and evbus.discard and the filters of evbus.retry,
# which act on dead letters, no longer found it.  Now a dead letter whose
# message holds its key does not expire; a skipped one, younger, does.
# One deleted by hand no longer leaves its key held for good either:
# evbus.discard of the message id releases it, as evbus.retry requeues it.
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;

kafka_bootstrap();
my $prefix = "t275.$$.";
for my $t (qw(Parked Skipped))
{
	kafka_admin('topics', '--create', '--topic', "$prefix$t", '--partitions', '1');
}
my $node = new_node(
	'parked_dead_letter_kept',
	kafka => 1,
	conf => [
		"evbus.topic_prefix = '$prefix'",
		"evbus.group_name = 't275_$$'",
		"evbus.dead_letter_retention = '3s'",
		"evbus.idle_timeout = '10min'"
	]);
$node->safe_psql('postgres', 'CREATE EXTENSION evbus');

sub sql { return $node->safe_psql('postgres', $_[0]); }

sql(as_subscriber($node) . q{
CREATE TABLE handled_log (id bigint GENERATED ALWAYS AS IDENTITY, event_key text, n int);
CREATE TABLE gate (open boolean NOT NULL);
INSERT INTO gate VALUES (false);
CREATE PROCEDURE record_order(payload jsonb) LANGUAGE plpgsql AS $$
BEGIN
	IF (payload->>'fail')::boolean AND NOT (SELECT open FROM public.gate) THEN
		RAISE EXCEPTION 'event % of key % fails', payload->>'n', payload->>'key' USING ERRCODE = 'EV275';
	END IF;
	INSERT INTO public.handled_log (event_key, n) VALUES (payload->>'key', (payload->>'n')::int);
END $$;
});
sql(q{GRANT EXECUTE ON FUNCTION evbus.subscribe(text, regprocedure, evbus.on_dead_letter, text, integer) TO evbus_app});
sql(q{SET ROLE evbus_app;
SELECT evbus.subscribe('Parked', 'record_order(jsonb)', on_dead_letter => 'park', max_retries => 0);
SELECT evbus.subscribe('Skipped', 'record_order(jsonb)', max_retries => 0);
});

sub dead_letters
{
	my ($event) = @_;
	return sql(qq{SELECT count(*) FROM evbus.dead_letters WHERE integration_event = '$event'});
}

# park($key): $key/1 fails and parks the key, $key/2 waits behind it
sub park
{
	my ($key) = @_;
	sql(qq{BEGIN;
SELECT evbus.publish('Parked', '{"key": "$key", "n": 1, "fail": true}', '$key');
SELECT evbus.publish('Parked', '{"key": "$key", "n": 2}', '$key');
COMMIT;});
	ok( wait_for_sql(
			$node, 'postgres', q{SELECT count(*) FROM evbus.dead_letters WHERE integration_event = 'Parked'},
			'1', 60),
		"$key/1 is dead-lettered and parks its key");
	return;
}

park('k');

# then a skipped dead letter, younger than the parked one
sql(q{SELECT evbus.publish('Skipped', '{"key": "s", "n": 1, "fail": true}', 's')});
ok( wait_for_sql(
		$node, 'postgres', q{SELECT count(*) FROM evbus.dead_letters WHERE integration_event = 'Skipped'},
		'1', 60),
	's/1 is dead-lettered (skip)');

ok( wait_for_sql(
		$node, 'postgres', q{SELECT count(*) FROM evbus.dead_letters WHERE integration_event = 'Skipped'},
		'0', 60),
	'the skipped dead letter expires after evbus.dead_letter_retention');
is(dead_letters('Parked'), '1', 'the older dead letter of the parked key stays');
is( sql(q{SELECT state || ' ' || count FROM evbus.failures WHERE integration_event = 'Parked'}),
	'dead 1', 'evbus.failures still shows it');
is(sql(q{SELECT count(*) FROM handled_log WHERE event_key = 'k'}), '0', 'the key is still held');

# a filter of evbus.retry finds it, and the key goes on in order
sql(q{UPDATE gate SET open = true});
is(sql(q{SELECT evbus.retry(side => 'consume', integration_event => 'Parked')}),
	'1', 'evbus.retry by filter requeues it');
ok( wait_for_sql(
		$node, 'postgres', q{SELECT string_agg(n::text, ',' ORDER BY id) FROM handled_log WHERE event_key = 'k'},
		'1,2', 60),
	'k/1 and k/2 are handled, in order');
is(dead_letters('Parked'), '0', 'and the dead letter is gone');

# a parked key whose dead letter was deleted by hand: evbus.discard of its
# message id still releases it
sql(q{UPDATE gate SET open = false});
park('k2');
my $id = sql(q{SELECT message_id FROM evbus.dead_letters WHERE integration_event = 'Parked'});
sql(q{DELETE FROM evbus.dead_letters});
is(sql(qq{SELECT evbus.discard('$id', 'its dead letter was deleted by hand')}),
	't', 'evbus.discard of its message id finds the parked row');
ok( wait_for_sql(
		$node, 'postgres', q{SELECT string_agg(n::text, ',' ORDER BY id) FROM handled_log WHERE event_key = 'k2'},
		'2', 60),
	'the key goes on: k2/2 is handled, k2/1 is not');
is( sql(qq{SELECT action || ' ' || direction || ' ' || error_code || ' ' || reason FROM evbus.repair_log WHERE message_id = '$id'}),
	'discard consume EV275 its dead letter was deleted by hand',
	'evbus.repair_log records the discard');
is(sql(qq{SELECT state FROM evbus.inbox WHERE message_id = '$id'}), 'discarded', 'its inbox row is discarded');
is(sql(qq{SELECT evbus.discard('$id', 'again')}), 'f', 'a second discard finds nothing');

$node->stop;
done_testing();

# 236_inbox_retention.pl - the consumer trims the inbox: a dead message's
# row goes with its dead letter (evbus.dead_letter_retention), a handled
# message's row after evbus.inbox_retention.  Before, dead rows stayed in
# the inbox for ever.
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
		"evbus.inbox_retention = '1h'"
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

$node->stop;
done_testing();

# 185_consume_broker_switch.pl - evbus.brokers changed and reloaded: the
# consumer worker leaves the old brokers and consumes from the new ones
# (its consumers were once kept as long as their topics were unchanged,
# whatever the brokers).  The database starts on an address where no
# broker listens, with a handler subscribed and an event published; after
# the switch the event is published and handled once, by the same workers.
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $bootstrap = kafka_bootstrap();
my $prefix = "t185.$$.";
my $node = new_node(
	'switch',
	conf => [
		"evbus.brokers = '127.0.0.1:1'",
		"evbus.topic_prefix = '$prefix'",
		"evbus.retry_interval = '100ms'"
	]);
$node->safe_psql('postgres', 'CREATE EXTENSION evbus');
subscribe_recorder($node, 'Switched');
$node->safe_psql('postgres', q{SELECT evbus.publish('Switched', '{"n": 1}', 'k');});
ok($node->poll_query_until('postgres', 'SELECT evbus.consumer_pid() IS NOT NULL'),
	'the consumer worker runs (on an address where no broker listens)');
sleep 2;
is($node->safe_psql('postgres', 'SELECT count(*) FROM evbus.outbox'), '1',
	'the event waits in the outbox');
my $worker = $node->safe_psql('postgres', 'SELECT evbus.publisher_pid()');
my $consumer = $node->safe_psql('postgres', 'SELECT evbus.consumer_pid()');

$node->safe_psql('postgres', "ALTER SYSTEM SET evbus.brokers = '$bootstrap'");
$node->reload;
ok($node->poll_query_until('postgres', 'SELECT count(*) = 0 FROM evbus.outbox'),
	'after the switch the event is published');
ok($node->poll_query_until('postgres', q{SELECT count(*) = 1 FROM received WHERE payload = '{"n": 1}'}),
	'and handled: the consumer follows the new brokers');
is($node->safe_psql('postgres', 'SELECT evbus.publisher_pid() || \' \' || evbus.consumer_pid()'),
	"$worker $consumer", 'by the same worker processes (a reload, not a restart)');

$node->stop;
done_testing();

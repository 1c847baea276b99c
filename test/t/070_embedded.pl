# 070_embedded.pl - evbus.brokers = 'embedded' runs librdkafka's mock
# cluster inside the server: no Kafka needed.  Its address is visible from
# SQL, a local client (kcat) reads what was published, all databases of the
# server share it, and the server log says its contents vanish at restart.
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = new_node('embedded', conf => [ "evbus.brokers = 'embedded'" ]);
ok($node->wait_for_log(qr/evbus: embedded broker listening on 127\.0\.0\.1:\d+/),
	'the server log announces the embedded broker');
ok($node->log_contains(qr/they vanish when the server restarts/),
	'and warns that its contents vanish at restart');

$node->safe_psql('postgres', 'CREATE DATABASE orders');
$node->safe_psql('postgres', 'CREATE DATABASE payments');
$node->safe_psql($_, 'CREATE EXTENSION evbus') for qw(orders payments);

my $brokers = $node->safe_psql('orders', 'SELECT evbus.brokers()');
like($brokers, qr/^127\.0\.0\.1:\d+$/, "evbus.brokers() gives the embedded broker's address ($brokers)");
is($node->safe_psql('payments', 'SELECT evbus.brokers()'), $brokers, 'one broker shared by all databases');

$node->safe_psql('orders', q{SELECT evbus.publish('OrderCreated', '{"orderId": 1}', 'o-1')});
$node->safe_psql('payments', q{SELECT evbus.publish('PaymentReceived', '{"orderId": 1}', 'o-1')});
for my $db (qw(orders payments))
{
	ok($node->poll_query_until($db, 'SELECT count(*) = 0 FROM evbus.outbox'), "$db: published");
}

sub read_topic
{
	my ($topic) = @_;
	my @out = split /\n/,
	  `kcat -b $brokers -C -t $topic -o beginning -e -q -f '%k|%s|%h\\n' 2>/dev/null`;
	return @out;
}
my @orders = read_topic('OrderCreated');
is(scalar @orders, 1, 'kcat reads the orders event from the embedded broker');
like($orders[0], qr/^o-1\|\{"orderId":1\}\|.*evbus-source=orders/, 'with key, value and headers');
my @payments = read_topic('PaymentReceived');
like($payments[0] // '', qr/evbus-source=payments/, 'and the payments event');

# at restart the embedded broker starts empty, on a new address
$node->restart;
ok($node->poll_query_until('orders', q{SELECT evbus.brokers() IS NOT NULL}), 'embedded broker back after restart');
$brokers = $node->safe_psql('orders', 'SELECT evbus.brokers()');
is(scalar(read_topic('OrderCreated')), 0, 'its topics vanished with the restart');

$node->stop;
done_testing();

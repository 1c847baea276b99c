# 070_embedded.pl - evbus.brokers = 'embedded' runs librdkafka's mock
# cluster inside the server: no Kafka needed.  Its address is visible from
# SQL, a local client (kcat) reads what was published, all databases of the
# server share it, and the server log says its contents vanish at restart.
# A fast shutdown ends in time, even for a consumer of many groups, which
# it leaves with the broker already gone.
use strict;
use warnings;

use EvbusTest;
use POSIX qw(SIGHUP);
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

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

# a signal the kernel gives the broker's thread (sent to that thread
# here; the kernel does so when the launcher's own thread has one pending)
# does not end it: it ended, the broker answered no more, and the server's
# shutdown waited for ever
my $launcher = $node->safe_psql('postgres',
	q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'evbus launcher'});
my ($mock) = grep { slurp_file("/proc/$launcher/task/$_/comm") =~ /^rdk:mock/ }
  map { m{/(\d+)$} } glob("/proc/$launcher/task/*");
ok(defined $mock, "the launcher runs the embedded broker's thread");
require 'syscall.ph';
is(syscall(&SYS_tgkill, $launcher + 0, $mock + 0, SIGHUP), 0, 'SIGHUP sent to that thread');
sleep 1;
ok(-e "/proc/$launcher/task/$mock", 'the thread goes on');
$node->safe_psql('orders', q{SELECT evbus.publish('OrderCreated', '{"orderId": 2}', 'o-2')});
ok(wait_for_sql($node, 'orders', 'SELECT count(*) FROM evbus.outbox', '0', 30),
	'the embedded broker still takes events');

# a consumer of six groups: the fast shutdown below stops the embedded
# broker first, and every group then leaves without an answer, each
# waiting a bounded time for it; they leave at once (one after the other,
# up to 15 s each, the shutdown outlasted pg_ctl)
$node->safe_psql('payments',
	as_subscriber($node, 'payments')
	  . q{CREATE FUNCTION noop(payload jsonb, headers jsonb) RETURNS void LANGUAGE sql AS 'SELECT';}
	  . join('', map { "SELECT evbus.subscribe('OrderCreated', 'noop(jsonb, jsonb)', 'g070_$_');" } 1 .. 6));
ok( wait_for_sql(
		$node, 'payments', q{SELECT count(*) FROM evbus.inbox WHERE state = 'handled'},
		'6', 60),
	'six consumer groups handle the order event');

my $stopped;
my $t0 = time;
{
	local $ENV{PGCTLTIMEOUT} = 30;
	$stopped = $node->stop('fast', fail_ok => 1);
}
ok($stopped, 'and the server stops');
note sprintf('pg_ctl stop -m fast took %.1f s', time - $t0);
$node->stop('immediate') unless $stopped;
done_testing();

# 110_consume_exactly_once.pl - two services, two databases of one server,
# a real Kafka broker between them.  "orders" raises OrderCreatedDomainEvent
# (capture trigger) in the transaction that inserts an order; a converter
# turns it into OrderCreatedIntegrationEvent.  "payments" subscribes a
# handler that inserts a payment row.  Every committed order yields exactly
# one payment row; rolled back orders (whole transactions and savepoints)
# yield none.  The handler is subscribed before the topic exists and before
# anything is published (the running worker picks up both), the default
# group is the database name, and evbus.stats shows the group's progress
# with no lag at the end.
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);

kafka_bootstrap();
my $prefix = "t110.$$.";
my $topic = "${prefix}OrderCreatedIntegrationEvent";
my $node = new_node(
	'services',
	kafka => 1,
	conf => [
		"evbus.topic_prefix = '$prefix'",
		"evbus.retry_interval = '100ms'",
		"evbus.retry_max_interval = '500ms'"
	]);

$node->safe_psql('postgres', 'CREATE DATABASE orders');
$node->safe_psql('postgres', 'CREATE DATABASE payments');
$node->safe_psql($_, 'CREATE EXTENSION evbus') for qw(orders payments);

# --- orders: the producing service -------------------------------------------
$node->safe_psql(
	'orders', q{
CREATE TABLE orders (id int PRIMARY KEY, customer text NOT NULL, total numeric NOT NULL);
CREATE FUNCTION order_created(payload jsonb) RETURNS jsonb LANGUAGE sql AS $$
	SELECT jsonb_build_object('orderId', (payload->>'id')::int,
	                          'customer', payload->>'customer',
	                          'amount', payload->'total') $$;
SELECT evbus.register_converter('OrderCreatedDomainEvent', 'OrderCreatedIntegrationEvent',
                                'order_created(jsonb)');
CREATE TRIGGER orders_created AFTER INSERT ON orders
	FOR EACH ROW EXECUTE FUNCTION evbus.capture('OrderCreatedDomainEvent', 'id');
});

# --- payments: the consuming service -----------------------------------------
# payments has deliberately no unique constraint: a second run of the
# handler for one order would show as a second row.
$node->safe_psql(
	'payments', as_subscriber($node, 'payments') . q{
CREATE TABLE payments (order_id int NOT NULL, amount numeric NOT NULL,
                       message_id uuid, paid_at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE PROCEDURE handle_order_created(payload jsonb, headers jsonb) LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO public.payments (order_id, amount, message_id)
	VALUES ((payload->>'orderId')::int, (payload->>'amount')::numeric,
	        (headers->>'cap-msg-id')::uuid);
END $$;
SELECT evbus.subscribe('OrderCreatedIntegrationEvent', 'handle_order_created(jsonb,jsonb)');
});
is( $node->safe_psql('payments',
		q{SELECT integration_event, group_name, handler::text, is_procedure, takes_headers FROM evbus.subscriptions}),
	'OrderCreatedIntegrationEvent|payments|public.handle_order_created(pg_catalog.jsonb,pg_catalog.jsonb)|t|t',
	'subscription recorded; the default group is the database name');

# --- a few hundred orders, some rolled back ------------------------------------
# 60 transactions of 5 orders: every 4th transaction is rolled back, and in
# every 3rd committed one the last order is rolled back to a savepoint.
my %committed;
my $id = 0;
for my $batch (0 .. 1)
{
	my $sql = '';
	for my $tx (1 .. 30)
	{
		my $rollback = ($tx % 4 == 0);
		my $savepoint = !$rollback && ($tx % 3 == 0);
		$sql .= "BEGIN;\n";
		for my $i (1 .. 5)
		{
			$id++;
			$sql .= "SAVEPOINT s;\n" if $savepoint && $i == 5;
			$sql .= "INSERT INTO orders VALUES ($id, 'c" . ($id % 17) . "', " . ($id * 10) . ".50);\n";
			$sql .= "ROLLBACK TO SAVEPOINT s;\n" if $savepoint && $i == 5;
			$committed{$id} = 1 unless $rollback || ($savepoint && $i == 5);
		}
		$sql .= $rollback ? "ROLLBACK;\n" : "COMMIT;\n";
	}
	$node->safe_psql('orders', $sql);
	# the second half is staged while the first is being consumed
	sleep 1 if $batch == 0;
}
my $n = scalar keys %committed;
note "$id orders inserted, $n committed";
is($node->safe_psql('orders', 'SELECT count(*) FROM orders'), $n, "$n orders committed");

ok(wait_for_sql($node, 'orders', 'SELECT count(*) = 0 FROM evbus.outbox', 't', 60), 'orders: outbox drained');
ok(wait_for_sql($node, 'payments', 'SELECT count(*) FROM payments', $n, 90),
	"payments: $n payment rows");
# nothing more arrives later
sleep 3;
is($node->safe_psql('payments', 'SELECT count(*) FROM payments'), $n,
	'no further payment row after a pause');

my $dups = $node->safe_psql('payments',
	'SELECT string_agg(order_id::text, \',\') FROM (SELECT order_id FROM payments GROUP BY 1 HAVING count(*) > 1) d');
is($dups, '', 'no order was paid twice');
my %paid = map { $_ => 1 } split /\n/,
  $node->safe_psql('payments', 'SELECT DISTINCT order_id FROM payments');
my @missing = grep { !$paid{$_} } sort { $a <=> $b } keys %committed;
my @phantom = grep { !$committed{$_} } sort { $a <=> $b } keys %paid;
is(scalar @missing, 0, 'every committed order was paid') or diag "unpaid: @missing";
is(scalar @phantom, 0, 'no rolled back order was paid') or diag "phantoms: @phantom";
is( $node->safe_psql('payments',
		q{SELECT count(*) FROM payments p WHERE amount <> order_id * 10 + 0.50}),
	'0', 'the handler got the converted payload');

# the payments match the messages in Kafka one to one by message id
my @msgs = kcat_consume($topic, $n, 30);
my %in_kafka = map { $_->{headers}{'cap-msg-id'} => 1 } @msgs;
my %paid_ids = map { $_ => 1 } split /\n/,
  $node->safe_psql('payments', 'SELECT message_id FROM payments');
is_deeply(\%paid_ids, \%in_kafka, 'one payment per message id in Kafka');

# --- the inbox and evbus.stats ---------------------------------------------------
is( $node->safe_psql('payments',
		q{SELECT group_name, topic, state, min(attempts), max(attempts), count(*), count(DISTINCT message_id)
		    FROM evbus.inbox GROUP BY 1, 2, 3}),
	"payments|$topic|handled|1|1|$n|$n",
	'inbox: every event handled once, in one attempt, in group payments');
ok( wait_for_sql($node, 
		'payments',
		qq{SELECT handled, retrying, dead, pending, lag FROM evbus.stats
		    WHERE side = 'consume' AND topic = '$topic' AND group_name = 'payments'},
		"$n|0|0|0|0", 30),
	'evbus.stats: all handled, nothing retrying, dead or pending, no lag');
is( $node->safe_psql('orders', q{SELECT count(*) FROM evbus.stats WHERE side = 'consume'}),
	'0', 'orders, which subscribes to nothing, consumes nothing');
is( $node->safe_psql('payments',
		qq{SELECT sum(next_offset) >= $n FROM evbus.consumer_offsets WHERE topic = '$topic' AND group_name = 'payments'}),
	't', 'consumer_offsets: the group has moved past every message');

# no evbus transaction stays open: handlers run in short transactions
my $xmin_age = $node->safe_psql('payments',
	q{SELECT coalesce(max(age(backend_xmin)), 0) FROM pg_stat_activity WHERE backend_type LIKE 'evbus%'});
cmp_ok($xmin_age, '<=', 1, 'the evbus processes hold no old snapshot');

$node->stop;
done_testing();

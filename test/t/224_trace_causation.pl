# 224_trace_causation.pl - what a handler stages continues the trace and
# says what caused it.
# Three databases on one node, each with evbus and its own group (the
# database name): orders publishes OrderCreated with evbus.traceparent set
# and a tracestate header; a payments handler publishes PaymentDone (and a
# PaymentAudit held back by deliver_at, so it stays in the outbox); a
# shipping handler records its headers and publishes ShipmentBooked.
#  - The payments handler runs with evbus.traceparent a child of the
#    incoming traceparent: same trace-id and flags, a new span-id; it
#    overrides the role's own evbus.traceparent setting.
#  - One trace-id end to end, each hop a new span-id; tracestate travels
#    unchanged.
#  - PaymentDone carries evbus-causation-id and evbus-correlation-id, both
#    OrderCreated's cap-msg-id; ShipmentBooked carries PaymentDone's id as
#    causation and still OrderCreated's as correlation.
#  - OrderCreated, staged outside any handler, carries neither.
#  - A handler still cannot set evbus-* headers itself (22023); a
#    tracestate header of its own wins over the incoming one.
#  - A message with an invalid traceparent leaves evbus.traceparent as
#    the role's settings made it.
#  - evbus.message_chain in payments shows the links, up and down.
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;

kafka_bootstrap();
my $prefix = "t224.$$.";
my $node = new_node(
	'trace',
	kafka => 1,
	conf => [
		"evbus.topic_prefix = '$prefix'",
		"evbus.retry_interval = '100ms'",
		"evbus.retry_max_interval = '500ms'"
	]);
for my $db (qw(orders payments shipping))
{
	$node->safe_psql('postgres', "CREATE DATABASE $db");
	$node->safe_psql($db, 'CREATE EXTENSION evbus');
}

# payments: pays, then stages PaymentDone and a PaymentAudit for later
# (with a tracestate of its own); records the trace context it ran with
# and what a reserved header gets.  Its role sets a traceparent of its
# own, which the message's trace context overrides.
my $role_tp = '00-11111111111111111111111111111111-2222222222222222-00';
my $as_app = as_subscriber($node, 'payments');
$node->safe_psql('payments', "ALTER ROLE evbus_app IN DATABASE payments SET evbus.traceparent = '$role_tp'");
$node->safe_psql(
	'payments', $as_app . q{
CREATE TABLE paid (message_id text, traceparent text, refused text);
CREATE TABLE done (message_id text, headers jsonb);
CREATE PROCEDURE pay(payload jsonb, headers jsonb) LANGUAGE plpgsql AS $$
DECLARE
	refused text;
BEGIN
	BEGIN
		PERFORM evbus.publish('Forged', '{}', NULL, '{"evbus-causation-id": "x"}');
	EXCEPTION WHEN OTHERS THEN
		refused := SQLSTATE;
	END;
	INSERT INTO paid VALUES (headers->>'cap-msg-id', current_setting('evbus.traceparent'), refused);
	IF payload->>'order' <> 'bad-trace' THEN
		PERFORM evbus.publish('PaymentDone', jsonb_build_object('order', payload->'order'), payload->>'order');
		PERFORM evbus.publish('PaymentAudit', jsonb_build_object('order', payload->'order'), NULL,
							  '{"tracestate": "audit=1"}', now() + interval '1 hour');
	END IF;
END $$;
CREATE PROCEDURE done(payload jsonb, headers jsonb) LANGUAGE sql
	AS $$ INSERT INTO done VALUES (headers->>'cap-msg-id', headers) $$;
SELECT evbus.subscribe('OrderCreated', 'pay(jsonb, jsonb)');
SELECT evbus.subscribe('PaymentDone', 'done(jsonb, jsonb)');
});

# shipping: records PaymentDone's headers, books a shipment
$as_app = as_subscriber($node, 'shipping');
$node->safe_psql(
	'shipping', $as_app . q{
CREATE TABLE seen (headers jsonb);
CREATE PROCEDURE ship(payload jsonb, headers jsonb) LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO seen VALUES (headers);
	PERFORM evbus.publish('ShipmentBooked', payload, payload->>'order');
END $$;
SELECT evbus.subscribe('PaymentDone', 'ship(jsonb, jsonb)');
});

my $trace_id = '4bf92f3577b34da6a3ce929d0e0e4736';
my $traceparent = "00-$trace_id-00f067aa0ba902b7-01";
my $tracestate = 'congo=t61rcWkgMzE,rojo=00f067aa0ba902b7';
my $order_id = $node->safe_psql(
	'orders', qq{
SET evbus.traceparent = '$traceparent';
SELECT evbus.publish('OrderCreated', '{"order": "o-1"}', 'o-1', '{"tracestate": "$tracestate"}');
});

ok(wait_for_sql($node, 'shipping', 'SELECT count(*) FROM seen', '1', 60),
	'the chain reached shipping');
my @booked = kcat_consume("${prefix}ShipmentBooked", 1, 30);
my @order = kcat_consume("${prefix}OrderCreated", 1, 30);

# --- the handler's trace context ------------------------------------------------
my ($paid_id, $handler_tp, $refused) = split /\|/,
  $node->safe_psql('payments', 'SELECT message_id, traceparent, refused FROM paid');
is($paid_id, $order_id, 'payments handled OrderCreated');
like($handler_tp, qr/^00-$trace_id-[0-9a-f]{16}-01$/,
	'the handler runs with evbus.traceparent a child of the incoming one (same trace-id and flags)');
isnt(substr($handler_tp, 36, 16), '00f067aa0ba902b7', 'with a new span-id');
is($refused, '22023', 'a handler still cannot set an evbus-* header itself');

# --- what PaymentDone carries ----------------------------------------------------
my %h = map { split /\t/, $_, 2 } split /\n/,
  $node->safe_psql('shipping', q{SELECT key || E'\t' || (value #>> '{}') FROM seen, jsonb_each(headers)});
note join(', ', map { "$_=$h{$_}" } sort keys %h);
my $payment_id = $h{'cap-msg-id'};
like($h{traceparent} // '', qr/^00-$trace_id-[0-9a-f]{16}-01$/,
	'PaymentDone continues the trace of OrderCreated');
is($h{traceparent}, $handler_tp, 'with the span of the handler that staged it');
is($h{tracestate}, $tracestate, 'tracestate travels unchanged');
is($h{'evbus-causation-id'}, $order_id, 'PaymentDone: evbus-causation-id is OrderCreated\'s cap-msg-id');
is($h{'evbus-correlation-id'}, $order_id, 'PaymentDone: evbus-correlation-id is OrderCreated\'s cap-msg-id');

# --- the next hop: ShipmentBooked ---------------------------------------------------
my $bh = $booked[0]{headers} // {};
like($bh->{traceparent} // '', qr/^00-$trace_id-[0-9a-f]{16}-01$/, 'ShipmentBooked: still the same trace');
my %spans = map { $_ => 1 } ('00f067aa0ba902b7', substr($h{traceparent} // '', 36, 16),
	substr($bh->{traceparent} // '', 36, 16));
is(scalar keys %spans, 3, 'each hop has a span-id of its own');
is($bh->{tracestate}, $tracestate, 'ShipmentBooked: tracestate unchanged');
is($bh->{'evbus-causation-id'}, $payment_id, 'ShipmentBooked: caused by PaymentDone');
is($bh->{'evbus-correlation-id'}, $order_id, 'ShipmentBooked: correlation id is still OrderCreated\'s');

# --- outside a handler nothing changes ----------------------------------------------
my $oh = $order[0]{headers} // {};
is($oh->{traceparent}, $traceparent, 'OrderCreated: the session\'s traceparent');
ok(!exists $oh->{'evbus-causation-id'} && !exists $oh->{'evbus-correlation-id'},
	'OrderCreated, staged outside a handler, has no causation or correlation header');

# --- evbus.message_chain in payments -------------------------------------------------
ok(wait_for_sql($node, 'payments', 'SELECT count(*) FROM done', '1', 60),
	'payments received PaymentDone too');
is( $node->safe_psql('payments',
		q{SELECT headers->>'tracestate' || ' ' || (headers->>'evbus-causation-id')
		    FROM evbus.outbox WHERE integration_event = 'PaymentAudit'}),
	"audit=1 $order_id", 'a tracestate header of the handler\'s own wins; the causation id is still added');
is( $node->safe_psql(
		'payments', qq{
SELECT string_agg(concat_ws(' ', depth, integration_event, where_seen, state,
                            coalesce(caused_by, '-'), correlation_id), E'\\n' ORDER BY depth, integration_event)
  FROM evbus.message_chain('$order_id')}),
	"0 OrderCreated inbox handled - $order_id\n"
	  . "1 PaymentAudit outbox staged $order_id $order_id\n"
	  . "1 PaymentDone inbox handled $order_id $order_id",
	'message_chain from OrderCreated: what it caused, in the inbox and the outbox');
is( $node->safe_psql(
		'payments', qq{
SELECT string_agg(depth || ' ' || message_id, ' ' ORDER BY depth, message_id)
  FROM evbus.message_chain('$payment_id')}),
	"-1 $order_id 0 $payment_id",
	'message_chain from PaymentDone: what caused it');
is($node->safe_psql('payments', q{SELECT count(*) FROM evbus.message_chain('no-such-id')}),
	'0', 'message_chain of an unknown id: no rows');

# --- an invalid incoming traceparent: the handler's is left unset -------------------------
$node->safe_psql(
	'orders', q{
SET evbus.traceparent = '00-00000000000000000000000000000000-00f067aa0ba902b7-01';
SELECT evbus.publish('OrderCreated', '{"order": "bad-trace"}', 'bad-trace');
});
ok(wait_for_sql($node, 'payments', 'SELECT count(*) FROM paid', '2', 60), 'payments handled the second order');
is( $node->safe_psql('payments',
		qq{SELECT traceparent FROM paid WHERE message_id <> '$order_id'}),
	$role_tp, 'an invalid incoming traceparent leaves the handler\'s evbus.traceparent as the role set it');

$node->stop;
done_testing();

# 253_event_lists.pl - evbus.publish_events and evbus.subscribe_events
# keep a database to the integration events it may publish and read.
#
# evbus speaks to Kafka as one client for the whole server, so Kafka's
# ACLs cannot tell databases apart: a role that may stage events in
# database "billing" could publish shop's Order, which billing's own
# consumers and others take for shop's, and a role that may subscribe
# there could read shop's private Secret.  A superuser sets the lists per
# database (ALTER DATABASE ... SET): staging or subscribing to an event
# not listed is refused (42501), the role cannot change them, and the
# workers start again by themselves within seconds of a change.  Then an
# event staged by a session that holds another list (one started before
# the change, or a superuser's SET) is dead-lettered by the publisher, as
# Kafka would one its ACLs refuse, and never reaches Kafka; a subscription
# made before is not read, its pending rows wait, and they run once the
# event is allowed again: nothing is lost.
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);

kafka_bootstrap();
my $prefix = "t253.$$.";
kafka_admin('topics', '--create', '--topic', "$prefix$_", '--partitions', '1')
  for qw(Order Payment Secret);
my $node = new_node(
	'lists',
	kafka => 1,
	conf => [ "evbus.topic_prefix = '$prefix'", "evbus.retry_interval = 200" ]);

# shop handles billing's Payment; billing handles shop's Order, and (a
# hostile subscriber, before the lists) shop's Secret, with a handler that
# fails until public.secret_allowed has a row
new_shop($node, 'Payment', 'shop');
new_shop($node, 'Order', 'billing');
$node->safe_psql(
	'billing', q{SET ROLE evbus_app;
CREATE TABLE secret_allowed ();
CREATE TABLE secrets (payload jsonb);
CREATE FUNCTION record_secret(payload jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	IF NOT EXISTS (SELECT FROM public.secret_allowed) THEN
		RAISE EXCEPTION 'not yet';
	END IF;
	INSERT INTO public.secrets VALUES (payload);
END $$;
SELECT evbus.subscribe('Secret', 'record_secret(jsonb)');
});

sub publish
{
	my ($db, $event, $n, $role) = @_;
	$role //= 'SET ROLE evbus_app; ';
	return $node->psql($db, qq{${role}SELECT evbus.publish('$event', '{"n": $n}', 'k')});
}

# Without the lists, billing forges shop's Order and reads shop's Secret.
publish('billing', 'Order', 1);
ok(wait_for_sql($node, 'billing', q{SELECT count(*) FROM received WHERE payload->>'n' = '1'}, '1'),
	'without evbus.publish_events, billing publishes shop\'s Order (and handles it)');
publish('shop', 'Secret', 1);
ok( wait_for_sql(
		$node, 'billing',
		q{SELECT count(*) FROM evbus.inbox WHERE integration_event = 'Secret' AND attempts >= 2}, '1'),
	'without evbus.subscribe_events, billing reads shop\'s Secret (its handler fails, retrying)');

# Settings for superusers only, checked as they are made.
my ($ret, $out, $err) =
  $node->psql('billing', q{ALTER DATABASE billing SET evbus.publish_events = 'Payment, no;thing'});
like($err, qr/invalid value for parameter "evbus.publish_events"/, 'a bad event name is refused');
($ret, $out, $err) =
  $node->psql('billing', q{ALTER DATABASE billing SET evbus.subscribe_events = 'Ord*er'});
like($err, qr/invalid value for parameter "evbus.subscribe_events"/, 'a "*" inside a name is refused');
my $log_offset = -s $node->logfile;
$node->safe_psql('postgres', q{ALTER DATABASE billing SET evbus.publish_events = 'Pay*'});
$node->safe_psql('postgres', q{ALTER DATABASE billing SET evbus.subscribe_events = 'Order, Payment'});
for my $setting (qw(publish_events subscribe_events))
{
	is( sqlstate_of($node, 'billing', qq{SET ROLE evbus_app; SET evbus.$setting = ''}),
		'42501', "a granted role cannot change evbus.$setting");
	is( sqlstate_of($node, 'billing', qq{SET ROLE evbus_app; ALTER DATABASE billing SET evbus.$setting = ''}),
		'42501', "nor set it for the database");
}

# Staging and subscribing outside the lists are refused.
($ret, $out, $err) = publish('billing', 'Order', 2);
like($err, qr/database "billing" may not publish integration event "Order"/,
	'staging shop\'s Order in billing is refused');
is(sqlstate_of($node, 'billing', q{SET ROLE evbus_app; SELECT evbus.publish('Order', '{}')}),
	'42501', 'with SQLSTATE 42501');
($ret, $out, $err) = $node->psql('billing',
	q{SET ROLE evbus_app; SELECT evbus.subscribe('Secret', 'record_received(jsonb)', 'other')});
like($err, qr/database "billing" may not subscribe to integration event "Secret"/,
	'subscribing to shop\'s Secret in billing is refused');
is( sqlstate_of($node, 'billing',
		q{SET ROLE evbus_app; SELECT evbus.subscribe('Secret', 'record_received(jsonb)', 'other')}),
	'42501', 'with SQLSTATE 42501');
($ret, $out, $err) = publish('billing', 'Payment', 1);
is($ret, 0, 'billing stages its own Payment (a prefix of the list)');
ok(wait_for_sql($node, 'shop', q{SELECT count(*) FROM received WHERE payload->>'n' = '1'}, '1'),
	'and shop handles it');

# The workers start again by themselves with the database's lists.
ok( $node->wait_for_log(
		qr/LOG:  evbus: publisher for database "billing" starts again: the database's evbus.publish_events changed/,
		$log_offset),
	'billing\'s publisher starts again when the database\'s list changes');
ok( $node->wait_for_log(
		qr/LOG:  evbus: consumer for database "billing" starts again: the database's evbus.subscribe_events changed/,
		$log_offset),
	'billing\'s consumer starts again too');
ok( $node->wait_for_log(
		qr/WARNING:  evbus: consumer does not read integration event "Secret": evbus.subscribe_events does not list it/,
		$log_offset),
	'the consumer says it does not read Secret');

# A session whose list is not the database's (here a superuser's SET; one
# started before the change is the same) stages shop's Order: the
# publisher dead-letters it as Kafka's ACLs would, and billing, which
# handles every Order, never sees it come back.
($ret, $out, $err) = publish('billing', 'Order', 3, q{SET evbus.publish_events = ''; });
is($ret, 0, 'a session with another list stages Order');
ok( wait_for_sql(
		$node, 'billing',
		q{SELECT error_code || ' ' || error_message FROM evbus.dead_letters
		   WHERE direction = 'publish' AND integration_event = 'Order'},
		'TOPIC_AUTHORIZATION_FAILED evbus.publish_events of this database does not list it'),
	'the publisher dead-letters it: the list does not allow it');
publish('shop', 'Order', 4, '');
publish('billing', 'Payment', 2);
ok(wait_for_sql($node, 'billing', q{SELECT count(*) FROM received WHERE payload->>'n' = '4'}, '1'),
	'billing handles shop\'s next Order');
ok(wait_for_sql($node, 'shop', q{SELECT count(*) FROM received WHERE payload->>'n' = '2'}, '1'),
	'shop handles billing\'s next Payment');
is($node->safe_psql('billing', q{SELECT count(*) FROM received WHERE payload->>'n' = '3'}),
	'0', 'the refused Order never reached Kafka');

# The Secret subscription made before the list is not read, and its
# pending row waits although its handler would now succeed.
$node->safe_psql('billing', 'INSERT INTO secret_allowed DEFAULT VALUES');
my $attempts = $node->safe_psql('billing',
	q{SELECT attempts FROM evbus.inbox WHERE integration_event = 'Secret'});
publish('shop', 'Secret', 2, '');
publish('shop', 'Order', 5, '');
ok(wait_for_sql($node, 'billing', q{SELECT count(*) FROM received WHERE payload->>'n' = '5'}, '1'),
	'billing handles shop\'s Order published after Secret');
sleep 3;
is( $node->safe_psql(
		'billing',
		q{SELECT count(*), min(state), min(attempts) FROM evbus.inbox WHERE integration_event = 'Secret'}),
	"1|pending|$attempts",
	'billing read no new Secret, and the pending one waits, not attempted again');
is($node->safe_psql('billing', 'SELECT count(*) FROM secrets'), '0', 'no Secret was handled');

# Allowed again, it goes on: nothing was lost.
$node->safe_psql('postgres', q{ALTER DATABASE billing RESET evbus.subscribe_events});
ok(wait_for_sql($node, 'billing', q{SELECT string_agg(payload->>'n', ',' ORDER BY payload->>'n') FROM secrets},
		'1,2', 120),
	'once the list allows Secret, both are handled, once each');

$node->stop;
done_testing();

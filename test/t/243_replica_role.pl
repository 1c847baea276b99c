# 243_replica_role.pl - evbus works for sessions and databases with
# session_replication_role = replica, which turns ordinary triggers off
# (migrations set it to skip foreign keys and user triggers).
#
# evbus's own triggers tell the workers and other sessions of a changed
# subscription, count the inbox's messages for evbus.stats and refuse to
# drop a subscribed handler.  In replica mode none fired: a handler
# subscribed by a migration was never called until the consumer restarted,
# the inbox rows of workers in a database set so went uncounted, and a
# subscribed handler could be dropped.  They now fire always:
#  1. a converter registered in replica mode is used by the other sessions
#     (a capture trigger, the application's own, fires in replica mode
#     only if made ENABLE ALWAYS);
#  2. a handler subscribed in replica mode is called, without a restart;
#  3. DROP of a subscribed handler in replica mode is refused (2BP01);
#  4. workers of a database in replica mode handle and count what they
#     receive (evbus.inbox_messages, what evbus.stats reads).
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;

kafka_bootstrap();
my $prefix = "t243.$$.";
kafka_admin('topics', '--create', '--topic', "${prefix}$_", '--partitions', '1') for qw(Audited Mirrored);
my $node = new_node('replica_role', kafka => 1, conf => ["evbus.topic_prefix = '$prefix'"]);
$node->safe_psql('postgres', 'CREATE DATABASE shop');
$node->safe_psql('shop', 'CREATE EXTENSION evbus');
$node->safe_psql(
	'shop', q{
CREATE FUNCTION order_audit(payload jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT payload $$;
SELECT evbus.register_converter('OrderCreated', 'Audited', 'order_audit(jsonb)');
});

# --- 1. a converter registered in replica mode --------------------------------
my $session = $node->background_psql('shop');
is($session->query_safe(q{SELECT evbus.raise('OrderCreated', '{"id": 1}')}), '1', 'one converter');
$node->safe_psql(
	'shop', q{
SET session_replication_role = replica;
CREATE FUNCTION order_mirror(payload jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT payload $$;
SELECT evbus.register_converter('OrderCreated', 'Mirrored', 'order_mirror(jsonb)');
});
is($session->query_safe(q{SELECT evbus.raise('OrderCreated', '{"id": 2}')}),
	'2', 'another session uses the converter registered in replica mode');
$session->quit;

# a capture trigger is the application's, and an ordinary one: in replica
# mode it does not fire unless made ENABLE ALWAYS (docs/production.md)
# (its events stay staged: publishing Captured is paused)
$node->safe_psql(
	'shop', q{
SELECT evbus.register_converter('OrderCaptured', 'Captured', 'order_audit(jsonb)');
SELECT evbus.pause_publishing('Captured');
CREATE TABLE orders (id int PRIMARY KEY);
CREATE TRIGGER orders_captured AFTER INSERT ON orders
	FOR EACH ROW EXECUTE FUNCTION evbus.capture('OrderCaptured', 'id');
});
my $staged = q{SELECT count(*) FROM evbus.outbox WHERE integration_event = 'Captured'};
$node->safe_psql('shop', q{SET session_replication_role = replica; INSERT INTO orders VALUES (1)});
is($node->safe_psql('shop', $staged), '0', 'a capture trigger does not fire in replica mode');
$node->safe_psql(
	'shop', q{ALTER TABLE orders ENABLE ALWAYS TRIGGER orders_captured;
SET session_replication_role = replica; INSERT INTO orders VALUES (2)});
is($node->safe_psql('shop', $staged), '1', 'unless made ENABLE ALWAYS');

# --- 2. a handler subscribed in replica mode ----------------------------------
$node->safe_psql(
	'shop', as_subscriber($node, 'shop') . q{
CREATE TABLE received (payload jsonb);
CREATE FUNCTION record_received(payload jsonb) RETURNS void LANGUAGE sql
	AS $$ INSERT INTO public.received VALUES (payload) $$;
});
# the consumer runs (it handles nothing yet)
ok(wait_for_sql($node, 'postgres',
		q{SELECT count(*) FROM pg_stat_activity WHERE datname = 'shop' AND backend_type = 'evbus consumer'},
		'1', 30),
	'the consumer runs');
my $workers = q{SELECT string_agg(pid::text, ',' ORDER BY backend_type) FROM pg_stat_activity
	WHERE datname = 'shop' AND backend_type IN ('evbus publisher', 'evbus consumer')};
my $pids = $node->safe_psql('postgres', $workers);
$node->safe_psql(
	'shop', q{SET session_replication_role = replica; SET ROLE evbus_app;
SELECT evbus.subscribe('Mirrored', 'record_received(jsonb)')});
$node->safe_psql('shop', q{SELECT evbus.publish('Mirrored', '{"id": 3}')});
ok(wait_for_sql($node, 'shop', q{SELECT count(*) FROM received WHERE payload = '{"id": 3}'}, '1', 30),
	'a handler subscribed in replica mode is called');
is($node->safe_psql('postgres', $workers), $pids, 'by the consumer that ran before');

# --- 3. DROP of a subscribed handler in replica mode ----------------------------
is( sqlstate_of(
		$node, 'shop',
		q{SET session_replication_role = replica; DROP FUNCTION record_received(jsonb)}),
	'2BP01',
	'DROP of a subscribed handler is refused in replica mode');

# --- 4. the workers of a database in replica mode -------------------------------
$node->safe_psql('postgres', 'ALTER DATABASE shop SET session_replication_role = replica');
restart_workers($node, 'shop');
$node->safe_psql('shop', q{SELECT evbus.publish('Mirrored', '{"id": 4}')});
ok(wait_for_sql($node, 'shop', q{SELECT count(*) FROM received WHERE payload = '{"id": 4}'}, '1', 30),
	'workers in replica mode handle');
is( $node->safe_psql('shop', q{SELECT messages FROM evbus.inbox_messages}),
	$node->safe_psql('shop', q{SELECT count(DISTINCT dedup_key) FROM evbus.inbox}),
	'and count what they handled');
$node->stop;
done_testing();

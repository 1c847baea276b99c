# 010_publish_kafka.pl - committed events reach a real Kafka broker exactly
# once, with the wire format of README "Wire format"; events of rolled back
# transactions, rolled back subtransactions and ROLLBACK PREPARED never do;
# an older transaction that commits after a newer one is still published
# (no high-water mark); Kafka's own Java consumer reads the headers.
use strict;
use warnings;

use EvbusTest;
use JSON::PP;
use PostgreSQL::Test::Utils;
use Test::More;

my $bootstrap = kafka_bootstrap();
# topics of this run only: the broker outlives test runs
my $prefix = "t010.$$.";
my $node = new_node(
	'publish',
	kafka => 1,
	conf => [ "evbus.topic_prefix = '$prefix'", 'max_prepared_transactions = 5' ]);

$node->safe_psql('postgres', 'CREATE EXTENSION evbus');

# wait until every staged event has been acknowledged by Kafka
sub drained
{
	my ($node) = @_;
	return $node->poll_query_until('postgres',
		'SELECT count(*) = 0 FROM evbus.outbox');
}

# --- committed events, every staging path --------------------------------
$node->safe_psql(
	'postgres', q{
CREATE FUNCTION order_to_integration(payload jsonb) RETURNS jsonb
LANGUAGE sql AS $$ SELECT jsonb_build_object('orderId', payload->'id', 'total', payload->'total') $$;
SELECT evbus.register_converter('OrderCreatedDomainEvent', 'OrderCreated',
                                'order_to_integration(jsonb)');
CREATE TABLE orders (id int PRIMARY KEY, total numeric);
CREATE TRIGGER orders_capture AFTER INSERT ON orders
	FOR EACH ROW EXECUTE FUNCTION evbus.capture('OrderCreatedDomainEvent', 'id');
});

my $ids = $node->safe_psql(
	'postgres', q{
SET evbus.traceparent = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01';
SELECT evbus.publish('OrderShipped', '{"orderId": 1, "note": "caf\u00e9 \"q\"", "items": [1, 2.50]}',
                     'order-1', '{"tenant": "acme"}');
RESET evbus.traceparent;
SELECT evbus.publish('OrderShipped', '{"orderId": 2, "esc": "a\nb\t\u0001\\\\c"}');
});
my ($shipped1, $shipped2) = split /\n/, $ids;
$node->safe_psql('postgres',
	q{SELECT evbus.raise('OrderCreatedDomainEvent', '{"id": 7, "total": 70}', 'order-7')});
$node->safe_psql('postgres', q{INSERT INTO orders VALUES (8, 80)});

ok(drained($node), 'outbox drained');

my @shipped = kcat_consume("${prefix}OrderShipped", 2, 30);
is(scalar @shipped, 2, 'two OrderShipped events in Kafka');
my %by_id = map { $_->{headers}{'cap-msg-id'} => $_ } @shipped;
ok($by_id{$shipped1} && $by_id{$shipped2}, 'cap-msg-id carries the message ids');

my $m = $by_id{$shipped1};
is($m->{topic}, "${prefix}OrderShipped", 'topic is prefix || integration event');
is($m->{key}, 'order-1', 'key is the event key');
is($m->{payload}, '{"note":"caf' . "\x{e9}" . ' \"q\"","items":[1,2.50],"orderId":1}',
	'value is compact UTF-8 JSON');
is($m->{headers}{'cap-msg-name'}, 'OrderShipped', 'cap-msg-name is the integration event');
like($m->{headers}{'cap-senttime'}, qr/^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d/, 'cap-senttime is a timestamp');
is($m->{headers}{'evbus-source'}, 'postgres', 'evbus-source is the database');
is($m->{headers}{traceparent}, '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01',
	'traceparent of the staging session');
is($m->{headers}{tenant}, 'acme', 'user header');
ok(!exists $m->{headers}{'evbus-domain-event'}, 'no domain event header for evbus.publish');
is($by_id{$shipped2}{payload}, '{"esc":"a\nb\t\u0001\\\\c","orderId":2}',
	'value: control characters and backslash escaped as PostgreSQL escapes them');
is($by_id{$shipped2}{key}, $shipped2, 'without a key, the message id is the key');
ok(!exists $by_id{$shipped2}{headers}{traceparent}, 'no traceparent when none was set');

my @created = kcat_consume("${prefix}OrderCreated", 2, 30);
is(scalar @created, 2, 'raise and capture each produced one OrderCreated');
my %by_key = map { $_->{key} => $_ } @created;
is($by_key{'order-7'}{payload}, '{"total":70,"orderId":7}', 'converter output via raise');
is($by_key{'order-7'}{headers}{'evbus-domain-event'}, 'OrderCreatedDomainEvent', 'evbus-domain-event header');
is($by_key{'8'}{payload}, '{"total":80,"orderId":8}', 'converter output via the capture trigger');

# --- Kafka's own Java consumer sees the same, headers included -------------
my @lines = java_consume("${prefix}OrderShipped", 2, 60);
is(scalar @lines, 2, 'Java console consumer read two messages');
my ($line) = grep { /\torder-1\t/ } @lines;
ok($line, 'Java consumer: message with key order-1') or diag join("\n", @lines);
like($line, qr/cap-msg-id:\Q$shipped1\E/, 'Java consumer: cap-msg-id header');
like($line, qr/cap-msg-name:OrderShipped/, 'Java consumer: cap-msg-name header');
like($line, qr/evbus-source:postgres/, 'Java consumer: evbus-source header');
like($line, qr/\{"note":"caf.*"orderId":1\}$/, 'Java consumer: compact JSON value');

# --- nothing from rolled back work is ever published ------------------------
$node->safe_psql(
	'postgres', q{
BEGIN;
SELECT evbus.publish('Phantoms', '{"phantom": "rollback"}');
ROLLBACK;
BEGIN;
SELECT evbus.publish('Phantoms', '{"real": 1}');
SAVEPOINT s;
SELECT evbus.publish('Phantoms', '{"phantom": "savepoint"}');
ROLLBACK TO SAVEPOINT s;
COMMIT;
BEGIN;
SELECT evbus.publish('Phantoms', '{"phantom": "prepared"}');
PREPARE TRANSACTION 'p1';
ROLLBACK PREPARED 'p1';
BEGIN;
SELECT evbus.publish('Phantoms', '{"real": 2}');
PREPARE TRANSACTION 'p2';
COMMIT PREPARED 'p2';
});
# an error after staging aborts the event with its transaction
$node->psql('postgres',
	q{BEGIN; SELECT evbus.publish('Phantoms', '{"phantom": "error"}'); SELECT 1/0; COMMIT;});
# the sentinel is staged last: once it is in Kafka, any phantom would be too
$node->safe_psql('postgres', q{SELECT evbus.publish('Phantoms', '{"real": 3}', 'sentinel')});
ok(drained($node), 'outbox drained after the rollbacks');
my @phantoms = kcat_consume("${prefix}Phantoms", 3, 30);
my @more = kcat_consume("${prefix}Phantoms", 4, 3);
is(scalar @more, 3, 'exactly the three committed events, nothing more');
is_deeply([ sort map { $_->{payload} } @phantoms ],
	[ '{"real":1}', '{"real":2}', '{"real":3}' ],
	'no event of a rolled back transaction, subtransaction or prepared transaction');

# --- commit-order race: the older transaction commits last -----------------
my $older = $node->background_psql('postgres');
$older->query_safe(q{BEGIN});
my $older_id = $older->query_safe(q{SELECT evbus.publish('Race', '{"who": "older"}', 'race')});
my $newer_id = $node->safe_psql('postgres', q{SELECT evbus.publish('Race', '{"who": "newer"}', 'race')});
ok($node->poll_query_until('postgres', qq{SELECT published = 1 FROM evbus.stats WHERE topic = '${prefix}Race'}),
	'newer event published while the older transaction is still open');
ok( $node->safe_psql('postgres',
		qq{SELECT (SELECT id FROM evbus.outbox_0 WHERE message_id = '$older_id') IS NULL
		      AND (SELECT id FROM evbus.outbox_1 WHERE message_id = '$older_id') IS NULL}) eq 't',
	'older event is invisible until it commits');
$older->query_safe(q{COMMIT});
$older->quit;
ok(drained($node), 'older event drained after its late commit');
my @race = kcat_consume("${prefix}Race", 2, 30);
is(scalar @race, 2, 'both events of the race reached Kafka');
is_deeply([ map { $_->{headers}{'cap-msg-id'} } @race ], [ $newer_id, $older_id ],
	'in commit order: newer first, then the older one');

# --- a converter registered in one session is seen by another --------------
my $session = $node->background_psql('postgres');
is($session->query_safe(q{SELECT evbus.raise('OrderCreatedDomainEvent', '{"id": 1}')}),
	'1', 'first connection: one converter');
$node->safe_psql('postgres', q{
CREATE FUNCTION order_audit(payload jsonb) RETURNS jsonb
LANGUAGE sql AS $$ SELECT jsonb_build_object('audit', payload->'id') $$;
SELECT evbus.register_converter('OrderCreatedDomainEvent', 'OrderAudited', 'order_audit(jsonb)');
});
is($session->query_safe(q{SELECT evbus.raise('OrderCreatedDomainEvent', '{"id": 2}')}),
	'2', 'same session, no reconnect: sees the new converter');
$node->safe_psql('postgres',
	q{SELECT evbus.unregister_converter('OrderCreatedDomainEvent', 'OrderAudited')});
is($session->query_safe(q{SELECT evbus.raise('OrderCreatedDomainEvent', '{"id": 3}')}),
	'1', 'and no longer sees the removed one');
$session->quit;

# --- stats: everything published, nothing pending ---------------------------
ok(drained($node), 'drained');
my $stats = $node->safe_psql('postgres',
	q{SELECT topic, staged, published, dead, pending FROM evbus.stats ORDER BY topic});
is( $stats,
	join("\n",
		"${prefix}OrderAudited|1|1|0|0",
		"${prefix}OrderCreated|5|5|0|0",
		"${prefix}OrderShipped|2|2|0|0",
		"${prefix}Phantoms|3|3|0|0",
		"${prefix}Race|2|2|0|0"),
	'evbus.stats counts what was published');

# no evbus transaction stays open: the worker holds no snapshot between passes
my $xmin_age = $node->safe_psql('postgres',
	q{SELECT coalesce(max(age(backend_xmin)), 0) FROM pg_stat_activity WHERE backend_type = 'evbus publisher'});
cmp_ok($xmin_age, '<=', 1, 'the worker holds no old snapshot');

$node->stop;
done_testing();

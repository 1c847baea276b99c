# 320_dump_restore.pl - pg_dump / pg_restore carry evbus's state to a new
# server (real Kafka).
#
# A database "shop" on server "old" raises OrderPlacedDomainEvent from a
# capture trigger; a converter registered by the application role
# evbus_app turns it into OrderPlaced, and a handler subscribed by
# evbus_app (group shop_group) records a payment per order.  Twenty
# orders are published and handled; publishing is then paused
# (evbus.brokers = '') and ten more orders stay pending in the outbox.
# pg_dump -Fc of that database is restored with a plain `pg_restore -d`
# into a fresh server "new" where only the role exists (as
# pg_dumpall --globals-only would have made it), "old" being stopped.
#
# In the restored database: the converter and the subscription are back,
# owned by evbus_app, and the handler runs as it; the ten pending events
# are published once, with the message ids they had in "old"; the twenty
# orders handled before the dump are not handled again, even when Kafka
# delivers one of them again; new orders and messages are handled once.
#
# The restore is made slow on purpose between evbus's tables and the
# application's: a table of schema f_restore (its data comes after
# evbus's and before public's) has a CHECK that waits up to 10 s for a
# payment row to appear.  Workers that ran during the restore would
# publish the restored outbox and run the handler into public.payments
# before its rows are COPYed (a duplicate key that fails the restore); the
# workers of a database wait while a restore into it runs.
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run ();
use Time::HiRes qw(time sleep);

kafka_bootstrap();
my $prefix = "t320.$$.";
my $topic = "${prefix}OrderPlaced";
my @conf = ("evbus.topic_prefix = '$prefix'", "evbus.retry_interval = '100ms'",
	"evbus.retry_max_interval = '500ms'");

# --- the live database ---------------------------------------------------------
my $old = new_node('old', kafka => 1, conf => \@conf);
$old->safe_psql('postgres', 'CREATE DATABASE shop');
$old->safe_psql('shop', 'CREATE EXTENSION evbus');
my $as_app = as_subscriber($old, 'shop');
$old->safe_psql('shop',
	q{GRANT EXECUTE ON FUNCTION evbus.register_converter(text, text, regprocedure) TO evbus_app});
$old->safe_psql(
	'shop', $as_app . q{
CREATE TABLE public.orders (id int PRIMARY KEY, total numeric NOT NULL);
CREATE FUNCTION public.order_placed(payload jsonb) RETURNS jsonb LANGUAGE sql AS $$
	SELECT pg_catalog.jsonb_build_object('orderId', payload->'id', 'total', payload->'total') $$;
SELECT evbus.register_converter('OrderPlacedDomainEvent', 'OrderPlaced', 'public.order_placed(jsonb)');
-- a serial key: a handler run during the restore would take ids the COPY brings
CREATE TABLE public.payments (id serial PRIMARY KEY, order_id int NOT NULL,
	message_id text NOT NULL, handled_by name NOT NULL DEFAULT current_user);
CREATE PROCEDURE public.pay(payload jsonb, headers jsonb) LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO public.payments (order_id, message_id)
	VALUES ((payload->>'orderId')::int, headers->>'cap-msg-id');
END $$;
SELECT evbus.subscribe('OrderPlaced', 'public.pay(jsonb,jsonb)', 'shop_group');
});
$old->safe_psql(
	'shop', q{
CREATE TRIGGER orders_placed AFTER INSERT ON public.orders
	FOR EACH ROW EXECUTE FUNCTION evbus.capture('OrderPlacedDomainEvent', 'id');
-- the slow part of the restore (see the top of this file)
CREATE SCHEMA f_restore;
CREATE FUNCTION f_restore.wait_for_payments(id int) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
	FOR i IN 1 .. 100 LOOP
		EXIT WHEN EXISTS (SELECT FROM public.payments);
		PERFORM pg_catalog.pg_sleep(0.1);
	END LOOP;
	RETURN true;
END $$;
CREATE TABLE f_restore.slow (id int CHECK (f_restore.wait_for_payments(id)));
});

$old->safe_psql('shop', 'INSERT INTO orders SELECT g, g * 10 FROM generate_series(1, 20) g');
ok(wait_for_sql($old, 'shop', 'SELECT count(*) FROM payments', '20', 90),
	'old: twenty orders handled');
ok(wait_for_sql($old, 'shop', 'SELECT count(*) FROM evbus.outbox', '0', 30),
	'old: outbox drained');
$old->safe_psql('shop', 'INSERT INTO f_restore.slow VALUES (1)');

# publishing paused: ten more orders stay in the outbox
$old->append_conf('postgresql.conf', "evbus.brokers = ''\n");
$old->restart;
$old->safe_psql('shop', 'INSERT INTO orders SELECT g, g * 10 FROM generate_series(21, 30) g');
my $pending = $old->safe_psql('shop',
	q{SELECT string_agg(message_id::text, ',' ORDER BY message_id::text) FROM evbus.outbox});
is(scalar(split /,/, $pending), 10, 'old: ten events pending');
my $old_seq = $old->safe_psql('shop', 'SELECT last_value FROM evbus.outbox_id_seq');
my $handled_id = $old->safe_psql('shop', 'SELECT message_id FROM payments WHERE order_id = 1');
my $old_offsets = $old->safe_psql('shop',
	q{SELECT string_agg(kafka_partition || ':' || next_offset, ',' ORDER BY kafka_partition)
	    FROM evbus.consumer_offsets WHERE group_name = 'shop_group'});
cmp_ok($old_offsets, 'ne', '', "old: offsets stored ($old_offsets)");

my $dump = "${PostgreSQL::Test::Utils::tmp_check}/shop.dump";
$old->command_ok([ 'pg_dump', '-Fc', '-f', $dump, '-d', $old->connstr('shop') ],
	'pg_dump -Fc of the live database');
# a role that may not read evbus's tables can leave their rows out
my $dump_rest = "${PostgreSQL::Test::Utils::tmp_check}/shop-rest.dump";
$old->command_ok(
	[ 'pg_dump', '-Fc', "--exclude-table-data=evbus.*", '-f', $dump_rest, '-d', $old->connstr('shop') ],
	'pg_dump --exclude-table-data=evbus.*');
$old->stop;
my ($toc_rest, $toc_rest_err) = ('', '');
IPC::Run::run([ 'pg_restore', '-l', $dump_rest ], '>', \$toc_rest, '2>', \$toc_rest_err);
unlike($toc_rest, qr/(?:TABLE DATA|SEQUENCE SET) evbus /, 'which then carries none of evbus\'s rows');

# --- what the dump carries ---------------------------------------------------------
my ($toc, $toc_err) = ('', '');
IPC::Run::run([ 'pg_restore', '-l', $dump ], '>', \$toc, '2>', \$toc_err);
my %data = map { $_ => 1 } $toc =~ /(?:TABLE DATA|SEQUENCE SET) evbus (\S+)/g;
is( join(',', sort keys %data),
	'consumer_offsets,converters,database_identity,dead_letters,dead_letters_id_seq,inbox,inbox_id_seq,'
	  . 'outbox_0,outbox_1,outbox_id_seq,publishing_pauses,repair_log,repair_log_id_seq,'
	  . 'subscriptions',
	'the dump carries evbus\'s configuration and state, not its counters or published ranges');

# --- a fresh server: the roles first, then pg_restore ------------------------------
my $new = new_node('new', kafka => 1, conf => \@conf);
$new->safe_psql('postgres', 'CREATE ROLE evbus_app');
$new->safe_psql('postgres', 'CREATE DATABASE shop');
my ($out, $err) = ('', '');
my $restored = IPC::Run::run(
	[ 'pg_restore', '-d', $new->connstr('shop'), $dump ],
	'>', \$out, '2>', \$err);
ok($restored, 'plain pg_restore -d succeeds') or diag $err;
is($err, '', 'pg_restore reports nothing');

is( $new->safe_psql('shop',
		q{SELECT integration_event, group_name, handler, run_as FROM evbus.subscriptions}),
	'OrderPlaced|shop_group|public.pay(pg_catalog.jsonb,pg_catalog.jsonb)|evbus_app',
	'the subscription is back, owned by evbus_app');
is( $new->safe_psql('shop',
		q{SELECT domain_event, integration_event, converter, registered_by FROM evbus.converters}),
	'OrderPlacedDomainEvent|OrderPlaced|public.order_placed(pg_catalog.jsonb)|evbus_app',
	'the converter is back, registered by evbus_app');
cmp_ok($new->safe_psql('shop', 'SELECT last_value FROM evbus.outbox_id_seq'),
	'>=', $old_seq, 'the outbox id sequence is where it was');

# --- pending events published once, with their ids ---------------------------------
ok(wait_for_sql($new, 'shop', 'SELECT count(*) FROM evbus.outbox', '0', 60),
	'new: the restored outbox drains');
ok(wait_for_sql($new, 'shop', 'SELECT count(*) FROM payments', '30', 90),
	'new: the ten pending orders are handled');
my @msgs = kcat_consume($topic, 31, 10);
is(scalar @msgs, 30, 'Kafka has thirty messages: the ten pending ones published once');
my %ids;
$ids{ $_->{headers}{'cap-msg-id'} }++ for @msgs;
is(scalar keys %ids, 30, 'thirty distinct cap-msg-id');
my %orders;
$orders{ $_->{payload} =~ /"orderId":(\d+)/ ? $1 : 0 }++ for @msgs;
is(join(',', grep { ($orders{$_} // 0) != 1 } 1 .. 30), '', 'every order published once');
is(join(',', grep { $ids{$_} } split /,/, $pending), $pending,
	'the pending events went out with the message ids they had before the dump');

# --- nothing handled twice, new messages handled once --------------------------------
java_produce($topic,
	"cap-msg-id:$handled_id,cap-msg-name:OrderPlaced\t1\t{\"orderId\":1,\"total\":10}");
my $fresh = $new->safe_psql('shop', 'SELECT gen_random_uuid()');
java_produce($topic, "cap-msg-id:$fresh,cap-msg-name:OrderPlaced\t31\t{\"orderId\":31,\"total\":310}");
$new->safe_psql('shop', 'INSERT INTO orders VALUES (32, 320)');
ok(wait_for_sql($new, 'shop', 'SELECT count(*) FROM payments', '32', 60),
	'new: a new message and a new order handled');
sleep 2;
is( $new->safe_psql('shop',
		q{SELECT count(*), count(DISTINCT order_id), count(DISTINCT message_id),
		         min(order_id), max(order_id) FROM payments}),
	'32|32|32|1|32',
	'each order paid once: the redelivered message handled before the dump was not handled again');
is($new->safe_psql('shop', q{SELECT string_agg(DISTINCT handled_by, ',') FROM payments}),
	'evbus_app', 'the handler ran as evbus_app, before and after the restore');
is( $new->safe_psql('shop',
		q{SELECT count(*), count(*) FILTER (WHERE state = 'handled' AND attempts = 1)
		    FROM evbus.inbox WHERE group_name = 'shop_group'}),
	'32|32', 'inbox: the restored history and the new messages, each handled in one attempt');
ok( $new->safe_psql('shop',
		q{SELECT bool_and(next_offset > 0) FROM evbus.consumer_offsets WHERE group_name = 'shop_group'}),
	'consumer offsets restored and advanced');

# --- a role that may not write evbus's tables does not pause the workers -------------
my $pids = $new->safe_psql('shop', 'SELECT evbus.publisher_pid(), evbus.consumer_pid()');
is(sqlstate_of($new, 'shop', "SET ROLE evbus_app; COPY evbus.inbox (group_name) FROM stdin;"),
	'42501', 'COPY into evbus.inbox by evbus_app is refused');
is($new->safe_psql('shop', 'SELECT evbus.publisher_pid(), evbus.consumer_pid()'),
	$pids, 'and the workers kept running');

# --- the update path marks the same tables, with the same filters ------------------
$new->safe_psql('postgres', 'CREATE DATABASE upd');
$new->safe_psql('upd', q{CREATE EXTENSION evbus VERSION '0.1'; ALTER EXTENSION evbus UPDATE TO '0.2'});
my $marked = q{SELECT array(SELECT c::regclass::text FROM unnest(extconfig) c), extcondition
	FROM pg_extension WHERE extname = 'evbus'};
is($new->safe_psql('upd', $marked), $new->safe_psql('shop', $marked),
	'a database updated from 0.1 dumps what a fresh 0.2 one does');

# --- pg_restore --single-transaction, and -j (every connection keeps the workers
# away): both succeed.  The same dump restored a second time on this server
# is a copy of "shop", which took its rows over first: its workers do not
# start (they would publish the dump's pending events again and split
# shop_group's partitions with "shop") until evbus.adopt_copy(), after which
# they run.  An earlier version ran both restores as the dumped database. ---
for my $variant ([ 'shop1', '--single-transaction' ], [ 'shop2', '-j', '2' ])
{
	my ($db, @options) = @$variant;
	my $log_at = -s $new->logfile;
	$new->safe_psql('postgres', "CREATE DATABASE $db");
	($out, $err) = ('', '');
	$restored = IPC::Run::run([ 'pg_restore', @options, '-d', $new->connstr($db), $dump ],
		'>', \$out, '2>', \$err);
	ok($restored, "pg_restore @options succeeds") or diag $err;
	ok( $new->wait_for_log(
			qr/WARNING:  evbus: database "$db" is a copy of database "shop": its evbus workers do not start/,
			$log_at),
		"$db: a second restore of the dump is a copy of shop");
	is($new->safe_psql($db, q{SELECT string_agg(state, ',' ORDER BY worker) FROM evbus.worker_status()}),
		'stopped,stopped', "$db: no worker of it runs");
	$new->safe_psql($db, qq{SET ROLE evbus_app;
SELECT evbus.unsubscribe('OrderPlaced', 'public.pay(jsonb,jsonb)');
SELECT evbus.subscribe('OrderPlaced', 'public.pay(jsonb,jsonb)', '${db}_group');
RESET ROLE;
SELECT evbus.adopt_copy();});
	ok( wait_for_sql($new, $db,
			q{SELECT string_agg(state, ',' ORDER BY worker) FROM evbus.worker_status()},
			'running,running', 30),
		"$db: adopted, its workers run");
}

# --- pg_restore --clean into a database with subscribed handlers is refused ------------
($out, $err) = ('', '');
IPC::Run::run([ 'pg_restore', '--clean', '-d', $new->connstr('shop'), $dump ],
	'>', \$out, '2>', \$err);
like($err, qr/cannot drop handler public\.pay/,
	'pg_restore --clean cannot drop a subscribed handler (restore into a new database)');

# --- a database that dropped evbus holds its id no more: the dump restored once
# more is the dumped database again, not a copy of "shop" --------------------------
$new->safe_psql('shop', 'DROP EXTENSION evbus CASCADE');
my $log_at = -s $new->logfile;
$new->safe_psql('postgres', 'CREATE DATABASE shop3');
($out, $err) = ('', '');
$restored = IPC::Run::run([ 'pg_restore', '-d', $new->connstr('shop3'), $dump ], '>', \$out, '2>', \$err);
ok($restored, 'pg_restore into shop3, once shop dropped evbus') or diag $err;
ok( wait_for_sql($new, 'shop3',
		q{SELECT string_agg(state, ',' ORDER BY worker) FROM evbus.worker_status()},
		'running,running', 30),
	'shop3: its workers run');
unlike(slurp_file($new->logfile, $log_at), qr/database "shop3" is a copy/, 'shop3 is no copy of shop');

done_testing();

# 230_drop_database_guard.pl - DROP DATABASE touches a database's evbus
# workers only when the drop is going to proceed, and restores both of
# them when it fails anyway.
#
# - a role that does not own the database: its DROP DATABASE fails, and
#   the workers are left alone (same pids);
# - the owner's DROP DATABASE that fails because another session is
#   connected, while a handler sleeps for longer than the workers are
#   waited for: afterwards the database has both workers again, and the
#   interrupted message is handled exactly once;
# - the owner's DROP DATABASE that succeeds, and nothing of evbus tries to
#   come back to the dropped database.
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run ();
use Time::HiRes qw(time sleep);

kafka_bootstrap();
my $prefix = "t230.$$.";
my $node = new_node(
	'drop_database_guard',
	kafka => 1,
	conf => [ "evbus.topic_prefix = '$prefix'", "evbus.group_name = 't230_$$'" ]);
$node->safe_psql('postgres', 'CREATE DATABASE shop');
$node->safe_psql('postgres', 'CREATE ROLE nobody LOGIN');
$node->safe_psql('shop', 'CREATE EXTENSION evbus');

sub pids
{
	return $node->safe_psql('shop',
		q{SELECT coalesce(evbus.publisher_pid(), 0) || ',' || coalesce(evbus.consumer_pid(), 0)});
}
ok(wait_for_sql($node, 'shop', 'SELECT evbus.publisher_pid() > 0 AND evbus.consumer_pid() > 0', 't', 30),
	'shop has both workers');

# --- a role without any privilege ------------------------------------------
my $before = pids();
my ($ret, $out, $err) = $node->psql('postgres', 'DROP DATABASE shop', extra_params => [ '-U', 'nobody' ]);
isnt($ret, 0, 'DROP DATABASE by a role that does not own it fails');
like($err, qr/must be owner of database shop/, 'because it is not the owner');
sleep 2;
is(pids(), $before, 'the workers were not disturbed (same pids)');
($ret, $out, $err) = $node->psql('postgres', 'DROP DATABASE IF EXISTS shop', extra_params => [ '-U', 'nobody' ]);
isnt($ret, 0, 'DROP DATABASE IF EXISTS by that role fails too');
sleep 1;
is(pids(), $before, 'and leaves the workers alone');

# --- the owner's drop fails: both workers come back --------------------------
$node->safe_psql(
	'shop', as_subscriber($node, 'shop') . q{
CREATE TABLE effects (n int);
CREATE SEQUENCE calls;
CREATE PROCEDURE on_order(payload jsonb) LANGUAGE plpgsql AS $$
BEGIN
	IF pg_catalog.nextval('public.calls') = 1 THEN
		PERFORM pg_catalog.pg_sleep(25);	-- longer than DROP DATABASE waits
	END IF;
	INSERT INTO public.effects VALUES ((payload->>'n')::int);
END $$;
SELECT evbus.subscribe('Order', 'on_order(jsonb)');
SELECT evbus.publish('Order', '{"n": 1}');
});
ok(wait_for_sql($node, 'shop', 'SELECT last_value >= 1 AND is_called FROM calls', 't', 60),
	'a handler sleeps in shop');

# another session stays connected to shop: the drop must fail
my ($bg_out, $bg_err) = ('', '');
my $holder = IPC::Run::start(
	[ $node->installed_command('psql'), '-XAtq', '-d', $node->connstr('shop'), '-c', 'SELECT pg_sleep(60)' ],
	'<', \undef, '>', \$bg_out, '2>', \$bg_err);
ok(wait_for_sql($node, 'postgres',
		q{SELECT count(*) FROM pg_stat_activity WHERE datname = 'shop' AND query LIKE 'SELECT pg_sleep(60)%'}, '1', 10),
	'another session is connected to shop');
my $t0 = time();
($ret, $out, $err) = $node->psql('postgres', 'DROP DATABASE shop');
isnt($ret, 0, "the owner's DROP DATABASE fails");
like($err, qr/is being accessed by other users/, 'because another session is connected');
note sprintf('DROP DATABASE failed after %.1f s', time() - $t0);
ok(wait_for_sql($node, 'shop', 'SELECT evbus.publisher_pid() > 0 AND evbus.consumer_pid() > 0', 't', 10),
	'both workers run again');
# until well after the interrupted handler would have ended
sleep 30 - (time() - $t0) if time() - $t0 < 30;
ok(wait_for_sql($node, 'shop', 'SELECT evbus.publisher_pid() > 0 AND evbus.consumer_pid() > 0', 't', 10),
	'and still run later');
ok(wait_for_sql($node, 'shop', 'SELECT count(*) FROM effects', '1', 60),
	'the message is handled');
$node->safe_psql('shop', q{SELECT evbus.publish('Order', '{"n": 2}')});
ok(wait_for_sql($node, 'shop', 'SELECT count(*) FROM effects', '2', 60), 'and the next one too');
is($node->safe_psql('shop', 'SELECT string_agg(n::text, \',\' ORDER BY n) FROM effects'), '1,2',
	'each exactly once');

# --- the owner's drop succeeds ------------------------------------------------
$node->safe_psql('postgres',
	q{SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'shop' AND backend_type = 'client backend'});
$holder->finish;
ok(wait_for_sql($node, 'postgres',
		q{SELECT count(*) FROM pg_stat_activity WHERE datname = 'shop' AND backend_type = 'client backend'}, '0', 10),
	'the other session is gone');
my $log_offset = -s $node->logfile;
($ret, $out, $err) = $node->psql('postgres', 'DROP DATABASE shop');
is($ret, 0, "the owner's DROP DATABASE succeeds") or diag $err;
sleep 4;
is($node->safe_psql('postgres',
		q{SELECT count(*) FROM pg_stat_activity WHERE backend_type IN ('evbus publisher', 'evbus consumer')}),
	'0', 'no evbus worker left');
my $log = substr(slurp_file($node->logfile), $log_offset);
unlike($log, qr/database \d+ does not exist/, 'no worker tries to connect to the dropped database');

$node->stop;
done_testing();

# 242_read_only_default.pl - a database whose sessions are read-only by
# default (ALTER DATABASE ... SET default_transaction_read_only = on, so
# that nothing writes there by mistake) still publishes what its writers
# stage and handles what it receives.
#
# The workers connect as any session does and took the setting: every
# transaction of the publisher and the consumer failed ("cannot execute
# UPDATE in a read-only transaction"), they were restarted every few
# seconds, and nothing was published or handled.  The workers' own
# transactions now write whatever the server, the database or their role
# says, like autovacuum's: the events staged by a session that turned the
# setting off for itself are published, handled once, and the outbox
# tables are truncated in turn (the truncating worker writes too).
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;

kafka_bootstrap();
my $prefix = "t242.$$.";
kafka_admin('topics', '--create', '--topic', "${prefix}Guarded", '--partitions', '1');
my $node = new_node(
	'read_only_default',
	kafka => 1,
	conf => [
		"evbus.topic_prefix = '$prefix'", "evbus.outbox_rotation = '2s'",
		'log_min_messages = debug1'
	]);
new_shop($node, 'Guarded');
$node->safe_psql('postgres', 'ALTER DATABASE shop SET default_transaction_read_only = on');
# the running workers have the old setting: new ones start with it
restart_workers($node, 'shop');
my ($ret, $out, $err) = $node->psql('shop', q{SELECT evbus.publish('Guarded', '{"n": 0}')});
like($err, qr/read-only transaction/, 'a session of the database is read-only by default');
my $offset = -s $node->logfile;

# publish($from, $to): events n = $from .. $to, by a session that writes
sub publish
{
	my ($from, $to) = @_;
	$node->safe_psql('shop',
		'SET default_transaction_read_only = off; '
		  . join('', map { "SELECT evbus.publish('Guarded', '{\"n\": $_}', 'k$_');" } $from .. $to));
}

publish(1, 10);
ok(wait_for_sql($node, 'shop', q{SELECT count(*) FROM received}, '10', 60),
	'the events staged by a session that writes are published and handled');
my $workers = q{SELECT string_agg(pid::text, ',' ORDER BY backend_type) FROM pg_stat_activity
	WHERE datname = 'shop' AND backend_type IN ('evbus publisher', 'evbus consumer')};
my $pids = $node->safe_psql('postgres', $workers);
# staging moves to the other outbox table every 2 s: this lands there
sleep 3;
publish(11, 20);
ok(wait_for_sql($node, 'shop', q{SELECT count(*) FROM received}, '20', 60),
	'and so are those staged after the outbox table changed');
ok($node->wait_for_log(qr/truncated evbus\.outbox_\d in its own worker/, $offset),
	'the outbox table staging left is truncated by its worker');
is($node->safe_psql('shop', q{SELECT count(*) || '/' || count(DISTINCT payload) FROM received}),
	'20/20', 'each event was handled once');
ok( !$node->log_contains(qr/ERROR:  cannot execute \w+( TABLE)? in a read-only transaction/, $offset),
	'no worker transaction failed for being read-only');
is($node->safe_psql('postgres', $workers), $pids, 'the same workers ran throughout');
$node->stop;
done_testing();

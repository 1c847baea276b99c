# 137_consume_frozen_broker.pl - a broker that hangs (SIGSTOP: its
# connections stay open and nothing answers) cannot keep the consumer
# worker from ending.  Leaving a group commits the partitions' offsets to
# Kafka and waits for the group's coordinator; librdkafka's synchronous
# commit and its consumer close wait for as long as nothing answers, so a
# termination or a fast shutdown left the worker waiting for the broker
# (over 120 s seen; pg_ctl stop gave up after 60 s).  Now the commit waits
# 5 s at most, and leaving a group 10 s, not at all once the postmaster
# is gone.
#  - pg_terminate_backend: the consumer exits within 40 s, says in the log
#    that Kafka did not confirm the offsets, and a new one handles the
#    next event once the broker answers again;
#  - pg_ctl stop -m fast, the broker frozen, an event staged: within 40 s;
#  - the postmaster killed (SIGKILL), the broker frozen: the consumer is
#    gone within 40 s and the server starts again;
#  - a subscription changes the group's topics, the broker frozen, and
#    the consumer, leaving its group, is terminated: within 40 s;
#  - over TLS, terminated: within 40 s.  Its handle, still closing, keeps
#    librdkafka's threads on their TLS connections while the process
#    exits: the final check (no process ended by a signal) covers it.
# Every event is handled exactly once.
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

private_kafka();	# it freezes its broker: one of its own
my $prefix = "t137.$$.";
my $group = "t137_$$";
my $node = new_node(
	'frozen_broker',
	kafka => 1,
	conf => [ "evbus.topic_prefix = '$prefix'", "evbus.group_name = '$group'" ]);
$node->safe_psql('postgres', 'CREATE EXTENSION evbus');
kafka_admin('topics', '--create', '--topic', "${prefix}Frozen", '--partitions', '1',
	'--replication-factor', '1');
subscribe_recorder($node, 'Frozen');

my $kafka_pid = slurp_file(kafka_dir() . '/kafka.pid');
chomp $kafka_pid;
my $frozen = 0;
sub freeze { kill 'STOP', $kafka_pid or die "cannot stop the broker: $!"; $frozen = 1; }
sub thaw { kill 'CONT', $kafka_pid if $frozen; $frozen = 0; }
END { thaw(); }

# handles event n (published now), with the consumer holding the partition
sub handled
{
	my ($n, $what) = @_;
	$node->safe_psql('postgres', qq{SELECT evbus.publish('Frozen', '{"n": $n}')});
	ok(wait_for_sql($node, 'postgres', "SELECT count(*) FROM received WHERE payload->>'n' = '$n'", '1', 90),
		$what);
}

# seconds until process pid is gone (at most $limit)
sub gone_after
{
	my ($pid, $limit) = @_;
	my $t0 = time;
	while (kill(0, $pid) && time - $t0 < $limit) { select(undef, undef, undef, 0.1); }
	return time - $t0;
}

# terminates consumer pid (the broker frozen): it exits within 40 s and
# the log since $log_at matches $says
sub terminated_exits
{
	my ($pid, $log_at, $what, $says, $says_what) = @_;

	$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)");
	my $took = gone_after($pid, 60);
	cmp_ok($took, '<', 40, "$what, the consumer exits while the broker hangs");
	note sprintf('the consumer exited %.1f s after its termination', $took);
	like(slurp_file($node->logfile, $log_at), $says, $says_what);
}

handled(1, 'event 1 is handled');

# 1. terminated while the broker hangs
my $pid = $node->safe_psql('postgres', 'SELECT evbus.consumer_pid()');
my $log_at = -s $node->logfile;
freeze();
terminated_exits($pid, $log_at, 'terminated',
	qr/Kafka did not confirm the group's offsets within 5000 ms/,
	'the log says Kafka did not confirm the offsets');
thaw();
handled(2, 'the broker back, a new consumer handles event 2');

# 2. a fast shutdown while the broker hangs, an event staged
freeze();
$node->safe_psql('postgres', q{SELECT evbus.publish('Frozen', '{"n": 3}')});
my $t0 = time;
$node->stop('fast');
my $took = time - $t0;
cmp_ok($took, '<', 40, 'a fast shutdown ends while the broker hangs');
note sprintf('pg_ctl stop -m fast took %.1f s', $took);
thaw();
$node->start;
ok(wait_for_sql($node, 'postgres', q{SELECT count(*) FROM received WHERE payload->>'n' = '3'}, '1', 90),
	'event 3, staged then, is handled after the restart');

# 3. the postmaster dies while the broker hangs
handled(4, 'event 4 is handled');
$pid = $node->safe_psql('postgres', 'SELECT evbus.consumer_pid()');
freeze();
$node->kill9;
$took = gone_after($pid, 60);
cmp_ok($took, '<', 40, 'the postmaster killed, the consumer exits while the broker hangs');
note sprintf('the consumer exited %.1f s after the postmaster', $took);
thaw();
$node->start;
handled(5, 'the server starts again and handles event 5');

# 4. the group's topics change while the broker hangs: the consumer leaves
# the group (with the old code it waited there for as long as the broker
# hung); terminated meanwhile, it exits
kafka_admin('topics', '--create', '--topic', "${prefix}Second", '--partitions', '1',
	'--replication-factor', '1');
$pid = $node->safe_psql('postgres', 'SELECT evbus.consumer_pid()');
$log_at = -s $node->logfile;
freeze();
$node->safe_psql('postgres',
	as_subscriber($node) . q{SELECT evbus.subscribe('Second', 'record_received(jsonb, jsonb)')});
sleep 3;
terminated_exits($pid, $log_at, 'terminated while it leaves its group',
	qr/left without its coordinator's answer/,
	'the log says it left the group without the coordinator');
thaw();
$node->safe_psql('postgres',
	q{SELECT evbus.publish('Frozen', '{"n": 6}'); SELECT evbus.publish('Second', '{"n": 7}')});
ok(wait_for_sql($node, 'postgres', q{SELECT count(*) FROM received WHERE payload->>'n' IN ('6', '7')}, '2', 90),
	'the broker back, the events of both subscriptions are handled');

# 5. over TLS, terminated while the broker hangs: the worker exits with
# its handle still closing, librdkafka's threads alive over TLS; it ends
# without running OpenSSL's exit-time cleanup under them
my $kdir = kafka_dir();
my $ssl_bootstrap = slurp_file("$kdir/ssl_bootstrap");
chomp $ssl_bootstrap;
my $properties = PostgreSQL::Test::Utils::tempdir() . '/kafka.properties';
write_kafka_properties($properties, 'security.protocol=SSL', "ssl.ca.location=$kdir/ca.pem");
$node->append_conf('postgresql.conf',
	"evbus.brokers = '$ssl_bootstrap'\nevbus.kafka_config_file = '$properties'");
$node->restart;
handled(8, 'over TLS, event 8 is handled');
$pid = $node->safe_psql('postgres', 'SELECT evbus.consumer_pid()');
$log_at = -s $node->logfile;
freeze();
terminated_exits($pid, $log_at, 'over TLS, terminated',
	qr/left without its coordinator's answer/,
	'over TLS, it left its group without the coordinator');
thaw();
handled(9, 'the broker back, a new consumer handles event 9 over TLS');

is($node->safe_psql('postgres', q{SELECT count(*), count(DISTINCT payload->>'n') FROM received}),
	'9|9', 'each event handled exactly once');
$node->stop;
# a worker that exits with its Kafka handle still closing leaves it to the
# process's exit: no process may end by a signal (the test's own SIGKILL
# of the postmaster is not logged by it)
unlike(slurp_file($node->logfile), qr/terminated by signal|was terminated by/,
	'no process ended by a signal');
done_testing();

# 040_lifecycle.pl - the worker's life: CREATE EXTENSION starts it within a
# second, DROP EXTENSION and DROP DATABASE stop it, SIGHUP reloads its
# settings, SIGTERM ends it promptly (and it comes back), an empty
# evbus.brokers pauses publishing, postmaster death ends it, and nothing
# runs on a standby.
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);

my $bootstrap = kafka_bootstrap();
my $prefix = "t040.$$.";
my $node = new_node('primary', kafka => 1,
	conf => [ "evbus.topic_prefix = '$prefix'", 'wal_level = replica', 'max_wal_senders = 4' ],
	init => { allows_streaming => 1 });

sub worker_pid
{
	my ($db) = @_;
	return $node->safe_psql($db,
		q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'evbus publisher' AND datname = current_database()});
}

sub wait_for
{
	my ($what, $timeout) = @_;
	my $deadline = time() + $timeout;
	while (time() < $deadline)
	{
		return 1 if $what->();
		sleep 0.05;
	}
	return 0;
}

# --- CREATE EXTENSION starts the worker within a second -----------------
$node->safe_psql('postgres', 'CREATE DATABASE app');
is(worker_pid('app'), '', 'no worker before CREATE EXTENSION');
my $t0 = time();
$node->safe_psql('app', 'CREATE EXTENSION evbus');
ok(wait_for(sub { worker_pid('app') ne '' }, 1.0), 'worker started within 1 s of CREATE EXTENSION');
note sprintf('worker visible after %.0f ms', (time() - $t0) * 1000);
is($node->safe_psql('app', 'SELECT evbus.publisher_pid()'), worker_pid('app'), 'evbus.publisher_pid() names it');
is($node->safe_psql('app', 'SELECT evbus.brokers()'), $bootstrap, 'evbus.brokers() reports the bootstrap servers');

# a rolled back CREATE EXTENSION starts nothing
$node->safe_psql('postgres', 'CREATE DATABASE other');
$node->safe_psql('other', 'BEGIN; CREATE EXTENSION evbus; ROLLBACK;');
sleep 1;
is(worker_pid('other'), '', 'no worker after a rolled back CREATE EXTENSION');

# --- publishing works, then a SIGHUP changes the topic prefix ------------
$node->safe_psql('app', q{SELECT evbus.publish('Life', '{"n": 1}')});
ok($node->poll_query_until('app', 'SELECT count(*) = 0 FROM evbus.outbox'), 'published');
my @first = kcat_consume("${prefix}Life", 1, 20);
is(scalar @first, 1, 'event in the prefixed topic');
$node->safe_psql('postgres', "ALTER SYSTEM SET evbus.topic_prefix = '${prefix}reloaded.'");
$node->reload;
sleep 0.5;
$node->safe_psql('app', q{SELECT evbus.publish('Life', '{"n": 2}')});
ok($node->poll_query_until('app', 'SELECT count(*) = 0 FROM evbus.outbox'), 'published after reload');
my @reloaded = kcat_consume("${prefix}reloaded.Life", 1, 20);
is(scalar @reloaded, 1, 'SIGHUP: the new topic prefix applies without a restart');
is($reloaded[0]{payload}, '{"n":2}', 'the event published after the reload');

# --- empty evbus.brokers pauses publishing --------------------------------
$node->safe_psql('postgres', "ALTER SYSTEM SET evbus.brokers = ''");
$node->reload;
sleep 0.5;
is($node->safe_psql('app', 'SELECT evbus.brokers() IS NULL'), 't', 'evbus.brokers() is NULL while paused');
$node->safe_psql('app', q{SELECT evbus.publish('Life', '{"n": 3}')});
sleep 2;
is($node->safe_psql('app', 'SELECT count(*) FROM evbus.outbox'), '1', 'paused: the event stays in the outbox');
$node->safe_psql('postgres', 'ALTER SYSTEM RESET evbus.brokers');
$node->reload;
ok($node->poll_query_until('app', 'SELECT count(*) = 0 FROM evbus.outbox'), 'resumed: the event is published');

# --- SIGTERM ends the worker promptly; it is started again ---------------
my $pid = worker_pid('app');
$t0 = time();
$node->safe_psql('app', "SELECT pg_terminate_backend($pid)");
ok(wait_for(sub { !kill(0, $pid) }, 2.0), 'SIGTERM: the worker exits within 2 s');
note sprintf('exited after %.0f ms', (time() - $t0) * 1000);
ok(wait_for(sub { my $p = worker_pid('app'); $p ne '' && $p != $pid }, 5.0), 'and a new worker takes over');
$node->safe_psql('app', q{SELECT evbus.publish('Life', '{"n": 4}')});
ok($node->poll_query_until('app', 'SELECT count(*) = 0 FROM evbus.outbox'), 'the new worker publishes');

# --- DROP EXTENSION stops the worker for good ------------------------------
# ... and the consumer, with a live Kafka consumer in a group: it leaves
# the group without reading the dropped tables
$node->safe_psql('app', as_subscriber($node, 'app') . q{CREATE TABLE got (n int);
CREATE FUNCTION on_life(payload jsonb) RETURNS void LANGUAGE sql
	AS 'INSERT INTO public.got VALUES ((payload->>''n'')::int)';
SELECT evbus.subscribe('Life', 'on_life(jsonb)')});
$node->safe_psql('app', q{SELECT evbus.publish('Life', '{"n": 5}')});
ok(wait_for_sql($node, 'app', 'SELECT count(*) > 0 FROM got', 't', 60),
	'a handler runs: the consumer is in its group');
my $consumer_pid = $node->safe_psql('app',
	q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'evbus consumer' AND datname = current_database()});
my $log_offset = -s $node->logfile;
$pid = worker_pid('app');
$node->safe_psql('app', 'DROP EXTENSION evbus');
ok(wait_for(sub { !kill(0, $pid) }, 5.0), 'DROP EXTENSION: the worker exits');
ok(wait_for(sub { !kill(0, $consumer_pid) }, 10.0), 'DROP EXTENSION: the consumer exits');
sleep 2;
is(worker_pid('app'), '', 'and is not restarted');
my $log = substr(slurp_file($node->logfile), $log_offset);
like($log, qr/DROP EXTENSION evbus stops the workers of database "app"/, 'the server log says why they exit');
unlike($log, qr/terminated by signal|exited with exit code [1-9]/,
	'no evbus process crashed or failed on the way out');
$node->safe_psql('app', 'CREATE EXTENSION evbus');
ok(wait_for(sub { worker_pid('app') ne '' }, 1.0), 'CREATE EXTENSION again: a worker within 1 s');

# --- DROP DATABASE stops the worker first and succeeds ----------------------
$pid = worker_pid('app');
my ($ret, $stdout, $stderr) = $node->psql('postgres', 'DROP DATABASE app');
is($ret, 0, 'DROP DATABASE succeeds while evbus runs in it') or diag $stderr;
ok(!kill(0, $pid), 'its worker is gone');

# --- nothing runs on a standby --------------------------------------------
$node->safe_psql('postgres', 'CREATE EXTENSION evbus');
$node->backup('backup');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($node, 'backup', has_streaming => 1);
$standby->start;
$node->wait_for_catchup($standby);
sleep 1;
is($standby->safe_psql('postgres', q{SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'evbus%'}),
	'0', 'no evbus launcher or worker on a standby');
cmp_ok($node->safe_psql('postgres', q{SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'evbus%'}),
	'>=', 2, 'launcher and worker on the primary');
($ret, $stdout, $stderr) = $standby->psql('postgres', q{SELECT evbus.publish('Life', '{}')});
like($stderr, qr/cannot publish an integration event during recovery/, 'staging on a standby is refused clearly');
$standby->stop;

# --- postmaster death ends the worker ----------------------------------------
$pid = worker_pid('postgres');
my $postmaster = $node->{_pid};
kill 'KILL', $postmaster;
ok(wait_for(sub { !kill(0, $pid) }, 5.0), 'postmaster death: the worker exits');
# let the remaining children go, then forget the dead server
wait_for(sub { !$node->raw_connect_works() }, 5.0);
$node->_update_pid(-1);

done_testing();

# 136_consume_kill_async_commit.pl - a handler that crashes the server at
# every attempt is dead-lettered after its attempts, with
# synchronous_commit = off for the whole server.
#
# After a crash the consumer handles the suspect batch the careful way: it
# counts the attempt and commits before any handler runs, so that the
# next crash cannot erase it (130_consume_kill.pl).  That commit must be
# on disk, whatever synchronous_commit says: an asynchronous commit stays
# in PostgreSQL's WAL buffers until the WAL writer writes it (here up to
# wal_writer_delay = 10s later), and a crash in between forgets the
# attempt, so the handler ran again at every restart and the server
# crash-looped.  The retries (evbus_inbox_dispatch_due) count their
# attempts the same way.
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);

kafka_bootstrap();
my $prefix = "t136.$$.";
my $group = "t136_$$";
my $node = new_node(
	'consume_kill_async',
	kafka => 1,
	conf => [
		"evbus.topic_prefix = '$prefix'",
		"evbus.group_name = '$group'",
		"evbus.retry_interval = '100ms'",
		"evbus.retry_max_interval = '500ms'",
		'synchronous_commit = off',
		"wal_writer_delay = '10s'",
		# nothing else flushes the WAL behind the commits in the window
		'autovacuum = off',
		'restart_after_crash = on'
	]);
$node->safe_psql('postgres', 'CREATE EXTENSION evbus');

$node->safe_psql(
	'postgres', as_subscriber($node) . q{
CREATE PROCEDURE on_doomed(payload jsonb) LANGUAGE plpgsql AS $$
BEGIN
	PERFORM pg_catalog.set_config('application_name', 'evbus-test-holding', true);
	LOOP
		PERFORM pg_catalog.pg_sleep(0.05);
	END LOOP;
END $$;
SELECT evbus.subscribe('Doomed', 'on_doomed(jsonb)', max_retries => 2);
});

my $crashes = 0;

# max_retries 2: three attempts, each killed, then a dead letter
$node->safe_psql('postgres',
	q{SELECT evbus.publish('Doomed', '{"n": 1}')});
kill_holding_handler($node, ++$crashes, 'attempt 1');
kill_holding_handler($node, ++$crashes, 'attempt 2');
kill_holding_handler($node, ++$crashes, 'attempt 3');
# the third crash counts: the message is dead-lettered at once, its
# handler not run a fourth time (until its handler_timeout, a minute)
my ($dead, $fourth) = (0, 0);
my $deadline = time() + 60;
while (!$dead && time() < $deadline)
{
	($dead, $fourth) = split /\|/, $node->safe_psql(
		'postgres', q{
		SELECT (SELECT count(*) FROM evbus.dead_letters WHERE integration_event = 'Doomed'),
		       (SELECT count(*) FROM pg_stat_activity WHERE application_name = 'evbus-test-holding')});
	last if $fourth;
	sleep 0.1;
}
is($fourth, '0', 'the handler does not run a fourth time');
is($dead, '1', 'the message is dead-lettered after its 3 attempts');
is( $node->safe_psql('postgres',
		q{SELECT state, attempts, last_error_code FROM evbus.inbox WHERE integration_event = 'Doomed'}),
	'dead|3|interrupted', 'the inbox row: dead, 3 attempts, error "interrupted"');

$node->stop;
done_testing();

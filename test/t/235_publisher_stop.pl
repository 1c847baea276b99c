# 235_publisher_stop.pl - a publisher asked to stop (pg_terminate_backend,
# a server restart, CREATE DATABASE ... TEMPLATE of its database, which
# stops its workers) first records the events Kafka acknowledged: the next
# start publishes none of them again.
#
# With evbus.publish_linger = 1s, the publisher serves delivery reports up
# to a second after they arrive and records them up to a second later, so
# a stop right after the consumer handled an event comes before its
# recording.  An earlier version exited without recording: the event
# stayed in the outbox, the next start produced it again (the same message
# id twice in Kafka), and a copy made with CREATE DATABASE ... TEMPLATE
# held it as unpublished.
#
# The same holds for a stop that lands while the publisher records, in
# the middle of a step: a session holding the tables of the published
# ranges makes the recording wait for their lock, and the publisher is
# terminated (or its statement cancelled) there.  When the session lets
# go within 2 s the publisher records before it exits; a lock held longer
# does not keep it from exiting, and that one event goes out again.
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);

kafka_bootstrap();
my $prefix = "t235.$$.";
my $topic = "${prefix}Stopped";
kafka_admin('topics', '--create', '--topic', $topic, '--partitions', '1');
my $node = new_node(
	'publisher_stop',
	kafka => 1,
	conf => [ "evbus.topic_prefix = '$prefix'", "evbus.publish_linger = '1s'" ]);
new_shop($node, 'Stopped');

my $n = 0;

# publish_handled(): publish the next event; true once it is handled
sub publish_handled
{
	$n++;
	$node->safe_psql('shop', "SELECT evbus.publish('Stopped', '{\"n\": $n}', 'k')");
	return wait_for_sql($node, 'shop', "SELECT count(*) = $n FROM received");
}

sub publisher_pid
{
	return $node->safe_psql('shop', 'SELECT evbus.publisher_pid()');
}

# the publisher's first start is behind us: its pid is known
ok(publish_handled(), 'event 1 handled');

ok(publish_handled(), 'event 2 handled');
my $pid = publisher_pid();
$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)");
my $deadline = time() + 10;
sleep 0.1 while kill(0, $pid) && time() < $deadline;
ok(!kill(0, $pid), 'pg_terminate_backend stops the publisher within seconds');
is($node->safe_psql('shop', 'SELECT count(*) FROM evbus.outbox'),
	'0', 'it recorded the event Kafka acknowledged before it exited');

ok(publish_handled(), 'event 3 handled');
$node->restart;
is($node->safe_psql('shop', 'SELECT count(*) FROM evbus.outbox'),
	'0', 'a server restart: recorded before the publisher exited');

ok(publish_handled(), 'event 4 handled');
$node->safe_psql('postgres', 'CREATE DATABASE shop_copy TEMPLATE shop');
is($node->safe_psql('shop_copy', 'SELECT count(*) FROM evbus.outbox'),
	'0', 'CREATE DATABASE ... TEMPLATE: the copy holds no event as unpublished');

# stop_while_recording($release_after, $how): a session holds the tables
# of the published ranges, so that the publisher's recording of the next
# event waits for their lock inside its step's transaction; the publisher
# is stopped there (pg_terminate_backend, or pg_cancel_backend if $how is
# 'cancel'), and the session lets go $release_after seconds later.  With
# $how 'twice', the publisher is terminated once more when its recording
# as it leaves waits for that lock in turn.
# Returns whether the publisher exited within 10 s of the stop.
sub stop_while_recording
{
	my ($release_after, $how) = @_;
	$how //= '';
	my $stop = $how eq 'cancel' ? 'pg_cancel_backend' : 'pg_terminate_backend';
	my $holder = $node->background_psql('shop');
	$holder->query_safe(
		q{BEGIN; LOCK TABLE evbus.outbox_published_0, evbus.outbox_published_1 IN SHARE MODE});
	ok(publish_handled(), "event $n handled while a session holds the published ranges");
	ok( wait_for_sql(
			$node, 'shop',
			q{SELECT count(*) FROM pg_stat_activity
			   WHERE backend_type = 'evbus publisher' AND wait_event_type = 'Lock'},
			'1', 30),
		"the publisher waits for that lock to record event $n");
	my $pid = publisher_pid();
	my $step_began = $node->safe_psql('shop', "SELECT xact_start FROM pg_stat_activity WHERE pid = $pid");
	$node->safe_psql('postgres', "SELECT $stop($pid)");
	if ($how eq 'twice')
	{
		ok( wait_for_sql(
				$node, 'shop',
				qq{SELECT count(*) FROM pg_stat_activity
				    WHERE pid = $pid AND xact_start > '$step_began' AND wait_event_type = 'Lock'},
				'1', 30),
			"leaving, the publisher waits for that lock to record event $n");
		$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)");
	}
	my $stopped_at = time();
	my $released = 0;
	while (kill(0, $pid) && time() < $stopped_at + 10)
	{
		if (!$released && time() >= $stopped_at + $release_after)
		{
			$holder->query_safe('COMMIT');
			$released = 1;
		}
		sleep 0.05;
	}
	my $exited = !kill(0, $pid);
	$holder->query_safe('COMMIT') unless $released;
	$holder->quit;
	return $exited;
}

# A stop inside a step's transaction cancels it; the publisher records the
# delivery again as it leaves, once the session lets go (within the 2 s its
# recording may wait for a lock).  With die(), the FATAL ended the process
# inside the recording, and the next start produced the event again.
ok(stop_while_recording(0.3), 'a stop while recording: the publisher exits');
is($node->safe_psql('shop', 'SELECT count(*) FROM evbus.outbox'),
	'0', 'a stop while recording: recorded before the publisher exited');

# pg_cancel_backend cancels the step the same way: the publisher records
# the delivery, exits and is started again.
ok(stop_while_recording(0.3, 'cancel'), 'a cancel while recording: the publisher exits');
is($node->safe_psql('shop', 'SELECT count(*) FROM evbus.outbox'),
	'0', 'a cancel while recording: recorded before the publisher exited');

# One stop may signal the publisher twice: at a shutdown the postmaster
# sends SIGTERM to the worker and to its process group.  A SIGTERM that
# comes while the publisher records as it leaves is the same stop and does
# not cancel the recording.  An earlier version took it for a second stop
# and exited without recording (the event went out again after a restart:
# once in 20 or so fast restarts right after a publish).
ok(stop_while_recording(0.2, 'twice'), 'a second stop while recording as it leaves: the publisher exits');
is($node->safe_psql('shop', 'SELECT count(*) FROM evbus.outbox'),
	'0', 'a second stop while recording as it leaves: recorded before the publisher exited');

# A lock held longer does not keep the publisher from stopping: it gives up
# recording after 2 s, says so, and its next start produces the event again.
my $log_at = -s $node->logfile;
ok(stop_while_recording(8), 'a stop while a lock is held for longer: the publisher exits');
my $log = slurp_file($node->logfile, $log_at);
like($log, qr/canceling statement due to lock timeout/, 'the server log says why it could not record');
like(
	$log,
	qr/recording the events Kafka acknowledged before the publisher exits; those not recorded are published again/,
	'and what follows');
my $twice = $n;

# every publisher started since has run: none produced an event again but
# the one it could not record
ok(publish_handled(), "event $n handled");
my @msgs = kcat_consume($topic, $n + 2, 10);
is(scalar(@msgs), $n + 1, "Kafka holds each of the $n events once, event $twice twice");
my %ids = map { $_->{headers}{'cap-msg-id'} => 1 } @msgs;
is(scalar(keys %ids), $n, 'with distinct message ids');

done_testing();

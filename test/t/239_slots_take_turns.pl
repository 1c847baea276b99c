# 239_slots_take_turns.pl - databases take turns at too few worker slots.
#
# Four databases with evbus on a server with background worker slots for
# the launcher and four workers: two databases' worth.  evbus.idle_timeout
# is ten minutes, so the workers that start first would hold their slots
# that long after their work is done, and the other databases' events
# would wait for them.  While a worker of another database waits for a
# slot, a worker with nothing to do leaves after a second instead: an
# event staged in each database is published and handled by every
# database within a minute or two, and the log says why workers left.
# With no worker waiting, a worker keeps its slot for evbus.idle_timeout.
# A consumer waiting for its topic to be created gives way too: with every
# slot held by such consumers, no publisher could create the topic.
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);

kafka_bootstrap();

# A server with max_worker_processes $slots and evbus in each of @$dbs,
# whose consumer handles $event into its table received.
sub few_slots
{
	my ($name, $slots, $event, $dbs) = @_;
	my $node = new_node(
		$name,
		kafka => 1,
		conf => [
			"evbus.topic_prefix = 't239$name.$$.'",
			"evbus.idle_timeout = '10min'",
			"max_worker_processes = $slots",
			'max_logical_replication_workers = 0',
			'max_parallel_workers = 0'
		]);
	for my $db (@$dbs)
	{
		$node->safe_psql('postgres', "CREATE DATABASE $db");
		# when no slot is free, with a warning that says so
		$node->psql($db, 'CREATE EXTENSION evbus', on_error_die => 1);
		$node->safe_psql(
			$db, as_subscriber($node, $db) . qq{
CREATE TABLE received (message_id uuid, payload jsonb);
CREATE PROCEDURE record_received(payload jsonb, headers jsonb) LANGUAGE sql
	AS \$\$ INSERT INTO public.received VALUES ((headers->>'cap-msg-id')::uuid, payload) \$\$;
SELECT evbus.subscribe('$event', 'record_received(jsonb, jsonb)');
});
	}
	return $node;
}

# Has $db of $node handled $n distinct messages, each once, within $timeout s?
sub handled
{
	my ($node, $db, $n, $timeout) = @_;
	return wait_for_sql($node, $db,
		q{SELECT count(*) || '/' || count(DISTINCT message_id) FROM received},
		"$n/$n", $timeout);
}

my @dbs = map { "turn$_" } 1 .. 4;
my $node = few_slots('turns', 5, 'Turn', \@dbs);
my $workers = q{SELECT count(*) FROM pg_stat_activity
				 WHERE backend_type IN ('evbus publisher', 'evbus consumer')};
ok(wait_for_sql($node, 'postgres', $workers, '4', 30), 'four workers take every slot');

my $start = time;
for my $db (@dbs)
{
	$node->safe_psql($db,
		q{SELECT evbus.publish('Turn', jsonb_build_object('from', current_database()))});
}
for my $db (@dbs)
{
	ok(handled($node, $db, 4, 150), "$db handled the event of every database, each once");
}
my $took = time - $start;
note(sprintf('all handled %.1f s after staging', $took));
cmp_ok($took, '<', 300, 'well within evbus.idle_timeout');
like(
	slurp_file($node->logfile),
	qr/exits: nothing to (handle|publish), and another database waits for a background worker slot/,
	'the log says a worker left for another database');

# nobody waits now: the workers that run keep their slots
sleep 8;
cmp_ok($node->safe_psql('postgres', $workers), '>', 0,
	'with no worker waiting for a slot, quiet workers stay');

$node->stop;

# Every slot held by a consumer whose topic does not exist yet: two
# databases, slots for the launcher and two workers.  The first database's
# publisher and consumer start; the second's wait, the idle publisher gives
# way, and the second database's consumer ends up in a slot too.  An event
# staged then needs a publisher, which creates the topic: a consumer that
# waits for its topic to be created gives its slot up when another worker
# waits for one (it is watched until the topic exists), instead of keeping
# it for evbus.idle_timeout.
my @waiting = qw(wait1 wait2);
my $few = few_slots('missing', 3, 'Later', \@waiting);
my $both_waiting = 0;
for (1 .. 600)
{
	my $log = slurp_file($few->logfile);
	$both_waiting = ($log =~ /group "wait1": Subscribed topic not available/
		  && $log =~ /group "wait2": Subscribed topic not available/);
	last if $both_waiting;
	sleep 0.1;
}
ok($both_waiting,
	'the consumers of both databases started, and their topic does not exist yet');
$few->safe_psql('wait1', q{SELECT evbus.publish('Later', '{"n": 1}')});
for my $db (@waiting)
{
	ok(handled($few, $db, 1, 90), "$db handled the event staged while consumers waited for the topic");
}
$few->stop;
done_testing();

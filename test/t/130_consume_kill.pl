# 130_consume_kill.pl - the process running a handler (the database's
# consumer worker) is killed with SIGKILL while the handler runs (it waits
# on a flag table, so the kill lands inside it).
# PostgreSQL restarts the whole cluster; afterwards the interrupted event is
# attempted again -- its attempt, recorded in a committed transaction before
# the handler ran, still counts -- and every one of the 300 events is handled
# exactly once: none lost, none twice (a table without a unique constraint
# counts handler effects).
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);

kafka_bootstrap();
my $prefix = "t130.$$.";
my $topic = "${prefix}Crashy";
my $group = "t130_$$";
my $node = new_node(
	'consume_kill',
	kafka => 1,
	conf => [
		"evbus.topic_prefix = '$prefix'",
		"evbus.group_name = '$group'",
		"evbus.retry_interval = '100ms'",
		"evbus.retry_max_interval = '500ms'",
		'restart_after_crash = on'
	]);
$node->safe_psql('postgres', 'CREATE EXTENSION evbus');

$node->safe_psql(
	'postgres', q{
CREATE TABLE effects (seq int, message_id uuid);   -- no unique constraint
CREATE TABLE control (hold boolean NOT NULL);
INSERT INTO control VALUES (true);
CREATE PROCEDURE on_crashy(payload jsonb, headers jsonb) LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO public.effects VALUES ((payload->>'seq')::int, (headers->>'cap-msg-id')::uuid);
	IF (payload->>'hold')::boolean THEN
		WHILE (SELECT hold FROM public.control) LOOP
			PERFORM pg_catalog.pg_sleep(0.05);
		END LOOP;
	END IF;
	PERFORM pg_catalog.pg_sleep(0.002);
END $$;
SELECT evbus.subscribe('Crashy', 'on_crashy(jsonb,jsonb)');
});

my $n = 300;
my $hold = 150;
$node->safe_psql('postgres',
	qq{SELECT count(evbus.publish('Crashy',
	                              jsonb_build_object('seq', g, 'hold', g = $hold),
	                              'k' || (g % 10)))
	     FROM generate_series(1, $n) g});

# the handler of event $hold is running: its attempt is recorded, and the
# process that runs handlers sleeps inside it
ok( wait_for_sql($node, 
		'postgres',
		qq{SELECT i.state = 'pending' AND i.attempts = 1
		          AND EXISTS (SELECT FROM pg_stat_activity
		                       WHERE backend_type LIKE 'evbus%' AND wait_event = 'PgSleep')
		     FROM evbus.inbox i WHERE (i.payload->>'seq')::int = $hold},
		't', 60),
	'the handler of the held event is running, its attempt recorded');
# the handler sleeps in short steps: catch it inside one
my ($pid, $type);
for (my $try = 0; !$pid && $try < 200; $try++)
{
	($pid, $type) = split /\|/, $node->safe_psql('postgres',
		q{SELECT pid, backend_type FROM pg_stat_activity WHERE backend_type LIKE 'evbus%' AND wait_event = 'PgSleep'});
	sleep 0.01 unless $pid;
}
die "no evbus process is sleeping in the handler" unless $pid;
my $before = $node->safe_psql('postgres', 'SELECT count(*) FROM effects');
note "killing $type $pid inside a handler; $before effects committed so far";
kill 'KILL', $pid;

# wait for the crash restart to be over (the log says so), then for evbus
my $deadline = time() + 60;
my $restarted = 0;
while (!$restarted && time() < $deadline)
{
	$restarted = slurp_file($node->logfile) =~
	  /terminated by signal 9.*reinitializing.*database system is ready to accept connections/s;
	sleep 0.2 unless $restarted;
}
ok($restarted, 'the server restarted after the crash');
ok( wait_for_sql($node, 'postgres',
		"SELECT count(*) > 0 FROM pg_stat_activity WHERE backend_type LIKE 'evbus%' AND pid <> $pid", 't', 60),
	'after the crash restart evbus runs again');
is($node->safe_psql('postgres', "SELECT count(*) FROM effects WHERE seq = $hold"),
	'0', 'the interrupted handler left no effect');

# the interrupted attempt counts: the next one is attempt 2
my $t0 = time();
ok( wait_for_sql($node, 'postgres',
		qq{SELECT attempts FROM evbus.inbox WHERE (payload->>'seq')::int = $hold}, '2', 90),
	'the held event is attempted again, as its attempt 2 (the killed one counted)');
note sprintf('attempt 2 began %.1f s after the restart was seen', time() - $t0);
$node->safe_psql('postgres', 'UPDATE control SET hold = false');

ok(wait_for_sql($node, 'postgres', 'SELECT count(DISTINCT seq) FROM effects', $n, 90), "all $n events handled");
sleep 2;
is($node->safe_psql('postgres', 'SELECT count(*), count(DISTINCT seq), count(DISTINCT message_id) FROM effects'),
	"$n|$n|$n", 'each exactly once');
is( $node->safe_psql('postgres',
		q{SELECT count(*), count(*) FILTER (WHERE state = 'handled') FROM evbus.inbox}),
	"$n|$n", 'inbox: every event handled');
is($node->safe_psql('postgres', "SELECT attempts FROM evbus.inbox WHERE (payload->>'seq')::int = $hold"),
	'2', 'the held event took 2 attempts');
is($node->safe_psql('postgres', 'SELECT count(*) FROM evbus.dead_letters'), '0', 'no dead letter');

$node->stop;
done_testing();

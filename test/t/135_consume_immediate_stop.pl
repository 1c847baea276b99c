# 135_consume_immediate_stop.pl - `pg_ctl stop -m immediate` while the
# consumer is busy handling and a session keeps staging events (so the
# publisher is busy too): after the restart every committed event is
# handled exactly once, and nothing from the transactions the crash cut
# short.  Handler effects go to a table without a unique
# constraint, so a second run of any handler would show; events published
# again by the producing side after the crash (same cap-msg-id) must be
# recognised by the inbox.
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run ();
use Time::HiRes qw(time sleep);

kafka_bootstrap();
my $prefix = "t135.$$.";
my $topic = "${prefix}Busy";
my $group = "t135_$$";
my $node = new_node(
	'consume_immediate',
	kafka => 1,
	conf => [
		"evbus.topic_prefix = '$prefix'",
		"evbus.group_name = '$group'",
		"evbus.retry_interval = '100ms'",
		"evbus.retry_max_interval = '500ms'",
		'evbus.batch_size = 200'
	]);
$node->safe_psql('postgres', 'CREATE EXTENSION evbus');

$node->safe_psql(
	'postgres', as_subscriber($node) . q{
CREATE TABLE effects (seq int, message_id uuid);   -- no unique constraint
CREATE PROCEDURE on_busy(payload jsonb, headers jsonb) LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO public.effects VALUES ((payload->>'seq')::int, (headers->>'cap-msg-id')::uuid);
	PERFORM pg_catalog.pg_sleep(0.002);
END $$;
SELECT evbus.subscribe('Busy', 'on_busy(jsonb,jsonb)');
});

# Every staging transaction also records its events in "staged", so after
# the crash "staged" is exactly the set of committed events.
$node->safe_psql('postgres', 'CREATE TABLE staged (seq int)');
sub stage_sql
{
	my ($from, $to) = @_;
	return qq{BEGIN;
INSERT INTO staged SELECT g FROM generate_series($from, $to) g;
SELECT count(evbus.publish('Busy', jsonb_build_object('seq', g), 'k' || (g % 13))) FROM generate_series($from, $to) g;
COMMIT;
};
}

# 2000 events staged up front, in transactions of 100
for (my $i = 1; $i <= 2000; $i += 100)
{
	$node->safe_psql('postgres', stage_sql($i, $i + 99));
}
ok(wait_for_sql($node, 'postgres', 'SELECT count(*) >= 200 FROM effects', 't', 60), 'consuming is under way');

# and a session that keeps staging (transactions of 20, every 50 ms) while
# the server goes down
my $script = '';
for (my $i = 100001; $i < 100001 + 2000; $i += 20)
{
	$script .= stage_sql($i, $i + 19) . "SELECT pg_sleep(0.05);\n";
}
my $script_file = PostgreSQL::Test::Utils::tempdir() . '/stager.sql';
PostgreSQL::Test::Utils::append_to_file($script_file, $script);
my ($bg_out, $bg_err) = ('', '');
# (a file, not a scalar on stdin: IPC::Run feeds stdin only while pumped)
my $stager = IPC::Run::start(
	[ $node->installed_command('psql'), '-XAtq', '-d', $node->connstr('postgres'), '-f', $script_file ],
	'<', \undef, '>', \$bg_out, '2>', \$bg_err);
ok(wait_for_sql($node, 'postgres', 'SELECT count(*) > 100 FROM staged WHERE seq > 100000', 't', 30),
	'the stager is staging');

my $handled = $node->safe_psql('postgres', 'SELECT count(*) FROM effects');
my $total = $node->safe_psql('postgres', 'SELECT count(*) FROM staged');
my $outbox = $node->safe_psql('postgres', 'SELECT count(*) FROM evbus.outbox');
note "stop -m immediate: $handled of $total staged events handled, $outbox in the outbox";
cmp_ok($handled, '<', $total, 'the stop lands while events are still being handled');
$node->stop('immediate');
$stager->finish;
note 'stager: ' . ($bg_err =~ s/\s+/ /gr);
$node->start;

# more load after the restart
$node->safe_psql('postgres', stage_sql(200001, 200500));
my $n = $node->safe_psql('postgres', 'SELECT count(*) FROM staged');
note "$n events committed in all";
my $t0 = time();
ok( wait_for_sql($node, 'postgres', 'SELECT count(DISTINCT seq) FROM effects', $n, 90),
	"all $n committed events handled");
note sprintf('drained %.0f s after the restart', time() - $t0);
sleep 2;
is($node->safe_psql('postgres', 'SELECT count(*), count(DISTINCT seq), count(DISTINCT message_id) FROM effects'),
	"$n|$n|$n", 'each exactly once');
my $dup = $node->safe_psql('postgres',
	q{SELECT string_agg(seq::text, ',') FROM (SELECT seq FROM effects GROUP BY seq HAVING count(*) > 1 LIMIT 20) d});
is($dup, '', 'no event handled twice');
is( $node->safe_psql('postgres',
		q{SELECT count(*) FROM (SELECT seq FROM staged EXCEPT SELECT seq FROM effects) m}),
	'0', 'every committed event handled');
is( $node->safe_psql('postgres',
		q{SELECT count(*) FROM (SELECT seq FROM effects EXCEPT SELECT seq FROM staged) m}),
	'0', 'nothing from a transaction the crash rolled back was handled');
is( $node->safe_psql('postgres',
		q{SELECT count(*), count(*) FILTER (WHERE state = 'handled') FROM evbus.inbox}),
	"$n|$n", 'inbox: one row per event, all handled');
my @kafka = kcat_consume($topic, $n, 30);
note sprintf('Kafka holds %d messages for %d events', scalar @kafka, $n);
ok(wait_for_sql($node, 'postgres',
		qq{SELECT handled, retrying, dead, pending, lag FROM evbus.stats WHERE side = 'consume' AND topic = '$topic'},
		"$n|0|0|0|0", 30),
	'evbus.stats: all handled, no lag');

$node->stop;
done_testing();

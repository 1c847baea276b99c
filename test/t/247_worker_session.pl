# 247_worker_session.pl - what a database sets for its sessions does not
# change what its workers send, nor make them fail.
#
# The workers connect to their database as any session does and took its
# settings:
#  - DateStyle and TimeZone: with ALTER DATABASE ... SET DateStyle = 'SQL,
#    DMY' and a time zone of India, cap-senttime read "06/12/2026
#    15:10:00.123456 IST" instead of "2026-12-06 09:40:00.123456+00", a
#    day that a consumer reading it month first (CAP's DateTimeOffset.Parse
#    in an en-US culture) takes for the 12th of June.  It is now ISO 8601
#    in UTC whatever the database or the role set.
#  - default_transaction_isolation = serializable: while sessions staged
#    events, the publisher's and the consumer's own statements failed with
#    serialization errors ("could not serialize access due to read/write
#    dependencies among transactions"), each ending the worker, which
#    started over.  Their transactions are now READ COMMITTED.
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;

kafka_bootstrap();
my $prefix = "t247.$$.";
my $topic = "${prefix}Stamped";
kafka_admin('topics', '--create', '--topic', $topic, '--partitions', '3');
my $node = new_node('worker_session', kafka => 1, conf => ["evbus.topic_prefix = '$prefix'"]);
$node->safe_psql('postgres', 'CREATE EXTENSION evbus');
$node->safe_psql(
	'postgres', as_subscriber($node) . q{
CREATE TABLE received (payload jsonb, isolation text);
CREATE FUNCTION record_received(payload jsonb) RETURNS void LANGUAGE sql
	AS $$ INSERT INTO public.received VALUES (payload, current_setting('transaction_isolation')) $$;
SELECT evbus.subscribe('Stamped', 'record_received(jsonb)');
RESET ROLE;
ALTER DATABASE postgres SET DateStyle = 'SQL, DMY';
ALTER DATABASE postgres SET timezone = 'Asia/Kolkata';
ALTER DATABASE postgres SET default_transaction_isolation = 'serializable';
});
restart_workers($node, 'postgres');
like($node->safe_psql('postgres', 'SELECT now()::text'),
	qr{^\d\d/\d\d/\d{4} .* IST$}, 'a session of the database writes timestamps day first, in India');
is($node->safe_psql('postgres', 'SHOW transaction_isolation'), 'serializable', 'in serializable transactions');

$node->safe_psql('postgres', join('', map { "SELECT evbus.publish('Stamped', '{\"n\": $_}', 'k');" } 1 .. 5));
ok(wait_for_sql($node, 'postgres', 'SELECT count(*) FROM received', '5'), 'the events are published and handled');
my @msgs = kcat_consume($topic, 5);
is(scalar(@msgs), 5, 'five messages in Kafka');
my @iso = grep { ($_->{headers}{'cap-senttime'} // '') =~ /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?\+00$/ } @msgs;
is(scalar(@iso), 5, 'each with cap-senttime in ISO 8601, in UTC')
  or diag('cap-senttime: ' . ($msgs[0]{headers}{'cap-senttime'} // 'none'));

# the workers' transactions: READ COMMITTED.  A publisher's serializable
# transaction that read the outbox would leave predicate locks behind for
# as long as a serializable transaction that began before it runs.
is($node->safe_psql('postgres', 'SELECT string_agg(DISTINCT isolation, \',\') FROM received'),
	'read committed', 'the handler ran in a READ COMMITTED transaction');
my $older = $node->background_psql('postgres');
$older->query_safe('BEGIN ISOLATION LEVEL SERIALIZABLE; SELECT count(*) FROM received;');
$node->safe_psql('postgres', q{SELECT evbus.publish('Stamped', '{"n": 6}', 'k')});
ok(wait_for_sql($node, 'postgres', 'SELECT count(*) FROM received', '6'), 'another event is published and handled');
is( $node->safe_psql(
		'postgres', q{SELECT count(*) FROM pg_locks
		  WHERE mode = 'SIReadLock' AND pid IN (SELECT pid FROM pg_stat_activity WHERE backend_type LIKE 'evbus %')}),
	'0', 'meanwhile, neither worker took a predicate lock: no serializable transaction');
$older->query_safe('COMMIT');
$older->quit;

# four serializable sessions stage events for 10 s, as fast as they can,
# while both workers run
my $offset = -s $node->logfile;
my $script = pgbench_script('247_stage',
	"SELECT evbus.publish('Stamped', '{\"n\": 0}', 'k' || (random() * 10)::int);\n");
my ($ok, $staged, $err) = run_pgbench($node, $script, '-c', '4', '-T', '10');
ok($ok && $staged > 0, "four serializable sessions staged $staged events") or diag($err);
ok(wait_for_sql($node, 'postgres', 'SELECT count(*) FROM received', $staged + 6, 120),
	'every event is published and handled once');
my $log = substr(slurp_file($node->logfile), $offset);
unlike($log, qr/could not serialize access/, 'no worker statement failed to serialize');
unlike($log, qr/background worker "evbus \w+" \(PID \d+\) exited with exit code/, 'no worker ended');

$node->stop;
done_testing();

# 237_idle_trim.pl - an idle consumer still trims its inbox.  A consumer
# that goes idle (evbus.idle_timeout) holds no process; it trimmed nothing
# until a message woke it, so that an idle database kept handled messages
# past evbus.inbox_retention for as long as it stayed idle.  Now an idle
# consumer starts again when its oldest handled message falls due (not
# sooner than an hour from then, or the retention if shorter), trims, and
# goes idle again, with nothing left to wake it for.
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);

kafka_bootstrap();
my $prefix = "t237.$$.";
my $node = new_node(
	'idle_trim',
	kafka => 1,
	conf => [
		"evbus.topic_prefix = '$prefix'",
		"evbus.group_name = 't237_$$'",
		"evbus.idle_timeout = '2s'",
		"evbus.inbox_retention = '10s'"
	]);
$node->safe_psql('postgres', 'CREATE EXTENSION evbus');
kafka_admin('topics', '--create', '--topic', "${prefix}Rare", '--partitions', '1',
	'--replication-factor', '1');
subscribe_recorder($node, 'Rare');
my $log_at = -s $node->logfile;
$node->safe_psql('postgres', q{SELECT evbus.publish('Rare', '{"n": 1}')});
ok(wait_for_sql($node, 'postgres', 'SELECT count(*) FROM received', '1', 60), 'the event is handled');

my $consumers = q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'evbus consumer'};
ok(wait_for_sql($node, 'postgres', $consumers, '0', 60), 'the consumer goes idle');
is( $node->safe_psql('postgres',
		q{SELECT count(*) FROM evbus.inbox WHERE handled_at > now() - interval '10 s'}),
	'1', 'it went idle before its handled message fell due');
like(
	slurp_file($node->logfile, $log_at),
	qr/consumer for database "postgres" exits: nothing to handle.*\n.*DETAIL:.* or at .* for a retry or the inbox's trim due then/,
	'it says when it starts again for the trim');

# no message comes; the row goes once due
$log_at = -s $node->logfile;
my $t0 = time;
ok(wait_for_sql($node, 'postgres', 'SELECT count(*) FROM evbus.inbox', '0', 60),
	'the handled message leaves the inbox while no message arrives');
note sprintf('trimmed %.1f s after the consumer went idle', time - $t0);
ok(wait_for_sql($node, 'postgres', $consumers, '0', 60), 'the consumer goes idle again');
like(
	slurp_file($node->logfile, $log_at),
	qr/exits: nothing to handle.*\n.*DETAIL:  It starts again when messages arrive in its topics, or when woken\./,
	'with nothing left to trim, nothing wakes it but messages');
is($node->safe_psql('postgres', 'SELECT count(*) FROM received'), '1', 'handled once');

$node->stop;
done_testing();

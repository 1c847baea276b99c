# 237_idle_trim.pl - idle workers still delete what ages out.  A worker
# that goes idle (evbus.idle_timeout) holds no process; the consumer
# trimmed nothing and the publisher expired no dead letter until something
# woke them, so that an idle database kept handled messages past
# evbus.inbox_retention, and dead letters (with their inbox rows) past
# evbus.dead_letter_retention, for as long as it stayed idle.  Now an idle
# worker starts again when the oldest of them falls due (not sooner than
# an hour from then, or the retention if shorter), deletes them, and goes
# idle again with nothing left to wake it for.  A dead letter written by
# the consumer wakes the publisher, which may have gone idle before it;
# a dead inbox row wakes the consumer when its dead letter expires, also
# with no handled message left.
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
		"evbus.inbox_retention = '10s'",
		"evbus.dead_letter_retention = '10s'"
	]);
$node->safe_psql('postgres', 'CREATE EXTENSION evbus');
kafka_admin('topics', '--create', '--topic', "${prefix}$_", '--partitions', '1',
	'--replication-factor', '1')
  for qw(Rare Doomed);
subscribe_recorder($node, 'Rare');
$node->safe_psql(
	'postgres', as_subscriber($node) . q{
CREATE PROCEDURE refuse(payload jsonb, headers jsonb) LANGUAGE plpgsql
	AS $$ BEGIN RAISE EXCEPTION 'refused'; END $$;
SELECT evbus.subscribe('Doomed', 'refuse(jsonb, jsonb)', max_retries => 0);
});
my $log_at = -s $node->logfile;
$node->safe_psql('postgres', q{SELECT evbus.publish('Rare', '{"n": 1}')});
ok(wait_for_sql($node, 'postgres', 'SELECT count(*) FROM received', '1', 60), 'the event is handled');
$node->safe_psql('postgres', q{SELECT evbus.publish('Doomed', '{"n": 2}')});
ok(wait_for_sql($node, 'postgres', 'SELECT count(*) FROM evbus.dead_letters', '1', 60),
	'the other is dead-lettered');

my $workers = q{SELECT count(*) FROM pg_stat_activity WHERE backend_type IN ('evbus consumer', 'evbus publisher')};
my $consumers = q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'evbus consumer'};
ok(wait_for_sql($node, 'postgres', $workers, '0', 60), 'the consumer and the publisher go idle');
is( $node->safe_psql('postgres',
		q{SELECT (SELECT count(*) FROM evbus.inbox WHERE coalesce(handled_at, received_at) > now() - interval '10 s')
		      || ' ' || (SELECT count(*) FROM evbus.dead_letters WHERE dead_at > now() - interval '10 s')}),
	'2 1', 'they went idle before their rows fell due');
like(
	slurp_file($node->logfile, $log_at),
	qr/consumer for database "postgres" exits: nothing to handle.*\n.*DETAIL:.* or at .* for a retry or the inbox's trim due then/,
	'it says when it starts again for the trim');

# no message comes; the row goes once due
$log_at = -s $node->logfile;
my $t0 = time;
ok(wait_for_sql($node, 'postgres', 'SELECT count(*) FROM evbus.dead_letters', '0', 60),
	'the dead letter expires while no message arrives');
note sprintf('the dead letter expired %.1f s after the workers went idle', time - $t0);
ok(wait_for_sql($node, 'postgres', 'SELECT count(*) FROM evbus.inbox', '0', 60),
	'the handled message and the dead one leave the inbox');
note sprintf('the inbox was empty %.1f s after the workers went idle', time - $t0);
ok(wait_for_sql($node, 'postgres', $workers, '0', 60), 'both go idle again');
like(
	slurp_file($node->logfile, $log_at),
	qr/exits: nothing to handle.*\n.*DETAIL:  It starts again when messages arrive in its topics, or when woken\./,
	'with nothing left to trim, nothing wakes it but messages');
like(slurp_file($node->logfile, $log_at),
	qr/publisher for database "postgres" exits: nothing to publish.*\n.*DETAIL:  It starts again at the next commit that stages events\.\n/,
	'and so does the publisher');

# a dead letter alone: nothing handled is left to wake the consumer, its
# dead inbox row does
$node->safe_psql('postgres', q{SELECT evbus.publish('Doomed', '{"n": 3}')});
ok(wait_for_sql($node, 'postgres', q{SELECT count(*) FROM evbus.inbox WHERE state = 'dead'}, '1', 60),
	'another event is dead-lettered');
ok(wait_for_sql($node, 'postgres', $workers, '0', 60), 'both go idle');
ok(wait_for_sql($node, 'postgres',
		q{SELECT (SELECT count(*) FROM evbus.inbox) + (SELECT count(*) FROM evbus.dead_letters)}, '0', 60),
	'its dead letter and its inbox row go while no message arrives');
is($node->safe_psql('postgres', 'SELECT count(*) FROM received'), '1', 'handled once');

$node->stop;
done_testing();

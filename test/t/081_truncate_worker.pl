# 081_truncate_worker.pl - the outbox table staging no longer writes to is
# truncated by a short-lived worker of its own (src/outbox_truncate.c), so
# that the publisher goes on claiming during the commit's file work; never
# while a transaction that staged into it is open (its row would be lost),
# and by the publisher itself when no background worker slot is free.
#
# A slow transaction stages into the current table and stays open while
# events flow across several rotations (evbus.outbox_rotation = 2s): that
# table is not truncated meanwhile.  Once it commits, its event is
# published and the table is truncated by the worker.  Every event is in
# Kafka exactly once.  Then, on a server whose every background worker
# slot is taken by evbus's launcher and workers, the publisher truncates
# in its own step.
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);

# stage_rounds(node, event, rounds, pause): rounds transactions of 10
# events of the integration event, pause seconds apart
sub stage_rounds
{
	my ($n, $event, $rounds, $pause) = @_;
	for my $round (1 .. $rounds)
	{
		$n->safe_psql('postgres',
			qq{SELECT evbus.publish('$event', jsonb_build_object('n', $round * 100 + g)) FROM generate_series(1, 10) g});
		sleep $pause;
	}
}

kafka_bootstrap();
my $prefix = "t081.$$.";
my $node = new_node('truncw', kafka => 1,
	conf => [
		"evbus.topic_prefix = '$prefix'", "evbus.outbox_rotation = '2s'",
		'log_min_messages = debug1'
	]);
$node->safe_psql('postgres', 'CREATE EXTENSION evbus');
$node->safe_psql('postgres', q{SELECT evbus.publish('Truncated', '{"n": 0}')});
ok(wait_for_sql($node, 'postgres', 'SELECT count(*) FROM evbus.outbox', '0', 60),
	'the first event is published');

# the slow transaction, and the table its row is in
my $slow = $node->background_psql('postgres');
$slow->query_safe('BEGIN');
$slow->query_safe(q{SELECT evbus.publish('Truncated', '{"who": "slow"}', 'slow')});
# (looked up in a subtransaction rolled back, which releases the locks
# of the lookup: only the lock of the insert stays)
$slow->query_safe('SAVEPOINT lookup');
my $table = $slow->query_safe(q{
SELECT 0 FROM evbus.outbox_0 WHERE payload ->> 'who' = 'slow'
UNION ALL
SELECT 1 FROM evbus.outbox_1 WHERE payload ->> 'who' = 'slow'});
$slow->query_safe('ROLLBACK TO SAVEPOINT lookup');
like($table, qr/^[01]$/, "the slow transaction staged into evbus.outbox_$table");
my $log_offset = -s $node->logfile;

# 100 events over 7 s: the tables rotate three times
stage_rounds($node, 'Truncated', 10, 0.7);
ok(wait_for_sql($node, 'postgres', 'SELECT count(*) FROM evbus.outbox', '0', 60),
	'the 100 committed events are published');
my $log = slurp_file($node->logfile, $log_offset);
ok($log =~ /truncated evbus\.outbox_\d in its own worker/,
	'meanwhile a worker of its own truncated an outbox table');
ok($log !~ /truncated evbus\.outbox_$table\b/,
	"but not evbus.outbox_$table, which the open transaction wrote to");
cmp_ok($node->safe_psql('postgres', "SELECT pg_relation_size('evbus.outbox_$table')"), '>', 0,
	"evbus.outbox_$table still holds its rows");

$slow->query_safe('COMMIT');
$slow->quit;
ok(wait_for_sql($node, 'postgres', 'SELECT count(*) FROM evbus.outbox', '0', 60),
	'the slow transaction\'s event is published once it commits');
ok(wait_for_sql($node, 'postgres', "SELECT pg_relation_size('evbus.outbox_$table')", '0', 60),
	"then evbus.outbox_$table is truncated");
$log = slurp_file($node->logfile, $log_offset);
ok($log =~ /truncated evbus\.outbox_$table in its own worker/, 'by the worker of its own');

my @msgs = kcat_consume("${prefix}Truncated", 102, 60);
my %ids;
$ids{ $_->{headers}{'cap-msg-id'} }++ for @msgs;
is(scalar @msgs, 102, 'Kafka holds 102 messages');
is(scalar keys %ids, 102, 'each of the 102 events once');
is(scalar(grep { ($_->{payload} // '') =~ /"slow"/ } @msgs), 1, 'the slow one among them');
$node->stop;

# no free slot: launcher, publisher and consumer take all three
my $tight = new_node('truncw_tight', kafka => 1,
	conf => [
		"evbus.topic_prefix = '$prefix'", "evbus.outbox_rotation = '1s'",
		'log_min_messages = debug1', 'max_worker_processes = 3',
		'max_logical_replication_workers = 0', 'max_parallel_workers = 0'
	]);
$tight->safe_psql('postgres', 'CREATE EXTENSION evbus');
ok(wait_for_sql($tight, 'postgres', 'SELECT evbus.publisher_pid() > 0 AND evbus.consumer_pid() > 0', 't', 30),
	'both workers run in the three slots');
$log_offset = -s $tight->logfile;
stage_rounds($tight, 'Tight', 4, 0.6);
ok(wait_for_sql($tight, 'postgres', 'SELECT count(*) FROM evbus.outbox', '0', 60),
	'the 40 events are published');
for (1 .. 50)
{
	$log = slurp_file($tight->logfile, $log_offset);
	last if $log =~ /truncated evbus\.outbox_\d \(\d+ pages\)/;
	sleep 0.2;
}
like($log, qr/truncated evbus\.outbox_\d \(\d+ pages\)/,
	'without a free slot the publisher truncates in its own step');
unlike($log, qr/in its own worker/, 'and no worker of its own ran');
$tight->stop;
done_testing();

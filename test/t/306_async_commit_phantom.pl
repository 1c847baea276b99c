# 306_async_commit_phantom.pl - no phantom event from a transaction that
# committed with synchronous_commit = off and was then lost in a crash.
#
# Such a commit is visible at once but reaches the disk only when the WAL
# writer or another commit writes it (here: wal_writer_delay = 10s, so up
# to 10 s later).  If the publisher sent its events to Kafka before that,
# an immediate stop in between would leave Kafka with events of
# transactions the database no longer has.  The publisher flushes the WAL
# that stands behind the events it claims before it sends them (a no-op
# when the commits were synchronous): after the crash every event in Kafka
# is one the database has, and each of the database's events is in Kafka.
#
# The consuming side, with synchronous_commit = off for the whole server
# (the consumer also commits so while messages wait): Kafka is told no
# offset whose commit is not on disk, so a crash leaves Kafka's offsets at
# or behind the database's.  They used to be told at once: the crash lost
# a handled batch whose offsets Kafka had, and only because they carry
# this database's name did the stored offset win (a LOG line said so);
# another database of the group taking the partition over would have
# started past messages nobody had handled.  A batch the crash loses is
# handled again, once (as after a failover, 302_failover_consume.pl).
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);

kafka_bootstrap();
my $prefix = "t306.$$.";
my $topic = "${prefix}Ev";
my $node = new_node(
	'async_commit',
	kafka => 1,
	conf => [
		"evbus.topic_prefix = '$prefix'",
		"wal_writer_delay = '10s'",
		# nothing else flushes the WAL behind the commits in the window
		'autovacuum = off'
	]);
$node->safe_psql('postgres', 'CREATE EXTENSION evbus');
$node->safe_psql('postgres',
	'CREATE TABLE staged (n int PRIMARY KEY, message_id uuid NOT NULL)');


# a first event, committed synchronously: the publisher runs and Kafka has
# the topic
$node->safe_psql('postgres',
	q{INSERT INTO staged SELECT 0, evbus.publish('Ev', '{"n": 0}')});
my @first = kafka_message_ids($topic, 1, 60);
is(scalar @first, 1, 'a synchronously committed event is published');
ok(wait_for_sql($node, 'postgres', 'SELECT count(*) = 0 FROM evbus.outbox', 't', 30),
	'and recorded as published');

# events 1..3 committed asynchronously, one transaction each
$node->safe_psql('postgres',
	"SET synchronous_commit = off;\n"
	  . join('',
		map { "INSERT INTO staged SELECT $_, evbus.publish('Ev', '{\"n\": $_}');\n" }
		  1 .. 3));
my $lsn_after = $node->safe_psql('postgres', 'SELECT pg_current_wal_insert_lsn()');
my @sent = kafka_message_ids($topic, 4, 20);
is(scalar @sent, 4, 'the asynchronously committed events are published');

# whatever Kafka has of them must be on disk now: crash at once
$node->stop('immediate');
$node->start;
my @have = split /\n/,
  $node->safe_psql('postgres', 'SELECT message_id FROM staged ORDER BY n');
my %have = map { $_ => 1 } @have;
my @phantoms = grep { !$have{$_} } kafka_message_ids($topic, 4, 2);
is(scalar @phantoms, 0, 'no event in Kafka that the database lost in the crash')
  or diag "phantoms: @phantoms (database has " . scalar(@have) . " events; insert LSN was $lsn_after)";
is(scalar @have, 4, 'the database kept the 4 events whose events were published');

# the publisher runs again and the outbox drains: nothing published twice
# beyond the same cap-msg-ids
ok(wait_for_sql($node, 'postgres', 'SELECT count(*) = 0 FROM evbus.outbox', 't', 60),
	'the outbox drains after the restart');
my %kafka = map { $_ => 1 } kafka_message_ids($topic, 10, 3);
is(scalar keys %kafka, scalar @have, 'Kafka holds exactly the database\'s events, by cap-msg-id');

$node->stop;

# --- the consuming side ------------------------------------------------------
my $in_topic = "${prefix}In";
my $consumer = new_node(
	'async_consume',
	kafka => 1,
	conf => [
		"evbus.topic_prefix = '$prefix'",
		"evbus.group_name = 'g306_$$'",
		'synchronous_commit = off',
		"wal_writer_delay = '10s'",
		'autovacuum = off'
	]);
$consumer->safe_psql('postgres', 'CREATE EXTENSION evbus');
subscribe_recorder($consumer, 'In');

# batch 1 handled, and on disk (a synchronous commit flushes all WAL)
java_produce($in_topic, map { "\\N\tk$_\t{\"n\": $_}" } 1 .. 3);
ok(wait_for_sql($consumer, 'postgres', 'SELECT count(*) FROM received', '3', 60),
	'consumer: batch 1 handled');
$consumer->safe_psql('postgres',
	'SET synchronous_commit = on; CREATE TABLE flushed (); DROP TABLE flushed');

# batch 2 handled with an asynchronous commit, its offsets told to Kafka
# (at most once a second, once the commit is on disk), then the crash
java_produce($in_topic, map { "\\N\tk$_\t{\"n\": $_}" } 4 .. 6);
ok(wait_for_sql($consumer, 'postgres', 'SELECT count(*) FROM received', '6', 60),
	'consumer: batch 2 handled');
sleep 3;
$consumer->stop('immediate');
$consumer->start;
ok(wait_for_sql($consumer, 'postgres', 'SELECT count(*) FROM received', '6', 60),
	'consumer: 6 messages handled after the crash');
unlike(slurp_file($consumer->logfile),
	qr/rewound from/,
	'consumer: no offset Kafka holds was ahead of the database after the crash');
sleep 2;
is( $consumer->safe_psql('postgres',
		q{SELECT count(*) || '/' || count(DISTINCT payload->>'n') FROM received}),
	'6/6', 'consumer: every message handled exactly once');
$consumer->stop;
done_testing();

# 302_failover_consume.pl - messages whose handling was lost at a failover
# are handled again on the new primary, once.
#
# A source database publishes events; a consuming primary, which streams
# asynchronously to a standby, handles them.  The standby stops receiving
# WAL, the primary handles a second batch (with evbus.wait_for_standbys,
# as much of it as it gets before it waits for the standby), then
# crashes, and the standby is promoted.  Twice:
#
#  - evbus.wait_for_standbys empty: the primary commits the second
#    batch's offsets to Kafka too, so Kafka's offset is ahead of the
#    surviving database.  It carries the commit metadata naming this
#    database, so the stored offset wins (a LOG line says so) and the lost
#    messages are handled again.
#  - evbus.wait_for_standbys naming the standby: the primary waits for the
#    standby before it commits the offsets to Kafka (pg_stat_activity
#    shows it, a WARNING names the standby), so Kafka's offset is never
#    ahead of the standby: nothing to rewind.
#
# Either way every effect is there exactly once in the surviving database.
# Then, on the first new primary: after DROP EXTENSION and CREATE
# EXTENSION (offsets and inbox start afresh), Kafka's offset wins again:
# the old messages are not handled a second time.  And on the second: a
# standby that is not connected holds publishing back until a reload
# empties the setting.
use strict;
use warnings;

use EvbusTest;
use EvbusFailover;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);

kafka_bootstrap();
my $prefix = "t302.$$.";
my $source = new_node('source', kafka => 1, conf => ["evbus.topic_prefix = '$prefix'"]);
$source->safe_psql('postgres', 'CREATE EXTENSION evbus');

# publish(event, from, to): events with n from .. to, from the source
sub publish
{
	my ($event, $from, $to) = @_;
	$source->safe_psql('postgres',
		"SELECT evbus.publish('$event', jsonb_build_object('n', i)) FROM generate_series($from, $to) i"
	);
}

# scenario(name, wait): the failover above, consuming event Ev_<name>;
# returns the promoted standby.
sub scenario
{
	my ($name, $wait) = @_;
	my $event = "Ev_$name";
	my $standby_name = "standby_$name";
	my ($primary, $standby) = failover_pair(
		$name, $standby_name,
		conf => [
			"evbus.topic_prefix = '$prefix'",
			"evbus.group_name = 'g_$name'",
			$wait ? ("evbus.wait_for_standbys = '$standby_name'") : ()
		],
		setup => sub { subscribe_recorder(shift, $event) });

	# batch 1: handled on the primary, replicated
	publish($event, 1, 10);
	ok(wait_for_sql($primary, 'postgres', 'SELECT count(*) FROM received', '10', 90),
		"$name: batch 1 handled on the primary");
	$primary->wait_for_catchup($standby_name);

	# batch 2: handled on the primary only.  With the wait, the consumer
	# stops at its first commit of offsets to Kafka after the standby has
	# gone (docs/production.md): before batch 2, or after the part of it
	# its poll had got (3 of 10 seen), so how much of it the primary
	# handles is left to timing; Kafka's offset must be behind the standby
	# either way (below).
	$standby->stop('fast');
	publish($event, 11, 20);
	if (!$wait)
	{
		ok(wait_for_sql($primary, 'postgres', 'SELECT count(*) FROM received', '20', 90),
			"$name: batch 2 handled on the primary");
	}
	if ($wait)
	{
		ok( wait_for_sql(
				$primary, 'postgres',
				qq{SELECT count(*) = 1 FROM pg_stat_activity
				  WHERE backend_type = 'evbus consumer'
				    AND query LIKE 'waiting for standbys "$standby_name"%committing offsets%'},
				't', 30),
			"$name: the consumer waits for the standby before committing offsets to Kafka");
		note "$name: batch 2 handled on the primary before the wait: "
		  . ($primary->safe_psql('postgres', 'SELECT count(*) FROM received') - 10);
		like(
			slurp_file($primary->logfile),
			qr/WARNING:  evbus: committing offsets waits for standbys "$standby_name"/,
			"$name: a WARNING names the standby");
	}
	else
	{
		# the consumer tells Kafka at most once a second
		sleep 4;
	}

	crash_and_promote($primary, $standby);
	is($standby->safe_psql('postgres', 'SELECT count(*) FROM received'),
		'10', "$name: the promoted standby lost the handling of batch 2");
	ok(wait_for_sql($standby, 'postgres', 'SELECT count(*) FROM received', '20', 90),
		"$name: batch 2 handled again on the new primary");
	sleep 2;
	is( $standby->safe_psql('postgres',
			q{SELECT count(*) || '/' || count(DISTINCT message_id) || '/' || count(DISTINCT payload->>'n')
			  FROM received}),
		'20/20/20', "$name: every message handled exactly once in the surviving database");
	return $standby;
}

# --- without the setting: Kafka's offset ahead, the stored one wins ------------
my $new = scenario('nowait', 0);
like(slurp_file($new->logfile),
	qr/LOG:  evbus: group "g_nowait": \S*Ev_nowait\[\d+\] starts at offset \d+, rewound from \d+/,
	'nowait: the rewind is logged');

# the same database after DROP and CREATE EXTENSION is another consumer:
# Kafka's offset is taken, the 20 messages are not handled again
sleep 3;	# the new primary's offsets told to Kafka
$new->safe_psql('postgres', 'DROP EXTENSION evbus');
$new->safe_psql('postgres', 'CREATE EXTENSION evbus');
$new->safe_psql('postgres', as_subscriber($new)
	  . q{SELECT evbus.subscribe('Ev_nowait', 'record_received(jsonb, jsonb)')});
publish('Ev_nowait', 21, 25);
ok(wait_for_sql($new, 'postgres', 'SELECT count(*) FROM received', '25', 90),
	'after CREATE EXTENSION, the new messages are handled');
sleep 3;
is($new->safe_psql('postgres', 'SELECT count(*) || \'/\' || count(DISTINCT message_id) FROM received'),
	'25/25', 'after CREATE EXTENSION, Kafka\'s offset wins: no old message handled again');
$new->stop;

# --- with the setting: Kafka's offset never ahead of the standby ----------------
$new = scenario('wait', 1);
unlike(slurp_file($new->logfile), qr/rewound from/,
	'wait: Kafka\'s committed offset was never ahead of the standby');

# a standby that is not connected holds publishing back until a reload
$new->append_conf('postgresql.conf', "evbus.wait_for_standbys = 'nobody'");
$new->reload;
ok( wait_for_sql(
		$new, 'postgres', q{SELECT current_setting('evbus.wait_for_standbys') = 'nobody'},
		't', 10),
	'the setting names a standby that is not connected');
$new->safe_psql('postgres', q{SELECT evbus.publish('Held', '{"n": 1}')});
sleep 3;
my @held = kcat_consume("${prefix}Held", 1, 2);
is(scalar @held, 0, 'the event is not published while its standby is missing');
is($new->safe_psql('postgres', 'SELECT count(*) FROM evbus.outbox'), '1',
	'it waits in the outbox');
$new->append_conf('postgresql.conf', "evbus.wait_for_standbys = ''");
$new->reload;
@held = kcat_consume("${prefix}Held", 1, 30);
is(scalar @held, 1, 'published once the setting is emptied and reloaded');

done_testing();

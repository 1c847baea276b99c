# 300_failover_publish.pl - no phantom event after a failover.
#
# A primary streams asynchronously to a standby.  The standby stops
# receiving WAL (it is stopped), events are committed on the primary, the
# primary crashes and the standby is promoted.  Without
# evbus.wait_for_standbys the primary publishes those events before the
# standby has them: Kafka then holds events the new primary never staged
# (the window this setting closes, asserted here so that it stays
# documented).  With evbus.wait_for_standbys naming the standby, the
# publisher waits for the standby's flush (a WARNING names it, and
# pg_stat_activity shows the wait), nothing of the lost transactions
# reaches Kafka, and every event the new primary has is published by it,
# exactly once in effect (one cap-msg-id each).
use strict;
use warnings;

use EvbusTest;
use EvbusFailover;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);

kafka_bootstrap();

# scenario(name, wait): primary and standby; returns (ids in Kafka, ids
# the promoted standby has, the old primary).
sub scenario
{
	my ($name, $wait) = @_;
	my $prefix = "t300.$$.$name.";
	my $topic = "${prefix}Ev";
	my $standby_name = "standby_$name";
	my ($primary, $standby) = failover_pair(
		$name, $standby_name,
		conf => [
			"evbus.topic_prefix = '$prefix'",
			$wait ? ("evbus.wait_for_standbys = '$standby_name'") : ()
		],
		setup => sub {
			shift->safe_psql('postgres',
				'CREATE TABLE staged (n int PRIMARY KEY, message_id uuid NOT NULL)');
		});

	# standby connected: published as usual
	$primary->safe_psql('postgres',
		q{INSERT INTO staged SELECT 1, evbus.publish('Ev', '{"n": 1}')});
	my @ids = kafka_message_ids($topic, 1, 60);
	is(scalar @ids, 1, "$name: event 1 published while the standby streams");
	$primary->wait_for_catchup($standby_name);

	# the standby stops receiving; events 2..4 committed on the primary only
	$standby->stop('fast');
	$primary->safe_psql('postgres',
		"INSERT INTO staged SELECT $_, evbus.publish('Ev', '{\"n\": $_}')")
	  for 2 .. 4;
	if ($wait)
	{
		ok( wait_for_sql(
				$primary, 'postgres',
				q{SELECT count(*) > 0 FROM pg_stat_activity
				  WHERE backend_type = 'evbus publisher'
				    AND query LIKE 'waiting for standby%'}, 't', 30),
			"$name: the publisher shows that it waits for the standby");
		sleep 4;
		@ids = kafka_message_ids($topic, 4, 2);
		is(scalar @ids, 1, "$name: nothing the standby lacks reaches Kafka");
		like(
			slurp_file($primary->logfile),
			qr/WARNING:  evbus: publishing waits for standbys "$standby_name"/,
			"$name: a WARNING names the standby waited for");
	}
	else
	{
		@ids = kafka_message_ids($topic, 4, 60);
		is(scalar @ids, 4, "$name: events 2..4 published before the standby has them");
	}

	crash_and_promote($primary, $standby);
	my @have = split /\n/,
	  $standby->safe_psql('postgres', 'SELECT message_id FROM staged ORDER BY n');
	is(scalar @have, 1, "$name: the promoted standby has event 1 only");
	return ($standby, $topic, \@have, $primary);
}

# --- without the setting: the phantom ---------------------------------------
{
	my ($new, $topic, $have) = scenario('nowait', 0);
	my %have = map { $_ => 1 } @$have;
	my @phantoms = grep { !$have{$_} } kafka_message_ids($topic, 4, 30);
	is(scalar @phantoms, 3,
		'without evbus.wait_for_standbys Kafka holds 3 events the new primary lacks');
	$new->stop;
}

# --- with the setting: none -------------------------------------------------
{
	my ($new, $topic, $have) = scenario('wait', 1);
	my %have = map { $_ => 1 } @$have;

	# the new primary's publisher runs and publishes what it has (event 1
	# again, if it was not recorded as published before the crash)
	ok( wait_for_sql(
			$new, 'postgres',
			q{SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'evbus publisher'},
			't', 30),
		'the publisher runs on the promoted standby');
	ok(wait_for_sql($new, 'postgres', 'SELECT count(*) = 0 FROM evbus.outbox', 't', 60),
		'the new primary published everything it has');
	my @ids = kafka_message_ids($topic, 10, 3);
	my @phantoms = grep { !$have{$_} } @ids;
	is(scalar @phantoms, 0, 'with evbus.wait_for_standbys no event in Kafka that the new primary lacks')
	  or diag "phantoms: @phantoms";
	my %seen = map { $_ => 1 } @ids;
	is(scalar(grep { $seen{$_} } @$have), scalar @$have,
		'every event of the new primary is in Kafka');
	is(scalar keys %seen, scalar @$have, 'Kafka holds exactly the new primary\'s events, by cap-msg-id');
	$new->stop;
}

done_testing();

# 306_standby_wait_offsets.pl - with evbus.wait_for_standbys, the consumer
# commits offsets to Kafka only once the named standby has the
# transaction that stored them, and a reload that empties the setting
# ends a wait at once.
#
# A consuming primary streams to a standby named in the setting.  The
# standby stops; the primary handles a second batch in its database, then
# waits before telling Kafka (pg_stat_activity shows it, a WARNING names
# the standby).  The primary crashes, the standby is promoted: Kafka's
# offset was never ahead of it (nothing is rewound), and the second batch
# is handled there, once.  Then the new primary names a standby that does
# not exist: an event it stages stays in the outbox until the setting is
# emptied and the configuration reloaded.
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);

kafka_bootstrap();
my $prefix = "t306.$$.";
my $source = new_node('source', kafka => 1, conf => ["evbus.topic_prefix = '$prefix'"]);
$source->safe_psql('postgres', 'CREATE EXTENSION evbus');

my $primary = new_node(
	'primary',
	kafka => 1,
	init => { allows_streaming => 1 },
	conf => [ "evbus.topic_prefix = '$prefix'", "evbus.wait_for_standbys = 'standby'" ]);
$primary->safe_psql('postgres', 'CREATE EXTENSION evbus');
subscribe_recorder($primary, 'Ev');
$primary->backup('b');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'b', has_streaming => 1);
$standby->start;

$source->safe_psql('postgres',
	"SELECT evbus.publish('Ev', jsonb_build_object('n', i)) FROM generate_series(1, 10) i");
ok(wait_for_sql($primary, 'postgres', 'SELECT count(*) FROM received', '10', 90),
	'batch 1 handled while the standby streams');
$primary->wait_for_catchup('standby');

# the standby stops: batch 2 is handled, its offsets are not told to Kafka
$standby->stop('fast');
$source->safe_psql('postgres',
	"SELECT evbus.publish('Ev', jsonb_build_object('n', i)) FROM generate_series(11, 20) i");
ok(wait_for_sql($primary, 'postgres', 'SELECT count(*) FROM received', '20', 90),
	'batch 2 handled on the primary');
ok( wait_for_sql(
		$primary, 'postgres',
		q{SELECT count(*) = 1 FROM pg_stat_activity
		  WHERE backend_type = 'evbus consumer'
		    AND query LIKE 'waiting for standbys "standby"%committing offsets%'}, 't', 30),
	'the consumer waits for the standby before committing offsets to Kafka');
like(
	slurp_file($primary->logfile),
	qr/WARNING:  evbus: committing offsets waits for standbys "standby"/,
	'a WARNING names the standby');

# crash, promote: nothing to rewind, batch 2 handled again, once
$primary->stop('immediate');
$standby->append_conf('postgresql.conf', "evbus.wait_for_standbys = ''");
$standby->start;
$standby->promote;
is($standby->safe_psql('postgres', 'SELECT count(*) FROM received'),
	'10', 'the promoted standby lost the handling of batch 2');
ok(wait_for_sql($standby, 'postgres', 'SELECT count(*) FROM received', '20', 90),
	'batch 2 handled on the new primary');
sleep 2;
is( $standby->safe_psql('postgres',
		q{SELECT count(*) || '/' || count(DISTINCT message_id) FROM received}),
	'20/20', 'every message handled exactly once in the surviving database');
unlike(slurp_file($standby->logfile), qr/rewound from/,
	'Kafka\'s committed offset was never ahead of the standby');

# a standby that is not there holds publishing back until a reload
$standby->append_conf('postgresql.conf', "evbus.wait_for_standbys = 'nobody'");
$standby->reload;
ok( wait_for_sql(
		$standby, 'postgres', q{SELECT current_setting('evbus.wait_for_standbys') = 'nobody'},
		't', 10),
	'the setting names a standby that is not connected');
$standby->safe_psql('postgres', q{SELECT evbus.publish('Held', '{"n": 1}')});
sleep 3;
my @held = kcat_consume("${prefix}Held", 1, 2);
is(scalar @held, 0, 'the event is not published while its standby is missing');
is($standby->safe_psql('postgres', 'SELECT count(*) FROM evbus.outbox'), '1',
	'it waits in the outbox');
$standby->append_conf('postgresql.conf', "evbus.wait_for_standbys = ''");
$standby->reload;
@held = kcat_consume("${prefix}Held", 1, 30);
is(scalar @held, 1, 'published once the setting is emptied and reloaded');

done_testing();

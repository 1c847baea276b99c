# 302_failover_consume.pl - messages whose handling was lost at a failover
# are handled again on the new primary.
#
# A source database publishes events; a consuming primary, which streams
# asynchronously to a standby, handles them.  The standby stops receiving
# WAL, the primary handles more messages and commits their offsets to
# Kafka too (evbus.wait_for_standbys is empty), then crashes, and the
# standby is promoted.  Kafka's committed offset is then ahead of the
# surviving database; it carries the commit metadata naming this
# database, so the stored offset wins and the lost messages are handled
# again: every effect exactly once in the surviving database.
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);

kafka_bootstrap();
my $prefix = "t302.$$.";
my $source = new_node('source', kafka => 1, conf => ["evbus.topic_prefix = '$prefix'"]);
$source->safe_psql('postgres', 'CREATE EXTENSION evbus');

my $primary = new_node(
	'primary',
	kafka => 1,
	init => { allows_streaming => 1 },
	conf => ["evbus.topic_prefix = '$prefix'"]);
$primary->safe_psql('postgres', 'CREATE EXTENSION evbus');
subscribe_recorder($primary, 'Ev');
$primary->backup('b');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'b', has_streaming => 1);
$standby->start;

# batch 1: handled on the primary, replicated
$source->safe_psql('postgres',
	"SELECT evbus.publish('Ev', jsonb_build_object('n', i)) FROM generate_series(1, 10) i");
ok(wait_for_sql($primary, 'postgres', 'SELECT count(*) FROM received', '10', 90),
	'batch 1 handled on the primary');
$primary->wait_for_catchup('standby');

# batch 2: handled on the primary only, offsets committed to Kafka
$standby->stop('fast');
$source->safe_psql('postgres',
	"SELECT evbus.publish('Ev', jsonb_build_object('n', i)) FROM generate_series(11, 20) i");
ok(wait_for_sql($primary, 'postgres', 'SELECT count(*) FROM received', '20', 90),
	'batch 2 handled on the primary');
# the consumer tells Kafka at most once a second
sleep 4;

# crash, promote
$primary->stop('immediate');
$standby->start;
$standby->promote;
is($standby->safe_psql('postgres', 'SELECT count(*) FROM received'),
	'10', 'the promoted standby lost the handling of batch 2');

ok(wait_for_sql($standby, 'postgres', 'SELECT count(*) FROM received', '20', 90),
	'batch 2 handled again on the new primary');
sleep 2;
is( $standby->safe_psql('postgres',
		q{SELECT count(*) || '/' || count(DISTINCT message_id) || '/' || count(DISTINCT payload->>'n')
		  FROM received}),
	'20/20/20', 'every message handled exactly once in the surviving database');
like(slurp_file($standby->logfile),
	qr/LOG:  evbus: group "postgres": \S*Ev\[\d+\] starts at offset \d+, rewound from \d+/,
	'the rewind is logged');

done_testing();

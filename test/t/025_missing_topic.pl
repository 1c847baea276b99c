# 025_missing_topic.pl - events to a topic that does not exist (and that
# the broker may not create) wait in the outbox, their key held back, and
# are published in order once the topic is created: the error is
# transient, so nothing is dead-lettered and no retry is used up.
#
# With allow.auto.create.topics=false (evbus.kafka_config_file) the
# producer learns that the topic does not exist.  librdkafka then fails
# the queued event in its delivery report (UNKNOWN_TOPIC_OR_PART), and
# refuses the next attempts at once, before queuing them
# (RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC): the worker's path for an immediate
# transient refusal, which no other test takes.
use strict;
use warnings;

use EvbusTest;
use File::Spec;
use PostgreSQL::Test::Utils;
use Test::More;

kafka_bootstrap();
my $prefix = "t025.$$.";
my $topic = "${prefix}Missing";
my $dir = File::Spec->rel2abs(PostgreSQL::Test::Utils::tempdir());
write_kafka_properties("$dir/no-create.properties",
	'allow.auto.create.topics=false',
	# learn soon that the topic is missing, and soon that it exists
	'topic.metadata.propagation.max.ms=1000',
	'topic.metadata.refresh.interval.ms=1000');

my $node = new_node('missing', kafka => 1,
	conf => [
		"evbus.topic_prefix = '$prefix'",
		"evbus.kafka_config_file = '$dir/no-create.properties'",
		'log_min_messages = debug1'
	]);
$node->safe_psql('postgres', 'CREATE EXTENSION evbus');

my $log_offset = -s $node->logfile;
$node->safe_psql('postgres', q{SELECT evbus.publish('Missing', '{"n": 1}', 'k')});
ok($node->wait_for_log(qr/delivery of event \d+ not confirmed \(_?UNKNOWN_TOPIC\w*\)/, $log_offset),
	'the first event is reported: unknown topic');
$node->safe_psql('postgres', q{SELECT evbus.publish('Missing', jsonb_build_object('n', n), 'k')
	FROM generate_series(2, 3) n});
ok($node->wait_for_log(qr/event \d+ refused before it was queued \(_UNKNOWN_TOPIC\)/, $log_offset),
	'the next attempt is refused before it is queued');
sleep 2;
is($node->safe_psql('postgres', 'SELECT count(*) FROM evbus.outbox'), '3',
	'all three events wait in the outbox');
is($node->safe_psql('postgres', 'SELECT count(*) FROM evbus.dead_letters'), '0',
	'none is dead-lettered');

kafka_admin('topics', '--create', '--topic', $topic, '--partitions', '1');
ok(wait_for_sql($node, 'postgres', 'SELECT count(*) = 0 FROM evbus.outbox', 't', 60),
	'once the topic exists the events are published');
my @msgs = kcat_consume($topic, 3);
is(join(',', map { $_->{payload} } @msgs), '{"n":1},{"n":2},{"n":3}',
	'each event once, in the order staged');
is($node->safe_psql('postgres', 'SELECT count(*) FROM evbus.dead_letters'), '0',
	'still nothing dead-lettered');

# An event that keeps failing holds its key back; if an operator deletes
# its row by hand, the key's later events go (an earlier version kept the
# key blocked for ever).
$log_offset = -s $node->logfile;
my $gone_msg = $node->safe_psql('postgres', q{SELECT evbus.publish('Gone', '{"n": 4}', 'j')});
my $gone_id = $node->safe_psql('postgres',
	"SELECT id FROM evbus.outbox WHERE message_id = '$gone_msg'");
ok($node->wait_for_log(qr/event $gone_id (?:refused before it was queued|not confirmed)/, $log_offset),
	'an event to another missing topic fails');
$node->safe_psql('postgres', q{SELECT evbus.publish('Missing', '{"n": 5}', 'j')});
sleep 2;
is($node->safe_psql('postgres', q{SELECT string_agg(integration_event, ',' ORDER BY id) FROM evbus.outbox}),
	'Gone,Missing', 'the next event of its key waits behind it');
$node->safe_psql('postgres', "DELETE FROM evbus.outbox_0 WHERE id = $gone_id; DELETE FROM evbus.outbox_1 WHERE id = $gone_id");
ok(wait_for_sql($node, 'postgres', 'SELECT count(*) = 0 FROM evbus.outbox', 't', 30),
	'once the failing event is deleted by hand, the key is released');
ok($node->wait_for_log(qr/event $gone_id is no longer in the outbox/, $log_offset),
	'the worker says why');
@msgs = kcat_consume($topic, 4);
is($msgs[3]{payload}, '{"n":5}', 'the waiting event is published');

$node->stop;
done_testing();

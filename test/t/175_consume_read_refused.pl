# 175_consume_read_refused.pl - Kafka refuses this database's consumer
# what a subscription needs: Read on a subscribed topic (Describe allowed,
# so it is assigned and its fetches fail), Describe on another (it never
# appears in the metadata), or Read on a consumer group (it cannot join).
# Each refusal is a WARNING with SQLSTATE 42501 and a hint naming what to
# grant; the refused topic's lag shows in evbus.stats and evbus.metrics()
# although no fetch brings its high watermark; the other topics and groups
# flow on; nothing is dead-lettered or lost: once the ACLs allow it, every
# held-back message is handled exactly once, without a restart.
#
# The consumer logs in as the SASL user "evbus" (the test broker's SASL
# listener, where ACLs apply; test/kafka/kafka.sh); the messages are
# produced on the plain listener, as a super user.
use strict;
use warnings;

use EvbusTest;
use File::Spec;
use PostgreSQL::Test::Utils;
use Test::More;

my ($sasl_bootstrap, $password) = sasl_acl_broker();

my $prefix = "t175.$$.";
my ($unreadable, $hidden, $open) = map { "$prefix$_" } qw(Unreadable Hidden Open);
my $group = "t175_$$";
kafka_admin('topics', '--create', '--topic', $_, '--partitions', '1')
  for ($unreadable, $hidden, $open);
# With an ACL on a resource, what no ACL allows is denied: user evbus may
# Describe Unreadable but not Read it, may not even Describe Hidden, and
# may not Read (join) the group $group.
kafka_admin('acls', '--add', '--deny-principal', 'User:evbus', '--operation', 'Read',
	'--topic', $_)
  for ($unreadable, $hidden);
kafka_admin('acls', '--add', '--allow-principal', 'User:evbus', '--operation', 'Describe',
	'--topic', $unreadable);
kafka_admin('acls', '--add', '--deny-principal', 'User:evbus', '--operation', 'Read',
	'--group', $group);

my $dir = File::Spec->rel2abs(PostgreSQL::Test::Utils::tempdir());
my $file = "$dir/kafka.properties";
write_kafka_properties($file, sasl_properties($password));
my $node = new_node(
	'refused',
	conf => [
		"evbus.brokers = '$sasl_bootstrap'",
		"evbus.kafka_config_file = '$file'",
		"evbus.topic_prefix = '$prefix'",
		'log_error_verbosity = verbose'
	]);
$node->safe_psql('postgres', 'CREATE EXTENSION evbus');
subscribe_recorder($node, 'Open');
$node->safe_psql(
	'postgres', qq{
SET ROLE evbus_app;
SELECT evbus.subscribe('Unreadable', 'record_received(jsonb, jsonb)');
SELECT evbus.subscribe('Hidden', 'record_received(jsonb, jsonb)');
CREATE TABLE received_in_group (payload jsonb);
CREATE FUNCTION record_in_group(payload jsonb) RETURNS void LANGUAGE sql
	AS \$\$ INSERT INTO public.received_in_group VALUES (payload) \$\$;
SELECT evbus.subscribe('Open', 'record_in_group(jsonb)', '$group');
});
java_produce($unreadable, map { "h:1\tk\t{\"unreadable\": $_}" } 1 .. 3);
java_produce($hidden, "h:1\tk\t{\"hidden\": 1}");
java_produce($open, "h:1\tk\t{\"open\": 1}");

ok( $node->poll_query_until(
		'postgres', q{SELECT count(*) = 1 FROM received WHERE payload ? 'open'}),
	'a topic the consumer may read is handled meanwhile');

my $read_topic_hint = 'Allow the principal that evbus logs in as (evbus.kafka_config_file) '
  . 'to Describe and Read the topic.';
ok( $node->wait_for_log(
		qr/WARNING:  42501: evbus: group "postgres": Fetch from broker \d+ failed: Broker: Topic authorization failed\n[^\n]*HINT:  \Q$read_topic_hint\E/
	),
	'a topic it may not read: a WARNING with SQLSTATE 42501 and a hint');
ok( $node->wait_for_log(
		qr/WARNING:  42501: evbus: group "postgres": Subscribed topic not available: \Q$hidden\E: Broker: Topic authorization failed\n[^\n]*HINT:  \Q$read_topic_hint\E/
	),
	'a topic it may not describe: the same');
ok( $node->wait_for_log(
		qr/WARNING:  42501: evbus: group "\Q$group\E": [^\n]*Group authorization failed[^\n]*\n[^\n]*HINT:  \QAllow the principal that evbus logs in as (evbus.kafka_config_file) to Read the consumer group.\E/
	),
	'a group it may not join: a WARNING with a hint about the group');

# no fetch brings the unreadable topic's high watermark: it is asked for
ok( $node->poll_query_until(
		'postgres',
		"SELECT lag = 3 FROM evbus.stats WHERE side = 'consume' AND topic = '$unreadable'"),
	'evbus.stats shows the unreadable topic\'s lag');
is( $node->safe_psql(
		'postgres',
		"SELECT value FROM evbus.metrics() WHERE metric = 'evbus_consumer_lag' AND topic = '$unreadable'"),
	'3',
	'and so does evbus.metrics()');
is( $node->safe_psql(
		'postgres',
		q{SELECT (SELECT count(*) FROM received WHERE NOT payload ? 'open')
		      || '/' || (SELECT count(*) FROM received_in_group)
		      || '/' || (SELECT count(*) FROM evbus.dead_letters)}),
	'0/0/0',
	'nothing of the refused topics or group handled or dead-lettered');

# the ACLs allow it: no restart, every held-back message once
kafka_admin('acls', '--remove', '--force', '--deny-principal', 'User:evbus', '--operation',
	'Read', '--topic', $_)
  for ($unreadable, $hidden);
kafka_admin('acls', '--add', '--allow-principal', 'User:evbus', '--operation', 'Read',
	'--topic', $unreadable);
kafka_admin('acls', '--remove', '--force', '--deny-principal', 'User:evbus', '--operation',
	'Read', '--group', $group);
ok( $node->poll_query_until(
		'postgres', q{
SELECT (SELECT count(*) FROM received WHERE payload ? 'unreadable') = 3
   AND (SELECT count(*) FROM received WHERE payload ? 'hidden') = 1
   AND (SELECT count(*) FROM received_in_group) = 1}),
	'once allowed, the held-back messages are handled');
ok( $node->poll_query_until(
		'postgres',
		"SELECT lag = 0 FROM evbus.stats WHERE side = 'consume' AND topic = '$unreadable'"),
	'and the lag is 0');
is( $node->safe_psql(
		'postgres', q{
SELECT (SELECT count(*) FROM received) || '/'
    || (SELECT count(DISTINCT payload) FROM received) || '/'
    || (SELECT count(*) FROM received_in_group) || '/'
    || (SELECT count(*) FROM evbus.dead_letters)}),
	'5/5/1/0',
	'each exactly once, no dead letter');
$node->stop;
done_testing();

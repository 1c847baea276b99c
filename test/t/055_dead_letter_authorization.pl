# 055_dead_letter_authorization.pl - a topic the producing principal may
# not write to is a permanent publish error: the event goes
# to evbus.dead_letters at once, with TOPIC_AUTHORIZATION_FAILED, and the
# other events, of other topics and of the same key or another, flow on;
# evbus.stats counts the dead letter; once the ACL is removed,
# evbus.retry() requeues the event and it is published with its message id.
#
# evbus publishes as the SASL user "evbus" (the test broker's SASL
# listener, where ACLs apply; test/kafka/kafka.sh).  The broker refuses in
# two ways, both tested: a topic with no ACL that allows user evbus even
# Describe (librdkafka learns it from the metadata and fails the message
# itself), and one where Describe is allowed but Write denied (the broker
# refuses the Produce request; under the gap-less guarantee the producer
# stops and the worker rebuilds it, test 052, but no other fatal error
# may occur, such as a sequence desynchronisation).
use strict;
use warnings;

use EvbusTest;
use File::Spec;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);

my ($sasl_bootstrap, $password) = sasl_acl_broker();

my $prefix = "t055.$$.";
my ($hidden, $readonly, $open) = map { "$prefix$_" } qw(Hidden ReadOnly Open);
kafka_admin('topics', '--create', '--topic', $_, '--partitions', '1') for ($hidden, $readonly, $open);
# With an ACL on a topic, what no ACL allows is denied: user evbus may not
# even Describe Hidden; on ReadOnly it may Describe, not Write.
kafka_admin('acls', '--add', '--deny-principal', 'User:evbus', '--operation', 'Write', '--topic', $_)
  for ($hidden, $readonly);
kafka_admin('acls', '--add', '--allow-principal', 'User:evbus', '--operation', 'Describe',
	'--topic', $readonly);

my $dir = File::Spec->rel2abs(PostgreSQL::Test::Utils::tempdir());
my $file = "$dir/kafka.properties";
write_kafka_properties($file, sasl_properties($password));

my $node = new_node(
	'acl',
	conf => [
		"evbus.brokers = '$sasl_bootstrap'",
		"evbus.kafka_config_file = '$file'",
		"evbus.topic_prefix = '$prefix'"
	]);
$node->safe_psql('postgres', 'CREATE EXTENSION evbus');
my $worker = $node->safe_psql('postgres', 'SELECT evbus.publisher_pid()');

my $ids = $node->safe_psql(
	'postgres', q{
SELECT evbus.publish('Open', '{"n": 1}', 'k');
SELECT evbus.publish('Hidden', '{"n": 2}', 'k');
SELECT evbus.publish('Open', '{"n": 3}', 'k');
SELECT evbus.publish('ReadOnly', '{"n": 4}', 'r');
SELECT evbus.publish('Open', '{"n": 5}', 'other');
});
my (undef, $hidden_id, undef, $readonly_id) = split /\n/, $ids;

ok($node->poll_query_until('postgres', 'SELECT count(*) = 0 FROM evbus.outbox'),
	'outbox drained: nothing stuck behind the refused events');
is( $node->safe_psql('postgres',
		q{SELECT message_id, direction, topic, event_key, payload->>'n', error_code FROM evbus.dead_letters ORDER BY payload->>'n'}
	),
	"$hidden_id|publish|$hidden|k|2|TOPIC_AUTHORIZATION_FAILED\n"
	  . "$readonly_id|publish|$readonly|r|4|TOPIC_AUTHORIZATION_FAILED",
	'both refused events are dead letters with TOPIC_AUTHORIZATION_FAILED');
is($node->safe_psql('postgres', q{SELECT count(*) FROM evbus.dead_letters WHERE error_message ILIKE '%authorization failed%'}),
	'2', 'with a readable error message');

# per-key order only: a key's later event may wait for its earlier one
# (test 260_inflight_refusal_order.pl), so other keys can pass it.  The
# outbox is empty, so every event is in Kafka: one read to the end of the
# topic, first arrivals only (the producer rebuilt after the refusal may
# have produced again what it had in flight: the same message id twice,
# which consumers de-duplicate)
my %seen;
my @msgs = grep { !$seen{ $_->{headers}{'cap-msg-id'} }++ } kcat_consume($open, 1000, 0);
is_deeply([ map { "$_->{key}:$_->{payload}" } grep { $_->{key} eq 'k' } @msgs ],
	[ 'k:{"n":1}', 'k:{"n":3}' ],
	'the events of another topic, of the same key, were published in order');
is_deeply([ sort map { "$_->{key}:$_->{payload}" } @msgs ],
	[ 'k:{"n":1}', 'k:{"n":3}', 'other:{"n":5}' ],
	'and those of another key too');

my $stats_sql =
  "SELECT topic, staged, published, dead, pending FROM evbus.stats WHERE topic LIKE '$prefix%' ORDER BY topic";
is($node->safe_psql('postgres', $stats_sql),
	"$hidden|1|0|1|0\n$open|3|3|0|0\n$readonly|1|0|1|0",
	'evbus.stats counts the dead letters');

# the keys of the dead events are not held back by them (an event refused
# in a batch is produced again alone, and librdkafka, which has marked the
# topic unauthorized by then, refuses that at once: the key must be
# released on that path too)
$node->safe_psql('postgres',
	q{SELECT evbus.publish('Open', '{"n": 6}', 'k'); SELECT evbus.publish('Open', '{"n": 7}', 'r');});
ok(wait_for_sql($node, 'postgres', 'SELECT count(*) = 0 FROM evbus.outbox', 't', 30),
	'later events of the keys of the dead events are published');

# the ACLs are removed; once the broker has applied that, the operator
# requeues the events
kafka_admin('acls', '--remove', '--force', '--topic', $_) for ($hidden, $readonly);
ok(wait_until_readable($hidden) && wait_until_readable($readonly),
	'the broker applies the removal of the ACLs');
is($node->safe_psql('postgres', "SELECT evbus.retry('$hidden_id') AND evbus.retry('$readonly_id')"),
	't', 'evbus.retry() finds both dead letters');
is($node->safe_psql('postgres', 'SELECT count(*) FROM evbus.dead_letters'), '0', 'no dead letter left');

ok(wait_for_sql($node, 'postgres', 'SELECT count(*) = 0 FROM evbus.outbox', 't', 30),
	'requeued events drained');
@msgs = (kcat_consume($hidden, 1, 10), kcat_consume($readonly, 1, 10));
is_deeply([ map { $_->{headers}{'cap-msg-id'} } @msgs ], [ $hidden_id, $readonly_id ],
	'the requeued events are in Kafka with their original message ids');
is($node->safe_psql('postgres', $stats_sql),
	"$hidden|1|1|0|0\n$open|5|5|0|0\n$readonly|1|1|0|0",
	'evbus.stats after the retries');

is($node->safe_psql('postgres', 'SELECT evbus.publisher_pid()'), $worker, 'the worker kept running');
$node->stop;
my $log = slurp_file($node->logfile);
unlike($log, qr/fatal Kafka producer error/,
	'the idempotent producer never failed fatally but for the refused batch');
like($log, qr/the broker refused a record batch, so the Kafka producer stops: .*Topic authorization failed/,
	'the Write refusal stopped the producer, which was rebuilt');

done_testing();

# Poll until user evbus, on the SASL listener, may read $topic.  Reading is
# not what the test restricted, but while any ACL is left on the topic no
# other operation is allowed, so this says that the broker applied the
# removal of them all.
sub wait_until_readable
{
	my ($topic) = @_;
	my $deadline = time() + 60;
	while (time() < $deadline)
	{
		return 1
		  if system("timeout 20 kcat -F '$file' -b '$sasl_bootstrap' -C -t '$topic' -o beginning -e -q >/dev/null 2>&1") == 0;
		sleep 0.2;
	}
	diag "user evbus still may not read topic $topic";
	return 0;
}

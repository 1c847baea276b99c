# 240_idle_new_topic.pl - a database subscribed to topics that do not
# exist yet goes idle, and the creation of such a topic wakes its
# consumer, wherever the topic's first message goes.
#
# The launcher watches the first partition of a subscribed topic that the
# consumer holds no partition of.  A message in another partition used to
# wait until the consumer woke to look again, five idle timeouts later
# (five minutes with the default evbus.idle_timeout): a topic created by
# its first event, whose key sent it to the third partition, was handled
# that late.  Now a topic that Kafka said does not exist wakes the
# consumer as soon as it is created:
#  1. a topic created empty (by an administrator) starts the consumer;
#  2. a topic created by the first event published to it, into a partition
#     other than the first, has it handled at once, and exactly once.
# Both must happen well within the five idle timeouts of the old wake
# (30 s here), in 15 s.
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);

kafka_bootstrap();
my $prefix = "t240.$$.";
my $idle_s = 6;
# the old wake came five idle timeouts after the consumer went idle
my $bound_s = 15;
my $node = new_node(
	'idle_new_topic',
	kafka => 1,
	conf => [ "evbus.topic_prefix = '$prefix'", "evbus.idle_timeout = '${idle_s}s'" ]);

# shop waits for topic Created, mart for topic Auto; sender publishes
new_shop($node, 'Created', 'shop');
new_shop($node, 'Auto', 'mart');
$node->safe_psql('postgres', 'CREATE DATABASE sender');
$node->safe_psql('sender', 'CREATE EXTENSION evbus');

# consumers($db): how many consumer workers database $db has
sub consumers
{
	my ($db) = @_;
	return qq{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'evbus consumer' AND datname = '$db'};
}

for my $db ('shop', 'mart')
{
	ok(wait_for_sql($node, 'postgres', consumers($db), '0', 60),
		"$db: the consumer goes idle after evbus.idle_timeout ($idle_s s)");
}
ok($node->log_contains(qr/group "mart": Subscribed topic not available: \Q${prefix}\EAuto/),
	'having been told that the topic does not exist');

# 1. a topic created empty (by an administrator) wakes shop's consumer;
# 2. the first event published to Auto creates it, and goes to the third
#    of its 3 partitions (the key's): mart handles it
my $t0 = time;
kafka_admin('topics', '--create', '--topic', "${prefix}Created", '--partitions', '3');
$node->safe_psql('sender', q{SELECT evbus.publish('Auto', '{"n": 1}', 'k')});
ok(wait_for_sql($node, 'postgres', consumers('shop'), '1', $bound_s),
	"the creation of a subscribed topic starts the idle consumer within $bound_s s");
note(sprintf('shop woken %.1f s after the topic was created', time - $t0));
ok(wait_for_sql($node, 'mart', 'SELECT count(*) FROM received', '1', $t0 + $bound_s - time),
	"the first event of a topic created by it is handled within $bound_s s");
note(sprintf('mart handled it %.1f s after its COMMIT', time - $t0));
is($node->safe_psql('mart', 'SELECT kafka_partition FROM evbus.inbox'),
	'2', 'it went to a partition the launcher does not watch');
sleep 2;
is($node->safe_psql('mart', 'SELECT count(*) FROM received'), '1', 'and was handled once');

$node->stop;
done_testing();

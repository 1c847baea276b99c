# 235_publisher_stop.pl - a publisher asked to stop (pg_terminate_backend,
# a server restart, CREATE DATABASE ... TEMPLATE of its database, which
# stops its workers) first records the events Kafka acknowledged: the next
# start publishes none of them again.
#
# With evbus.publish_linger = 1s, the publisher serves delivery reports up
# to a second after they arrive and records them up to a second later, so
# a stop right after the consumer handled an event comes before its
# recording.  An earlier version exited without recording: the event
# stayed in the outbox, the next start produced it again (the same message
# id twice in Kafka), and a copy made with CREATE DATABASE ... TEMPLATE
# held it as unpublished.
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);

kafka_bootstrap();
my $prefix = "t235.$$.";
my $topic = "${prefix}Stopped";
kafka_admin('topics', '--create', '--topic', $topic, '--partitions', '1');
my $node = new_node(
	'publisher_stop',
	kafka => 1,
	conf => [ "evbus.topic_prefix = '$prefix'", "evbus.publish_linger = '1s'" ]);
new_shop($node, 'Stopped');

my $n = 0;

# publish_handled(): publish the next event; true once it is handled
sub publish_handled
{
	$n++;
	$node->safe_psql('shop', "SELECT evbus.publish('Stopped', '{\"n\": $n}', 'k')");
	return wait_for_sql($node, 'shop', "SELECT count(*) = $n FROM received");
}

sub publisher_pid
{
	return $node->safe_psql('shop', 'SELECT evbus.publisher_pid()');
}

# the publisher's first start is behind us: its pid is known
ok(publish_handled(), 'event 1 handled');

ok(publish_handled(), 'event 2 handled');
my $pid = publisher_pid();
$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)");
my $deadline = time() + 10;
sleep 0.1 while kill(0, $pid) && time() < $deadline;
ok(!kill(0, $pid), 'pg_terminate_backend stops the publisher within seconds');
is($node->safe_psql('shop', 'SELECT count(*) FROM evbus.outbox'),
	'0', 'it recorded the event Kafka acknowledged before it exited');

ok(publish_handled(), 'event 3 handled');
$node->restart;
is($node->safe_psql('shop', 'SELECT count(*) FROM evbus.outbox'),
	'0', 'a server restart: recorded before the publisher exited');

ok(publish_handled(), 'event 4 handled');
$node->safe_psql('postgres', 'CREATE DATABASE shop_copy TEMPLATE shop');
is($node->safe_psql('shop_copy', 'SELECT count(*) FROM evbus.outbox'),
	'0', 'CREATE DATABASE ... TEMPLATE: the copy holds no event as unpublished');

# every publisher started since has run: none produced an event again
ok(publish_handled(), 'event 5 handled');
my @msgs = kcat_consume($topic, $n + 1, 10);
is(scalar(@msgs), $n, "Kafka holds each of the $n events once");
my %ids = map { $_->{headers}{'cap-msg-id'} => 1 } @msgs;
is(scalar(keys %ids), $n, 'with distinct message ids');

done_testing();

# 251_consumer_groups.pl - evbus.consumer_groups keeps a database's
# subscriptions out of the consumer groups of other databases.
#
# Consumer groups are Kafka's, not a database's: a role that may subscribe
# in database "other" can name the group of database "shop", and other's
# consumer then takes a share of shop's partitions, whose messages are
# handled in other and never in shop.  A superuser sets
# evbus.consumer_groups per database (ALTER DATABASE ... SET): subscribing
# in a group it does not list is refused (42501), the role cannot change
# the setting, and the consumer starts again by itself within seconds of
# the change and then joins no such group, made before or not (a WARNING
# says so), so that shop gets its partitions back and handles every
# message.
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);

kafka_bootstrap();
my $prefix = "t251.$$.";
kafka_admin('topics', '--create', '--topic', "${prefix}Order", '--partitions', '3');
my $node = new_node('groups', kafka => 1, conf => ["evbus.topic_prefix = '$prefix'"]);

# shop in its own group, other with a subscription in shop's group
new_shop($node, 'Order');
new_shop($node, 'Order', 'other', 'shop');

my $published = 0;
sub publish
{
	my $to = $published + 30;
	$node->safe_psql('shop',
		qq{SELECT count(evbus.publish('Order', jsonb_build_object('n', g), 'key-' || g))
		   FROM generate_series($published + 1, $to) g});
	$published = $to;
	return;
}
sub received { return $node->safe_psql($_[0], $_[1] // 'SELECT count(*) FROM received'); }

# Without the setting, other takes a share of shop's group.
my $hijacked = 0;
for (1 .. 6)
{
	publish();
	my $deadline = time + 30;
	sleep 0.2 while received('shop') + received('other') < $published && time < $deadline;
	$hijacked = received('other');
	last if $hijacked > 0;
}
cmp_ok($hijacked, '>', 0,
	"without evbus.consumer_groups, other's consumer handles messages of shop's group ($hijacked)");

# A setting for superusers only, checked as it is made.
my $log_offset = -s $node->logfile;
my ($ret, $out, $err) =
  $node->psql('other', q{ALTER DATABASE other SET evbus.consumer_groups = 'shop,no;place'});
like($err, qr/invalid value for parameter "evbus.consumer_groups"/, 'a bad group name is refused');
$node->safe_psql('postgres', q{ALTER DATABASE other SET evbus.consumer_groups = 'other, other.audit'});
is( sqlstate_of($node, 'other', q{SET ROLE evbus_app; SET evbus.consumer_groups = ''}),
	'42501', 'a subscriber cannot change evbus.consumer_groups');
is( sqlstate_of($node, 'other', q{SET ROLE evbus_app; ALTER DATABASE other SET evbus.consumer_groups = ''}),
	'42501', 'nor set it for the database');

# subscribing in a group the setting does not list is refused
($ret, $out, $err) = $node->psql('other',
	q{SET ROLE evbus_app; SELECT evbus.subscribe('Order', 'record_received(jsonb)', 'shop')});
like(
	$err,
	qr/consumer group "shop" is not allowed in database "other"/,
	'subscribing in shop\'s group is refused in other');
is( sqlstate_of($node, 'other',
		q{SET ROLE evbus_app; SELECT evbus.subscribe('Order', 'record_received(jsonb)', 'shop')}),
	'42501', 'with SQLSTATE 42501');

# its own group is allowed
$node->safe_psql(
	'other', q{SET ROLE evbus_app;
CREATE TABLE own_received (payload jsonb);
CREATE FUNCTION record_own(payload jsonb) RETURNS void LANGUAGE sql
	AS $$ INSERT INTO public.own_received VALUES (payload) $$;
SELECT evbus.subscribe('Order', 'record_own(jsonb)', 'other');
});
pass('subscribing in a group the setting lists works');

# The consumer starts again by itself once the setting changed (a session
# takes its database's settings as it starts), leaves shop's group, saying
# so; shop takes its partitions back and handles everything from now on.
ok( $node->wait_for_log(
		qr/LOG:  evbus: consumer for database "other" starts again: the database's evbus.consumer_groups changed/,
		$log_offset),
	'other\'s consumer starts again by itself when the database\'s setting changes');
ok( $node->wait_for_log(
		qr/WARNING:  evbus: consumer does not join group "shop": evbus.consumer_groups does not list it/,
		$log_offset),
	'the consumer says it does not join shop\'s group');
my $shop_before = received('shop');
my $other_before = received('other');
my $first = $published + 1;
publish();
ok( wait_for_sql(
		$node, 'shop',
		qq{SELECT count(DISTINCT payload->>'n') FROM received WHERE (payload->>'n')::int >= $first},
		'30', 120),
	'shop handles every message published after the restart');
ok( wait_for_sql($node, 'other', q{SELECT count(*) FROM own_received WHERE (payload->>'n')::int >= }
		  . $first, '30', 120),
	'other handles them in its own group');
sleep 2;
is(received('other'), $other_before, 'other handled none of shop\'s group since');

# the subscription made before the setting can still be removed
is( $node->safe_psql('other',
		q{SET ROLE evbus_app; SELECT evbus.unsubscribe('Order', 'record_received(jsonb)', 'shop')}),
	't', 'the refused group\'s subscription can be unsubscribed');

$node->stop;
done_testing();

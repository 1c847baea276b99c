# 245_revoke_behind.pl - a member revoked before it fetched anything does
# not move its group's Kafka offset back.
#
# Two databases share a consumer group on a topic of one partition.  Beta
# handles the first two events and leaves (its stored offset stays 2);
# alpha handles the next 31 (Kafka's offset 33) and leaves; beta joins
# again and takes the partition over at 33, Kafka's.  Nothing comes, beta
# goes idle and is revoked before it fetched anything.  It used to commit
# its own stored offset, 2, on revocation: Kafka's offset went back, and
# beta's next consumer handled again, in its database, the 31 events alpha
# had handled.  test 241_spare_member.pl met this by timing, about one run
# in three; here each step waits for the one before.
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;

kafka_bootstrap();
my $prefix = "t245.$$.";
my $group = "g245_$$";
kafka_admin('topics', '--create', '--topic', "${prefix}Shared", '--partitions', '1');
my $node = new_node(
	'revoke_behind',
	kafka => 1,
	conf => [ "evbus.topic_prefix = '$prefix'", "evbus.idle_timeout = '2s'" ]);
$node->safe_psql('postgres', 'CREATE EXTENSION evbus');

my $n = 0;

# publish($count): $count events of Shared, from database postgres
sub publish
{
	my ($count) = @_;
	my $from = $n + 1;
	$n += $count;
	$node->safe_psql('postgres',
		"SELECT evbus.publish('Shared', pg_catalog.jsonb_build_object('n', i), 'k' || i) FROM generate_series($from, $n) i"
	);
	return;
}

sub received
{
	my ($db) = @_;
	return $node->safe_psql($db, 'SELECT count(*) FROM received');
}

sub set_subscribed
{
	my ($db, $on) = @_;
	my $fn = $on ? 'subscribe' : 'unsubscribe';
	$node->safe_psql($db,
		as_subscriber($node, $db) . "SELECT evbus.$fn('Shared', 'record_received(jsonb)', '$group')");
	return;
}

# beta alone: events 1 and 2, then beta leaves the group
new_shop($node, 'Shared', 'beta', $group);
publish(2);
ok(wait_for_sql($node, 'beta', 'SELECT count(*) FROM received', '2'), 'beta handles the first two events');
set_subscribed('beta', 0);

# alpha alone: the next 31, then alpha leaves (Kafka's offset: 33)
new_shop($node, 'Shared', 'alpha', $group);
publish(31);
ok(wait_for_sql($node, 'alpha', 'SELECT count(*) FROM received', '31'), 'alpha handles the next 31');
set_subscribed('alpha', 0);

# beta again: it takes the partition over and goes idle before anything comes
my $offset = -s $node->logfile;
set_subscribed('beta', 1);
ok( wait_for_sql(
		$node, 'beta',
		qq{SELECT lag IS NOT NULL FROM evbus.stats WHERE side = 'consume' AND group_name = '$group'},
		't', 60),
	'beta holds the partition again');
ok($node->wait_for_log(qr/consumer for database "beta" exits: nothing to handle/, $offset),
	'beta goes idle without fetching anything');

# the next event wakes beta, which starts where alpha left off
publish(1);
ok( wait_for_sql(
		$node, 'beta', qq{SELECT count(*) FROM received WHERE payload->>'n' = '$n'}, '1', 60),
	'beta handles the next event');
is(received('beta'), '3', 'beta handled its first two and the last event, not alpha\'s again');
is(received('alpha'), '31', 'alpha handled the 31 in between');
is( $node->safe_psql(
		'beta', q{SELECT count(*) FROM (SELECT payload->>'n' FROM received GROUP BY 1 HAVING count(*) > 1) d}),
	'0', 'beta handled no event twice');

$node->stop;
done_testing();

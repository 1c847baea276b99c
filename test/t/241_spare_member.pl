# 241_spare_member.pl - a spare member of a consumer group stays.
#
# Two databases share a consumer group (evbus.subscribe's group) on a
# topic of one partition: one holds the partition, the other is a spare
# member.  The spare used to go idle after two idle timeouts, was woken at
# once by the launcher's watch of the partition (from its start: any
# message there), joined again, rebalanced the group, and went idle
# again: a rebalance every few seconds with evbus.idle_timeout = 2s, every
# two minutes with the default, for as long as the other member ran.  Now
# the spare stays while events flow (a LOG line says why), every event is
# handled once, and when the member that holds the partition leaves the
# group, the spare takes it over.
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep);

kafka_bootstrap();
my $prefix = "t241.$$.";
my $group = "g241_$$";
kafka_admin('topics', '--create', '--topic', "${prefix}Shared", '--partitions', '1');
my $node = new_node(
	'spare',
	kafka => 1,
	conf => [ "evbus.topic_prefix = '$prefix'", "evbus.idle_timeout = '2s'" ]);
new_shop($node, 'Shared', 'alpha', $group);
new_shop($node, 'Shared', 'beta', $group);

my $n = 0;

sub publish
{
	$n++;
	$node->safe_psql('alpha', "SELECT evbus.publish('Shared', '{\"n\": $n}', 'k$n')");
}

sub received
{
	my ($db) = @_;
	return $node->safe_psql($db, 'SELECT count(*) FROM received');
}

# handled(): every event so far handled once, in one database or the other
sub handled
{
	for (1 .. 300)
	{
		return 1 if received('alpha') + received('beta') == $n;
		sleep 0.2;
	}
	diag('alpha ' . received('alpha') . ', beta ' . received('beta') . ", published $n");
	return 0;
}

publish();
ok(handled(), 'the group handles the first event');

# events for 16 s (eight idle timeouts): neither consumer leaves
my $offset = -s $node->logfile;
for (1 .. 32)
{
	publish();
	sleep 0.5;
}
ok(handled(), 'the group handles every event');
my $log = substr(slurp_file($node->logfile), $offset);
my $exits = () = $log =~ /consumer for database "(?:alpha|beta)" exits/g;
is($exits, 0, 'while events flow, no consumer of the group goes idle (and rebalances it on its return)');
ok($node->wait_for_log(qr/consumer stays while idle: another member holds every partition of topic "\Q${prefix}\EShared" of group "$group"/, $offset),
	'the spare says in the log why it stays');
my ($active, $spare) = received('alpha') > received('beta') ? ('alpha', 'beta') : ('beta', 'alpha');
my $spare_before = received($spare);
is( $node->safe_psql('postgres', q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'evbus consumer'}),
	'2', 'both consumers run');

# the member that holds the partition leaves the group: the spare takes over
is( $node->safe_psql(
		$active, as_subscriber($node, $active) . qq{SELECT evbus.unsubscribe('Shared', 'record_received(jsonb)', '$group')}),
	't', "the member that handled the events unsubscribes");
ok( wait_for_sql(
		$node, $spare,
		qq{SELECT lag IS NOT NULL FROM evbus.stats WHERE side = 'consume' AND group_name = '$group'},
		't', 60),
	'once the other member leaves the group, the spare holds the partition');
publish();
ok(wait_for_sql($node, $spare, q{SELECT count(*) FROM received WHERE payload->>'n' = '} . $n . q{'}, '1', 60),
	'and handles the next event');
ok(handled(), 'and every event is handled once');

$node->stop;
done_testing();

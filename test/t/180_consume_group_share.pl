# 180_consume_group_share.pl - two databases in one consumer group share
# the partitions of a 4-partition topic, with no event handled twice across
# them and none lost.
#  1. "east" subscribes alone and handles everything published so far;
#  2. "west" subscribes in the same group (group_name argument) while
#     events keep coming: it takes over part of the partitions (it starts
#     from the offsets east committed to Kafka, having none stored);
#  3. west unsubscribes: east takes all partitions back (its own stored
#     offsets for the partitions west had are stale: it must start from
#     Kafka's committed offsets) and handles the rest.
# Each database records the events it handled in a table without a unique
# constraint; the union of both must be every event exactly once.
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);

kafka_bootstrap();
my $prefix = "t180.$$.";
my $group = "t180_$$";
my $topic = "${prefix}Shared";
kafka_admin('topics', '--create', '--topic', $topic, '--partitions', '4');

my $node = new_node(
	'group_share',
	kafka => 1,
	conf => [
		"evbus.topic_prefix = '$prefix'",
		"evbus.retry_interval = '100ms'",
		"evbus.retry_max_interval = '500ms'"
	]);
for my $db (qw(src east west))
{
	$node->safe_psql('postgres', "CREATE DATABASE $db");
	$node->safe_psql($db, 'CREATE EXTENSION evbus');
}

for my $db (qw(east west))
{
	$node->safe_psql(
		$db, as_subscriber($node, $db) . qq{
CREATE TABLE handled (n int, message_id uuid, kafka_partition int, at timestamptz DEFAULT clock_timestamp());
CREATE PROCEDURE on_shared(payload jsonb, headers jsonb) LANGUAGE plpgsql AS \$\$
BEGIN
	INSERT INTO public.handled (n, message_id, kafka_partition)
	VALUES ((payload->>'n')::int, (headers->>'cap-msg-id')::uuid, (headers->>'evbus-partition')::int);
END \$\$;
});
}

my $published = 0;
sub publish
{
	my ($count) = @_;
	my ($from, $to) = ($published + 1, $published + $count);
	$node->safe_psql('src',
		qq{SELECT count(evbus.publish('Shared', jsonb_build_object('n', g), 'key-' || g)) FROM generate_series($from, $to) g});
	$published = $to;
}
sub count_in { return $node->safe_psql($_[0], $_[1] // 'SELECT count(*) FROM handled'); }
sub total { return count_in('east') + count_in('west'); }

# Every event 1..$published handled exactly once across both databases.
sub check_union
{
	my ($label) = @_;
	my %seen;
	my $dups = 0;
	for my $db (qw(east west))
	{
		for my $n (split /\n/, count_in($db, 'SELECT n FROM handled'))
		{
			$dups++ if $seen{$n}++;
		}
	}
	my @missing = grep { !$seen{$_} } 1 .. $published;
	is($dups, 0, "$label: no event handled twice across the two databases");
	is(scalar @missing, 0, "$label: no event missing") or diag "missing: @missing[0 .. ($#missing < 19 ? $#missing : 19)]";
}

sub wait_total
{
	my ($label) = @_;
	my $deadline = time() + 60;
	sleep 0.3 while total() < $published && time() < $deadline;
	is(total(), $published, "$label: $published handled in all");
	sleep 2;    # anything handled twice would show up now
	check_union($label);
}

# --- 1. east alone ------------------------------------------------------------------
$node->safe_psql('east', qq{SET ROLE evbus_app; SELECT evbus.subscribe('Shared', 'on_shared(jsonb,jsonb)', '$group')});
publish(100);
ok(wait_for_sql($node, 'east', 'SELECT count(*) FROM handled', '100', 60), 'east alone handles all 100');
is( count_in('east', 'SELECT count(DISTINCT kafka_partition) FROM handled'),
	'4', 'east consumed all 4 partitions');

# --- 2. west joins while events keep coming ------------------------------------------
$node->safe_psql('west', qq{SET ROLE evbus_app; SELECT evbus.subscribe('Shared', 'on_shared(jsonb,jsonb)', '$group')});
my $t0 = time();
# publish 10 every 0.2 s until west has handled some, then 20 batches more
my $after_join = 0;
while (time() - $t0 < 60)
{
	publish(10);
	sleep 0.2;
	$after_join++ if count_in('west') > 0;
	last if $after_join >= 20;
}
note sprintf('west handled its first event within %.1f s of subscribing', time() - $t0);
cmp_ok(count_in('west'), '>', 0, 'west took over part of the partitions');
wait_total('after west joined');
my $west_parts = count_in('west', 'SELECT string_agg(DISTINCT kafka_partition::text, \',\') FROM handled');
my $east_parts_late = count_in('east',
	qq{SELECT string_agg(DISTINCT kafka_partition::text, ',') FROM handled WHERE n > $published - 100});
note "west handled partitions $west_parts; east, of the last 100 events: $east_parts_late";
is( count_in('east', qq{SELECT count(*) > 0 FROM handled WHERE n > $published - 100}),
	't', 'east still handles part of the new events: the partitions are shared');
# once both are settled, each partition is handled by one database only
my %owner;
my $overlap = 0;
for my $db (qw(east west))
{
	for my $p (split /\n/, count_in($db, qq{SELECT DISTINCT kafka_partition FROM handled WHERE n > $published - 100}))
	{
		$overlap++ if $owner{$p} && $owner{$p} ne $db;
		$owner{$p} = $db;
	}
}
is($overlap, 0, 'the last 100 events: each partition handled by one database');

# --- 3. west leaves, east takes everything back ---------------------------------------
is($node->safe_psql('west', qq{SET ROLE evbus_app; SELECT evbus.unsubscribe('Shared', 'on_shared(jsonb,jsonb)', '$group')}),
	't', 'west unsubscribes');
my $west_before = count_in('west');
$t0 = time();
for (1 .. 20)
{
	publish(10);
	sleep 0.2;
}
wait_total('after west left');
note sprintf('settled %.1f s after west left', time() - $t0);
my $late = $published - 50;
is(count_in('west', "SELECT count(*) FROM handled WHERE n > $late"), '0',
	'west, unsubscribed, handles nothing any more');
is(count_in('east', "SELECT count(DISTINCT kafka_partition) FROM handled WHERE n > $late"), '4',
	'east has all 4 partitions again');

# the inboxes agree with the handlers
is( count_in('east', "SELECT count(*) FROM evbus.inbox WHERE group_name = '$group' AND state = 'handled'")
	  + count_in('west', "SELECT count(*) FROM evbus.inbox WHERE group_name = '$group' AND state = 'handled'"),
	$published, 'the two inboxes together hold every event once');

ok(!$node->log_contains(qr/went back from offset/),
	'the rebalances are not taken for a partition whose log began again');

$node->stop;
done_testing();

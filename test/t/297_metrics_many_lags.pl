# 297_metrics_many_lags.pl - evbus.metrics() has the consumer lag of
# every (group, topic) a database reads, however many: the lags are in a
# pool all databases share.  Before, each database kept 16 and the series
# of the others were missing.
#
# Database postgres subscribes one handler to 20 integration events (20
# topics, one group), database other to 3 in a group whose name is 200
# characters long; one event of each is published and handled.  Then
# evbus.metrics() has 20 evbus_consumer_lag series for postgres and 3 for
# other, each 0, each under its own database and its whole group name
# (the first 63 characters before), and evbus.stats the same 20 lags of
# 0.
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;

kafka_bootstrap();
my $prefix = "t297.$$.";
my $group = "t297_$$";
my $node = new_node(
	'metrics_many_lags',
	kafka => 1,
	conf => [ "evbus.topic_prefix = '$prefix'", "evbus.group_name = '$group'" ]);

my $long_group = "t297_long_$$" . ('g' x 200);
$long_group = substr($long_group, 0, 200);
my %group_of = (postgres => $group, other => $long_group);
my %events = (
	postgres => [ map { sprintf('Many%02d', $_) } 1 .. 20 ],
	other => [ map { sprintf('Other%02d', $_) } 1 .. 3 ]);
$node->safe_psql('postgres', 'CREATE DATABASE other');
for my $db (qw(postgres other))
{
	my $n = scalar @{ $events{$db} };
	$node->safe_psql($db, 'CREATE EXTENSION evbus');
	kafka_admin('topics', '--create', '--topic', "${prefix}$_", '--partitions', '1',
		'--replication-factor', '1')
	  for @{ $events{$db} };
	my $subscribe = join("\n",
		map { "SELECT evbus.subscribe('$_', 'record(jsonb, jsonb)', '$group_of{$db}');" }
		  @{ $events{$db} });
	my $publish = join("\n",
		map { "SELECT evbus.publish('$_', '{\"n\": 1}');" } @{ $events{$db} });
	$node->safe_psql(
		$db, as_subscriber($node, $db) . qq{
CREATE TABLE received (topic text);
CREATE PROCEDURE record(payload jsonb, headers jsonb) LANGUAGE sql
	AS \$\$ INSERT INTO public.received VALUES (headers->>'evbus-topic') \$\$;
$subscribe
});
	$node->safe_psql($db, $publish);
	ok(wait_for_sql($node, $db, 'SELECT count(DISTINCT topic) FROM received', $n, 90),
		"$db: one event of each of its $n topics handled");
}

# the consumers report their lags every 5 s
for my $db (qw(postgres other))
{
	my $n = scalar @{ $events{$db} };
	ok( wait_for_sql(
			$node, 'postgres', qq{SELECT count(*) FROM evbus.metrics()
			WHERE metric = 'evbus_consumer_lag' AND database = '$db'
			  AND group_name = '$group_of{$db}' AND value = 0}, $n, 30),
		"evbus.metrics() has the lag of each of the $n topics of $db, 0, under its group");
	is( $node->safe_psql(
			'postgres', qq{SELECT string_agg(topic, ',' ORDER BY topic) FROM evbus.metrics()
			WHERE metric = 'evbus_consumer_lag' AND database = '$db'}),
		join(',', map { "${prefix}$_" } sort @{ $events{$db} }),
		"$db: a lag series per topic it reads, of its own topics only");
}
is( $node->safe_psql(
		'postgres', q{SELECT count(*) FROM evbus.stats WHERE side = 'consume' AND lag = 0}),
	'20', 'evbus.stats has the same 20 lags');

$node->stop;
done_testing();

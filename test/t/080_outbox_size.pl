# 080_outbox_size.pl - after 1,000,000 events are published, the outbox's
# size returns to near empty without VACUUM FULL (the table staging no
# longer writes to is truncated once empty), and the worker never holds an
# old snapshot while it publishes.
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);

kafka_bootstrap();
my $n = $ENV{EVBUS_TEST_OUTBOX_EVENTS} || 1000000;
my $prefix = "t080.$$.";
my $node = new_node('size', kafka => 1,
	conf => [ "evbus.topic_prefix = '$prefix'", "evbus.outbox_rotation = '5s'",
		'shared_buffers = 256MB', 'max_wal_size = 4GB' ]);
$node->safe_psql('postgres', 'CREATE EXTENSION evbus');

my $size_sql = q{SELECT pg_total_relation_size('evbus.outbox_0') + pg_total_relation_size('evbus.outbox_1')
	+ pg_total_relation_size('evbus.outbox_published_0') + pg_total_relation_size('evbus.outbox_published_1')};

# stage with publishing paused, in transactions of 100,000
$node->safe_psql('postgres', q{ALTER SYSTEM SET evbus.brokers = ''; SELECT pg_reload_conf()});
for (my $i = 0; $i < $n; $i += 100000)
{
	my $m = $n - $i < 100000 ? $n - $i : 100000;
	$node->safe_psql('postgres',
		qq{SELECT count(evbus.publish('Bulk', jsonb_build_object('seq', g, 'pad', repeat('p', 100)), 'k' || (g % 1000)))
		     FROM generate_series($i + 1, $i + $m) g});
}
my $full = $node->safe_psql('postgres', $size_sql);
note sprintf('outbox holds %d events in %.1f MB', $n, $full / 1048576);

my $t0 = time();
$node->safe_psql('postgres', q{ALTER SYSTEM RESET evbus.brokers; SELECT pg_reload_conf()});
my $max_xmin_age = 0;
while ($node->safe_psql('postgres', 'SELECT count(*) FROM evbus.outbox') > 0)
{
	my $age = $node->safe_psql('postgres',
		q{SELECT coalesce(max(age(backend_xmin)), 0) FROM pg_stat_activity WHERE backend_type = 'evbus publisher'});
	$max_xmin_age = $age if $age > $max_xmin_age;
	last if time() - $t0 > 600;
	sleep 0.2;
}
my $secs = time() - $t0;
is($node->safe_psql('postgres', 'SELECT count(*) FROM evbus.outbox'), '0', "all $n events published");
note sprintf('drained %d events in %.1f s (%.0f events/s, including producer start-up)', $n, $secs, $n / $secs);
cmp_ok($max_xmin_age, '<=', 2, "the worker's snapshots stay young while it publishes (max age $max_xmin_age)");
is($node->safe_psql('postgres', "SELECT published FROM evbus.stats WHERE topic = '${prefix}Bulk'"),
	$n, 'evbus.stats: all published');

# wait for both tables to have been rotated out and truncated
ok( $node->poll_query_until('postgres', "SELECT ($size_sql) < 1024 * 1024"),
	'the outbox returns to under 1 MB without VACUUM FULL');
my $empty = $node->safe_psql('postgres', $size_sql);
note sprintf('outbox size: %.1f MB full, %.0f kB after publishing', $full / 1048576, $empty / 1024);

# One event that waits (its deliver_at is 30 s away) among 20,000 that
# do not: it must not keep its table, with the others, on disk.  The
# worker moves it to the other table, with its id, and truncates.
my $wait_msg = $node->safe_psql('postgres',
	q{SELECT evbus.publish('Late', '{"late": true}', 'late', NULL, now() + interval '30 s')});
my $wait_id = $node->safe_psql('postgres', "SELECT id FROM evbus.outbox WHERE message_id = '$wait_msg'");
my $where_sql = qq{SELECT string_agg(t, ',') FROM
	(SELECT 'outbox_0' AS t FROM evbus.outbox_0 WHERE id = $wait_id
	 UNION ALL SELECT 'outbox_1' FROM evbus.outbox_1 WHERE id = $wait_id) s};
my $wait_table = $node->safe_psql('postgres', $where_sql);
my $other_table = $wait_table eq 'outbox_0' ? 'outbox_1' : 'outbox_0';
$node->safe_psql('postgres',
	q{SELECT count(evbus.publish('Bulk', jsonb_build_object('seq', g, 'pad', repeat('p', 100)), 'k' || (g % 1000)))
	    FROM generate_series(1, 20000) g});
ok($node->poll_query_until('postgres', "SELECT count(*) = 1 FROM evbus.outbox"),
	'the 20,000 are published, the waiting event waits');
ok($node->poll_query_until('postgres', $where_sql, $other_table),
	"the waiting event is moved from $wait_table to $other_table, with its id");
is($node->safe_psql('postgres', "SELECT message_id FROM evbus.outbox WHERE id = $wait_id"),
	$wait_msg, 'and its message id');
ok( $node->poll_query_until('postgres',
		"SELECT ($size_sql) < 1024 * 1024 AND (SELECT count(*) = 1 FROM evbus.outbox)"),
	'and the outbox returns to under 1 MB while it waits');
ok($node->poll_query_until('postgres', 'SELECT count(*) = 0 FROM evbus.outbox'),
	'the waiting event is published when due');
my @late = kcat_consume("${prefix}Late", 100, 2);
is_deeply([ map { $_->{headers}{'cap-msg-id'} } @late ], [$wait_msg], 'once, with its message id');
is($node->safe_psql('postgres', q{SELECT count(*) FROM pg_stat_activity WHERE query ILIKE 'vacuum%'}),
	'0', 'no VACUUM involved');

$node->stop;
done_testing();

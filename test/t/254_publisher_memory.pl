# 254_publisher_memory.pl - the worker's memory is bounded by bytes, not by
# rows times payload size: a backlog of 400 events of ~0.9 MB each drains
# to the real broker in claims of at most evbus.batch_max_bytes, with each
# payload held once, and the worker's peak resident memory (VmHWM) stays
# far below the 1.7 GB such a backlog took when one claim held every row
# with two copies of each payload.  Every event arrives.
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $bootstrap = kafka_bootstrap();
my $prefix = "t254.$$.";
my $topic = "${prefix}Large";
my $events = 400;
my $bound_mb = 400;

my $node = new_node('memory', kafka => 1,
	conf => [ "evbus.topic_prefix = '$prefix'", 'evbus.max_message_bytes = 1000000' ]);
$node->safe_psql('postgres', 'CREATE EXTENSION evbus');
ok(wait_for_sql($node, 'postgres', 'SELECT evbus.publisher_pid() IS NOT NULL', 't', 30), 'the worker runs');
my $pid = $node->safe_psql('postgres', 'SELECT evbus.publisher_pid()');

# 400 events of 896,010 bytes of compact JSON, staged in one transaction so
# that they are one backlog (TOAST compresses the repeated text on disk)
$node->safe_psql('postgres', qq{
SELECT count(evbus.publish('Large', jsonb_build_object('blob', repeat(md5(i::text), 28000)), i::text))
  FROM generate_series(1, $events) i});

ok(wait_for_sql($node, 'postgres', 'SELECT count(*) FROM evbus.outbox', '0', 300),
	'the backlog of large events drains');
is($node->safe_psql('postgres', 'SELECT evbus.publisher_pid()'), $pid,
	'by the same worker (never killed for its memory)');

my $status = slurp_file("/proc/$pid/status");
my ($hwm_kb) = $status =~ /^VmHWM:\s+(\d+) kB/m;
my $hwm_mb = int($hwm_kb / 1024);
diag "the worker's VmHWM after $events events of 0.9 MB: $hwm_mb MB";
cmp_ok($hwm_mb, '<', $bound_mb, "the worker's peak memory stays under $bound_mb MB");

is($node->safe_psql('postgres', qq{SELECT published FROM evbus.stats WHERE side = 'publish' AND topic = '$topic'}),
	$events, 'evbus.stats counts every event as published');
my @offsets = `timeout 120 kcat -b $bootstrap -C -t $topic -o beginning -e -q -f '%o\\n'`;
is(scalar @offsets, $events, 'every event is in Kafka');

done_testing();

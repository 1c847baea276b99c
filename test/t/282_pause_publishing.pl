# 282_pause_publishing.pl - evbus.pause_publishing(integration_event)
# keeps the events of that integration event staged in the outbox while
# the others flow; the outbox rotation moves the waiting events from table
# to table and never loses one; evbus.resume_publishing publishes them
# all, and events of the same keys staged right after the resume do not
# overtake them (per-key order, first arrivals).
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);

kafka_bootstrap();
my $prefix = "t282.$$.";
kafka_admin('topics', '--create', '--topic', "${prefix}Held", '--partitions', '2');
kafka_admin('topics', '--create', '--topic', "${prefix}Flowing", '--partitions', '1');

my $node = new_node('pause_publishing', kafka => 1,
	conf => [ "evbus.topic_prefix = '$prefix'", "evbus.outbox_rotation = '1s'" ]);
$node->safe_psql('postgres', 'CREATE EXTENSION evbus');

sub sql { return $node->safe_psql('postgres', $_[0]); }

# stage events seq $from .. $to of Held, keys k0 .. k4
sub stage_held
{
	my ($from, $to) = @_;
	sql(qq{SELECT count(evbus.publish('Held', jsonb_build_object('seq', g), 'k' || (g % 5)))
	         FROM generate_series($from, $to) g});
}

# --- refusals -----------------------------------------------------------------
is(sqlstate_of($node, 'postgres', q{SELECT evbus.pause_publishing('NeverSeen')}), '42704',
	'pausing an integration event this database does not know: 42704');
is(sqlstate_of($node, 'postgres', q{SELECT evbus.pause_publishing(NULL)}), '22004',
	'a NULL integration event: 22004');

# --- paused: its events stay staged, the others flow -------------------------------
stage_held(1, 10);
ok($node->poll_query_until('postgres', q{SELECT count(*) = 0 FROM evbus.outbox}),
	'before the pause, Held is published');
is(sql(q{SELECT evbus.pause_publishing('Held')}), 't', 'pause_publishing returns true');
is(sql(q{SELECT evbus.pause_publishing('Held')}), 'f', 'and false when paused already');
stage_held(11, 70);
sql(q{SELECT evbus.publish('Flowing', jsonb_build_object('seq', g), 'f') FROM generate_series(1, 20) g});
ok($node->poll_query_until('postgres', q{SELECT count(*) = 0 FROM evbus.outbox WHERE integration_event = 'Flowing'}),
	'the other integration event is published');
is(scalar(kcat_consume("${prefix}Flowing", 20, 30)), 20, 'and is in Kafka');
is(sql(q{SELECT count(*) FROM evbus.outbox WHERE integration_event = 'Held'}), '60',
	'the paused events stay staged in the outbox');
is(sql(qq{SELECT staged - published, pending FROM evbus.stats WHERE side = 'publish' AND topic = '${prefix}Held'}),
	'60|60', 'evbus.stats shows them staged and pending');

# --- rotation: the waiting events move from table to table, none lost --------------
# a few waiting events move with the rotation (outbox.c moves up to 100);
# more keep their table, which is truncated only once they are gone
my $where = q{SELECT string_agg(DISTINCT t, ',') FROM
	(SELECT 'outbox_0' AS t FROM evbus.outbox_0 WHERE integration_event = 'Held'
	 UNION ALL SELECT 'outbox_1' FROM evbus.outbox_1 WHERE integration_event = 'Held') s};
# staged across a rotation, they may lie in both tables: the next
# rotation moves them together
ok($node->poll_query_until('postgres', "SELECT ($where) IN ('outbox_0', 'outbox_1')"),
	'the paused events lie in one table');
my $first = sql($where);
my $other = $first eq 'outbox_0' ? 'outbox_1' : 'outbox_0';
ok($node->poll_query_until('postgres', $where, $other), "a rotation moves them from $first to $other");
ok($node->poll_query_until('postgres', $where, $first), "and the next one back to $first");
stage_held(71, 400);
sleep 3;
stage_held(401, 450);
sleep 3;
is(sql(q{SELECT count(*), count(DISTINCT message_id) FROM evbus.outbox WHERE integration_event = 'Held'}),
	'440|440', 'no paused event is lost by the rotations');
my @none = kcat_consume("${prefix}Held", 11, 3);
is(scalar(@none), 10, 'Kafka has only the 10 events published before the pause');

# --- resume: all arrive, in per-key order, before what is staged after -------------
is(sql(q{SELECT evbus.resume_publishing('Held')}), 't', 'resume_publishing returns true');
stage_held(451, 500);
is(sql(q{SELECT evbus.resume_publishing('Held')}), 'f', 'and false when not paused');
ok($node->poll_query_until('postgres', q{SELECT count(*) = 0 FROM evbus.outbox}),
	'after the resume the outbox empties');
my @got = kcat_consume("${prefix}Held", 500, 60);
my ($seen, $dups, $in_order) = first_arrivals_by_key(@got);
is(scalar(keys %$seen), 500, 'all 500 events of Held arrive');
ok($in_order, 'in per-key order: nothing staged after the resume overtook a paused event');
note "$dups duplicates";

$node->stop;
done_testing();

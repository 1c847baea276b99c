# 095_trickle_exactly_once.pl - a steady trickle of small transactions
# from several sessions (pgbench -R) is published exactly once: as many
# messages in Kafka as committed transactions, each cap-msg-id once.
# At a trickle every worker step handles a few events, and the recording of
# delivery reports shares a transaction with the next claim; a version whose
# claim did not see that transaction's own deletes published about 6 % of
# the events twice.  The poll timer is set to an hour, so that a lost wake-up
# (an event left waiting for the timer) makes the outbox never drain; an
# earlier version could lose one when the worker reset its latch after a
# commit had set it, and events then waited for the 1 s timer.
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;

kafka_bootstrap();
my $prefix = "t095.$$.";
my $topic = "${prefix}Trickle";
my $node = new_node('trickle', kafka => 1,
	conf => [ "evbus.topic_prefix = '$prefix'", "evbus.poll_interval = '1h'" ]);
$node->safe_psql('postgres', 'CREATE EXTENSION evbus');

my $script = pgbench_script('095_trickle', <<'SQL');
\set k random(1, 50)
SELECT evbus.publish('Trickle', jsonb_build_object('k', :k::int, 'at', clock_timestamp()), :k::text);
SQL

my ($ok, $committed, $err) =
  run_pgbench($node, $script, '-c', '4', '-j', '2', '-R', '400', '-T', '6');
ok($ok, 'pgbench ran') or diag($err);
ok($committed && $committed > 1000, "pgbench committed $committed transactions");

ok(wait_for_sql($node, 'postgres', 'SELECT count(*) = 0 FROM evbus.outbox', 't', 30),
	'the outbox drains without the poll timer');
# read the whole topic (kcat stops at its end); ask for more than can be there
my @msgs = kcat_consume($topic, $committed + 1000, 5);
my %seen;
$seen{ $_->{headers}{'cap-msg-id'} }++ for @msgs;
my $twice = grep { $_ > 1 } values %seen;
is(scalar @msgs, $committed, 'as many messages in Kafka as committed transactions');
is(scalar keys %seen, $committed, 'each committed event is in Kafka');
is($twice, 0, 'no event is published twice');
is($node->safe_psql('postgres', q{SELECT sum(published) FROM evbus.publish_counters}),
	$committed, 'evbus.publish_counters counts each once');

$node->stop;
done_testing();

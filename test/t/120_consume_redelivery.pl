# 120_consume_redelivery.pl - redelivery never runs a handler twice.
# After 50 events were handled, their offsets are committed to Kafka as well
# as stored in the database.  Then every message is delivered again:
#  1. the group's offsets are reset to the beginning, both in Kafka
#     (ConsumerGroupCommand --reset-offsets --to-earliest, node stopped, so
#     the group is inactive) and in evbus.consumer_offsets (deleted as
#     superuser while evbus is not loaded): the consumer reads the topic
#     again from offset 0;
#  2. a second producer (Kafka's Java console producer) replays the same
#     50 messages with their cap-msg-id headers at new offsets.
# In both cases the inbox recognises every message: the handler is not
# called again (a sequence counts calls, a table without a unique
# constraint counts effects); a new event is still handled.
use strict;
use warnings;

use EvbusTest;
use File::Basename qw(dirname);
use IPC::Run ();
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);

my $bootstrap = kafka_bootstrap();
my $prefix = "t120.$$.";
my $topic = "${prefix}Replayed";
my $group = "t120_$$";
my $node = new_node(
	'redelivery',
	kafka => 1,
	conf => [
		"evbus.topic_prefix = '$prefix'",
		"evbus.group_name = '$group'",
		"evbus.retry_interval = '100ms'",
		"evbus.retry_max_interval = '500ms'"
	]);
$node->safe_psql('postgres', 'CREATE EXTENSION evbus');

# Kafka's ConsumerGroupCommand (kafka-consumer-groups.sh) against the broker;
# returns (exit status, stdout+stderr).  (A candidate for EvbusTest.pm and
# a `groups` subcommand of kafka.sh.)
sub kafka_groups
{
	my (@args) = @_;
	my $libs = $ENV{EVBUS_KAFKA_LIBS}
	  || dirname(EvbusTest::kafka_sh()) . '/libs';
	my $java = $ENV{JAVA_HOME} ? "$ENV{JAVA_HOME}/bin/java" : 'java';
	my $log4j = kafka_dir() . '/tools-log4j2.properties';
	my @cmd = (
		'timeout', 60, $java, '-Xmx256m', '-XX:TieredStopAtLevel=1', '-XX:+UseSerialGC',
		(-f $log4j ? ("-Dlog4j2.configurationFile=$log4j") : ()),
		'-cp', "$libs/*", 'org.apache.kafka.tools.consumer.group.ConsumerGroupCommand',
		'--bootstrap-server', $bootstrap, @args);
	my $out = '';
	IPC::Run::run(\@cmd, '<', \undef, '>&', \$out);
	return ($? >> 8, $out);
}

# committed offsets of $group on $topic per partition, from --describe
sub kafka_committed
{
	my ($rc, $out) = kafka_groups('--describe', '--group', $group, '--offsets');
	my %off;
	for (split /\n/, $out)
	{
		my @f = split ' ';
		next unless @f >= 4 && $f[0] eq $group && $f[1] eq $topic && $f[3] =~ /^\d+$/;
		$off{ $f[2] } = $f[3];
	}
	return %off;
}

sub sum { my $s = 0; $s += $_ for @_; return $s; }

# java_produce without the console producer's default linger of 1 s, which
# --sync pays on every message (50 messages: 50 s)
sub java_produce_now
{
	my ($topic, @lines) = @_;
	my @cmd = ('bash', EvbusTest::kafka_sh(), 'produce', kafka_dir(), $topic,
		'--producer-property', 'linger.ms=0');
	open(my $fh, '|-', @cmd) or die "cannot run @cmd: $!";
	print $fh "$_\n" for @lines;
	close $fh;
	die "kafka.sh produce $topic failed (exit " . ($? >> 8) . ")\n" if $?;
	return;
}

$node->safe_psql(
	'postgres', as_subscriber($node) . q{
CREATE SEQUENCE handler_calls;
CREATE TABLE effects (message_id uuid, n int, at timestamptz DEFAULT clock_timestamp());  -- no unique constraint
CREATE PROCEDURE on_replayed(payload jsonb, headers jsonb) LANGUAGE plpgsql AS $$
BEGIN
	PERFORM pg_catalog.nextval('public.handler_calls');
	INSERT INTO public.effects (message_id, n) VALUES ((headers->>'cap-msg-id')::uuid, (payload->>'n')::int);
END $$;
SELECT evbus.subscribe('Replayed', 'on_replayed(jsonb,jsonb)');
});

my $n = 50;
$node->safe_psql('postgres',
	qq{SELECT count(evbus.publish('Replayed', jsonb_build_object('n', g), 'k' || (g % 5))) FROM generate_series(1, $n) g});
ok(wait_for_sql($node, 'postgres', 'SELECT count(*) FROM effects', $n, 60), "$n events handled");
ok(wait_for_sql($node, 'postgres', qq{SELECT sum(next_offset) FROM evbus.consumer_offsets WHERE topic = '$topic'}, $n, 10),
	'the stored offsets are past every message');
is($node->safe_psql('postgres', q{SELECT last_value FROM handler_calls}), $n, "handler called $n times");

# offsets reach Kafka too, after the database commit
my %committed;
my $deadline = time() + 30;
while (1)
{
	%committed = kafka_committed();
	last if sum(values %committed) == $n || time() > $deadline;
	sleep 1;
}
is(sum(values %committed), $n, 'the offsets are committed to Kafka as well')
  or diag explain \%committed;

# --- 1. offsets reset to the beginning, in Kafka and in the database ------------
$node->stop;    # a clean stop: the consumer leaves the group
my ($rc, $out);
my $t0 = time();
while (1)
{
	($rc, $out) = kafka_groups('--reset-offsets', '--group', $group, '--topic', $topic,
		'--to-earliest', '--execute');
	last if $rc == 0 || time() - $t0 > 60;
	sleep 2;
}
is($rc, 0, 'Kafka: group offsets reset to the earliest (the group is inactive once the node stopped)')
  or diag $out;
note sprintf('reset possible %.0f s after the node stopped', time() - $t0);
%committed = kafka_committed();
is(sum(values %committed), 0, 'Kafka: committed offsets are now 0') or diag explain \%committed;

# evbus not loaded: nothing consumes while the stored offsets are deleted
$node->append_conf('postgresql.conf', "shared_preload_libraries = ''\n");
$node->start;
is($node->safe_psql('postgres', 'DELETE FROM evbus.consumer_offsets'),
	'', 'stored offsets deleted');
is($node->safe_psql('postgres', 'SELECT count(*) FROM evbus.consumer_offsets'), '0', 'no stored offset left');
$node->stop;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'evbus'\n");
$node->start;

ok( wait_for_sql($node, 'postgres', qq{SELECT sum(next_offset) FROM evbus.consumer_offsets WHERE topic = '$topic'}, $n, 90),
	'the consumer read the whole topic again from the beginning');
sleep 1;
is($node->safe_psql('postgres', 'SELECT count(*), count(DISTINCT message_id) FROM effects'),
	"$n|$n", 'redelivered from the beginning: no handler effect twice');
is($node->safe_psql('postgres', q{SELECT last_value FROM handler_calls}), $n,
	'and the handler was not called again');

# --- 2. a second producer replays the same messages --------------------------------
my @msgs = kcat_consume($topic, $n, 30);
is(scalar @msgs, $n, "$n messages in Kafka to replay");
my @lines;
for my $m (@msgs)
{
	my $h = $m->{headers};
	push @lines, "cap-msg-id:$h->{'cap-msg-id'},cap-msg-name:$h->{'cap-msg-name'},evbus-source:$h->{'evbus-source'}"
	  . "\t$m->{key}\t$m->{payload}";
}
java_produce_now($topic, @lines);
ok( wait_for_sql($node, 'postgres', qq{SELECT sum(next_offset) FROM evbus.consumer_offsets WHERE topic = '$topic'}, 2 * $n, 60),
	'the replayed copies were consumed');
sleep 1;
is($node->safe_psql('postgres', 'SELECT count(*), count(DISTINCT message_id) FROM effects'),
	"$n|$n", 'replayed by another producer: no handler effect twice');
is($node->safe_psql('postgres', q{SELECT last_value FROM handler_calls}), $n,
	'and the handler was not called again');
is($node->safe_psql('postgres', q{SELECT count(*), count(*) FILTER (WHERE state = 'handled' AND attempts = 1) FROM evbus.inbox}),
	"$n|$n", 'inbox: one row per message id, handled in one attempt');

# --- still working: a new event is handled ------------------------------------------
my $new = $node->safe_psql('postgres', q{SELECT evbus.publish('Replayed', '{"n": 1000}')});
ok(wait_for_sql($node, 'postgres', qq{SELECT count(*) FROM effects WHERE message_id = '$new'}, '1', 30),
	'a new event is handled');
is($node->safe_psql('postgres', 'SELECT count(*) FROM effects'), $n + 1, 'nothing else ran');
is( $node->safe_psql('postgres',
		qq{SELECT handled, retrying, dead, pending FROM evbus.stats WHERE side = 'consume' AND topic = '$topic'}),
	($n + 1) . '|0|0|0', 'evbus.stats counts each event once');

$node->stop;
done_testing();

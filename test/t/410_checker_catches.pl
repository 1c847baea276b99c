# 410_checker_catches.pl - the fault campaign's checker (test/campaign/
# check.pl) catches each kind of violation, by its invariant's name, and
# passes a clean history; its collector (test/campaign/collect.pl) reads a
# real run back in full.
#  - synthetic histories, written here (no Kafka): a clean one passes, and
#    counts a duplicate in Kafka without calling it a violation; each of a
#    lost event (I1); a rolled back event in Kafka, one that no database
#    committed, an incomplete read of Kafka (I2); a duplicated, a missing
#    and an unexpected handler effect (I3); a reordered key in Kafka, a key
#    on two partitions, a message keyed other than its event, a reordered
#    key in the effects (I4); an extra, an unexplained and a missing dead
#    letter (I5); a drain timeout and an outbox not empty (I6) fails with
#    that invariant, and that one only;
#  - a real run: two databases of one node each stage events on a topic of
#    their own (committed in the transaction that stages them, plus a
#    rolled back one) and handle the other's, some handlers ending as dead
#    letters; collect + check pass.  Then one effect row is deleted and a
#    rolled back event is produced into Kafka by hand (which the consumer
#    then handles): check fails naming I3 and I2.
use strict;
use warnings;

use EvbusTest;
use File::Basename qw(dirname);
use File::Path qw(make_path remove_tree);
use File::Spec;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $campaign = File::Spec->rel2abs(dirname(__FILE__) . '/../campaign');
my $tmp = PostgreSQL::Test::Utils::tempdir();

# check(hist): check.pl's exit status and output.
sub check
{
	my ($hist) = @_;
	my $out = `perl $campaign/check.pl $hist 2>&1`;
	return ($? >> 8, $out);
}

# violations(output): invariant => count, from check.pl's summary.
sub violations
{
	my ($out) = @_;
	return map { /^\s+(I\d) .*: (\d+)$/ ? ($1 => $2) : () } split /\n/, $out;
}

# ---------------------------------------------------------------------------
# Synthetic histories
# ---------------------------------------------------------------------------

# clean_history(): a history with nothing wrong.  Databases a and b stage
# events on topics c.A and c.B; b handles A's events in two groups, a
# handles B's; max_retries 2 (meta), overridden per subscription.  a-3
# fails 5 times: a dead letter of group b1 (max 2), an effect in group b2
# (max 10).  a-2 arrives twice in Kafka (a duplicate, no violation).
sub clean_history
{
	my %h;
	$h{meta} = [
		[ seed => 7 ], [ duration_s => 30 ], [ max_retries => 2 ],
		[ drain_s => 4.5 ], [ drain_bound_s => 60 ], [ events_staged => 7 ]
	];
	$h{faults} = [ [ 1000, 'broker_kill', 'kafka2', '' ], [ 1010, 'pg_restart', 'node1', 'fast' ] ];
	my @a = (
		[ 'a-1', 'a', 'c.A', 'ka1', 1, 0 ],
		[ 'a-2', 'a', 'c.A', 'ka1', 2, 1 ],
		[ 'a-3', 'a', 'c.A', 'ka2', 3, 5 ],
		[ 'a-4', 'a', 'c.A', 'ka2', 4, 0 ]);
	my @b = (
		[ 'b-1', 'b', 'c.B', 'kb1', 1, 0 ],
		[ 'b-2', 'b', 'c.B', 'kb1', 2, 0 ],
		[ 'b-3', 'b', 'c.B', 'kb2', 3, 0 ]);
	$h{db}{a}{committed} = [ map { [ @$_, '\N', '2026-01-01 00:00:00+00' ] } @a ];
	$h{db}{b}{committed} = [ map { [ @$_, '\N', '2026-01-01 00:00:00+00' ] } @b ];
	my %part = (ka1 => 0, ka2 => 1, kb1 => 0, kb2 => 1);
	my %offset;
	for my $e (@a, @b, $a[1])
	{
		my ($id, $db, $topic, $key, $seq, $fail) = @$e;
		my $p = $part{$key};
		push @{ $h{kafka}{$topic} },
		  [
			"Partition:$p", 'Offset:' . $offset{$topic}{$p}++, "cap-msg-id:m-$id",
			$key,
			qq({"event_id":"$id","db":"$db","key":"$key","seq":$seq,"fail_times":$fail,"doomed":false,"caused_by":null})
		  ];
	}
	$h{db}{b}{subscriptions} = [
		[ 'b1', 'A', 'c.A', 'campaign.on_a(jsonb,jsonb)', '\N' ],
		[ 'b2', 'A', 'c.A', 'campaign.on_a2(jsonb,jsonb)', 10 ]
	];
	$h{db}{a}{subscriptions} = [ [ 'a1', 'B', 'c.B', 'campaign.on_b(jsonb,jsonb)', 1 ] ];
	my $id = 0;
	my $effect = sub {
		my ($grp, $handler, $e) = @_;
		return [ ++$id, $grp, $e->[1], $handler, $e->[0], $e->[3], $e->[4], '2026-01-01 00:00:01+00' ];
	};
	$h{db}{b}{effects} = [
		(map { $effect->('b1', 'on_a', $_) } grep { $_->[5] <= 2 } @a),
		(map { $effect->('b2', 'campaign.on_a2', $_) } @a)
	];
	$id = 0;
	$h{db}{a}{effects} = [ map { $effect->('a1', 'on_b', $_) } @b ];
	$h{db}{b}{dead_letters} = [ [ 'b1', 'campaign.on_a(jsonb,jsonb)', 'm-a-3', 'a-3' ] ];
	$h{db}{a}{dead_letters} = [];
	$h{db}{$_}{outbox_left} = [ [0] ] for qw(a b);
	return \%h;
}

# write_history(dir, history): write it as collect.pl and the campaign
# runner would.
sub write_history
{
	my ($dir, $h) = @_;
	remove_tree($dir);
	make_path("$dir/kafka", map { "$dir/db/$_" } keys %{ $h->{db} });
	my $put = sub {
		my ($path, $rows) = @_;
		open(my $fh, '>', $path) or die "$path: $!";
		print $fh join("\t", @$_), "\n" for @$rows;
		close $fh;
	};
	$put->("$dir/meta.tsv", $h->{meta});
	$put->("$dir/faults.tsv", $h->{faults});
	$put->("$dir/kafka/$_.tsv", $h->{kafka}{$_}) for keys %{ $h->{kafka} };
	# the offsets a complete read of each topic holds (as collect.pl
	# writes them): from the messages, unless the history gives them
	for my $topic (keys %{ $h->{kafka} })
	{
		my %end;
		for (@{ $h->{kafka}{$topic} })
		{
			my ($p, $o) = map { /(\d+)/ } @$_[ 0, 1 ];
			$end{$p} = $o + 1 if !defined $end{$p} || $o >= $end{$p};
		}
		$put->("$dir/kafka/$topic.offsets.tsv",
			$h->{offsets}{$topic} // [ map { [ $_, 0, $end{$_} ] } sort keys %end ]);
	}
	for my $db (keys %{ $h->{db} })
	{
		$put->("$dir/db/$db/$_.tsv", $h->{db}{$db}{$_}) for keys %{ $h->{db}{$db} };
	}
	return $dir;
}

# the clean history passes, with its duplicate counted
my ($rc, $out) = check(write_history("$tmp/clean", clean_history()));
is($rc, 0, 'clean history: check.pl exits 0') or diag $out;
like($out, qr/\ncampaign: PASS\n\z/, 'clean history: the last line is "campaign: PASS"');
like($out, qr/^\s+duplicates in Kafka: 1$/m, 'clean history: the duplicate in Kafka is counted');
like($out, qr/^\s+events committed: 7 \(a 4, b 3\)/m, 'clean history: events committed per database');
like($out, qr/^\s+faults: 2 \(broker_kill 1, pg_restart 1\)$/m, 'clean history: faults by kind');
is_deeply({ violations($out) }, { map { $_ => 0 } qw(I1 I2 I3 I4 I5 I6) },
	'clean history: every invariant listed, with no violation');

# index_of(rows, column, value): the index of the first row whose column
# has value.
sub index_of
{
	my ($rows, $col, $value) = @_;
	for my $i (0 .. $#$rows)
	{
		return $i if $rows->[$i][$col] =~ /\Q$value\E/;
	}
	die "no row with $value";
}

# each case: name, the invariant it breaks, how many violations, and the
# change it makes to a clean history
my @cases = (
	[
		'lost event', 'I1', 1,
		sub {
			my $k = $_[0]{kafka}{'c.A'};
			splice(@$k, index_of($k, 4, '"a-4"'), 1);
		}
	],
	[
		'rolled back event in Kafka', 'I2', 1,
		sub {
			push @{ $_[0]{kafka}{'c.A'} },
			  [ 'Partition:0', 'Offset:3', 'cap-msg-id:m-x', 'ka1',
				'{"event_id":"a-1","db":"a","key":"ka1","seq":9,"fail_times":0,"doomed":true,"caused_by":null}' ];
		}
	],
	[
		'event in Kafka that no database committed', 'I2', 1,
		sub {
			push @{ $_[0]{kafka}{'c.B'} },
			  [ 'Partition:1', 'Offset:1', 'cap-msg-id:m-x', 'kb2',
				'{"event_id":"b-99","db":"b","key":"kb2","seq":99,"fail_times":0,"doomed":false,"caused_by":null}' ];
		}
	],
	[
		'duplicated handler effect', 'I3', 1,
		sub {
			my $e = $_[0]{db}{a}{effects};
			push @$e, [ 99, @{ $e->[ index_of($e, 4, 'b-2') ] }[ 1 .. 7 ] ];
		}
	],
	[
		'missing handler effect', 'I3', 1,
		sub {
			my $e = $_[0]{db}{b}{effects};
			splice(@$e, index_of($e, 4, 'a-4'), 1);
		}
	],
	[
		'effect of an event that ends as a dead letter', 'I3', 1,
		sub {
			# id 0: before a-4's effect, in the key's order
			push @{ $_[0]{db}{b}{effects} }, [ 0, 'b1', 'a', 'on_a', 'a-3', 'ka2', 3, '2026-01-01 00:00:09+00' ];
		}
	],
	[
		'incomplete Kafka read', 'I2', 1,
		sub {
			# the second a-2 (a duplicate) was not read
			my $k = $_[0]{kafka}{'c.A'};
			splice(@$k, index_of($k, 1, 'Offset:2'), 1);
			$_[0]{offsets}{'c.A'} = [ [ 0, 0, 3 ], [ 1, 0, 2 ] ];
		}
	],
	[
		'effect of an event no database committed', 'I3', 1,
		sub {
			push @{ $_[0]{db}{a}{effects} }, [ 99, 'a1', 'b', 'on_b', 'b-99', 'kb9', 1, '2026-01-01 00:00:09+00' ];
		}
	],
	[
		'reordered key in Kafka', 'I4', 1,
		sub {
			# a-1 and a-2 (key ka1) trade offsets
			my $k = $_[0]{kafka}{'c.A'};
			my ($i, $j) = (index_of($k, 4, '"a-1"'), index_of($k, 4, '"a-2"'));
			($k->[$i][1], $k->[$j][1]) = ($k->[$j][1], $k->[$i][1]);
		}
	],
	[
		'key on two partitions', 'I4', 1,
		sub {
			my $k = $_[0]{kafka}{'c.B'};
			my $i = index_of($k, 4, '"b-2"');
			$k->[$i][0] = 'Partition:1';
			$k->[$i][1] = 'Offset:1';
			$k->[ index_of($k, 4, '"b-1"') ][1] = 'Offset:0';
		}
	],
	[
		'message keyed other than its event', 'I4', 1,
		sub {
			my $k = $_[0]{kafka}{'c.B'};
			$k->[ index_of($k, 4, '"b-3"') ][3] = 'kb9';
		}
	],
	[
		'reordered key in effects', 'I4', 1,
		sub {
			# b-1 and b-2 (key kb1) trade effect ids: b-2 handled first
			my $e = $_[0]{db}{a}{effects};
			my ($i, $j) = (index_of($e, 4, 'b-1'), index_of($e, 4, 'b-2'));
			($e->[$i][0], $e->[$j][0]) = ($e->[$j][0], $e->[$i][0]);
		}
	],
	[
		'dead letter that should not be', 'I5', 1,
		sub {
			push @{ $_[0]{db}{a}{dead_letters} }, [ 'a1', 'campaign.on_b(jsonb,jsonb)', 'm-b-3', 'b-3' ];
		}
	],
	[
		'dead letter of an event no database committed', 'I5', 1,
		sub {
			push @{ $_[0]{db}{b}{dead_letters} }, [ 'b1', 'campaign.on_a(jsonb,jsonb)', 'm-x', 'a-99' ];
		}
	],
	[ 'missing dead letter', 'I5', 1, sub { $_[0]{db}{b}{dead_letters} = [] } ],
	[
		'drain timeout', 'I6', 1,
		sub {
			$_->[1] = 'timeout' for grep { $_->[0] eq 'drain_s' } @{ $_[0]{meta} };
		}
	],
	[ 'outbox not empty', 'I6', 1, sub { $_[0]{db}{b}{outbox_left} = [ [3] ] } ],);

for my $case (@cases)
{
	my ($name, $id, $n, $change) = @$case;
	my $h = clean_history();
	$change->($h);
	(my $dir = "$tmp/$name") =~ s/ /_/g;
	($rc, $out) = check(write_history($dir, $h));
	my %v = violations($out);
	is($rc, 1, "$name: check.pl exits 1");
	like($out, qr/\ncampaign: FAIL \($n violations\)\n\z/, "$name: the last line says FAIL ($n)");
	is_deeply(\%v, { (map { $_ => 0 } qw(I1 I2 I3 I4 I5 I6)), $id => $n },
		"$name: caught as $id, and as nothing else")
	  or diag $out;
}

# ---------------------------------------------------------------------------
# A real run: two databases on one node, the test suite's broker
# ---------------------------------------------------------------------------

if (!$ENV{EVBUS_TEST_KAFKA_BOOTSTRAP})
{
	note 'no Kafka broker (EVBUS_TEST_KAFKA_BOOTSTRAP unset): the real run is left out';
	done_testing();
	exit 0;
}
my $prefix = "t410.$$.";
my $node = new_node(
	'checker',
	kafka => 1,
	conf => [
		"evbus.topic_prefix = '$prefix'",
		"evbus.retry_interval = '100ms'",
		"evbus.retry_max_interval = '200ms'",
		'evbus.max_retries = 1'
	]);
my @dbs = qw(c1 c2);
my %other = (c1 => 'c2', c2 => 'c1');
my $per_db = 12;

# each database: the campaign's tables, a handler that fails when the
# event's fail_times is not 0 (0 or 9 here: handled, or a dead letter
# after max_retries 1), subscribed to the other database's event
for my $db (@dbs)
{
	$node->safe_psql('postgres', "CREATE DATABASE $db");
	$node->safe_psql($db, 'CREATE EXTENSION evbus');
	my $set_role = as_subscriber($node, $db);
	$node->safe_psql($db, 'CREATE SCHEMA campaign AUTHORIZATION evbus_app');
	$node->safe_psql(
		$db, $set_role . qq{
CREATE TABLE campaign.committed (event_id text PRIMARY KEY, db text, topic text, key text,
	seq bigint, fail_times int, caused_by text, committed_at timestamptz);
CREATE TABLE campaign.effects (id bigserial PRIMARY KEY, grp text, db text, handler text,
	event_id text, key text, seq bigint, handled_at timestamptz);
CREATE PROCEDURE campaign.on_event(payload jsonb, headers jsonb) LANGUAGE plpgsql AS \$\$
BEGIN
	IF (payload->>'fail_times')::int > 0 THEN
		RAISE EXCEPTION 'event % fails', payload->>'event_id';
	END IF;
	INSERT INTO campaign.effects (grp, db, handler, event_id, key, seq, handled_at)
	VALUES ('g_$db', payload->>'db', 'on_event', payload->>'event_id', payload->>'key',
		(payload->>'seq')::bigint, now());
END \$\$;
SELECT evbus.subscribe('E_$other{$db}', 'campaign.on_event(jsonb,jsonb)', 'g_$db');
});
}
ok(wait_for_sql($node, $_, 'SELECT evbus.consumer_pid() IS NOT NULL', 't', 30), "$_: the consumer runs")
  for @dbs;

# the workload: one transaction per event (staged and recorded together),
# every fifth event doomed to a dead letter, and one rolled back event
my $t0 = time();
for my $db (@dbs)
{
	my $sql = '';
	for my $i (1 .. $per_db)
	{
		my ($id, $key, $fail) = ("$db-$i", 'k' . ($i % 3), $i % 5 == 0 ? 9 : 0);
		$sql .= qq{BEGIN;
SELECT evbus.publish('E_$db', jsonb_build_object('event_id', '$id', 'db', '$db', 'key', '$key',
	'seq', $i, 'fail_times', $fail, 'doomed', false, 'caused_by', NULL), '$key');
INSERT INTO campaign.committed VALUES ('$id', '$db', '${prefix}E_$db', '$key', $i, $fail, NULL, now());
COMMIT;
};
	}
	$sql .= qq{BEGIN;
SELECT evbus.publish('E_$db', jsonb_build_object('event_id', '$db-rb', 'db', '$db', 'key', 'k1',
	'seq', 99, 'fail_times', 0, 'doomed', true, 'caused_by', NULL), 'k1');
ROLLBACK;
};
	$node->safe_psql($db, $sql);
}

# drained: every outbox empty, every event of the other database handled
# or dead
my $dead_each = int($per_db / 5);
for my $db (@dbs)
{
	ok( wait_for_sql(
			$node, $db,
			q{SELECT (SELECT count(*) FROM evbus.outbox) = 0
			     AND (SELECT count(*) FROM campaign.effects) = } . ($per_db - $dead_each) . q{
			     AND (SELECT count(*) FROM evbus.dead_letters WHERE direction = 'consume') = } . $dead_each,
			't', 60),
		"$db: drained, the other database's events handled or dead");
}
my $drain = sprintf('%.1f', time() - $t0);

# collect(hist): run collect.pl into hist; its exit status
sub collect
{
	my ($hist) = @_;
	my @db = map { ('--db', "$_=host=" . $node->host . ' port=' . $node->port . " dbname=$_") } @dbs;
	my $rc = system('perl', "$campaign/collect.pl", '--out', $hist, '--kafka-dir', kafka_dir(),
		'--kafka-sh', $ENV{EVBUS_TEST_KAFKA_SH} // "$campaign/../kafka/kafka.sh",
		'--topics', join(',', map { "${prefix}E_$_" } @dbs), @db);
	return $rc >> 8;
}

# the runner's files: meta (no fault, so the drain is from the start) and
# no fault
my $hist = "$tmp/real";
make_path($hist);
PostgreSQL::Test::Utils::append_to_file("$hist/meta.tsv",
	"seed\t0\nduration_s\t$drain\nmax_retries\t1\ndrain_s\t$drain\ndrain_bound_s\t60\nevents_staged\t"
	  . (2 * $per_db) . "\n");
PostgreSQL::Test::Utils::append_to_file("$hist/faults.tsv", '');

is(collect($hist), 0, 'real run: collect.pl reads every topic and table');
($rc, $out) = check($hist);
note $out;
is($rc, 0, 'real run: check.pl passes');
like($out, qr/^\s+events committed: 24 \(c1 12, c2 12\)/m, 'real run: every committed event counted');
like($out, qr/^\s+messages in Kafka: 24 /m, 'real run: every message read back');
like($out, qr/^\s+dead letters: 4 /m, 'real run: the dead letters read back');

# break it: an effect lost, a rolled back event in Kafka.  The consumer
# of c2 handles that event too: its effect is one more I3 violation (an
# effect no committed event explains), waited for so that the count is
# certain.
$node->safe_psql('c2', q{DELETE FROM campaign.effects WHERE event_id = 'c1-1'});
java_produce("${prefix}E_c1",
	  "cap-msg-id:00000000-0000-0000-0000-000000000410\tk1\t"
	  . '{"event_id":"c1-rb2","db":"c1","key":"k1","seq":100,"fail_times":0,"doomed":true,"caused_by":null}');
ok(wait_for_sql($node, 'c2', q{SELECT count(*) FROM campaign.effects WHERE event_id = 'c1-rb2'}, '1', 60),
	'broken run: c2 handled the rolled back event produced by hand');
my $broken = "$tmp/real-broken";
make_path($broken);
PostgreSQL::Test::Utils::append_to_file("$broken/$_", PostgreSQL::Test::Utils::slurp_file("$hist/$_"))
  for qw(meta.tsv faults.tsv);
is(collect($broken), 0, 'broken run: collect.pl reads everything again');
($rc, $out) = check($broken);
note $out;
my %v = violations($out);
is($rc, 1, 'broken run: check.pl fails');
is_deeply([ @v{qw(I1 I2 I3 I4 I5 I6)} ], [ 0, 1, 2, 0, 0, 0 ],
	'broken run: I2 for the message, I3 for the lost effect and for the effect of the message');
like($out, qr/c1-rb2 of a rolled back transaction/, 'broken run: the I2 example names the rolled back event');
like($out, qr/g_c2 handler on_event: 0 effects \(want 1\) of c1-1 /, 'broken run: an I3 example names the lost effect');
like($out, qr/g_c2 handler on_event: effect of c1-rb2, which no subscription/,
	'broken run: an I3 example names the effect of the rolled back event');
like($out, qr/\ncampaign: FAIL \(3 violations\)\n\z/, 'broken run: the last line says FAIL (3)');

$node->stop;
done_testing();

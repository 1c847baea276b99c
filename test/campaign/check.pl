#!/usr/bin/env perl
# check.pl HIST - judge a fault campaign's history directory against the
# invariants of evbus's delivery guarantees; print one summary and exit 0
# only when nothing violates them (1 otherwise, 2 on a usage error).
#
# HIST (see collect.pl for the files it writes):
#   meta.tsv      name TAB value: seed, duration_s, max_retries, drain_s (a
#                 number of seconds, or "timeout"), drain_bound_s,
#                 events_staged
#   faults.tsv    start_epoch TAB kind TAB target TAB detail, one per fault
#   kafka/<topic>.tsv    the Java console consumer's lines
#   db/<NAME>/committed.tsv, effects.tsv, dead_letters.tsv,
#                 subscriptions.tsv, outbox_left.tsv (COPY text format)
#
# The invariants, and the name each violation is reported under:
#   I1  every committed event (all databases) is in Kafka, on its topic
#   I2  nothing that did not commit is in Kafka: no message with
#       doomed = true, none whose event_id no committed table has (nor a
#       line that is not a message whose value is a JSON object); and
#       Kafka was read in full (kafka/<topic>.offsets.tsv, when there:
#       partition TAB start TAB end), else what was not read could hide
#       one
#   I3  per subscription (database, group, handler) and committed event of
#       its topic: exactly one effect row when fail_times <= max_retries,
#       none when more; and no effect row of anything else
#   I4  per-key order: in Kafka, per topic and key, the first occurrences
#       of events come in increasing seq along the offsets, a key is on
#       one partition only, and a message's key is its event's key; in effects, per database, group, handler and
#       key, the first effect of each event, ordered by id, has increasing
#       seq.  seq is compared within one producing database (the db of the
#       event), the only place it is ordered.  Later occurrences (a
#       duplicate in Kafka, a duplicated effect) are left to I2 and I3.
#   I5  the consume-side dead letters are exactly, per database, group and
#       handler, the committed events of its topic with fail_times >
#       max_retries: none missing, none extra, none twice
#   I6  drain: meta's drain_s is a number no greater than drain_bound_s,
#       and no database has anything left in evbus.outbox
# A message in Kafka twice (same event_id: a publisher that crashed after
# the broker's ack) is no violation: the consumer de-duplicates it.  Such
# duplicates are counted and printed.
#
# Handlers are matched by name: an effect's handler column may be the
# procedure's name with or without its schema and argument list
# ("h", "campaign.h", "campaign.h(jsonb,jsonb)"), as may a subscription's
# and a dead letter's.  A missing input file is a violation too (of the
# invariant that needs it): a history that cannot be judged never passes.
use strict;
use warnings;

use JSON::PP ();

my $hist = shift @ARGV;
if (!defined $hist || @ARGV || !-d $hist)
{
	print STDERR "usage: check.pl HIST\n";
	exit 2;
}

my %violations = map { $_ => [] } qw(I1 I2 I3 I4 I5 I6);
my %why = (
	I1 => 'committed events missing from Kafka',
	I2 => 'uncommitted events in Kafka',
	I3 => 'handler effects not exactly once',
	I4 => 'per-key order broken',
	I5 => 'dead letters not as expected',
	I6 => 'not drained in time');

my %meta = read_meta("$hist/meta.tsv");
my @faults = read_tsv("$hist/faults.tsv", 'I6', 1);
my %dbs = read_databases("$hist/db");
my %kafka = read_kafka("$hist/kafka");
my %offsets = read_offsets("$hist/kafka");

my $max_retries_default = $meta{max_retries};
my @subscriptions = subscriptions();

# the truth: every committed event, by event_id
my %committed;
for my $name (sort keys %dbs)
{
	for my $row (@{ $dbs{$name}{committed} })
	{
		my %e;
		@e{qw(event_id db topic key seq fail_times caused_by committed_at)} = @$row;
		$e{source} = $name;
		$e{topic} = kafka_topic($e{topic});
		violation('I1', "event $e{event_id} is committed in both $committed{$e{event_id}}{source} and $name")
		  if $committed{ $e{event_id} };
		$committed{ $e{event_id} } = \%e;
	}
}

my $duplicates = check_kafka();
check_read_complete();
check_effects();
check_dead_letters();
check_drain();
print_summary($duplicates);
my $count = 0;
$count += @{ $violations{$_} } for keys %violations;
exit($count ? 1 : 0);

# violation(id, text): record a violation of invariant id.
sub violation
{
	my ($id, $text) = @_;
	push @{ $violations{$id} }, $text;
	return;
}

# copy_field(text): a field of COPY's text format as Perl text (undef for
# \N), its backslash escapes undone.
sub copy_field
{
	my ($f) = @_;
	return undef if $f eq '\N';
	my %esc = (b => "\b", f => "\f", n => "\n", r => "\r", t => "\t", v => "\013");
	$f =~ s/\\(?:([0-7]{1,3})|x([0-9A-Fa-f]{1,2})|(.))/
		defined $1 ? chr(oct $1) : defined $2 ? chr(hex $2) : ($esc{$3} \/\/ $3)/ge;
	return $f;
}

# read_tsv(path, invariant, optional): the rows of a COPY text file, each an
# array of fields.  A missing file is a violation of the invariant that
# needs it, unless it is optional.
sub read_tsv
{
	my ($path, $invariant, $optional) = @_;
	my $fh;
	if (!open($fh, '<', $path))
	{
		violation($invariant, "cannot read $path: $!") unless $optional;
		return ();
	}
	my @rows;
	while (my $line = <$fh>)
	{
		chomp $line;
		next if $line eq '';
		push @rows, [ map { copy_field($_) } split /\t/, $line, -1 ];
	}
	close $fh;
	return @rows;
}

# read_meta(path): meta.tsv as a hash (name => value); missing: an I6
# violation (the drain time is in it).
sub read_meta
{
	my ($path) = @_;
	return map { $_->[0] => $_->[1] } grep { @$_ >= 2 } read_tsv($path, 'I6');
}

# read_databases(dir): NAME => { committed, effects, dead_letters,
# subscriptions => [rows], outbox_left => count } for each database
# directory under dir.  Each file missing is a violation of the invariant
# that reads it.
sub read_databases
{
	my ($dir) = @_;
	my %needs = (committed => 'I1', effects => 'I3', dead_letters => 'I5',
		subscriptions => 'I3', outbox_left => 'I6');
	my %dbs;
	opendir(my $dh, $dir) or do { violation('I1', "no database directory $dir: $!"); return () };
	for my $name (sort grep { !/^\./ && -d "$dir/$_" } readdir $dh)
	{
		for my $table (sort keys %needs)
		{
			$dbs{$name}{$table} = [ read_tsv("$dir/$name/$table.tsv", $needs{$table}) ];
		}
		my $left = $dbs{$name}{outbox_left}[0];
		$dbs{$name}{outbox_left} = $left ? $left->[0] : undef;
	}
	closedir $dh;
	violation('I1', "no database in $dir") unless %dbs;
	return %dbs;
}

# read_kafka(dir): topic => [messages in file order], each message
# { partition, offset, headers, key, value (the text), event (the decoded
# JSON object, undef if not one), line }.  A line that is no message (a
# value spanning lines) is an I2 violation: it is in Kafka and no
# committed event looks like it.
sub read_kafka
{
	my ($dir) = @_;
	my %topics;
	my $json = JSON::PP->new->utf8;
	opendir(my $dh, $dir) or do { violation('I1', "no Kafka directory $dir: $!"); return () };
	for my $file (sort grep { /\.tsv$/ && !/\.offsets\.tsv$/ } readdir $dh)
	{
		(my $topic = $file) =~ s/\.tsv$//;
		open(my $fh, '<', "$dir/$file") or do { violation('I1', "cannot read $dir/$file: $!"); next };
		$topics{$topic} = [];
		while (my $line = <$fh>)
		{
			chomp $line;
			next if $line eq '';
			my ($p, $o, $headers, $key, $value) = split /\t/, $line, 5;
			if (!defined $value || $p !~ /^Partition:(\d+)$/ || $o !~ /^Offset:(\d+)$/)
			{
				violation('I2', "$topic: a line that is not a whole message: " . substr($line, 0, 100));
				next;
			}
			($p) = $p =~ /(\d+)/;
			($o) = $o =~ /(\d+)/;
			my $event = eval { $json->decode($value) };
			push @{ $topics{$topic} },
			  {
				partition => $p,
				offset => $o,
				headers => $headers,
				key => $key,
				value => $value,
				event => ref $event eq 'HASH' ? $event : undef,
			  };
		}
		close $fh;
	}
	closedir $dh;
	return %topics;
}

# read_offsets(dir): topic => partition => [start, end], from the
# <topic>.offsets.tsv files collect.pl writes: what each read must hold.
sub read_offsets
{
	my ($dir) = @_;
	my %at;
	opendir(my $dh, $dir) or return ();
	for my $file (grep { /\.offsets\.tsv$/ } readdir $dh)
	{
		(my $topic = $file) =~ s/\.offsets\.tsv$//;
		$at{$topic} = {};
		$at{$topic}{ $_->[0] } = [ $_->[1], $_->[2] ] for read_tsv("$dir/$file", 'I2');
	}
	closedir $dh;
	return %at;
}

# check_read_complete(): each topic read holds every offset between its
# partitions' start and end offsets.  An incomplete read is an I2
# violation: what was not read could be a message that did not commit.
sub check_read_complete
{
	for my $topic (sort keys %offsets)
	{
		my %seen;
		$seen{ $_->{partition} }{ $_->{offset} } = 1 for @{ $kafka{$topic} // [] };
		for my $p (sort { $a <=> $b } keys %{ $offsets{$topic} })
		{
			my ($start, $end) = @{ $offsets{$topic}{$p} };
			my $got = grep { $_ >= $start && $_ < $end } keys %{ $seen{$p} // {} };
			violation('I2', "$topic partition $p: read $got of the " . ($end - $start)
				  . " messages at offsets $start..$end: the rest was not checked")
			  if $got != $end - $start;
		}
	}
	return;
}

# truthy(json value): whether a JSON value is true (true, a non-zero
# number, a non-empty string other than "false").
sub truthy
{
	my ($v) = @_;
	return 0 unless defined $v;
	return $v ? 1 : 0 if JSON::PP::is_bool($v);
	return $v ne '' && $v ne '0' && $v ne 'false';
}

# handler_name(text): a handler's bare name, for matching: without schema,
# argument list, quotes and case.
sub handler_name
{
	my ($h) = @_;
	return '' unless defined $h;
	$h =~ s/\(.*//s;
	$h =~ s/"//g;
	$h =~ s/\s+//g;
	$h =~ s/^.*\.//;
	return lc $h;
}

# subscriptions(): every subscription of every database as { db, group,
# event, topic, handler (its bare name), max_retries (meta's when NULL) }.
sub subscriptions
{
	my @subs;
	for my $name (sort keys %dbs)
	{
		for my $row (@{ $dbs{$name}{subscriptions} })
		{
			my ($group, $event, $topic, $handler, $mr) = @$row;
			$mr //= $max_retries_default;
			if (!defined $mr || $mr !~ /^\d+$/)
			{
				violation('I3', "$name: subscription $group/$handler has no max_retries and meta none");
				$mr = 0;
			}
			push @subs,
			  {
				db => $name,
				group => $group,
				event => $event,
				topic => $topic,
				handler => handler_name($handler),
				max_retries => $mr
			  };
		}
	}
	return @subs;
}

# kafka_topic(topic): a committed event's topic as Kafka names it: as it
# is when a topic of that name was collected or no subscription shows
# evbus.topic_prefix, else with the prefix a subscription shows (its
# topic less its integration event) if that names a collected topic.
sub kafka_topic
{
	my ($topic) = @_;
	return $topic if !defined $topic || exists $kafka{$topic};
	for my $s (@subscriptions)
	{
		my $prefix = substr($s->{topic}, 0, length($s->{topic}) - length($s->{event}));
		return "$prefix$topic"
		  if $prefix ne '' && $s->{topic} eq "$prefix$s->{event}" && exists $kafka{"$prefix$topic"};
	}
	return $topic;
}

# describe(event_id): an event for an example line: id, db, topic, key, seq.
sub describe
{
	my ($id) = @_;
	my $e = $committed{$id} or return $id;
	return "$id (db $e->{db}, topic $e->{topic}, key $e->{key}, seq $e->{seq}, fail_times $e->{fail_times})";
}

# check_kafka(): I1, I2 and I4 on the Kafka side; returns the number of
# duplicate messages (an event_id seen before).
sub check_kafka
{
	my (%topics_of, %first_seen, %partitions_of, %last_seq);
	my $duplicates = 0;
	for my $topic (sort keys %kafka)
	{
		# file order is the consumer's; order by partition, offset
		for my $m (sort { $a->{partition} <=> $b->{partition} || $a->{offset} <=> $b->{offset} }
			@{ $kafka{$topic} })
		{
			my $ev = $m->{event};
			my $where = "$topic partition $m->{partition} offset $m->{offset}";
			if (!$ev || !defined $ev->{event_id})
			{
				violation('I2', "$where: a value that is not an event: " . substr($m->{value}, 0, 100));
				next;
			}
			my $id = $ev->{event_id};
			if (truthy($ev->{doomed}))
			{
				violation('I2', "$where: event $id of a rolled back transaction (doomed)");
				next;
			}
			if (!$committed{$id})
			{
				violation('I2', "$where: event $id is in no committed table");
				next;
			}
			$topics_of{$id}{$topic} = 1;
			$partitions_of{$topic}{ $m->{key} }{ $m->{partition} } = 1;
			if ($first_seen{$id}++)
			{
				$duplicates++;
				next;
			}
			# the key orders the event only if it is the event's key
			violation('I4', "$where: event $id of key " . ($ev->{key} // 'null')
				  . " has the Kafka key $m->{key}")
			  if ($ev->{key} // 'null') ne $m->{key};
			my $order = join("\0", $topic, $ev->{db} // '', $m->{key});
			my $seq = $ev->{seq} // -1;
			my $last = $last_seq{$order};
			violation('I4', "$where: key $m->{key} (db " . ($ev->{db} // '?')
				  . "): seq $seq after $last->[0] ($last->[1])")
			  if $last && $seq <= $last->[0];
			$last_seq{$order} = [ $seq, $id ];
		}
	}
	for my $topic (sort keys %partitions_of)
	{
		for my $key (sort keys %{ $partitions_of{$topic} })
		{
			my @p = sort { $a <=> $b } keys %{ $partitions_of{$topic}{$key} };
			violation('I4', "$topic: key $key is on partitions @p") if @p > 1;
		}
	}
	for my $id (sort keys %committed)
	{
		my $want = $committed{$id}{topic};
		next if $topics_of{$id}{$want};
		my @elsewhere = sort keys %{ $topics_of{$id} // {} };
		my $note = !exists $kafka{$want} ? ' (topic not collected)'
		  : @elsewhere ? " (found on @elsewhere)" : '';
		violation('I1', 'lost: ' . describe($id) . $note);
	}
	return $duplicates;
}

# expected(sub, event): what a subscription must do with a committed event
# of its topic: 'effect' or 'dead'.
sub expected
{
	my ($s, $e) = @_;
	return ($e->{fail_times} // 0) > $s->{max_retries} ? 'dead' : 'effect';
}

# check_effects(): I3 (exactly one effect per subscription and event that
# must have one, none otherwise) and I4 on the effects side.
sub check_effects
{
	for my $name (sort keys %dbs)
	{
		# (group, handler) => event_id => [effect ids]
		my (%effects, %last_seq);
		my @rows = sort { $a->[0] <=> $b->[0] } @{ $dbs{$name}{effects} };
		for my $row (@rows)
		{
			my ($id, $grp, $db, $handler, $event_id, $key, $seq) = @$row;
			my $h = handler_name($handler);
			$grp //= '';
			$event_id //= '';
			my $first = !$effects{"$grp\0$h"}{$event_id};
			push @{ $effects{"$grp\0$h"}{$event_id} }, $id;
			next unless $first;
			my $order = join("\0", $grp, $h, $db // '', $key // '');
			my $last = $last_seq{$order};
			violation('I4', "$name effects id $id: group $grp, handler $h, key "
				  . ($key // 'NULL') . ': seq ' . ($seq // 'NULL') . " after $last->[0] ($last->[1])")
			  if $last && defined $seq && $seq <= $last->[0];
			$last_seq{$order} = [ $seq, $event_id ] if defined $seq;
		}
		my %claimed;
		for my $s (grep { $_->{db} eq $name } @subscriptions)
		{
			my $unit = "$s->{group}\0$s->{handler}";
			for my $e (grep { $_->{topic} eq $s->{topic} } map { $committed{$_} } sort keys %committed)
			{
				my $ids = $effects{$unit}{ $e->{event_id} } // [];
				$claimed{$unit}{ $e->{event_id} } = 1;
				my $want = expected($s, $e) eq 'effect' ? 1 : 0;
				next if @$ids == $want;
				violation('I3', "$name group $s->{group} handler $s->{handler}: "
					  . scalar(@$ids) . " effects (want $want) of " . describe($e->{event_id})
					  . (@$ids ? " (effect ids @$ids)" : ''));
			}
		}
		for my $unit (sort keys %effects)
		{
			my ($grp, $h) = split /\0/, $unit;
			for my $event_id (sort keys %{ $effects{$unit} })
			{
				next if $claimed{$unit}{$event_id};
				violation('I3', "$name group $grp handler $h: effect of $event_id, which no "
					  . "subscription of it expects (effect ids @{ $effects{$unit}{$event_id} })");
			}
		}
	}
	return;
}

# check_dead_letters(): I5, per database: the consume-side dead letters
# are exactly the (group, handler, event) that must end dead, once each.
sub check_dead_letters
{
	for my $name (sort keys %dbs)
	{
		my %dead;
		for my $row (@{ $dbs{$name}{dead_letters} })
		{
			my ($grp, $handler, $message_id, $event_id) = @$row;
			my $unit = join("\0", $grp // '', handler_name($handler), $event_id // "message $message_id");
			push @{ $dead{$unit} }, $message_id // 'NULL';
		}
		for my $s (grep { $_->{db} eq $name } @subscriptions)
		{
			for my $e (grep { $_->{topic} eq $s->{topic} } map { $committed{$_} } sort keys %committed)
			{
				my $unit = join("\0", $s->{group}, $s->{handler}, $e->{event_id});
				my $have = delete $dead{$unit} // [];
				my $want = expected($s, $e) eq 'dead' ? 1 : 0;
				next if @$have == $want;
				violation('I5', "$name group $s->{group} handler $s->{handler}: "
					  . scalar(@$have) . " dead letters (want $want) of " . describe($e->{event_id}));
			}
		}
		for my $unit (sort keys %dead)
		{
			my ($grp, $h, $what) = split /\0/, $unit;
			violation('I5', "$name group $grp handler $h: dead letter of $what, which no "
				  . "subscription of it expects (message ids @{ $dead{$unit} })");
		}
	}
	return;
}

# check_drain(): I6: drained within the bound, and every outbox empty.
sub check_drain
{
	my ($drain, $bound) = ($meta{drain_s}, $meta{drain_bound_s});
	my $number = qr/^\d+(?:\.\d+)?$/;
	if (!defined $drain || $drain !~ $number)
	{
		violation('I6', 'drain: ' . ($drain // 'not recorded'));
	}
	elsif (!defined $bound || $bound !~ $number)
	{
		violation('I6', 'drain bound: ' . ($bound // 'not recorded'));
	}
	elsif ($drain > $bound)
	{
		violation('I6', "drain took $drain s, over the bound of $bound s");
	}
	for my $name (sort keys %dbs)
	{
		my $left = $dbs{$name}{outbox_left};
		violation('I6', "$name: " . (defined $left ? "$left events left in evbus.outbox"
			  : 'outbox_left not recorded'))
		  if !defined $left || $left ne '0';
	}
	return;
}

# per_name(hash): " (a 3, b 4)": counts by name, sorted; '' for none.
sub per_name
{
	my ($h) = @_;
	return %$h ? ' (' . join(', ', map { "$_ $h->{$_}" } sort keys %$h) . ')' : '';
}

# print_summary(duplicates): the one summary, last line PASS or FAIL.
sub print_summary
{
	my ($duplicates) = @_;
	my (%committed_per, %effects_per, %dead_per, %messages_per, %faults_per);
	my ($effects, $dead, $messages) = (0, 0, 0);
	$committed_per{ $_->{source} }++ for values %committed;
	for my $name (keys %dbs)
	{
		$effects_per{$name} = @{ $dbs{$name}{effects} };
		$dead_per{$name} = @{ $dbs{$name}{dead_letters} };
		$effects += $effects_per{$name};
		$dead += $dead_per{$name};
	}
	for my $topic (keys %kafka)
	{
		$messages_per{$topic} = @{ $kafka{$topic} };
		$messages += $messages_per{$topic};
	}
	$faults_per{ $_->[1] // '?' }++ for @faults;

	print "campaign check of $hist\n";
	print "  seed $meta{seed}, duration $meta{duration_s} s, max_retries $meta{max_retries}\n"
	  if defined $meta{seed} && defined $meta{duration_s} && defined $meta{max_retries};
	printf "  events committed: %d%s%s\n", scalar(keys %committed), per_name(\%committed_per),
	  defined $meta{events_staged} ? "; staged by the workload: $meta{events_staged}" : '';
	printf "  messages in Kafka: %d%s\n", $messages, per_name(\%messages_per);
	print "  duplicates in Kafka: $duplicates\n";
	printf "  effects: %d%s\n", $effects, per_name(\%effects_per);
	printf "  dead letters: %d%s\n", $dead, per_name(\%dead_per);
	printf "  faults: %d%s\n", scalar(@faults), per_name(\%faults_per);
	my $drain = $meta{drain_s} // 'not recorded';
	$drain .= ' s' if $drain =~ /^[\d.]+$/;
	printf "  drain: %s (bound %s s)\n", $drain, $meta{drain_bound_s} // '?';
	my $total = 0;
	print "  violations:\n";
	for my $id (sort keys %violations)
	{
		my @v = @{ $violations{$id} };
		$total += @v;
		printf "    %s %s: %d\n", $id, $why{$id}, scalar @v;
		print "      $_\n" for @v[ 0 .. ($#v < 4 ? $#v : 4) ];
		print '      ... and ', @v - 5, " more\n" if @v > 5;
	}
	print $total ? "campaign: FAIL ($total violations)\n" : "campaign: PASS\n";
	return;
}

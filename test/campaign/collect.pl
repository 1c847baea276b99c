#!/usr/bin/env perl
# collect.pl - read back what a fault campaign left behind, into the
# history directory HIST that check.pl judges.
#
#   collect.pl --out HIST --kafka-dir DIR --kafka-sh PATH --topics t1,t2
#              --db NAME=CONNINFO [--db NAME=CONNINFO ...]
#              [--psql PATH] [--read-timeout S]
#
# Kafka is read with a client that is not evbus: Kafka's own Java console
# consumer, through `kafka.sh consume DIR TOPIC N TIMEOUT` (DIR/bootstrap
# holds the bootstrap servers).  A topic is read in full: first its log
# start and end offsets per partition (Kafka's GetOffsetShell, from the
# jars kafka.sh runs), whose differences add up to N, the number of
# messages it holds (evbus does not produce transactionally, so there are
# no control records between them); then the consumer is asked for exactly
# N and exits as soon as it has them.  Each read is checked against the end
# offsets: per partition, the messages read must be the offsets from start
# to end.  Should the offsets be unknown (GetOffsetShell failing), the
# consumer is asked for more than can be there and its idle timeout ends it.
#
# Written:
#   HIST/kafka/<topic>.tsv           the console consumer's lines as they are:
#                                    Partition:P TAB Offset:O TAB HEADERS TAB
#                                    KEY TAB VALUE
#   HIST/kafka/<topic>.offsets.tsv   partition TAB start TAB end (what the
#                                    read was checked against)
#   HIST/db/<NAME>/committed.tsv     campaign.committed (COPY text format):
#                                    event_id db topic key seq fail_times
#                                    caused_by committed_at
#   HIST/db/<NAME>/effects.tsv       campaign.effects: id grp db handler
#                                    event_id key seq handled_at
#   HIST/db/<NAME>/dead_letters.tsv  evbus.dead_letters, direction consume:
#                                    group_name handler message_id event_id
#   HIST/db/<NAME>/subscriptions.tsv evbus.subscriptions: group_name
#                                    integration_event topic handler
#                                    max_retries (topic = evbus.topic_prefix
#                                    || integration_event)
#   HIST/db/<NAME>/outbox_left.tsv   count(*) of evbus.outbox
#
# Each file is written beside its name and renamed into place, so that a
# file present is a complete one.  Exit 0 when every topic and table was
# read in full; 1 when something could not be (what was read is still
# written, and the reason is on stderr); 2 on a usage error.
use strict;
use warnings;

use File::Basename qw(dirname);
use File::Path qw(make_path);
use Getopt::Long qw(GetOptions);
use Time::HiRes qw(time sleep);

my %opt = (psql => 'psql', 'read-timeout' => 120);
my @dbs;
GetOptions(\%opt, 'out=s', 'kafka-dir=s', 'kafka-sh=s', 'topics=s', 'db=s' => \@dbs,
	'psql=s', 'read-timeout=i')
  or usage();
usage() unless $opt{out} && $opt{'kafka-dir'} && $opt{'kafka-sh'} && defined $opt{topics};
for (@dbs)
{
	usage("--db wants NAME=CONNINFO, not '$_'") unless /^[A-Za-z0-9_.-]+=./;
}

my $failures = 0;
make_path("$opt{out}/kafka", map { "$opt{out}/db/" . (split /=/)[0] } @dbs);
my @topics = grep { length } split /,/, $opt{topics};
my $end = @topics ? offsets(-1, @topics) : {};
my $start = $end && %$end ? offsets(-2, @topics) : {};
for my $topic (@topics)
{
	my ($s, $e) = $end && $start ? ($start->{$topic} // {}, $end->{$topic} // {}) : ();
	$failures++ unless collect_topic($topic, $s, $e);
}
for my $db (@dbs)
{
	my ($name, $conninfo) = split /=/, $db, 2;
	$failures++ unless collect_database($name, $conninfo);
}
exit($failures ? 1 : 0);

# usage([message]): print the synopsis (and why) and exit 2.
sub usage
{
	my ($why) = @_;
	print STDERR "collect.pl: $why\n" if $why;
	print STDERR "usage: collect.pl --out HIST --kafka-dir DIR --kafka-sh PATH --topics t1,t2"
	  . " --db NAME=CONNINFO [--db ...] [--psql PATH] [--read-timeout S]\n";
	exit 2;
}

# warn_line(text): one line on stderr, prefixed with the program's name.
sub warn_line
{
	print STDERR "collect.pl: $_[0]\n";
	return;
}

# write_file(path, text): write text to path through a temporary file
# renamed into place, so that a reader never sees half a file.
sub write_file
{
	my ($path, $text) = @_;
	open(my $fh, '>', "$path.tmp") or die "collect.pl: $path.tmp: $!\n";
	print $fh $text;
	close($fh) or die "collect.pl: $path.tmp: $!\n";
	rename("$path.tmp", $path) or die "collect.pl: rename $path.tmp: $!\n";
	return;
}

# run_capture(cmd...): run a command; returns (exit status, stdout, stderr).
# stdout and stderr go through temporary files, so that neither pipe can
# fill up and block the other.
sub run_capture
{
	my @cmd = @_;
	my $tmp = "$opt{out}/.collect.$$";
	my $pid = fork() // die "collect.pl: fork: $!\n";
	if ($pid == 0)
	{
		open(STDIN, '<', '/dev/null');
		open(STDOUT, '>', "$tmp.out") or die "$tmp.out: $!";
		open(STDERR, '>', "$tmp.err") or die "$tmp.err: $!";
		exec(@cmd) or die "cannot run $cmd[0]: $!";
	}
	waitpid($pid, 0);
	my $rc = $? >> 8;
	my ($out, $err) = map { slurp("$tmp.$_") } qw(out err);
	unlink "$tmp.out", "$tmp.err";
	return ($rc, $out, $err);
}

# slurp(path): the whole file, '' when it cannot be read.
sub slurp
{
	my ($path) = @_;
	open(my $fh, '<', $path) or return '';
	local $/;
	my $text = <$fh>;
	return $text // '';
}

# java(): the JVM kafka.sh would run: JAVA_HOME's, else java on PATH.
sub java
{
	return "$ENV{JAVA_HOME}/bin/java" if $ENV{JAVA_HOME} && -x "$ENV{JAVA_HOME}/bin/java";
	return 'java';
}

# offsets(time, topics...): topic => { partition => offset } at
# GetOffsetShell's --time (-1: the end, -2: the log start), for all the
# topics in one run of the tool; undef when it failed.  A topic that does
# not exist has no partitions: it is absent.
sub offsets
{
	my ($when, @topics) = @_;
	my $dir = $opt{'kafka-dir'};
	my $libs = $ENV{EVBUS_KAFKA_LIBS} || dirname($opt{'kafka-sh'}) . '/libs';
	my $bootstrap = slurp("$dir/bootstrap");
	$bootstrap =~ s/\s+//g;
	my @log = -f "$dir/tools-log4j2.properties"
	  ? ("-Dlog4j2.configurationFile=$dir/tools-log4j2.properties") : ();
	my $regex = '^(' . join('|', map { quotemeta } @topics) . ')$';
	my ($rc, $out, $err) = run_capture(
		'timeout', '--kill-after=5', 60, java(), '-Xmx256m', '-XX:TieredStopAtLevel=1',
		'-XX:+UseSerialGC', @log, '-cp', "$libs/*", 'org.apache.kafka.tools.GetOffsetShell',
		'--bootstrap-server', $bootstrap, '--topic', $regex, '--time', $when);
	if ($rc != 0)
	{
		# no topic exists yet: none holds a message
		return {} if $err =~ /Could not match any topic-partitions/;
		$err =~ s/\s+\z//;
		warn_line("GetOffsetShell --time $when failed (exit $rc): " . substr($err, -500));
		return undef;
	}
	my %at;
	for (split /\n/, $out)
	{
		$at{$1}{$2} = $3 if /^(.*):(\d+):(\d+)$/;
	}
	return \%at;
}

# consume(topic, n, timeout): the console consumer's lines for the first n
# messages of topic (fewer on timeout) and whether kafka.sh failed.
sub consume
{
	my ($topic, $n, $timeout) = @_;
	my ($rc, $out, $err) = run_capture('bash', $opt{'kafka-sh'}, 'consume', $opt{'kafka-dir'},
		$topic, $n, $timeout);
	if ($rc != 0 && $rc != 3)
	{
		$err =~ s/\s+\z//;
		warn_line("kafka.sh consume $topic failed (exit $rc): " . substr($err, -500));
	}
	return ($out, $rc != 0 && $rc != 3);
}

# read_gaps(lines, start, end): what is wrong with a read against the
# offsets: per partition every offset from start to end, once; '' if all.
sub read_gaps
{
	my ($text, $start, $end) = @_;
	my %seen;
	for (split /\n/, $text)
	{
		$seen{$1}{$2}++ if /^Partition:(\d+)\tOffset:(\d+)\t/;
	}
	my @gaps;
	for my $p (sort { $a <=> $b } keys %$end)
	{
		my $from = $start->{$p} // 0;
		my $got = scalar keys %{ $seen{$p} // {} };
		my $want = $end->{$p} - $from;
		push @gaps, "partition $p: $got of $want messages (offsets $from..$end->{$p})"
		  if $got != $want;
	}
	return join('; ', @gaps);
}

# collect_topic(topic, start, end): write HIST/kafka/<topic>.tsv and
# .offsets.tsv, given the topic's offsets (partition => offset; undef when
# unknown); true when the whole topic was read.
sub collect_topic
{
	my ($topic, $start, $end) = @_;
	my $path = "$opt{out}/kafka/$topic.tsv";
	if (!$end)
	{
		# offsets unknown: ask for more than can be there; the idle timeout ends it
		my ($text, $failed) = consume($topic, 1_000_000_000, $opt{'read-timeout'});
		write_file($path, $text);
		warn_line("$topic: end offsets unknown; read until idle for $opt{'read-timeout'} s");
		return 0;
	}
	write_file("$opt{out}/kafka/$topic.offsets.tsv",
		join('', map { "$_\t" . ($start->{$_} // 0) . "\t$end->{$_}\n" } sort { $a <=> $b } keys %$end));
	my $n = 0;
	$n += $end->{$_} - ($start->{$_} // 0) for keys %$end;
	if ($n == 0)
	{
		write_file($path, '');
		return 1;
	}
	# a generous limit: a JVM start, a group join, then about 1000 messages a second
	my $timeout = $opt{'read-timeout'} + int($n / 1000);
	my ($text, $gaps);
	for my $try (1 .. 2)
	{
		my $failed;
		($text, $failed) = consume($topic, $n, $timeout);
		$gaps = $failed ? 'the consumer failed' : read_gaps($text, $start, $end);
		last if $gaps eq '';
		warn_line("$topic: read $try incomplete: $gaps");
		$timeout *= 2;
	}
	write_file($path, $text);
	return $gaps eq '';
}

# psql_copy(conninfo, query): the COPY text of the query's rows, or undef
# when psql failed three times (a server restarting after a fault gets a
# few seconds).
sub psql_copy
{
	my ($conninfo, $query) = @_;
	my ($rc, $out, $err);
	for my $try (1 .. 3)
	{
		($rc, $out, $err) = run_capture($opt{psql}, '-AtX', '-v', 'ON_ERROR_STOP=1', '-d',
			$conninfo, '-c', "COPY ($query) TO STDOUT");
		return $out if $rc == 0;
		sleep 2;
	}
	$err =~ s/\s+\z//;
	warn_line("psql failed (exit $rc) for: $query: $err");
	return undef;
}

# collect_database(name, conninfo): write HIST/db/<name>/*.tsv; true when
# every table was read.
sub collect_database
{
	my ($name, $conninfo) = @_;
	my %queries = (
		committed => q{SELECT event_id, db, topic, key, seq, fail_times, caused_by, committed_at
			FROM campaign.committed ORDER BY event_id},
		effects => q{SELECT id, grp, db, handler, event_id, key, seq, handled_at
			FROM campaign.effects ORDER BY id},
		dead_letters => q{SELECT group_name, handler, message_id, payload->>'event_id'
			FROM evbus.dead_letters WHERE direction = 'consume' ORDER BY id},
		subscriptions => q{SELECT group_name, integration_event,
				coalesce(current_setting('evbus.topic_prefix', true), '') || integration_event,
				handler, max_retries
			FROM evbus.subscriptions ORDER BY group_name, integration_event, handler},
		outbox_left => q{SELECT count(*) FROM evbus.outbox});
	my $ok = 1;
	for my $table (sort keys %queries)
	{
		my $rows = psql_copy($conninfo, $queries{$table});
		if (defined $rows)
		{
			write_file("$opt{out}/db/$name/$table.tsv", $rows);
		}
		else
		{
			$ok = 0;
		}
	}
	return $ok;
}

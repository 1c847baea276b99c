# EvbusTest.pm - helpers for the evbus TAP tests (test/t/*.pl).
#
# The tests run under prove with PostgreSQL 15's PGXS Perl modules on @INC
# (test/run-tests.sh sets everything up):
#
#   prove -I test/lib -I /usr/lib/postgresql/15/lib/pgxs/src/test/perl test/t/*.pl
#
# and with one Kafka broker for the whole run, started by test/kafka/kafka.sh
# and described by the environment:
#
#   EVBUS_TEST_KAFKA_BOOTSTRAP  127.0.0.1:PORT
#   EVBUS_TEST_KAFKA_DIR        the broker's state dir (for stop/start/kill)
#   EVBUS_TEST_KAFKA_SH         path of kafka.sh (default: ../kafka/kafka.sh
#                               next to this file)
#
# Exported functions:
#
#   kafka_bootstrap()       the bootstrap address; skip_all if no broker
#   kafka_dir()             the broker's state dir; skip_all if unset
#   kafka_stop()            stop the broker (SIGTERM, waits until gone)
#   kafka_kill()            SIGKILL the broker (a crash)
#   kafka_start()           (re)start it: same port, same data; returns address
#   private_kafka()         start a broker of this test's own, in a temporary
#                           directory, and point every helper here (and
#                           EVBUS_TEST_KAFKA_*) at it for the rest of the
#                           test; SIGKILLed at exit.  For a test that stops,
#                           kills or freezes its broker, so that it can run
#                           beside the others (the Makefile's TAP_ALONE is
#                           for what loads the whole machine)
#   kafka_admin($tool, @args)
#                           kafka.sh topics|configs|acls|delete-records:
#                           Kafka's command of that name against the broker
#   kcat_consume($topic, $n, $timeout)
#                           the first $n messages of $topic read from the
#                           beginning with kcat (librdkafka), retrying until
#                           $n are there or $timeout s passed; a list of
#                           { topic, partition, offset, key, payload,
#                             headers => { name => value },
#                             header_list => [ [name, value], ... ] }
#                           (a null key/payload is undef; fewer than $n on
#                           timeout)
#   kafka_message_ids($topic, $n, $timeout)
#                           the distinct cap-msg-ids of $topic, sorted, read
#                           again every 0.1 s until at least $n are there or
#                           $timeout s passed
#   first_arrivals_by_key(@msgs)
#                           for messages whose payloads carry "seq":
#                           (\%seen seq => count, duplicates, whether per key
#                           the first arrivals come in seq order; a diag for
#                           each that does not)
#   java_consume($topic, $n, $timeout)
#                           the same through Kafka's Java console consumer:
#                           its raw output lines (no newline), format
#                           "Partition:P\tOffset:O\tHEADERS\tKEY\tVALUE" with
#                           HEADERS "h1:v1,h2:v2" or NO_HEADERS (see kafka.sh)
#   java_produce($topic, @lines)
#                           send one message per line through Kafka's Java
#                           console producer; line "HEADERS\tKEY\tVALUE", \N
#                           for null / no headers (see kafka.sh); dies on error
#   wait_for_sql($node, $db, $sql, $expected = 't', $timeout = 60)
#                           poll $sql in $db until it returns $expected, in
#                           real time; errors (a restarting server) just
#                           mean "not yet"; true on success, else diag
#   new_shop($node, $event[, $db, $group])
#                           a database "shop" (or $db) with evbus, a table
#                           received (payload jsonb) and a function
#                           record_received(payload jsonb) that inserts into
#                           it, subscribed to $event by evbus_app
#                           (as_subscriber), in $group if given
#   restart_workers($node, $db)
#                           terminate the publisher and consumer of $db, so
#                           that the launcher starts new ones, which take the
#                           database's settings as they are now
#   sasl_acl_broker()       ($bootstrap, $password) of the broker's SASL
#                           listener, where its ACLs apply to the user evbus
#                           (test/kafka/kafka.sh); skip_all without one
#   as_subscriber($node[, $db])
#                           "SET ROLE evbus_app; ": put it before the SQL
#                           that creates handlers (and their tables) and
#                           subscribes them.  Creates the role evbus_app
#                           once (not a superuser: a handler never runs as
#                           one, and it must own its handler), allowed to
#                           create in schema public and to call the evbus
#                           API
#   new_node($name, %opts)  a started PostgreSQL::Test::Cluster node with
#                           shared_preload_libraries = 'evbus'.  Options:
#                             conf  => "lines" or [lines] appended to
#                                      postgresql.conf
#                             kafka => 1  also sets evbus.brokers to
#                                      kafka_bootstrap()
#                             init  => { ... } passed to $node->init
#                                      (initdb always gets --encoding=UTF8)
#                             start => 0  leave it stopped
package EvbusTest;

use strict;
use warnings;

use Exporter 'import';
use File::Basename qw(dirname);
use File::Spec;
use IPC::Run ();
use JSON::PP ();
use Time::HiRes qw(time sleep);
use Test::More;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;

our @EXPORT = qw(kafka_bootstrap kafka_dir kafka_stop kafka_kill kafka_start private_kafka kafka_admin wait_for_sql
  wait_for_crash_restart kill_holding_handler kcat_consume kafka_message_ids java_consume java_produce new_node sqlstate_of
  subscribe_recorder new_shop as_subscriber write_kafka_properties sasl_properties sasl_acl_broker
  pgbench_script run_pgbench restart_workers
  first_arrivals_by_key stage_keyed handled_out_of_order);

# kafka.sh: from the environment, else next to this file's directory.
sub kafka_sh
{
	return $ENV{EVBUS_TEST_KAFKA_SH}
	  || File::Spec->rel2abs(dirname(__FILE__) . '/../kafka/kafka.sh');
}

# kafka_admin('topics' | 'configs' | 'acls' | 'delete-records', @args): run
# Kafka's command of that name against the broker; dies on failure.
sub kafka_admin
{
	my ($tool, @args) = @_;
	my $rc = system('bash', kafka_sh(), $tool, kafka_dir(), @args);
	die "kafka.sh $tool @args failed\n" if $rc != 0;
	return;
}

sub kafka_bootstrap
{
	my $b = $ENV{EVBUS_TEST_KAFKA_BOOTSTRAP};
	plan skip_all =>
	  'no Kafka broker: EVBUS_TEST_KAFKA_BOOTSTRAP is unset (run test/run-tests.sh)'
	  unless $b;
	return $b;
}

sub kafka_dir
{
	my $d = $ENV{EVBUS_TEST_KAFKA_DIR};
	plan skip_all =>
	  'no Kafka broker dir: EVBUS_TEST_KAFKA_DIR is unset (run test/run-tests.sh)'
	  unless $d;
	return $d;
}

# Run kafka.sh with arguments; return its stdout (chomped); die on failure.
# Its stderr goes to the test's log (PostgreSQL::Test::Utils redirects it).
sub _kafka_sh
{
	my @cmd = ('bash', kafka_sh(), @_);
	open(my $fh, '-|', @cmd) or die "cannot run @cmd: $!";
	my $out = do { local $/; <$fh> } // '';
	close $fh;
	die "kafka.sh @_ failed (exit " . ($? >> 8) . ")\n" if $?;
	$out =~ s/\s+\z//;
	return $out;
}

sub kafka_stop
{
	_kafka_sh('stop', kafka_dir());
	return;
}

sub kafka_kill
{
	_kafka_sh('kill', kafka_dir());
	return;
}

sub kafka_start
{
	my $addr = _kafka_sh('start', kafka_dir());
	my $want = $ENV{EVBUS_TEST_KAFKA_BOOTSTRAP};
	die "broker restarted at $addr, expected $want\n"
	  if defined $want && $addr ne $want;
	return $addr;
}

# The directory of the broker private_kafka started, killed at exit.
my $private_kafka_dir;

sub private_kafka
{
	kafka_bootstrap();
	$private_kafka_dir = PostgreSQL::Test::Utils::tempdir('kafka');
	my $addr = _kafka_sh('start', $private_kafka_dir);
	$ENV{EVBUS_TEST_KAFKA_DIR} = $private_kafka_dir;
	$ENV{EVBUS_TEST_KAFKA_BOOTSTRAP} = $addr;
	return $addr;
}

END
{
	# Kill (not stop) the private broker: its directory goes with the
	# test, and the test's nodes are torn down with an immediate stop,
	# which waits for no broker.
	local $?;
	system('bash', kafka_sh(), 'kill', $private_kafka_dir)
	  if defined $private_kafka_dir;
}

sub kcat_consume
{
	my ($topic, $n, $timeout) = @_;
	$timeout //= 30;
	my $addr     = kafka_bootstrap();
	my $deadline = time() + $timeout;
	my @msgs;
	my $json = JSON::PP->new->utf8;
	# kcat writes a value that is not UTF-8 as it is, which is not JSON
	# text: read such a line as bytes (each byte one character) instead
	my $bytes_json = JSON::PP->new;
	while (1)
	{
		# -e: stop at the end of every partition; -c: at most $n messages;
		# -m: metadata timeout; `timeout` caps a hung run.  Each run reads
		# the whole topic, so it gets its own generous limit: cutting a run
		# short would return a partial read.
		my @cmd = (
			'timeout', 120, 'kcat', '-C', '-b', $addr, '-t', $topic,
			'-J', '-e', '-q', '-o', 'beginning', '-c', $n, '-m', 5);
		open(my $fh, '-|', @cmd) or die "cannot run kcat: $!";
		@msgs = ();
		while (my $line = <$fh>)
		{
			next unless $line =~ /^\{/;
			my $m = eval { $json->decode($line) } // $bytes_json->decode($line);
			my @h = @{ $m->{headers} // [] };
			my (%headers, @list);
			while (@h)
			{
				my ($k, $v) = splice(@h, 0, 2);
				$headers{$k} = $v;
				push @list, [ $k, $v ];
			}
			push @msgs,
			  {
				topic       => $m->{topic},
				partition   => $m->{partition},
				offset      => $m->{offset},
				key         => $m->{key},
				payload     => $m->{payload},
				headers     => \%headers,
				header_list => \@list,
			  };
		}
		close $fh;
		last if @msgs >= $n || time() >= $deadline;
		sleep 0.5;
	}
	return @msgs;
}

sub kafka_message_ids
{
	my ($topic, $n, $timeout) = @_;
	my $deadline = time() + $timeout;
	my %ids;
	while (1)
	{
		%ids = map { $_->{headers}{'cap-msg-id'} => 1 } kcat_consume($topic, 1000, 0);
		last if keys %ids >= $n || time() >= $deadline;
		sleep 0.1;
	}
	return sort keys %ids;
}

# A message produced again (same message id) arrives twice: per key, only
# first arrivals must be in the order staged.
sub first_arrivals_by_key
{
	my (%seen, %last);
	my ($dups, $in_order) = (0, 1);
	for my $m (@_)
	{
		my ($seq) = $m->{payload} =~ /"seq":(\d+)/;
		if ($seen{$seq}++)
		{
			$dups++;
			next;
		}
		if (defined $last{ $m->{key} } && $seq < $last{ $m->{key} })
		{
			diag("key $m->{key}: seq $seq after $last{ $m->{key} }");
			$in_order = 0;
		}
		$last{ $m->{key} } = $seq;
	}
	return (\%seen, $dups, $in_order);
}

sub java_consume
{
	my ($topic, $n, $timeout) = @_;
	$timeout //= 30;
	my @cmd = ('bash', kafka_sh(), 'consume', kafka_dir(), $topic, $n, $timeout);
	open(my $fh, '-|', @cmd) or die "cannot run @cmd: $!";
	my @lines = <$fh>;
	close $fh;
	my $rc = $? >> 8;
	die "kafka.sh consume $topic failed (exit $rc)\n" if $rc != 0 && $rc != 3;
	chomp @lines;
	return @lines;
}

sub java_produce
{
	my ($topic, @lines) = @_;
	my @cmd = ('bash', kafka_sh(), 'produce', kafka_dir(), $topic);
	open(my $fh, '|-', @cmd) or die "cannot run @cmd: $!";
	print $fh "$_\n" for @lines;
	close $fh;
	die "kafka.sh produce $topic failed (exit " . ($? >> 8) . ")\n" if $?;
	return;
}

sub wait_for_sql
{
	my ($node, $db, $sql, $expected, $timeout) = @_;
	$expected //= 't';
	$timeout //= 60;
	my $deadline = time() + $timeout;
	my ($ret, $out, $err);
	while (1)
	{
		($ret, $out, $err) = $node->psql($db, $sql);
		return 1 if $ret == 0 && $out eq $expected;
		last if time() >= $deadline;
		sleep 0.2;
	}
	diag "waited ${timeout}s for: $sql\n  want: $expected\n  got:  $out $err";
	return 0;
}

# wait_for_crash_restart($node, $crashes[, $timeout]): after a process was
# killed, wait until the server log shows $crashes crash restarts completed
# (a query sent before that would lose its connection to the restart).
sub wait_for_crash_restart
{
	my ($node, $crashes, $timeout) = @_;
	$timeout //= 60;
	my $deadline = time() + $timeout;
	while (time() < $deadline)
	{
		my @done = PostgreSQL::Test::Utils::slurp_file($node->logfile) =~
		  /terminated by signal 9.*?reinitializing.*?database system is ready to accept connections/sg;
		return 1 if @done >= $crashes;
		sleep 0.2;
	}
	diag "no crash restart #$crashes in ${timeout}s";
	return 0;
}

# kill_holding_handler($node, $crashes, $what): wait until a handler
# holds (it set application_name 'evbus-test-holding'), kill its process
# with SIGKILL and wait for crash restart number $crashes; two assertions
# named after $what.  Returns the killed pid.
sub kill_holding_handler
{
	my ($node, $crashes, $what) = @_;
	my $holding = q{FROM pg_stat_activity WHERE application_name = 'evbus-test-holding'};
	ok(wait_for_sql($node, 'postgres', "SELECT count(*) $holding", '1', 90),
		"$what: the handler runs and holds");
	my $pid = $node->safe_psql('postgres', "SELECT pid $holding");
	note "$what: killing pid $pid inside the handler";
	kill 'KILL', $pid;
	ok(wait_for_crash_restart($node, $crashes), "$what: the server restarted after the crash");
	return $pid;
}

# write_kafka_properties(path, lines...): (re)write a librdkafka properties
# file for evbus.kafka_config_file, mode 600 (it may hold secrets), in
# place: written beside it and renamed over it, so that a worker never
# reads half a file.
sub write_kafka_properties
{
	my ($path, @lines) = @_;
	open my $fh, '>', "$path.new" or die "$path.new: $!";
	print $fh map { "$_\n" } @lines;
	close $fh;
	chmod 0600, "$path.new";
	rename "$path.new", $path or die "rename $path.new: $!";
}

# sasl_properties(password): the properties that log in to the test
# broker's SASL listener as its user evbus (test/kafka/kafka.sh).
sub sasl_properties
{
	my ($password) = @_;
	return ('security.protocol=SASL_PLAINTEXT', 'sasl.mechanisms=PLAIN',
		'sasl.username=evbus', "sasl.password=$password");
}

# sasl_acl_broker(): see the top of this file.
sub sasl_acl_broker
{
	kafka_bootstrap();
	my $kdir = kafka_dir();
	my $acls = 0;
	if (open my $props, '<', "$kdir/server.properties")
	{
		$acls = grep { /^authorizer\.class\.name=/ } <$props>;
	}
	plan skip_all =>
	  "the broker in $kdir has no SASL listener or no ACLs (started by an older kafka.sh)"
	  unless -f "$kdir/sasl_bootstrap" && $acls;
	my $bootstrap = slurp_file("$kdir/sasl_bootstrap");
	chomp $bootstrap;
	my $password = slurp_file("$kdir/sasl_password");
	chomp $password;
	return ($bootstrap, $password);
}

# as_subscriber(node[, db]): see the top of this file.
sub as_subscriber
{
	my ($node, $db) = @_;
	$node->safe_psql(
		$db // 'postgres', q{
DO $$
BEGIN
	IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'evbus_app') THEN
		CREATE ROLE evbus_app;
	END IF;
END $$;
GRANT CREATE, USAGE ON SCHEMA public TO evbus_app;
GRANT USAGE ON SCHEMA evbus TO evbus_app;
GRANT EXECUTE ON FUNCTION evbus.subscribe(text, regprocedure, text, integer),
	evbus.unsubscribe(text, regprocedure, text),
	evbus.publish(text, jsonb, text, jsonb, timestamptz),
	evbus.retry(uuid) TO evbus_app;
});
	return 'SET ROLE evbus_app; ';
}

# subscribe_recorder(node, event): in database postgres, a table
# received (message_id, payload) and a handler that inserts every event
# of the integration event into it, subscribed with the default group by
# the role evbus_app, which owns both (as_subscriber).
sub subscribe_recorder
{
	my ($node, $event) = @_;
	$node->safe_psql(
		'postgres', as_subscriber($node) . qq{
CREATE TABLE received (message_id uuid, payload jsonb);
CREATE PROCEDURE record_received(payload jsonb, headers jsonb) LANGUAGE sql
	AS \$\$ INSERT INTO public.received VALUES ((headers->>'cap-msg-id')::uuid, payload) \$\$;
SELECT evbus.subscribe('$event', 'record_received(jsonb, jsonb)');
});
}

# new_shop(node, event): see the top of this file.
sub new_shop
{
	my ($node, $event, $db, $group) = @_;
	$db //= 'shop';
	my $in_group = defined $group ? ", '$group'" : '';
	$node->safe_psql('postgres', "CREATE DATABASE $db");
	$node->safe_psql($db, 'CREATE EXTENSION evbus');
	$node->safe_psql(
		$db, as_subscriber($node, $db) . qq{
CREATE TABLE received (payload jsonb);
CREATE FUNCTION record_received(payload jsonb) RETURNS void LANGUAGE sql
	AS \$\$ INSERT INTO public.received VALUES (payload) \$\$;
SELECT evbus.subscribe('$event', 'record_received(jsonb)'$in_group);
});
	return;
}

# restart_workers(node, db): see the top of this file.
sub restart_workers
{
	my ($node, $db) = @_;
	$node->safe_psql('postgres',
		qq{SELECT pg_terminate_backend(pid) FROM pg_stat_activity
		   WHERE datname = '$db' AND backend_type IN ('evbus publisher', 'evbus consumer')});
	return;
}

# sqlstate_of(node, db, sql): the SQLSTATE of the error sql raises ('' if none)
sub sqlstate_of
{
	my ($node, $db, $sql) = @_;
	my ($ret, $out, $err) = $node->psql($db, "\\set VERBOSITY verbose\n$sql");
	return $err =~ /ERROR:\s+([0-9A-Z]{5}):/ ? $1 : '';
}

# stage_keyed($node, $event, $n, $at, $extra): stage events seq 1..$n of
# $event in one transaction of database postgres, payload {"event", "seq",
# "key"}, keys k0..k2 round robin (key k(seq % 3)); $extra (optional) is a
# JSON member added to the payload of event seq $at.
sub stage_keyed
{
	my ($node, $event, $n, $at, $extra) = @_;
	my $s = "BEGIN;\n";
	for my $i (1 .. $n)
	{
		my $k = 'k' . ($i % 3);
		my $more = defined $at && $i == $at ? ", $extra" : '';
		$s .= "SELECT evbus.publish('$event', '{\"event\": \"$event\", \"seq\": $i, \"key\": \"$k\"$more}', '$k');\n";
	}
	$node->safe_psql('postgres', $s . "COMMIT;\n");
	return;
}

# handled_out_of_order($node, $event): how many pairs of $event's rows in
# table public.effects (id in handling order, seq, event_key, message_id)
# were handled against their order: against Kafka's order (their inbox
# rows' offsets, one partition), or against staging order within a key.
# Staging order across keys is not Kafka's: the publisher sends a key's
# first event alone and its later ones once it is confirmed
# (publish_keys.c), so keys may interleave differently on the topic.
sub handled_out_of_order
{
	my ($node, $event) = @_;
	return $node->safe_psql(
		'postgres', qq{
WITH e AS (SELECT f.id, f.seq, f.event_key, i.kafka_offset
             FROM public.effects f JOIN evbus.inbox i ON i.message_id = f.message_id::text
            WHERE f.event = '$event')
SELECT count(*) FROM e a JOIN e b ON a.id > b.id
 WHERE a.kafka_offset < b.kafka_offset OR (a.event_key = b.event_key AND a.seq < b.seq)});
}

# pgbench_script(name, text): write a pgbench script into the test's
# temporary directory; returns its path.
sub pgbench_script
{
	my ($name, $text) = @_;
	my $path = "${PostgreSQL::Test::Utils::tmp_check}/$name.sql";
	open(my $fh, '>', $path) or die "cannot write $path: $!";
	print $fh $text;
	close $fh;
	return $path;
}

# run_pgbench(node, script, options...): pgbench -n -M prepared with the
# options and the script against the node's postgres database.  Returns
# (ran ok, transactions processed, stderr).
sub run_pgbench
{
	my ($node, $script, @options) = @_;
	my ($out, $err) = ('', '');
	my $ok = IPC::Run::run(
		[
			'pgbench', '-n', '-M', 'prepared', @options,
			'-f', $script, '-h', $node->host, '-p', $node->port, 'postgres'
		],
		'>', \$out, '2>', \$err);
	my ($committed) = $out =~ /number of transactions actually processed: (\d+)/;
	return ($ok, $committed, $err);
}

sub new_node
{
	my ($name, %opts) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	# evbus needs UTF8 databases (CREATE EXTENSION refuses any other
	# encoding): a UTF8 cluster whatever the environment's locale, where a
	# POSIX one would give SQL_ASCII
	my %init = %{ $opts{init} // {} };
	$init{extra} = [ '--encoding=UTF8', @{ $init{extra} // [] } ];
	$node->init(%init);
	# two workers per database with evbus (publisher, consumer) and the
	# launcher: leave room for several databases
	my @conf = ("shared_preload_libraries = 'evbus'", 'max_worker_processes = 20');
	# workers that never exit for want of work, as the tests expect them
	# (a test of idle databases sets evbus.idle_timeout in its conf)
	push @conf, 'evbus.idle_timeout = 0';
	push @conf, "evbus.brokers = '" . kafka_bootstrap() . "'" if $opts{kafka};
	my $extra = $opts{conf} // [];
	push @conf, ref $extra ? @$extra : ($extra);
	$node->append_conf('postgresql.conf', join("\n", @conf) . "\n");
	$node->start unless defined $opts{start} && !$opts{start};
	return $node;
}

1;

# EvbusCampaign.pm - the randomized, seeded fault campaign against evbus:
# a three-broker Kafka cluster reached through toxiproxy
# (test/kafka/cluster.sh), one PostgreSQL node with two databases running
# the workload of test/campaign/workload.sql, a schedule of faults drawn
# from a seed, then the drain and the history directory that the
# campaign's checker (test/campaign/collect.pl, check.pl) reads.
#
# Used by test/t/400_fault_campaign.pl and bench/campaign.sh:
#
#   my $c = EvbusCampaign->new(seed => 42, duration => 150, dir => $tmp);
#   $c->setup;              # cluster, proxies, node, databases, workload
#   $c->run;                # producers + faults, then heal and drain
#   my $rc = $c->check;     # meta.tsv, faults.tsv, collect.pl, check.pl
#   $c->teardown;           # also done by DESTROY / an END block
#
# The history directory (HIST), written here before the checker runs:
#   HIST/meta.tsv    "name<TAB>value": seed, duration_s, max_retries,
#                    drain_s (seconds from the last healed fault to
#                    drained, or "timeout"), drain_bound_s, events_staged
#   HIST/faults.tsv  one line per fault: start_epoch, kind, target, detail
#
# Faults: kill_publisher, kill_consumer, kill_mid_handler (kill -9 of a
# worker: the postmaster restarts every process), stop_worker
# (pg_terminate_backend of a publisher or a consumer, whatever it is doing
# then: the launcher starts it again), pg_immediate_restart,
# broker_kill, leader_kill (kill -9 of a broker, restarted a few seconds
# later; at most one down at a time, as min.insync.replicas is 2),
# net_latency, net_reset, net_blackhole, net_slow (toxiproxy toxics on one
# or all proxies), broker_pause (SIGSTOP/SIGCONT of a broker's JVM),
# handler_timeout (events whose first handler attempt outlasts
# evbus.handler_timeout), and an operator's three actions: replay (the
# last seconds of a topic read again, without rerun: nothing may run
# twice), pause_subscription (one handler's subscription paused, its
# messages waiting, then resumed: they run in per-key order) and
# retry_dead_letters (the consume side dead letters of the last seconds
# requeued with evbus.retry: their handlers fail max_retries + 1 times
# again, and each ends as one dead letter again).  Each lasts a few
# seconds and is then healed.
package EvbusCampaign;

use strict;
use warnings;

use File::Basename qw(dirname);
use File::Path qw(make_path);
use File::Spec;
use HTTP::Tiny;
use IPC::Run ();
use JSON::PP ();
use Time::HiRes qw(time sleep);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use EvbusTest qw(new_node);

my $ROOT = File::Spec->rel2abs(dirname(__FILE__) . '/../..');
our $CLUSTER_SH = "$ROOT/test/kafka/cluster.sh";
our $KAFKA_SH = "$ROOT/test/kafka/kafka.sh";
our $TOXIPROXY_SERVER = ($ENV{EVBUS_TOXIPROXY_BIN} // "$ROOT/test/campaign/bin") . '/toxiproxy-server';

our @DBS = qw(campaign_a campaign_b);
our $PREFIX = 'camp.';
our @EVENTS = qw(CampRaised CampCaptured CampPublished CampChain);
our $PARTITIONS = 3;    # of each topic

# the fault kinds and their weights in the schedule
our @KINDS = (
	[ kill_publisher => 2 ], [ kill_consumer => 2 ],
	[ kill_mid_handler => 2 ], [ pg_immediate_restart => 2 ],
	[ broker_kill => 2 ], [ leader_kill => 2 ],
	[ net_latency => 2 ], [ net_reset => 2 ],
	[ net_blackhole => 2 ], [ net_slow => 2 ],
	[ broker_pause => 2 ], [ handler_timeout => 1 ],
	[ replay => 1 ], [ pause_subscription => 1 ], [ retry_dead_letters => 1 ],
	[ stop_worker => 1 ]);

# The pgbench scripts of the producers (pgbench -M simple: the prepared
# transactions' gids are built from pgbench variables inside literals).
our %SCRIPTS = (
	publish => q{SELECT campaign.stage('CampPublished', false);},
	raise => q{BEGIN;
SELECT campaign.stage('CampRaised', false);
SELECT campaign.stage('CampRaised', false);
COMMIT;},
	capture => q{SELECT campaign.stage('CampCaptured', false);},
	rollback => q{BEGIN;
SELECT campaign.stage('CampPublished', true);
SELECT campaign.stage('CampCaptured', true);
ROLLBACK;},
	savepoint => q{BEGIN;
SELECT campaign.stage('CampRaised', false);
SAVEPOINT s;
SELECT campaign.stage('CampPublished', true);
SELECT campaign.stage('CampCaptured', true);
ROLLBACK TO SAVEPOINT s;
SELECT campaign.stage('CampCaptured', false);
COMMIT;},
	prepared_commit => q{\set r random(1, 2000000000)
BEGIN;
SELECT campaign.stage('CampPublished', false);
PREPARE TRANSACTION 'c-:client_id-:r';
COMMIT PREPARED 'c-:client_id-:r';},
	prepared_rollback => q{\set r random(1, 2000000000)
BEGIN;
SELECT campaign.stage('CampRaised', true);
PREPARE TRANSACTION 'r-:client_id-:r';
ROLLBACK PREPARED 'r-:client_id-:r';});
our %WEIGHTS = (publish => 3, raise => 3, capture => 2, rollback => 1,
	savepoint => 1, prepared_commit => 1, prepared_rollback => 1);

# new(%opts): seed (default: random), duration (s of faults and load,
# default 150), dir (where the cluster, proxies and HIST live: required),
# rate (pgbench transactions per second per database, default 30),
# max_retries (3), drain_bound (120 s), log (a sub taking a line; default
# Test::More::note).
sub new
{
	my ($class, %o) = @_;
	my $self = bless {
		seed => $o{seed} // int(rand(2**31)),
		duration => $o{duration} // 150,
		dir => $o{dir} // die("EvbusCampaign->new: dir is required\n"),
		rate => $o{rate} // 30,
		max_retries => $o{max_retries} // 3,
		drain_bound => $o{drain_bound} // 120,
		log => $o{log} // sub { note(@_) },
		faults => [],
		producers => [],
		paused => undef,
	}, $class;
	$self->{cdir} = "$self->{dir}/cluster";
	$self->{hist} = "$self->{dir}/hist";
	make_path($self->{dir}, $self->{hist});
	return $self;
}

sub say { my $self = shift; $self->{log}->(join('', @_)); }

# run a command; die with its output on failure; return its stdout
sub _run
{
	my @cmd = @_;
	my ($out, $err) = ('', '');
	IPC::Run::run(\@cmd, '<', \undef, '>', \$out, '2>', \$err)
	  or die "@cmd failed: $err$out\n";
	chomp $out;
	return $out;
}

sub cluster { my $self = shift; return _run('bash', $CLUSTER_SH, shift, $self->{cdir}, @_); }

# ---------------------------------------------------------------- setup

# setup(): the cluster and its proxies, the topics (3 partitions, 3
# replicas), the PostgreSQL node and the two databases with the workload.
sub setup
{
	my ($self) = @_;
	$self->say("campaign seed $self->{seed}, $self->{duration} s, dir $self->{dir}");
	# the cluster starts (a minute on a busy machine) while the databases
	# are made; evbus.brokers is set once it is up
	my ($cout, $cerr) = ('', '');
	my $starting = IPC::Run::start([ 'bash', $CLUSTER_SH, 'start', $self->{cdir} ],
		'<', \undef, '>', \$cout, '2>', \$cerr);
	my $node = new_node(
		'campaign',
		conf => [
			"evbus.topic_prefix = '$PREFIX'",
			"evbus.max_retries = $self->{max_retries}",
			"evbus.retry_interval = '200ms'",
			"evbus.retry_max_interval = '1s'",
			"evbus.handler_timeout = '2s'",
			'max_prepared_transactions = 10',
			'max_connections = 60',
			'restart_after_crash = on',
		]);
	$self->{node} = $node;
	my $workload = "$ROOT/test/campaign/workload.sql";
	for my $db (@DBS)
	{
		$node->safe_psql('postgres', "CREATE DATABASE $db");
		$node->safe_psql($db, 'CREATE EXTENSION evbus');
		my $letter = substr($db, -1);
		_run('psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-v', "letter=$letter",
			'-h', $node->host, '-p', $node->port, '-f', $workload, $db);
	}
	$starting->finish or die "cluster.sh start failed: $cerr$cout\n";
	chomp($self->{proxied} = $cout);
	$self->{api} = 'http://' . _slurp("$self->{cdir}/toxiproxy/api");
	$self->{http} = HTTP::Tiny->new(timeout => 10);
	_run('bash', $KAFKA_SH, 'topics', $self->{cdir}, '--create', '--topic', "$PREFIX$_",
		'--partitions', $PARTITIONS, '--replication-factor', 3)
	  for @EVENTS;
	$node->append_conf('postgresql.conf', "evbus.brokers = '$self->{proxied}'\n");
	$node->reload;
	# the scripts of the producers
	for my $name (sort keys %SCRIPTS)
	{
		open my $fh, '>', "$self->{dir}/$name.sql" or die "$name.sql: $!";
		print $fh "$SCRIPTS{$name}\n";
		close $fh;
	}
	return;
}

sub _slurp
{
	my ($path) = @_;
	open my $fh, '<', $path or die "$path: $!";
	my $s = do { local $/; <$fh> };
	$s =~ s/\s+\z//;
	return $s;
}

# psql(db, sql): the result, or undef when the server cannot answer (a
# restart under way)
sub psql
{
	my ($self, $db, $sql) = @_;
	my ($ret, $out, $err) = $self->{node}->psql($db, $sql, timeout => 30);
	return $ret == 0 ? $out : undef;
}

# ---------------------------------------------------------------- producers

# One producer per database: pgbench runs of a few seconds in a loop
# until the stop file exists (a run ends when the server restarts under
# it; the next one reconnects).
sub start_producers
{
	my ($self) = @_;
	my $node = $self->{node};
	unlink "$self->{dir}/stop";
	for my $db (@DBS)
	{
		my $files = join(' ', map { "-f $self->{dir}/$_.sql\@$WEIGHTS{$_}" } sort keys %WEIGHTS);
		my $loop = qq{while [ ! -e '$self->{dir}/stop' ]; do
pgbench -n -M simple -c 3 -T 4 -R $self->{rate} --max-tries=10 $files -h '${\ $node->host}' -p ${\ $node->port} $db >>'$self->{dir}/pgbench_$db.log' 2>&1
sleep 0.3; done};
		push @{ $self->{producers} }, IPC::Run::start([ 'bash', '-c', $loop ], '<', \undef, '>', '/dev/null', '2>', '/dev/null');
	}
	return;
}

# _alive(pid): the process runs (not gone, not a zombie waiting to be
# reaped by IPC::Run)
sub _alive
{
	my ($pid) = @_;
	open my $f, '<', "/proc/$pid/stat" or return 0;
	my $st = <$f> // '';
	return $st !~ /^\d+ \(.*\) Z /;
}

sub stop_producers
{
	my ($self) = @_;
	open my $fh, '>', "$self->{dir}/stop" or die "stop: $!";
	close $fh;
	# a pgbench run ends within seconds, unless a client waits for a key
	# that a prepared transaction left behind holds: resolve those
	# meanwhile; after 60 s, kill what is left
	my $deadline = time() + 60;
	while (time() < $deadline)
	{
		last unless grep { _alive($_->{KIDS}[0]{PID}) } @{ $self->{producers} };
		$self->resolve_prepared if $self->{node};
		sleep 0.5;
	}
	for my $h (@{ $self->{producers} })
	{
		$h->kill_kill if _alive($h->{KIDS}[0]{PID});
		eval { $h->finish; 1 };
	}
	$self->{producers} = [];
	return;
}

# Prepared transactions a producer left behind when the server restarted
# between PREPARE and COMMIT/ROLLBACK PREPARED: finished as their gid says
# ("c-": commit, "r-": rollback) once older than a few seconds, or they
# would hold their keys' row locks for ever.
sub resolve_prepared
{
	my ($self, $min_age) = @_;
	$min_age //= 3;
	for my $db (@DBS)
	{
		my $gids = $self->psql($db,
			"SELECT gid FROM pg_prepared_xacts WHERE database = current_database()"
			  . " AND prepared < now() - interval '$min_age s'")
		  // next;
		for my $gid (split /\n/, $gids)
		{
			my $verb = $gid =~ /^c-/ ? 'COMMIT' : 'ROLLBACK';
			$self->psql($db, "$verb PREPARED '$gid'");
			$self->say("resolved prepared transaction $gid in $db: $verb");
		}
	}
	return;
}

# ---------------------------------------------------------------- faults

sub record_fault
{
	my ($self, $kind, $target, $detail) = @_;
	push @{ $self->{faults} }, [ time(), $kind, $target, $detail // '' ];
	$self->say(sprintf('fault %s %s %s', $kind, $target, $detail // ''));
	return;
}

sub toxic_add
{
	my ($self, $proxy, $type, %attr) = @_;
	my $body = JSON::PP->new->encode(
		{
			name => 'fault', type => $type, stream => 'downstream',
			toxicity => 1.0, attributes => \%attr
		});
	my $r = $self->{http}->post("$self->{api}/proxies/$proxy/toxics",
		{ content => $body, headers => { 'Content-Type' => 'application/json' } });
	die "toxic $type on $proxy: $r->{status} $r->{content}\n" unless $r->{success};
	return;
}

# heal the network: remove every toxic of every proxy, enable them all
sub toxics_reset
{
	my ($self) = @_;
	my $r = $self->{http}->post("$self->{api}/reset");
	die "toxiproxy reset: $r->{status} $r->{content}\n" unless $r->{success};
	return;
}

# Wait until the server answers again (after a crash restart), at most 60 s.
sub wait_pg
{
	my ($self) = @_;
	my $deadline = time() + 60;
	while (time() < $deadline)
	{
		return 1 if defined $self->psql('postgres', 'SELECT 1');
		sleep 0.3;
	}
	$self->say('the server did not come back in 60 s');
	return 0;
}

# Wait until every partition of the campaign's topics has three in-sync
# replicas (at most $timeout s), so that taking a broker down leaves two.
sub wait_isr
{
	my ($self, $timeout) = @_;
	my $deadline = time() + ($timeout // 30);
	my $boot = _slurp("$self->{cdir}/bootstrap");
	while (time() < $deadline)
	{
		my $out = '';
		IPC::Run::run([ 'timeout', 10, 'kcat', '-b', $boot, '-L', '-J', '-m', 5 ],
			'<', \undef, '>', \$out, '2>', '/dev/null');
		my $md = eval { JSON::PP->new->decode($out) };
		if ($md)
		{
			my $short = 0;
			for my $t (@{ $md->{topics} })
			{
				next unless $t->{topic} =~ /^\Q$PREFIX\E|^__consumer_offsets$/;
				$short += grep { @{ $_->{isrs} // [] } < 3 } @{ $t->{partitions} };
			}
			return 1 if $short == 0;
		}
		sleep 0.5;
	}
	$self->say('under-replicated partitions remain');
	return 0;
}

# worker_pid(db, 'publisher' | 'consumer')
sub worker_pid
{
	my ($self, $db, $which) = @_;
	my $pid = $self->psql($db, "SELECT evbus.${which}_pid()");
	return defined $pid && $pid =~ /^\d+$/ ? $pid : undef;
}

# restart_broker(n): start broker n again in the background (a JVM takes
# up to a minute to start on a busy machine: meanwhile the other faults
# go on); broker_restarted() waits for that start to be over, before
# anything else takes a broker down (at most one down at a time).
sub restart_broker
{
	my ($self, $n) = @_;
	$self->broker_restarted;
	$self->{restarting} = IPC::Run::start([ 'bash', $CLUSTER_SH, 'start-one', $self->{cdir}, $n ],
		'<', \undef, '>', '/dev/null', '2>', \$self->{restart_err});
	return;
}

sub broker_restarted
{
	my ($self) = @_;
	my $h = delete $self->{restarting} or return;
	$h->finish or $self->say("broker restart failed: " . ($self->{restart_err} // ''));
	return;
}

# fault(kind): inject one fault, keep it a few seconds, heal it.
sub fault
{
	my ($self, $kind) = @_;

	# every random choice drawn up front, whatever the kind, so that a
	# seed gives the same sequence of faults and targets
	my $hold = 2 + int(rand(5));
	my $db = $DBS[ int(rand(@DBS)) ];
	my $broker = 1 + int(rand(3));
	my $topic = $PREFIX . $EVENTS[ int(rand(3)) ];
	my $partition = int(rand(3));
	my $one_proxy = rand() < 0.5;
	my $proxy = 'b' . (1 + int(rand(3)));
	my @proxies = $one_proxy ? ($proxy) : qw(b1 b2 b3);
	my $latency = 300 + int(rand(1200));
	my $bandwidth = rand() < 0.5;
	my $rate = 20 + int(rand(80));
	if ($kind eq 'kill_publisher' || $kind eq 'kill_consumer')
	{
		my $which = $kind eq 'kill_publisher' ? 'publisher' : 'consumer';
		my $pid = $self->worker_pid($db, $which);
		$self->record_fault($kind, $db, "pid " . ($pid // 'none'));
		kill 'KILL', $pid if $pid;
		sleep 1;
		$self->wait_pg;
	}
	elsif ($kind eq 'stop_worker')
	{
		my $which = $one_proxy ? 'publisher' : 'consumer';
		my $pid = $self->worker_pid($db, $which);
		my $stopped = $pid ? $self->psql($db, "SELECT pg_terminate_backend($pid)") : undef;
		$self->record_fault($kind, $db,
			"$which pid " . ($pid // 'none') . (($stopped // '') eq 't' ? ' terminated' : ' (not running)'));
		sleep $hold;
	}
	elsif ($kind eq 'kill_mid_handler')
	{
		my $pid = $self->worker_pid($db, 'consumer');
		my $in_handler = 0;
		my $deadline = time() + 8;
		while ($pid && time() < $deadline)
		{
			my $w = $self->psql($db, "SELECT wait_event FROM pg_stat_activity WHERE pid = $pid") // '';
			if ($w eq 'PgSleep')
			{
				$in_handler = 1;
				last;
			}
			sleep 0.02;
		}
		$self->record_fault($kind, $db,
			'pid ' . ($pid // 'none') . ($in_handler ? ' in a handler' : ' (no handler caught running)'));
		kill 'KILL', $pid if $pid;
		sleep 1;
		$self->wait_pg;
	}
	elsif ($kind eq 'pg_immediate_restart')
	{
		$self->record_fault($kind, 'postgres', "down ${hold}s");
		$self->{node}->stop('immediate');
		sleep $hold;
		$self->{node}->start;
		$self->wait_pg;
	}
	elsif ($kind eq 'broker_kill' || $kind eq 'leader_kill')
	{
		$self->broker_restarted;
		$self->wait_isr(30);
		my ($n, $detail);
		if ($kind eq 'leader_kill')
		{
			$n = $self->cluster('leader', $topic, $partition);
			$detail = "leader of $topic/$partition";
			$n = $broker unless $n =~ /^[123]$/;
		}
		else
		{
			$n = $broker;
			$detail = 'random broker';
		}
		$self->record_fault($kind, "broker$n", "$detail, down ${hold}s");
		$self->cluster('kill', $n);
		sleep $hold;
		$self->restart_broker($n);
	}
	elsif ($kind =~ /^net_/)
	{
		my %toxic = (
			net_latency => [ latency => (latency => $latency, jitter => 200) ],
			net_reset => [ reset_peer => (timeout => 0) ],
			net_blackhole => [ timeout => (timeout => 0) ],
			net_slow => $bandwidth
			? [ bandwidth => (rate => $rate) ]
			: [ slicer => (average_size => 64, size_variation => 32, delay => 2000) ]);
		my ($type, %attr) = @{ $toxic{$kind} };
		$self->record_fault($kind, join(',', @proxies),
			"$type " . join(' ', map { "$_=$attr{$_}" } sort keys %attr) . ", ${hold}s");
		$self->toxic_add($_, $type, %attr) for @proxies;
		sleep $hold;
		$self->toxics_reset;
	}
	elsif ($kind eq 'broker_pause')
	{
		$self->broker_restarted;
		$self->wait_isr(30);
		my $n = $broker;
		$self->record_fault($kind, "broker$n", "SIGSTOP ${hold}s");
		$self->cluster('pause', $n);
		$self->{paused} = $n;
		sleep $hold;
		$self->cluster('resume', $n);
		$self->{paused} = undef;
	}
	elsif ($kind eq 'replay')
	{
		my $event = substr($topic, length($PREFIX));
		my $back = 5 + 5 * $hold;
		my $id = $self->psql($db,
			"SELECT evbus.replay('$event', from_time => now() - interval '$back seconds')");
		$self->record_fault($kind, $db, "$event from ${back}s back: replay " . ($id // 'not asked'));
		sleep $hold;
	}
	elsif ($kind eq 'retry_dead_letters')
	{
		my $back = 5 + 5 * $hold;
		my $n = $self->psql($db,
			"SELECT evbus.retry(side => 'consume', dead_since => now() - interval '$back seconds')");
		$self->record_fault($kind, $db, "dead in the last ${back}s: " . ($n // 'none') . ' requeued');
		sleep $hold;
	}
	elsif ($kind eq 'pause_subscription')
	{
		my $event = substr($topic, length($PREFIX));
		my $handler = $one_proxy ? 'campaign.handle(jsonb, jsonb)' : 'campaign.handle_batch(jsonb[], jsonb[])';
		my $paused = $self->psql($db, "SELECT evbus.pause_subscription('$event', '$handler')");
		$self->record_fault($kind, $db, "$event $handler, ${hold}s: " . ($paused // 'not paused'));
		sleep $hold;
		# resumed whatever happens meanwhile: the drain waits for its messages
		my $deadline = time() + 60;
		sleep 0.5
		  until defined $self->psql($db, "SELECT evbus.resume_subscription('$event', '$handler')")
		  || time() > $deadline;
	}
	elsif ($kind eq 'handler_timeout')
	{
		my @ids = grep { defined } map { $self->psql($db, 'SELECT campaign.slow()') } 1 .. 2;
		$self->record_fault($kind, $db, 'events ' . join(',', @ids));
		sleep $hold;
	}
	else
	{
		die "unknown fault kind $kind\n";
	}
	return;
}

# The schedule: from the seed, kinds by weight, a pause of 3-6 s between
# faults (time for the system to make progress).
sub pick_kind
{
	my $total = 0;
	$total += $_->[1] for @KINDS;
	my $r = rand($total);
	for (@KINDS)
	{
		return $_->[0] if ($r -= $_->[1]) < 0;
	}
	return $KINDS[-1][0];
}

# ---------------------------------------------------------------- run

# run(): producers and faults for duration s, then stop the producers,
# heal everything and wait for the drain.
sub run
{
	my ($self) = @_;
	srand($self->{seed});
	$self->{started} = time();
	$self->start_producers;
	sleep 3;
	my $end = $self->{started} + $self->{duration};
	while (time() < $end)
	{
		$self->fault(pick_kind());
		$self->resolve_prepared;
		my $gap = 3 + int(rand(4));
		my $until = time() + $gap;
		while (time() < $until)
		{
			sleep 1;
			$self->resolve_prepared;
		}
	}
	$self->heal;
	$self->{healed} = time();
	$self->stop_producers;
	$self->resolve_prepared(0);
	$self->{drain_s} = $self->wait_drain;
	return;
}

# heal(): every proxy clean, every broker running and resumed, the server up
sub heal
{
	my ($self) = @_;
	eval { $self->toxics_reset; 1 } or $self->say("heal: $@");
	eval { $self->cluster('resume', $self->{paused}); 1 } if $self->{paused};
	$self->broker_restarted;
	for my $n (1 .. 3)
	{
		eval { $self->cluster('start-one', $n); 1 } or $self->say("heal: broker $n: $@");
	}
	$self->wait_pg;
	return;
}

# kafka_end_offsets(): a VALUES list (topic, partition, end offset) of
# every partition of the campaign's topics, as Kafka has them now; undef
# when kcat could not tell.
sub kafka_end_offsets
{
	my ($self) = @_;
	my $boot = _slurp("$self->{cdir}/bootstrap");
	my @parts = map { my $t = "$PREFIX$_"; map { ('-t', "$t:$_:-1") } 0 .. $PARTITIONS - 1 } @EVENTS;
	my $out = '';
	IPC::Run::run([ 'timeout', 10, 'kcat', '-b', $boot, '-Q', @parts ],
		'<', \undef, '>', \$out, '2>', '/dev/null');
	my @rows;
	push @rows, "('$1', $2, $3)" while $out =~ /^(\S+) \[(\d+)\] offset (\d+)$/mg;
	return @rows == $PARTITIONS * @EVENTS ? 'VALUES ' . join(', ', @rows) : undef;
}

# The drain: every database's outbox empty, no handler pending, each
# group's stored offsets at Kafka's end offsets of the topics it subscribes
# to, and nothing changing in the inbox over two polls.  (The lag of
# evbus.stats is not enough: it comes from the last high watermarks the
# consumer saw, and a consumer that rejoins its group after a kill sees
# none until the group's rebalance ends, up to a session timeout later.)
# Returns the seconds from the last healed fault to drained, or "timeout".
sub wait_drain
{
	my ($self) = @_;
	my $deadline = time() + $self->{drain_bound};
	my ($last, $stable) = ('', 0);
	while (time() < $deadline)
	{
		my $state = '';
		my $done = 1;
		my $end = $self->kafka_end_offsets;
		if (!defined $end)
		{
			# Kafka's offsets unknown: not drained, whatever the databases say
			$done = 0;
			$end = "VALUES ('', 0, 0)";
		}
		for my $db (@DBS)
		{
			my $r = $self->psql($db,
				qq{WITH kafka_end (topic, kafka_partition, end_offset) AS ($end),
				        subscribed AS (SELECT DISTINCT group_name,
				                              current_setting('evbus.topic_prefix') || integration_event AS topic
				                         FROM evbus.subscriptions)
				   SELECT (SELECT count(*) FROM evbus.outbox) || ' '
				   || (SELECT count(*) FROM evbus.inbox WHERE state = 'pending') || ' '
				   || (SELECT COALESCE(sum(e.end_offset - COALESCE(o.next_offset, 0)), 0)
				         FROM subscribed s JOIN kafka_end e USING (topic)
				         LEFT JOIN evbus.consumer_offsets o
				                ON o.group_name = s.group_name AND o.topic = e.topic
				               AND o.kafka_partition = e.kafka_partition) || ' '
				   || (SELECT count(*) FROM evbus.inbox) || ' '
				   || (SELECT count(*) FROM pg_prepared_xacts)});
			$r //= 'down';
			$state .= "$db $r; ";
			$done = 0 unless $r =~ /^0 0 0 \d+ 0$/;
		}
		if ($done && $state eq $last)
		{
			if (++$stable >= 2)
			{
				my $s = sprintf('%.1f', time() - $self->{healed});
				$self->say("drained in ${s}s: $state");
				return $s;
			}
		}
		else
		{
			$stable = 0;
		}
		$last = $state;
		sleep 1;
	}
	$self->say("not drained in $self->{drain_bound}s: $last");
	return 'timeout';
}

# ---------------------------------------------------------------- history

sub write_history
{
	my ($self) = @_;
	my $staged = 0;
	for my $db (@DBS)
	{
		$staged += $self->psql($db, 'SELECT count(*) FROM campaign.committed') // 0;
	}
	$self->{events_staged} = $staged;
	open my $m, '>', "$self->{hist}/meta.tsv" or die "meta.tsv: $!";
	print $m "seed\t$self->{seed}\n", "duration_s\t$self->{duration}\n",
	  "max_retries\t$self->{max_retries}\n", "drain_s\t$self->{drain_s}\n",
	  "drain_bound_s\t$self->{drain_bound}\n", "events_staged\t$staged\n";
	close $m;
	open my $f, '>', "$self->{hist}/faults.tsv" or die "faults.tsv: $!";
	printf $f "%.3f\t%s\t%s\t%s\n", @$_ for @{ $self->{faults} };
	close $f;
	return;
}

# faults by kind, "kind N, kind N"
sub fault_summary
{
	my ($self) = @_;
	my %n;
	$n{ $_->[1] }++ for @{ $self->{faults} };
	return join(', ', map { "$_ $n{$_}" } sort keys %n);
}

# check(): write meta.tsv and faults.tsv, run collect.pl and check.pl;
# returns (check.pl's exit status, its output).
sub check
{
	my ($self) = @_;
	$self->write_history;
	my $node = $self->{node};
	my @dbargs = map { ('--db', "$_=host=" . $node->host . ' port=' . $node->port . " dbname=$_") } @DBS;
	my ($out, $err) = ('', '');
	IPC::Run::run(
		[
			'perl', "$ROOT/test/campaign/collect.pl", '--out', $self->{hist},
			'--kafka-dir', $self->{cdir}, '--kafka-sh', $KAFKA_SH,
			'--topics', join(',', map { "$PREFIX$_" } @EVENTS), @dbargs
		],
		'<', \undef, '>', \$out, '2>', \$err)
	  or return (-1, "collect.pl failed: $err$out");
	($out, $err) = ('', '');
	IPC::Run::run([ 'perl', "$ROOT/test/campaign/check.pl", $self->{hist} ],
		'<', \undef, '>', \$out, '2>', \$err);
	return ($? >> 8, $out . $err);
}

# teardown(): producers, node, cluster and proxies stopped (idempotent)
sub teardown
{
	my ($self) = @_;
	return if $self->{down}++;
	eval { $self->stop_producers; 1 };
	eval { $self->broker_restarted; 1 };
	eval { $self->{node}->stop('immediate') if $self->{node}; 1 };
	# the brokers' data goes with the test: SIGKILL them rather than wait
	# for three controlled shutdowns; stop then ends toxiproxy
	if (-d $self->{cdir})
	{
		eval { $self->cluster('kill', $_); 1 } for 1 .. 3;
		eval { $self->cluster('stop'); 1 };
	}
	return;
}

sub DESTROY { my $self = shift; $self->teardown; }

1;

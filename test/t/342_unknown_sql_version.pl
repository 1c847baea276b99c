# 342_unknown_sql_version.pl - a library that meets an evbus SQL version it
# does not know refuses to work, with one clear log line, never a crash or
# a query of the outbox (src/ext_version.c).
#
# The database is brought to version 9.9 the way an operator would: an
# update script evbus--0.2--9.9.sql (a comment only) in the installation's
# extension directory and ALTER EXTENSION evbus UPDATE TO '9.9', while
# both workers run.  Where that directory is not writable (the test runs
# as another user than the one that installed PostgreSQL), the same
# change is made to pg_extension directly, which is all that such an
# update does.  Then:
#   - the publisher logs the WARNING once, naming the database and the
#     version, with its hint; no ERROR, no crash;
#   - an event staged now is neither published nor handled, and stays in
#     the outbox, also across a server restart (a worker that starts at
#     that version logs once and waits too);
#   - back at a version the library knows, the workers start afresh and
#     the event is published and handled once.
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);

# log_shows(node, regexp, offset, timeout): wait until the server log
# after offset matches; false after timeout seconds
sub log_shows
{
	my ($node, $re, $offset, $timeout) = @_;
	my $deadline = time + $timeout;
	while (time < $deadline)
	{
		return 1 if slurp_file($node->logfile, $offset) =~ $re;
		sleep 0.2;
	}
	return 0;
}

kafka_bootstrap();
my $prefix = "t342.$$.";
my $event = 'VersionProbe';
my $topic = "$prefix$event";
my $node = new_node('unknown_version', kafka => 1,
	conf => ["evbus.topic_prefix = '$prefix'"]);

my $sharedir = $node->config_data('--sharedir');
my $script = "$sharedir/extension/evbus--0.2--9.9.sql";
END { unlink $script if defined $script && -e $script; }

$node->safe_psql('postgres', 'CREATE EXTENSION evbus');
subscribe_recorder($node, $event);

# --- at 0.2 both workers work ---------------------------------------------------
$node->safe_psql('postgres', qq{SELECT evbus.publish('$event', '{"n": 1}')});
ok(wait_for_sql($node, 'postgres', 'SELECT count(*) FROM received', '1', 60),
	'at version 0.2 an event is published and handled');
my $publisher = $node->safe_psql('postgres', 'SELECT evbus.publisher_pid()');
my $consumer = $node->safe_psql('postgres', 'SELECT evbus.consumer_pid()');
ok($publisher && $consumer, 'both workers run');

# --- update to a version the library does not know ------------------------------
my $warning = qr/WARNING:  evbus: database "postgres" has evbus version 9\.9, which this library does not know/;
my $offset = -s $node->logfile;
if (open my $fh, '>', $script)
{
	print $fh "-- evbus 9.9: a version this library does not know (test 342)\n";
	close $fh;
	$node->safe_psql('postgres', q{ALTER EXTENSION evbus UPDATE TO '9.9'});
	note 'updated with ALTER EXTENSION evbus UPDATE TO 9.9';
}
else
{
	note "$script not writable ($!): setting pg_extension.extversion instead";
	$node->safe_psql('postgres',
		q{UPDATE pg_catalog.pg_extension SET extversion = '9.9' WHERE extname = 'evbus'});
}
is($node->safe_psql('postgres', q{SELECT extversion FROM pg_extension WHERE extname = 'evbus'}),
	'9.9', 'the database is at version 9.9');
ok(log_shows($node, $warning, $offset, 30),
	'the publisher logs that it does not know version 9.9');

# staged now: must stay in the outbox
$node->safe_psql('postgres', qq{SELECT evbus.publish('$event', '{"n": 2}')});
sleep 5;
my $log = slurp_file($node->logfile, $offset);
my @lines = $log =~ /$warning/g;
is(scalar @lines, 1, 'the line is logged once, not at every check');
like($log, qr/HINT:  Restart the server to load the evbus library of version 9\.9/,
	'with a hint that says what to do');
unlike($log, qr/\b(ERROR|FATAL|PANIC):|terminated by signal/, 'no error, no crash');
is($node->safe_psql('postgres', 'SELECT count(*) FROM evbus.outbox'), '1',
	'the event staged at 9.9 stays in the outbox');
is(scalar(kcat_consume($topic, 2, 5)), 1, 'nothing more was published');
is($node->safe_psql('postgres', 'SELECT count(*) FROM received'), '1',
	'nothing more was handled');
is($node->safe_psql('postgres', 'SELECT evbus.publisher_pid()'), $publisher,
	'the publisher waits in place (the launcher does not restart it)');
is($node->safe_psql('postgres', 'SELECT evbus.consumer_pid()'), $consumer,
	'the consumer waits in place');

# --- a server started at that version -------------------------------------------
$offset = -s $node->logfile;
$node->restart;
ok(log_shows($node, $warning, $offset, 30), 'a worker started at 9.9 logs it too');
ok(wait_for_sql($node, 'postgres', 'SELECT evbus.consumer_pid() IS NOT NULL'),
	'after a restart both workers are there');
sleep 4;
$log = slurp_file($node->logfile, $offset);
@lines = $log =~ /$warning/g;
is(scalar @lines, 1, 'a restarted server logs the line once');
unlike($log, qr/\b(ERROR|FATAL|PANIC):|terminated by signal/, 'no error, no crash after the restart');
is($node->safe_psql('postgres', 'SELECT count(*) FROM evbus.outbox'), '1',
	'the event still waits in the outbox');

# --- back at a version the library knows: they carry on --------------------------
# (no update script leads back; the catalog is set as a matching library's
# update would leave it)
$offset = -s $node->logfile;
$node->safe_psql('postgres',
	q{UPDATE pg_catalog.pg_extension SET extversion = '0.2' WHERE extname = 'evbus'});
ok(log_shows($node, qr/evbus: database "postgres" now has evbus version 0\.2/, $offset, 30),
	'the workers log that they know the version again');
ok(wait_for_sql($node, 'postgres', 'SELECT count(*) FROM received', '2', 60),
	'back at 0.2 the waiting event is published and handled');
ok(wait_for_sql($node, 'postgres', 'SELECT count(*) = 0 FROM evbus.outbox'), 'the outbox drained');
my @msgs = kcat_consume($topic, 3, 5);
is(scalar @msgs, 2, 'two messages on the topic');
my %ids = map { $_->{headers}{'cap-msg-id'} => 1 } @msgs;
is(scalar keys %ids, 2, 'each published once (cap-msg-id unique)');
is($node->safe_psql('postgres', 'SELECT count(DISTINCT message_id) FROM received'), '2',
	'each handled once');

$node->stop;
unlink $script;
ok(!-e $script, 'the throw-away update script is removed');
done_testing();

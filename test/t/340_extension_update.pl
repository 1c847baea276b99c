# 340_extension_update.pl - ALTER EXTENSION evbus UPDATE from 0.1 to 0.2,
# while both workers are busy, loses nothing, duplicates nothing, needs no
# restart, and gives the same schema as a fresh install of 0.2.
#
# Database "upd" gets evbus 0.1 (CREATE EXTENSION evbus VERSION '0.1'), a
# converter and a handler subscribed by an application role.  A background
# connection raises a steady stream of domain events, one per transaction;
# ALTER EXTENSION evbus UPDATE runs in the middle of it, and more events
# follow.  Then every event is on the topic once (cap-msg-id unique, count
# equal), every one handled once, by the same two workers as before the
# update.  Database "fresh" gets 0.2 directly (CREATE EXTENSION evbus).  The
# two must be identical:
#   - pg_dump --schema-only --binary-upgrade --extension evbus, which dumps
#     every member of the extension (tables with their dropped columns and
#     attribute order, functions, ACLs, comments, pg_extension_config_dump
#     conditions) as pg_upgrade would; only object ids, which no two
#     databases share, are normalised;
#   - pg_dump --schema-only -n evbus;
#   - the extension's members (pg_depend rows of deptype 'e').
# This test guards that evbus--0.2.sql and evbus--0.1--0.2.sql stay equal in
# effect as both grow.
use strict;
use warnings;

use EvbusTest;
use IPC::Run ();
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);

kafka_bootstrap();
my $prefix = "t340.$$.";
my $topic = "${prefix}ThingIntegrationEvent";
my $node = new_node(
	'extension_update',
	kafka => 1,
	conf => ["evbus.topic_prefix = '$prefix'"]);

$node->safe_psql('postgres', 'CREATE DATABASE upd');
$node->safe_psql('postgres', 'CREATE DATABASE fresh');
$node->safe_psql('upd', q{CREATE EXTENSION evbus VERSION '0.1'});
$node->safe_psql('fresh', 'CREATE EXTENSION evbus');
is($node->safe_psql('upd', q{SELECT extversion FROM pg_extension WHERE extname = 'evbus'}),
	'0.1', 'upd starts at 0.1');
is($node->safe_psql('fresh', q{SELECT extversion FROM pg_extension WHERE extname = 'evbus'}),
	'0.2', 'a fresh install is 0.2');

# a converter, and a handler subscribed by an application role; the same
# in both databases, so that their dumps differ only by what the scripts
# made (pg_dump --binary-upgrade dumps user functions too)
for my $db (qw(upd fresh))
{
	$node->safe_psql(
		$db, q{
CREATE FUNCTION thing_converter(payload jsonb) RETURNS jsonb LANGUAGE sql
	AS $$ SELECT jsonb_build_object('n', (payload->>'n')::int) $$;
SELECT evbus.register_converter('ThingDomainEvent', 'ThingIntegrationEvent',
                                'thing_converter(jsonb)');
});
	$node->safe_psql(
		$db, as_subscriber($node, $db) . q{
CREATE TABLE received (message_id uuid, n int, run_as name);
CREATE PROCEDURE record_thing(payload jsonb, headers jsonb) LANGUAGE sql
	AS $$ INSERT INTO public.received
	      VALUES ((headers->>'cap-msg-id')::uuid, (payload->>'n')::int, current_user) $$;
SELECT evbus.subscribe('ThingIntegrationEvent', 'record_thing(jsonb, jsonb)');
});
}

# both workers at work before the update
$node->safe_psql('upd', q{SELECT evbus.raise('ThingDomainEvent', '{"n": 0}', '0')});
ok(wait_for_sql($node, 'upd', 'SELECT count(*) FROM received', '1', 60),
	'at 0.1 an event is published and handled');
my $publisher = $node->safe_psql('upd', 'SELECT evbus.publisher_pid()');
my $consumer = $node->safe_psql('upd', 'SELECT evbus.consumer_pid()');

# --- a stream of events, and the update in its middle ---------------------------
my $streamed = 400;
my ($out, $err) = ('', '');
my $stream = IPC::Run::start(
	[
		'psql', '-XAtq', '-v', 'ON_ERROR_STOP=1', '-h', $node->host, '-p', $node->port,
		'-d', 'upd', '-c', qq{
DO \$\$
BEGIN
	FOR i IN 1..$streamed LOOP
		PERFORM evbus.raise('ThingDomainEvent', pg_catalog.jsonb_build_object('n', i), i::text);
		COMMIT;
		PERFORM pg_catalog.pg_sleep(0.01);
	END LOOP;
END \$\$}
	],
	'>', \$out, '2>', \$err);
ok(wait_for_sql($node, 'upd', 'SELECT count(*) >= 50 FROM received', 't', 60),
	'the stream is being published and handled');
my $offset = -s $node->logfile;
$node->safe_psql('upd', 'ALTER EXTENSION evbus UPDATE');
my $during = $node->safe_psql('upd', 'SELECT count(*) FROM received');
note "updated with $during events handled";
is($node->safe_psql('upd', q{SELECT extversion FROM pg_extension WHERE extname = 'evbus'}),
	'0.2', 'upd is at 0.2');
ok($stream->finish, 'the stream ran to its end') or diag $err;
cmp_ok($during, '<', $streamed, 'the update ran in the middle of the stream');

# and after it
$node->safe_psql('upd',
	q{SELECT evbus.raise('ThingDomainEvent', pg_catalog.jsonb_build_object('n', i), i::text)
	  FROM pg_catalog.generate_series(} . ($streamed + 1) . ', ' . ($streamed + 50) . ') i');
my $total = $streamed + 51;    # with n = 0

# --- every event published once, handled once ----------------------------------
ok(wait_for_sql($node, 'upd', 'SELECT count(*) = 0 FROM evbus.outbox', 't', 90),
	'the outbox drained');
ok(wait_for_sql($node, 'upd', 'SELECT count(*) FROM received', $total, 90),
	"$total events handled");
my @msgs = kcat_consume($topic, $total, 60);
is(scalar @msgs, $total, "$total messages on the topic");
my %ids = map { ($_->{headers}{'cap-msg-id'} // '') => 1 } @msgs;
is(scalar keys %ids, $total, 'each published once (cap-msg-id unique)');
is(scalar(kcat_consume($topic, $total + 1, 5)), $total, 'and nothing more');
is( $node->safe_psql(
		'upd', q{SELECT count(DISTINCT message_id) || '/' || count(DISTINCT n) || '/'
		         || min(n) || '/' || max(n) || '/' || string_agg(DISTINCT run_as, ',')
		         FROM received}),
	"$total/$total/0/" . ($streamed + 50) . '/evbus_app',
	'each handled once, as the role that subscribed');
is($node->safe_psql('upd', 'SELECT evbus.publisher_pid()'), $publisher,
	'the publisher carried on through the update');
is($node->safe_psql('upd', 'SELECT evbus.consumer_pid()'), $consumer,
	'the consumer carried on through the update');
unlike(slurp_file($node->logfile, $offset), qr/\b(ERROR|FATAL|PANIC):|terminated by signal|does not know/,
	'no error, no crash, no unknown version');

# --- the updated schema is the freshly installed one -----------------------------
# run(cmd...): its stdout; fails the test on error
sub run
{
	my @cmd = @_;
	my ($o, $e) = ('', '');
	IPC::Run::run(\@cmd, '>', \$o, '2>', \$e) or diag "@cmd: $e";
	return $o;
}

# pg_dump of db with options; normalised: object ids, transaction ids,
# the WAL positions of attributes and the values of sequences (they differ
# between any two databases; binary-upgrade mode preserves them) and the
# random key of \restrict (a new one for every dump)
sub dump_of
{
	my ($db, @opts) = @_;
	my $dump = run('pg_dump', '-h', $node->host, '-p', $node->port, @opts, $db);
	$dump =~ s/'\d+'::pg_catalog\.oid/'OID'::pg_catalog.oid/g;
	$dump =~ s/'\{\d+(,\d+)*\}'::pg_catalog\.oid\[\]/'{OIDS}'::pg_catalog.oid[]/g;
	# the tables pg_extension_config_dump marked, one oid each
	$dump =~ s{(binary_upgrade_create_empty_extension\([^\n]*?)'\{(\d+(?:,\d+)*)\}'}
		{$1 . "'{" . join(',', map { 'OID' } split(/,/, $2)) . "}'"}ge;
	$dump =~ s/(relfrozenxid|relminmxid) = '\d+'/$1 = 'XID'/g;
	$dump =~ s/WHERE oid = '\d+'/WHERE oid = 'OID'/g;
	# and where the sequences are (binary-upgrade mode keeps them)
	$dump =~ s/(pg_catalog\.setval\('[^']+'), \d+, (true|false)\)/$1, N)/g;
	$dump =~ s/'\{[0-9A-F\/,]*\}'::pg_catalog\.pg_lsn\[\]/'{LSNS}'::pg_catalog.pg_lsn[]/g;
	# pg_dump's random key against psql meta-commands in object names
	$dump =~ s/^\\(restrict|unrestrict) \S+$/\\$1 KEY/mg;
	return $dump;
}

my @full = ('--schema-only', '--binary-upgrade', '--extension', 'evbus');
my $fresh_full = dump_of('fresh', @full);
like($fresh_full, qr/ALTER EXTENSION evbus ADD TABLE evbus\.outbox_0;/,
	'the binary-upgrade dump lists the members');
# same(a, b, name): a eq b, else the diff of the two
sub same
{
	my ($got, $expected, $name) = @_;
	return pass($name) if $got eq $expected;
	my $dir = ${PostgreSQL::Test::Utils::tmp_check};
	open my $g, '>', "$dir/340_updated.sql" or die $!;
	print $g $got;
	close $g;
	open my $e, '>', "$dir/340_fresh.sql" or die $!;
	print $e $expected;
	close $e;
	my ($diff, $derr) = ('', '');
	IPC::Run::run([ 'diff', '-u', "$dir/340_fresh.sql", "$dir/340_updated.sql" ],
		'>', \$diff, '2>', \$derr);
	fail($name);
	diag "the fresh install (-) and the updated database (+) differ:\n$diff";
}
same(dump_of('upd', @full), $fresh_full,
	'pg_dump --binary-upgrade: the updated schema equals a fresh install');
same(dump_of('upd', '--schema-only', '-n', 'evbus'),
	dump_of('fresh', '--schema-only', '-n', 'evbus'),
	'pg_dump --schema-only -n evbus: equal');
my $members = q{SELECT pg_catalog.pg_describe_object(classid, objid, objsubid)
	FROM pg_catalog.pg_depend
	WHERE refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass
	  AND refobjid = (SELECT oid FROM pg_catalog.pg_extension WHERE extname = 'evbus')
	  AND deptype = 'e' ORDER BY 1};
my $fresh_members = $node->safe_psql('fresh', $members);
cmp_ok(scalar(split /\n/, $fresh_members), '>', 20, 'the extension has its members');
is($node->safe_psql('upd', $members), $fresh_members, 'the same members');

$node->stop;
done_testing();

# 246_publication_warning.pl - a logical replication publication that
# includes evbus's tables draws a WARNING.
#
# evbus's tables are ordinary tables: CREATE PUBLICATION ... FOR ALL TABLES
# publishes the outbox, the inbox and the consumer offsets with the
# application's tables, and a database subscribed to it would take them for
# its own.  After CREATE PUBLICATION and ALTER PUBLICATION, each
# publication that includes an evbus table gets a WARNING (SQLSTATE 01000)
# with a hint to publish by name or by schema; one that includes none gets
# none.  Nothing is refused.  A publication FOR ALL TABLES made before
# CREATE EXTENSION evbus gets its WARNING from CREATE EXTENSION.
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = new_node('publication_warning', conf => ['wal_level = logical']);
$node->safe_psql('postgres', 'CREATE EXTENSION evbus');
$node->safe_psql('postgres', 'CREATE TABLE app (id int PRIMARY KEY)');

# stderr($db, $sql): what psql printed on stderr (the command must succeed)
sub stderr
{
	my ($db, $sql) = @_;
	my ($ret, $out, $err) = $node->psql($db, $sql, extra_params => [ '-v', 'VERBOSITY=verbose' ]);
	is($ret, 0, "ran: $sql") or diag $err;
	return $err;
}

my $warning = qr/WARNING:  01000: publication "(\w+)" includes evbus's tables/;

unlike(stderr('postgres', 'CREATE PUBLICATION own FOR TABLE app'),
	$warning, 'a publication of the application table: no warning');
unlike(stderr('postgres', 'CREATE PUBLICATION by_schema FOR TABLES IN SCHEMA public'),
	$warning, 'one of schema public: no warning');

my $err = stderr('postgres', 'CREATE PUBLICATION everything FOR ALL TABLES');
like($err, qr/WARNING:  01000: publication "everything" includes evbus's tables/,
	'FOR ALL TABLES: a warning');
like($err, qr/DETAIL:  \d+ tables of schema evbus are published/, 'saying how many');
like($err, qr/HINT:  Publish your own tables by name or by schema/, 'and what to do instead');
unlike($err, qr/publication "own"/, 'naming only the publications that include them');

$err = stderr('postgres', 'ALTER PUBLICATION own ADD TABLE evbus.consumer_offsets');
like($err, qr/publication "own" includes evbus's tables/, 'ALTER PUBLICATION adding one: a warning');
is( $node->safe_psql(
		'postgres', q{SELECT string_agg(pubname, ',' ORDER BY pubname) FROM pg_publication_tables
		  WHERE schemaname = 'evbus' AND tablename = 'consumer_offsets'}),
	'everything,own',
	'nothing was refused');

# a publication FOR ALL TABLES made before CREATE EXTENSION evbus: the
# extension's script warns of it once evbus's tables exist
$node->safe_psql('postgres', 'CREATE DATABASE later');
$node->safe_psql('later', 'CREATE PUBLICATION before_evbus FOR ALL TABLES');
$err = stderr('later', 'CREATE EXTENSION evbus');
like($err, qr/WARNING:  01000: publication "before_evbus" includes evbus's tables/,
	'CREATE EXTENSION with a publication FOR ALL TABLES made before: a warning');
is( $node->safe_psql('later', q{SELECT count(*) FROM pg_proc WHERE proname = '_warn_published_tables'}),
	'0', 'the script leaves no function behind for it');
unlike(stderr('postgres', 'DROP EXTENSION evbus; CREATE EXTENSION evbus; DROP PUBLICATION everything, own'),
	qr/publication "own"/, 'one that includes none of the new tables: no warning');

$node->stop;
done_testing();

# 205_database_encoding.pl - evbus needs a UTF8 database.
#
# Payloads go to Kafka as UTF-8 JSON and received ones are stored as they
# came, with no conversion in between: in a LATIN1 database an earlier
# version published LATIN1 bytes as "UTF-8 JSON" and stored received UTF-8
# as mojibake.  CREATE EXTENSION now refuses a database whose encoding is
# not UTF8 (0A000, with a hint to create it with ENCODING 'UTF8'), and
# creates nothing there; a UTF8 database works as before.
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = new_node('encoding');
$node->command_ok(
	[ 'createdb', '-h', $node->host, '-p', $node->port, '-E', 'LATIN1', '--locale=C', '-T', 'template0', 'latin' ],
	'a LATIN1 database is created');
$node->command_ok(
	[ 'createdb', '-h', $node->host, '-p', $node->port, '-E', 'UTF8', '--locale=C', '-T', 'template0', 'utf' ],
	'and a UTF8 one');

my ($ret, $out, $err) = $node->psql('latin', "\\set VERBOSITY verbose\nCREATE EXTENSION evbus");
isnt($ret, 0, 'CREATE EXTENSION evbus fails in the LATIN1 database');
like($err, qr/ERROR:\s+0A000: evbus requires a database with encoding UTF8/, 'with SQLSTATE 0A000 and a clear message');
like($err, qr/DETAIL:\s+.*LATIN1/, 'the detail names the encoding');
like($err, qr/HINT:\s+.*ENCODING 'UTF8'/, "the hint says to create the database with ENCODING 'UTF8'");
is($node->safe_psql('latin', q{SELECT count(*) FROM pg_namespace WHERE nspname = 'evbus'}),
	'0', 'nothing of evbus is left in it');

$node->safe_psql('utf', 'CREATE EXTENSION evbus');
is($node->safe_psql('utf', q{SELECT evbus.publish('Greeting', '{"text": "grüße"}') IS NOT NULL}),
	't', 'the UTF8 database stages events');
is($node->safe_psql('utf', q{SELECT payload->>'text' FROM evbus.outbox}), 'grüße', 'intact');

$node->stop;
done_testing();

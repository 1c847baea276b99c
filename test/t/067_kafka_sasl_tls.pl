# 067_kafka_sasl_tls.pl - the two Kafka security set-ups that 065 and 066
# leave out, configured in evbus.kafka_config_file:
#
# SASL over TLS (security.protocol=SASL_SSL, the test broker's SASL_SSL
# listener, test/kafka/kafka.sh): a wrong password keeps the event waiting
# in the outbox; the right one, the file edited in place and the
# configuration reloaded, publishes it, and the consumer, over SASL_SSL
# as well, hands it to the handler.
#
# A client key in PEM, encrypted with a password (ssl.key.location,
# ssl.key.password, ssl.certificate.location), on the listener that
# requires a client certificate: a wrong key password means no producer
# and no consumer (and a clear error in the log), the event waits; the
# right one publishes it.
#
# No password ever shows in the server log or a setting; no worker crashes.
use strict;
use warnings;

use EvbusTest;
use File::Spec;
use PostgreSQL::Test::Utils;
use Test::More;

kafka_bootstrap();
my $kdir = kafka_dir();
plan skip_all => "the broker in $kdir has no SASL_SSL listener or PEM client key (started by an older kafka.sh)"
  unless -f "$kdir/sasl_ssl_bootstrap" && -f "$kdir/client-key.pem";
my ($sasl_ssl_bootstrap, $mtls_bootstrap, $sasl_password, $key_password) =
  map { my $s = slurp_file("$kdir/$_"); chomp $s; $s }
  qw(sasl_ssl_bootstrap mtls_bootstrap sasl_password client_password);
my $ca = "$kdir/ca.pem";
my $wrong = 'Wrong-' . $$ . '-Passw0rd';

my $prefix = "t067.$$.";
my $dir = File::Spec->rel2abs(PostgreSQL::Test::Utils::tempdir());
my $file = "$dir/kafka.properties";

sub sasl_ssl_properties
{
	my ($password) = @_;
	return ('security.protocol=SASL_SSL', "ssl.ca.location=$ca",
		'sasl.mechanisms=PLAIN', 'sasl.username=evbus', "sasl.password=$password");
}

sub pem_key_properties
{
	my ($password) = @_;
	return ('security.protocol=SSL', "ssl.ca.location=$ca",
		"ssl.certificate.location=$kdir/client.pem",
		"ssl.key.location=$kdir/client-key.pem", "ssl.key.password=$password");
}

sub outbox_count
{
	my ($node) = @_;
	return $node->safe_psql('postgres', 'SELECT count(*) FROM evbus.outbox');
}

# --- SASL over TLS ---------------------------------------------------------
write_kafka_properties($file, sasl_ssl_properties($wrong));
my $node = new_node(
	'sasl_tls',
	conf => [
		"evbus.brokers = '$sasl_ssl_bootstrap'",
		"evbus.kafka_config_file = '$file'",
		"evbus.topic_prefix = '$prefix'"
	]);
$node->safe_psql('postgres', 'CREATE EXTENSION evbus');
subscribe_recorder($node, 'Pinged');
my $worker = $node->safe_psql('postgres', 'SELECT evbus.publisher_pid()');
my $consumer = $node->safe_psql('postgres', 'SELECT evbus.consumer_pid()');
my $id1 = $node->safe_psql('postgres', q{SELECT evbus.publish('Pinged', '{"n": 1}', 'k')});

ok($node->wait_for_log(qr/evbus: Kafka.*(?i:authentication)/),
	'SASL_SSL with a wrong password: the authentication error is logged');
sleep 2;
is(outbox_count($node), '1', 'the event waits in the outbox');

my $log_offset = -s $node->logfile;
write_kafka_properties($file, sasl_ssl_properties($sasl_password));
$node->reload;
ok($node->poll_query_until('postgres', 'SELECT count(*) = 0 FROM evbus.outbox'),
	'with the right password the event is published over SASL_SSL');
ok($node->poll_query_until('postgres', q{SELECT count(*) = 1 FROM received WHERE payload = '{"n": 1}'}),
	'and the consumer, over SASL_SSL as well, hands it to the handler');
my @m = kcat_consume("${prefix}Pinged", 1, 20);
is($m[0]{headers}{'cap-msg-id'}, $id1, 'the event is in Kafka (read back on the plain listener)');

# --- a PEM client key encrypted with a password ------------------------------
my $no_producer = qr/evbus: not publishing: the Kafka producer could not be created/;
$log_offset = -s $node->logfile;
write_kafka_properties($file, pem_key_properties($wrong));
$node->safe_psql('postgres', "ALTER SYSTEM SET evbus.brokers = '$mtls_bootstrap'");
$node->reload;
ok($node->wait_for_log($no_producer, $log_offset),
	'a wrong password for the PEM key: the producer cannot be created');
ok($node->wait_for_log(qr/the Kafka consumer could not be created/, $log_offset),
	'nor can the consumer');
ok($node->wait_for_log(qr/HINT: .*ssl\.key\.password is its password/, $log_offset),
	'a hint names the key password (OpenSSL\'s error does not)');
my $id2 = $node->safe_psql('postgres', q{SELECT evbus.publish('Pinged', '{"n": 2}', 'k')});
sleep 2;
is(outbox_count($node), '1', 'the new event waits in the outbox');

write_kafka_properties($file, pem_key_properties($key_password));
$node->reload;
ok($node->poll_query_until('postgres', 'SELECT count(*) = 0 FROM evbus.outbox'),
	'with the right key password the event is published over mutual TLS');
ok($node->poll_query_until('postgres', q{SELECT count(*) = 1 FROM received WHERE payload = '{"n": 2}'}),
	'and handled');
@m = kcat_consume("${prefix}Pinged", 2, 20);
is_deeply([ map { $_->{headers}{'cap-msg-id'} } @m ], [ $id1, $id2 ],
	'both events are in Kafka, in order');

is_deeply(
	[ map { $node->safe_psql('postgres', "SELECT evbus.${_}_pid()") } qw(publisher consumer) ],
	[ $worker, $consumer ],
	'the same workers ran throughout');
my $settings = $node->safe_psql('postgres',
	q{SELECT string_agg(name || '=' || setting, ' ') FROM pg_settings WHERE name LIKE 'evbus.%'});
unlike($settings, qr/\Q$sasl_password\E|\Q$key_password\E|\Q$wrong\E/, 'no password in a setting');
unlike(slurp_file($node->logfile), qr/background worker "evbus[^"]*" \(PID \d+\) (?:was terminated|exited)/,
	'no evbus worker crashed or exited');
$node->stop;
my $log = slurp_file($node->logfile);
unlike($log, qr/\Q$sasl_password\E/, 'the SASL password never appears in the server log');
unlike($log, qr/\Q$key_password\E/, 'nor does the key password');
unlike($log, qr/\Q$wrong\E/, 'nor the wrong one');

done_testing();

# 066_kafka_tls.pl - evbus talks to Kafka over TLS, configured in
# evbus.kafka_config_file (security.protocol=SSL, ssl.ca.location): the
# test broker's TLS listener, whose self-signed certificate is DIR/ca.pem
# (test/kafka/kafka.sh).  The producer and the consumer both go over TLS.
#
# A broker reached by a name its certificate does not carry: the same,
# until evbus.brokers names its address again.
#
# A wrong CA file (another self-signed certificate): the handshake fails,
# the error is in the server log, nothing is lost (the event waits in the
# outbox) and no worker crashes; the certificate replaced under the same
# file name (the properties file unchanged) and the configuration
# reloaded, the event is published and handled.
#
# Mutual TLS: a second listener requires a client certificate; evbus
# presents one from a password-protected PKCS#12 keystore
# (ssl.keystore.location, ssl.keystore.password).  A wrong password keeps
# the events waiting, the right one publishes them, and neither password
# ever shows in the server log or a setting.
use strict;
use warnings;

use EvbusTest;
use File::Copy;
use File::Spec;
use PostgreSQL::Test::Utils;
use Test::More;

kafka_bootstrap();
my $kdir = kafka_dir();
plan skip_all => "the broker in $kdir has no TLS listeners (started by an older kafka.sh)"
  unless -f "$kdir/ssl_bootstrap" && -f "$kdir/mtls_bootstrap" && -f "$kdir/client_password";
my ($ssl_bootstrap, $mtls_bootstrap, $password) =
  map { my $s = slurp_file("$kdir/$_"); chomp $s; $s } qw(ssl_bootstrap mtls_bootstrap client_password);
my $ca = "$kdir/ca.pem";
# the client's certificate: self-signed too, but not the broker's
my $wrong_ca = "$kdir/client.pem";
my $wrong = 'Wrong-' . $$ . '-Passw0rd';

my $prefix = "t066.$$.";
my $dir = File::Spec->rel2abs(PostgreSQL::Test::Utils::tempdir());
my $file = "$dir/kafka.properties";

# (Re)write the properties file in place: TLS that trusts $trust, plus
# the given lines
sub write_properties
{
	my ($trust, @lines) = @_;
	write_kafka_properties($file, 'security.protocol=SSL', "ssl.ca.location=$trust", @lines);
}

sub reload
{
	my ($node) = @_;
	$node->safe_psql('postgres', 'SELECT pg_reload_conf()');
}

# the CA file the properties name: the wrong certificate at first
my $trusted = "$dir/trusted-ca.pem";
copy($wrong_ca, $trusted) or die "copy: $!";
write_properties($trusted);
my $node = new_node(
	'tls',
	conf => [
		"evbus.brokers = '$ssl_bootstrap'",
		"evbus.kafka_config_file = '$file'",
		"evbus.topic_prefix = '$prefix'"
	]);
$node->safe_psql('postgres', 'CREATE EXTENSION evbus');
subscribe_recorder($node, 'Pinged');
my $id1 = $node->safe_psql('postgres', q{SELECT evbus.publish('Pinged', '{"n": 1}', 'k')});
my $log_offset = -s $node->logfile;

# the producer's errors (its error callback; librdkafka retries the
# connection, so one comes after the event was staged), then the
# consumer's (a librdkafka log line naming the client)
ok($node->wait_for_log(qr/evbus: Kafka.*certificate verify failed/, $log_offset),
	'a wrong CA: the TLS error is in the server log');
ok($node->wait_for_log(qr/evbus: kafka .*evbus-\d+-consumer-[0-9a-f]+-[0-9a-f]+#consumer-\d+: .*certificate verify failed/),
	'the consumer\'s as well');
is($node->safe_psql('postgres', 'SELECT count(*) FROM evbus.outbox'), '1',
	'the event waits in the outbox');
my $worker = $node->safe_psql('postgres', 'SELECT evbus.publisher_pid()');
my $consumer = $node->safe_psql('postgres', 'SELECT evbus.consumer_pid()');

# the right certificate put in its place (as a certificate rotation
# would), the configuration reloaded: no restart, and no change to the
# properties file
copy($ca, "$trusted.new") or die "copy: $!";
rename "$trusted.new", $trusted or die "rename: $!";
reload($node);
ok($node->poll_query_until('postgres', 'SELECT count(*) = 0 FROM evbus.outbox'),
	'with the right CA certificate in the same file the event is published');
ok($node->poll_query_until('postgres', q{SELECT count(*) = 1 FROM received WHERE payload = '{"n": 1}'}),
	'and the consumer, over TLS as well, hands it to the handler');
my @m = kcat_consume("${prefix}Pinged", 1, 20);
is($m[0]{headers}{'cap-msg-id'}, $id1, 'the event is in Kafka (read back on the plain listener)');

# the right CA, but a name the broker's certificate does not carry (its
# only subject alternative name is IP 127.0.0.1): librdkafka checks the
# name (ssl.endpoint.identification.algorithm=https, its default), the
# handshake fails and the event waits; back to the address, it goes out
(my $by_name = $ssl_bootstrap) =~ s/^127\.0\.0\.1:/localhost:/;
$log_offset = -s $node->logfile;
$node->safe_psql('postgres', "ALTER SYSTEM SET evbus.brokers = '$by_name'");
reload($node);
my $id_name = $node->safe_psql('postgres', q{SELECT evbus.publish('Pinged', '{"n": "by name"}', 'k')});
ok($node->wait_for_log(qr/evbus: Kafka.*localhost.*certificate verify failed/, $log_offset),
	'the broker reached by a name its certificate lacks: the TLS error is in the server log');
ok($node->wait_for_log(qr/HINT: .*the certificate names the host or address given in evbus.brokers/, $log_offset),
	'a hint names the two things to check, not only the CA file');
is($node->safe_psql('postgres', 'SELECT count(*) FROM evbus.outbox'), '1',
	'the event waits in the outbox');
$node->safe_psql('postgres', "ALTER SYSTEM SET evbus.brokers = '$ssl_bootstrap'");
reload($node);
ok($node->poll_query_until('postgres', 'SELECT count(*) = 0 FROM evbus.outbox'),
	'reached by its address again, the event is published');

# mutual TLS: the listener refuses a client without a certificate
isnt(system("timeout 20 kcat -b '$mtls_bootstrap' -X security.protocol=SSL -X ssl.ca.location='$ca' "
		  . "-L -m 5 >/dev/null 2>&1"),
	0, 'the mutual-TLS listener refuses a client without a certificate');

my @keystore = ("ssl.keystore.location=$kdir/client.p12");
my $no_producer = qr/evbus: not publishing: the Kafka producer could not be created/;
$log_offset = -s $node->logfile;
write_properties($ca, @keystore, "ssl.keystore.password=$wrong");
$node->safe_psql('postgres', "ALTER SYSTEM SET evbus.brokers = '$mtls_bootstrap'");
reload($node);
ok($node->wait_for_log($no_producer, $log_offset), 'a wrong keystore password: the producer cannot be created');
ok($node->wait_for_log(qr/the Kafka consumer could not be created/, $log_offset),
	'nor can the consumer');
ok($node->wait_for_log(qr/HINT: .*ssl\.keystore\.password is its password/, $log_offset),
	'a hint names the keystore password');
my $id2 = $node->safe_psql('postgres', q{SELECT evbus.publish('Pinged', '{"n": 2}', 'k')});
# a reload makes the worker try again, now with the event staged
$log_offset = -s $node->logfile;
reload($node);
ok($node->wait_for_log($no_producer, $log_offset), 'tried again after a reload: still no producer');
is($node->safe_psql('postgres', 'SELECT count(*) FROM evbus.outbox'), '1', 'the new event waits');

write_properties($ca, @keystore, "ssl.keystore.password=$password");
reload($node);
ok($node->poll_query_until('postgres', 'SELECT count(*) = 0 FROM evbus.outbox'),
	'with the right keystore password the event is published over mutual TLS');
ok($node->poll_query_until('postgres', q{SELECT count(*) = 1 FROM received WHERE payload = '{"n": 2}'}),
	'and handled');
@m = kcat_consume("${prefix}Pinged", 3, 20);
is_deeply([ map { $_->{headers}{'cap-msg-id'} } @m ], [ $id1, $id_name, $id2 ],
	'the three events are in Kafka, in order');

is_deeply(
	[ map { $node->safe_psql('postgres', "SELECT evbus.${_}_pid()") } qw(publisher consumer) ],
	[ $worker, $consumer ],
	'the same workers ran throughout');
my $settings = $node->safe_psql('postgres',
	q{SELECT string_agg(name || '=' || setting, ' ') FROM pg_settings WHERE name LIKE 'evbus.%'});
unlike($settings, qr/\Q$password\E|\Q$wrong\E/, 'no keystore password in a setting');
unlike(slurp_file($node->logfile), qr/background worker "evbus[^"]*" \(PID \d+\) (?:was terminated|exited)/,
	'no evbus worker crashed or exited');
$node->stop;
my $log = slurp_file($node->logfile);
unlike($log, qr/\Q$password\E/, 'the keystore password never appears in the server log');
unlike($log, qr/\Q$wrong\E/, 'nor does the wrong one');

done_testing();

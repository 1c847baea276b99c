# 065_kafka_sasl.pl - evbus talks to a broker that requires SASL/PLAIN
# (the test broker's second listener, test/kafka/kafka.sh), with the
# credentials in evbus.kafka_config_file.  A wrong password: nothing is
# lost, the events wait in the outbox, the workers keep running.  The file
# edited in place and the configuration reloaded (no restart): the
# producer and the consumer are rebuilt with the new password, the event
# is published and handled.  Neither password ever shows in the server
# log or a setting.
use strict;
use warnings;

use EvbusTest;
use File::Spec;
use PostgreSQL::Test::Utils;
use Test::More;

kafka_bootstrap();
my $kdir = kafka_dir();
plan skip_all => "the broker in $kdir has no SASL listener (started by an older kafka.sh)"
  unless -f "$kdir/sasl_bootstrap";
my $sasl_bootstrap = slurp_file("$kdir/sasl_bootstrap");
chomp $sasl_bootstrap;
my $password = slurp_file("$kdir/sasl_password");
chomp $password;
my $wrong = 'Wrong-' . $$ . '-Passw0rd';

my $prefix = "t065.$$.";
my $dir = File::Spec->rel2abs(PostgreSQL::Test::Utils::tempdir());
my $file = "$dir/kafka.properties";

write_kafka_properties($file, sasl_properties($wrong));
my $node = new_node(
	'sasl',
	conf => [
		"evbus.brokers = '$sasl_bootstrap'",
		"evbus.kafka_config_file = '$file'",
		"evbus.topic_prefix = '$prefix'",
		"evbus.retry_interval = '100ms'"
	]);
$node->safe_psql('postgres', 'CREATE EXTENSION evbus');
subscribe_recorder($node, 'Pinged');
$node->safe_psql('postgres', q{SELECT evbus.publish('Pinged', '{"n": 1}', 'k');});

ok($node->wait_for_log(qr/evbus: Kafka.*(?i:authentication)/),
	'a wrong password: the authentication error is logged');
# evbus.metrics() shows the last Kafka error as a label: the error, never
# the password
ok($node->poll_query_until('postgres',
		q{SELECT bool_or(error ~* 'authentication') FROM evbus.metrics()
		   WHERE metric = 'evbus_broker_last_error_info'}),
	'evbus.metrics() shows the authentication error');
unlike($node->safe_psql('postgres',
		q{SELECT string_agg(error, ' ') FROM evbus.metrics() WHERE metric = 'evbus_broker_last_error_info'}),
	qr/\Q$wrong\E/, 'without the password');
my $worker = $node->safe_psql('postgres', 'SELECT evbus.publisher_pid()');
sleep 2;
is($node->safe_psql('postgres', 'SELECT count(*) FROM evbus.outbox'), '1',
	'the event waits in the outbox');
is($node->safe_psql('postgres', 'SELECT evbus.publisher_pid()'), $worker,
	'the worker keeps running');

# the file edited in place, the configuration reloaded: no restart
write_kafka_properties($file, sasl_properties($password));
$node->reload;
ok($node->poll_query_until('postgres', 'SELECT count(*) = 0 FROM evbus.outbox'),
	'with the right password the event is published, without a restart');
ok($node->poll_query_until('postgres', q{SELECT count(*) = 1 FROM received WHERE payload = '{"n": 1}'}),
	'and the consumer, rebuilt as well, hands it to the handler');
is($node->safe_psql('postgres', 'SELECT evbus.publisher_pid()'), $worker,
	'by the same worker process');
my @m = kcat_consume("${prefix}Pinged", 1, 20);
is(scalar @m, 1, 'the event is in Kafka (read back on the plain listener)');

my $settings = $node->safe_psql('postgres',
	q{SELECT string_agg(name || '=' || setting, ' ') FROM pg_settings WHERE name LIKE 'evbus.%'});
unlike($settings, qr/\Q$password\E|\Q$wrong\E/, 'no password in a setting');
$node->stop;
my $log = slurp_file($node->logfile);
unlike($log, qr/\Q$password\E/, 'the password never appears in the server log');
unlike($log, qr/\Q$wrong\E/, 'nor does the wrong one');

done_testing();

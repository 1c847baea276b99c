# 250_kafka_allowlist.pl - evbus.kafka_config_file takes only the librdkafka
# properties on evbus's allow-list.  A property that librdkafka would paste
# into a command line (sasl.kerberos.principal goes into its default kinit
# command), that loads code (ssl.providers), or that evbus does not know is
# refused with its line number and name, never its value; nothing it names
# runs; the worker keeps running and keeps every event; a file of allowed
# properties then publishes to the real broker, and its client.id turns
# the consumers' search for copies of the database off, which the log says.
use strict;
use warnings;

use EvbusTest;
use File::Spec;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);

kafka_bootstrap();
my $prefix = "t250.$$.";
my $dir = File::Spec->rel2abs(PostgreSQL::Test::Utils::tempdir());
# what the injected command would create, were it run
my $witness = "/tmp/evbus-t250-$$-kinit";
unlink $witness;

# a principal that the default kinit command would run as a shell command
write_kafka_properties("$dir/kerberos.properties",
	'security.protocol=SASL_PLAINTEXT',
	"sasl.kerberos.principal=\$(id>$witness)",
	'sasl.kerberos.keytab=/nonexistent/evbus.keytab',
	'sasl.mechanisms=GSSAPI');
# an OpenSSL provider is a shared object loaded into the server
write_kafka_properties("$dir/providers.properties",
	'# a provider', 'security.protocol=PLAINTEXT', '', "ssl.providers=$dir/evilprovider");
# a property evbus does not know (a misspelling) is refused too
write_kafka_properties("$dir/unknown.properties", 'linger.ms=2', 'lingr.ms=5');
# SASL with librdkafka's default mechanism, GSSAPI, would run kinit
write_kafka_properties("$dir/gssapi.properties", 'security.protocol=SASL_PLAINTEXT',
	'sasl.username=alice');
# allowed: connection, TLS/SASL secrets (ignored over PLAINTEXT), tuning
write_kafka_properties("$dir/good.properties",
	'security.protocol=PLAINTEXT',
	'sasl.mechanisms=SCRAM-SHA-512', 'sasl.username=alice', 'sasl.password=NotUsed-t250',
	'client.id=evbus-t250', 'linger.ms=2', 'compression.type=zstd',
	'message.max.bytes=2000000', 'socket.keepalive.enable=true',
	'reconnect.backoff.ms=50', 'reconnect.backoff.max.ms=2000',
	'topic.metadata.refresh.interval.ms=5000');

my $node = new_node('allowlist', kafka => 1,
	conf => [ "evbus.topic_prefix = '$prefix'", "evbus.kafka_config_file = '$dir/kerberos.properties'" ]);

# wait_log(regex, offset, seconds): the server log matches after offset
sub wait_log
{
	my ($re, $offset, $timeout) = @_;
	my $deadline = time() + ($timeout // 30);
	while (time() < $deadline)
	{
		my $log = slurp_file($node->logfile, $offset);
		return 1 if $log =~ $re;
		sleep 0.2;
	}
	return 0;
}

sub use_file
{
	my ($name) = @_;
	my $offset = -s $node->logfile;
	$node->safe_psql('postgres', "ALTER SYSTEM SET evbus.kafka_config_file = '$dir/$name'");
	$node->reload;
	return $offset;
}

$node->safe_psql('postgres', 'CREATE EXTENSION evbus');
$node->safe_psql('postgres', q{SELECT evbus.publish('Allowed', '{"n": 1}')});

ok(wait_log(qr/Kafka property "sasl.kerberos.principal" is not allowed in evbus.kafka_config_file \(line 2 of "[^"]*kerberos.properties"\)/, 0),
	'sasl.kerberos.principal is refused, by line number and name');
my $pid = $node->safe_psql('postgres', 'SELECT evbus.publisher_pid()');
sleep 3;
ok(!-e $witness, 'the command in the principal never ran');
is($node->safe_psql('postgres', 'SELECT evbus.publisher_pid()'), $pid, 'the worker keeps running');
is($node->safe_psql('postgres', 'SELECT count(*) FROM evbus.outbox'), '1', 'the event waits in the outbox');

my $offset = use_file('providers.properties');
ok(wait_log(qr/Kafka property "ssl.providers" is not allowed in evbus.kafka_config_file \(line 4 of /, $offset),
	'ssl.providers is refused, by line number and name');
ok(wait_log(qr/HINT: .*load code or run a command/, $offset, 1), 'the hint says why');

$offset = use_file('unknown.properties');
ok(wait_log(qr/Kafka property "lingr.ms" is not allowed in evbus.kafka_config_file \(line 2 of /, $offset),
	'an unknown property is refused, by line number and name');

$offset = use_file('gssapi.properties');
ok(wait_log(qr/SASL with the GSSAPI mechanism is not allowed in evbus.kafka_config_file/, $offset),
	'SASL with the default mechanism, GSSAPI (it runs kinit), is refused');

use_file('good.properties');
ok(wait_for_sql($node, 'postgres', 'SELECT count(*) FROM evbus.outbox', '0', 60),
	'with a file of allowed properties the event is published');
my @m = kcat_consume("${prefix}Allowed", 1, 30);
is(scalar @m, 1, 'the event is in Kafka');
is($node->safe_psql('postgres', 'SELECT evbus.publisher_pid()'), $pid, 'by the same worker');

# the file's client.id replaces the consumers' own, by which a copy of the
# database is found in their groups: the consumer says it looks for none
$offset = -s $node->logfile;
subscribe_recorder($node, 'Allowed');
ok(wait_for_sql($node, 'postgres', 'SELECT count(*) FROM received', '1', 60),
	'a consumer with the file handles the event');
ok(wait_log(qr/LOG:  evbus: the consumers of this database look for no copy of it in their consumer groups\n.*DETAIL:  evbus.kafka_config_file sets client.id/,
		$offset, 5),
	'and says that it looks for no copy of the database in its groups');

$node->stop;
ok(!-e $witness, 'the command in the principal never ran, to the end');
my $log = slurp_file($node->logfile);
# (ok, not unlike: a failure must not print the log)
ok($log !~ /\Q$witness\E|id>/, 'the refused principal is never logged');
ok($log !~ /evilprovider/, 'nor the refused provider');
ok($log !~ /NotUsed-t250/, 'nor the password of the allowed file');
unlink $witness;

done_testing();

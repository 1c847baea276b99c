# 060_kafka_config.pl - evbus.kafka_config_file passes librdkafka
# properties to the producer; properties that load code or run commands
# are refused (the worker keeps running and keeps every event); a secret
# in the file never shows in a setting, a view or the server log.
use strict;
use warnings;

use EvbusTest;
use File::Spec;
use PostgreSQL::Test::Utils;
use Test::More;

kafka_bootstrap();
my $prefix = "t060.$$.";
my $secret = 'TopSecret-' . $$ . '-Passw0rd';
my $dir = File::Spec->rel2abs(PostgreSQL::Test::Utils::tempdir());

sub write_file
{
	my ($path, $text) = @_;
	open my $fh, '>', $path or die "$path: $!";
	print $fh $text;
	close $fh;
	chmod 0600, $path;
}

# a file with a refused property
write_file("$dir/evil.properties", "# tuning\nlinger.ms = 3\nplugin.library.paths = /tmp/evil.so\n");
# a file with a secret that is ignored on a PLAINTEXT connection
write_file("$dir/secret.properties",
	"security.protocol=PLAINTEXT\nsasl.username=alice\nsasl.password=$secret\nclient.id=evbus-t060\n");
# a malformed file
write_file("$dir/broken.properties", "linger.ms 5\n");

my $node = new_node('config', kafka => 1,
	conf => [ "evbus.topic_prefix = '$prefix'", "evbus.kafka_config_file = '$dir/evil.properties'" ]);
$node->safe_psql('postgres', 'CREATE EXTENSION evbus');
subscribe_recorder($node, 'Config');
$node->safe_psql('postgres', q{SELECT evbus.publish('Config', '{"n": 1}')});

ok($node->wait_for_log(qr/Kafka property "plugin.library.paths" is not allowed/),
	'plugin.library.paths is refused with a clear message');
ok($node->wait_for_log(qr/not consuming for group "postgres": the Kafka consumer could not be created/),
	'the consumer says it cannot consume');
my $pid = $node->safe_psql('postgres', 'SELECT evbus.publisher_pid()');
my $consumer_pid = $node->safe_psql('postgres', 'SELECT evbus.consumer_pid()');
sleep 2;
is($node->safe_psql('postgres', 'SELECT evbus.publisher_pid()'), $pid, 'the worker keeps running (no crash loop)');
is($node->safe_psql('postgres', 'SELECT evbus.consumer_pid()'), $consumer_pid,
	'so does the consumer worker');
is($node->safe_psql('postgres', 'SELECT count(*) FROM evbus.outbox'), '1', 'the event waits in the outbox');

# a malformed line names the line, not its contents
my $log_offset = -s $node->logfile;
$node->safe_psql('postgres', "ALTER SYSTEM SET evbus.kafka_config_file = '$dir/broken.properties'");
$node->reload;
ok($node->wait_for_log(qr/syntax error in evbus.kafka_config_file ".*broken.properties", line 1/, $log_offset),
	'a malformed file: the line is named');

# a good file: the event goes out, the secret stays secret
$node->safe_psql('postgres', "ALTER SYSTEM SET evbus.kafka_config_file = '$dir/secret.properties'");
$node->reload;
ok($node->poll_query_until('postgres', 'SELECT count(*) = 0 FROM evbus.outbox'),
	'with a valid properties file the event is published');
my @m = kcat_consume("${prefix}Config", 1, 20);
is(scalar @m, 1, 'the event is in Kafka');
ok($node->poll_query_until('postgres', q{SELECT count(*) = 1 FROM received WHERE payload = '{"n": 1}'}),
	'and the consumer, built after the reload, hands it to the handler');

my $settings = $node->safe_psql('postgres',
	q{SELECT string_agg(name || '=' || setting, ' ') FROM pg_settings WHERE name LIKE 'evbus.%'});
unlike($settings, qr/\Q$secret\E/, 'the secret is in no setting');
my $views = $node->safe_psql('postgres',
	q{SELECT (SELECT string_agg(s::text, ' ') FROM evbus.stats s) || (SELECT string_agg(a::text, ' ') FROM pg_stat_activity a)});
unlike($views // '', qr/\Q$secret\E/, 'nor in evbus.stats or pg_stat_activity');
is($node->safe_psql('postgres', q{SELECT current_setting('evbus.kafka_config_file')}),
	"$dir/secret.properties", 'a superuser sees the path, not the contents');

# only superusers may even see the path
$node->safe_psql('postgres', 'CREATE ROLE reader LOGIN');
my ($ret, $stdout, $stderr) = $node->psql('postgres',
	q{SET ROLE reader; SELECT current_setting('evbus.kafka_config_file')});
like($stderr, qr/must be superuser|permission denied|pg_read_all_settings/, 'a plain role cannot read evbus.kafka_config_file');

$node->stop;
my $log = slurp_file($node->logfile);
unlike($log, qr/\Q$secret\E/, 'the secret never appears in the server log');
unlike($log, qr/evil\.so/, 'nor does the refused value');

done_testing();

# 252_kafka_conf_long_line.pl - a line of evbus.kafka_config_file is read
# whole, however long: a sasl.password of 10 KiB is one value, its tail is
# never taken for a property of its own (whose name, the secret's tail,
# would be logged); a line over the limit is refused by its number alone,
# and an unknown property name is shown by its first 64 bytes at most.
use strict;
use warnings;

use EvbusTest;
use File::Spec;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);

kafka_bootstrap();
my $prefix = "t252.$$.";
my $dir = File::Spec->rel2abs(PostgreSQL::Test::Utils::tempdir());
my $tail = "TailOfTheSecret$$";
# ends like a base64 secret, with '='
my $password = ('p' x 10240) . $tail . '==';

write_kafka_properties("$dir/long.properties",
	'security.protocol=PLAINTEXT', 'sasl.mechanisms=PLAIN', 'sasl.username=alice',
	"sasl.password=$password", 'client.id=evbus-t252');
write_kafka_properties("$dir/huge.properties",
	'security.protocol=PLAINTEXT', 'sasl.password=' . ('q' x (2 * 1024 * 1024)) . $tail);

# a long name that no property has (a secret pasted as a line of its own)
write_kafka_properties("$dir/longname.properties", ('n' x 100) . "NameTail$$=1");

my $node = new_node('longline', kafka => 1,
	conf => [ "evbus.topic_prefix = '$prefix'", "evbus.kafka_config_file = '$dir/long.properties'" ]);
$node->safe_psql('postgres', 'CREATE EXTENSION evbus');
$node->safe_psql('postgres', q{SELECT evbus.publish('LongLine', '{"n": 1}')});

ok(wait_for_sql($node, 'postgres', 'SELECT count(*) FROM evbus.outbox', '0', 60),
	'the file with a 10 KiB password is read whole: the event is published');
is(scalar(my @m = kcat_consume("${prefix}LongLine", 1, 30)), 1, 'the event is in Kafka');

my $offset = -s $node->logfile;
$node->safe_psql('postgres', "ALTER SYSTEM SET evbus.kafka_config_file = '$dir/huge.properties'");
$node->reload;
my $refused = 0;
for (my $deadline = time() + 30; !$refused && time() < $deadline; sleep 0.2)
{
	$refused = slurp_file($node->logfile, $offset) =~
	  /line 2 of evbus.kafka_config_file "[^"]*huge.properties" is longer than/;
}
ok($refused,
	'a line over the limit is refused by its number');

$offset = -s $node->logfile;
$node->safe_psql('postgres', "ALTER SYSTEM SET evbus.kafka_config_file = '$dir/longname.properties'");
$node->reload;
$refused = 0;
for (my $deadline = time() + 30; !$refused && time() < $deadline; sleep 0.2)
{
	$refused = slurp_file($node->logfile, $offset) =~
	  /Kafka property "n{64}" is not allowed in evbus.kafka_config_file \(line 1 of /;
}
ok($refused, 'an unknown property is named by its first 64 bytes at most');

$node->stop;
my $log = slurp_file($node->logfile);
# (ok, not unlike: a failure must not print the log)
ok($log !~ /\Q$tail\E/, 'the tail of the secret never appears in the server log');
ok($log !~ /ppppp|qqqqq/, 'nor does any other part of it');
ok($log !~ /NameTail$$/, 'nor the tail of a long unknown name');

done_testing();

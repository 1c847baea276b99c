# 256_cap_snowflake_ids.pl - DotNetCore.CAP producers send cap-msg-id as a
# Snowflake integer, not a UUID.  Any non-empty cap-msg-id of valid UTF-8
# up to 200 bytes is the de-duplication key: a message sent twice with
# cap-msg-id 1795123456789012480 is handled once and the inbox shows the
# id; evbus.retry takes such an id (and still a uuid); an empty or an
# over-long cap-msg-id, or one of the form topic/partition/offset (the key
# of a message without an id), is poison, dead-lettered at once.
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $bootstrap = kafka_bootstrap();
my $prefix = "t256.$$.";
my $topic = "${prefix}Snowflake";
kafka_admin('topics', '--create', '--topic', $topic, '--partitions', '1');

my $node = new_node('snowflake', kafka => 1,
	conf => [ "evbus.topic_prefix = '$prefix'", "evbus.retry_interval = '100ms'" ]);
$node->safe_psql('postgres', 'CREATE EXTENSION evbus');

sub sql { return $node->safe_psql('postgres', $_[0]); }

sql(as_subscriber($node) . q{
CREATE TABLE received (message_id text, payload jsonb);
CREATE TABLE allow_failing (yes boolean);
CREATE PROCEDURE on_snowflake(payload jsonb, headers jsonb) LANGUAGE plpgsql AS $$
BEGIN
	IF payload ? 'fail' AND NOT EXISTS (SELECT FROM public.allow_failing) THEN
		RAISE EXCEPTION 'not yet';
	END IF;
	INSERT INTO public.received VALUES (headers->>'cap-msg-id', payload);
END $$;
SELECT evbus.subscribe('Snowflake', 'on_snowflake(jsonb,jsonb)', max_retries => 0);
});

# one message with kcat, as a CAP producer sends it
my $dir = PostgreSQL::Test::Utils::tempdir();
my $file_no = 0;
sub cap_send
{
	my ($id, $value) = @_;
	my $file = "$dir/msg" . $file_no++;
	open(my $fh, '>', $file) or die "$file: $!";
	print $fh $value;
	close $fh;
	my @cmd = ('kcat', '-b', $bootstrap, '-P', '-t', $topic, '-k', 'snowflake-key',
		'-H', "cap-msg-id=$id", '-H', 'cap-msg-name=Snowflake', $file);
	system(@cmd) == 0 or die "kcat failed: @cmd\n";
}

my $id = '1795123456789012480';
my $failing = '1795123456789012481';
my $long = 'x' x 201;
cap_send($id, '{"n":1}');
cap_send($id, '{"n":1}');    # the same message again, as after a CAP retry
cap_send('', '{"n":2}');
cap_send($long, '{"n":3}');
cap_send($failing, '{"n":4,"fail":true}');
cap_send('1795123456789012482', '{"n":5}');
cap_send("$topic/0/0", '{"n":6}');    # would pass for a message without an id

ok(wait_for_sql($node, 'postgres',
		qq{SELECT sum(next_offset) FROM evbus.consumer_offsets WHERE topic = '$topic'}, '7', 60),
	'all 7 messages consumed');
is(sql(q{SELECT message_id, payload->>'n' FROM received ORDER BY payload->>'n'}),
	"$id|1\n1795123456789012482|5", 'the Snowflake id sent twice is handled once');
is(sql(qq{SELECT message_id, dedup_key, state FROM evbus.inbox WHERE payload->>'n' = '1'}),
	"$id|$id|handled", 'the inbox shows the Snowflake id as message id and de-duplication key');
is(sql(qq{SELECT kafka_offset, error_code FROM evbus.dead_letters WHERE topic = '$topic'
           AND error_code = 'invalid_message_id' ORDER BY kafka_offset}),
	"2|invalid_message_id\n3|invalid_message_id\n6|invalid_message_id",
	'an empty, an over-long and a positional cap-msg-id are poison');

ok(wait_for_sql($node, 'postgres', qq{SELECT state FROM evbus.inbox WHERE message_id = '$failing'}, 'dead'),
	'a failing message with a Snowflake id is dead-lettered');
is(sql(qq{SELECT count(*) FROM evbus.dead_letters WHERE message_id = '$failing'}), '1',
	'its dead letter carries the Snowflake id');
sql('INSERT INTO allow_failing VALUES (true)');
is(sql(qq{SELECT evbus.retry('$failing')}), 't', 'evbus.retry takes a Snowflake id');
ok(wait_for_sql($node, 'postgres', qq{SELECT state FROM evbus.inbox WHERE message_id = '$failing'}, 'handled'),
	'and the message is handled again');
is(sql(q{SELECT evbus.retry(gen_random_uuid())}), 'f', 'evbus.retry still takes a uuid');
is(sql(q{SELECT evbus.retry('no such id'::text)}), 'f', 'and an unknown id is not found');

done_testing();

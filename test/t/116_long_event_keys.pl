# 116_long_event_keys.pl - messages with long Kafka keys, which another
# service may send, are handled in per-key order like any other.
# A pending message's key goes into the index of the pending rows; a key
# of 22 kB failed that index at the first failed attempt, and the
# consumer stopped on it at every start, the partition stuck.  Keys
# longer than 512 bytes are now kept as their SHA-256 digest.
# On one partition: a 22 kB text key whose first message fails once and
# whose second waits behind it; a 3 kB binary key (not UTF-8, kept as
# hex below 512 bytes) likewise; a 500-byte key, kept as it is; then a
# short key.  Every message is handled once, each long key's second
# message after its first; the inbox keeps the long keys as
# "sha256:" and 64 hex digits; the consumer never stops.
use strict;
use warnings;

use Digest::SHA qw(sha256_hex);
use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;

kafka_bootstrap();
my $prefix = "t116.$$.";
my $topic = "${prefix}LongKeys";
my $node = new_node(
	'long_keys',
	kafka => 1,
	conf => [
		"evbus.topic_prefix = '$prefix'",
		"evbus.retry_interval = '100ms'",
		"evbus.retry_max_interval = '200ms'"
	]);
$node->safe_psql('postgres', 'CREATE EXTENSION evbus');
kafka_admin('topics', '--create', '--topic', $topic, '--partitions', '1',
	'--replication-factor', '1');
$node->safe_psql(
	'postgres', as_subscriber($node) . q{
CREATE TABLE handled (id text, n int, at timestamptz DEFAULT clock_timestamp());
-- calls of the messages that fail once, counted by sequences (a failed
-- call's effects are rolled back, a sequence's are not)
CREATE SEQUENCE calls_m1; CREATE SEQUENCE calls_m3; CREATE SEQUENCE calls_m4;
CREATE PROCEDURE on_long_keys(payload jsonb, headers jsonb) LANGUAGE plpgsql AS $$
BEGIN
	IF payload ? 'fail_once'
	   AND pg_catalog.nextval(('public.calls_' || (headers->>'cap-msg-id'))::regclass) = 1 THEN
		RAISE EXCEPTION 'failing once';
	END IF;
	INSERT INTO public.handled (id, n) VALUES (headers->>'cap-msg-id', (payload->>'n')::int);
END $$;
SELECT evbus.subscribe('LongKeys', 'on_long_keys(jsonb, jsonb)');
});

my $text_key = join('', map { sha256_hex($_) } 1 .. 350);    # 22,400 bytes
my $key500 = 'k' x 500;
# the console producer reads text lines: the binary key is sent by kcat
java_produce($topic,
	"cap-msg-id:m1\t$text_key\t{\"n\": 1, \"fail_once\": true}",
	"cap-msg-id:m2\t$text_key\t{\"n\": 2}",
	"cap-msg-id:m4\t$key500\t{\"n\": 4, \"fail_once\": true}",
	"cap-msg-id:m5\t$key500\t{\"n\": 5}");
my $binary_key = join('', map { chr(0x80 + $_ % 120) } 1 .. 3000);
my $kcat_in = "${PostgreSQL::Test::Utils::tmp_check}/t116_binary.msg";
append_to_file($kcat_in, qq[{"n": 3, "fail_once": true}]);
system('kcat', '-P', '-b', kafka_bootstrap(), '-t', $topic, '-k', $binary_key,
	'-H', 'cap-msg-id=m3', $kcat_in) == 0
  or die "kcat failed";
java_produce($topic, "cap-msg-id:m6\tshort\t{\"n\": 6}");

ok(wait_for_sql($node, 'postgres', 'SELECT count(*) FROM handled', '6', 60),
	'all 6 messages handled');
is($node->safe_psql('postgres', 'SELECT count(*), count(DISTINCT id) FROM handled'),
	'6|6', 'each once');
is( $node->safe_psql(
		'postgres', q{SELECT (SELECT last_value FROM calls_m1)::text || (SELECT last_value FROM calls_m3)
		    || (SELECT last_value FROM calls_m4)}),
	'222', 'the three that fail once were called twice each');
is( $node->safe_psql(
		'postgres', q{
SELECT (SELECT at FROM handled WHERE id = 'm1') < (SELECT at FROM handled WHERE id = 'm2')
   AND (SELECT at FROM handled WHERE id = 'm4') < (SELECT at FROM handled WHERE id = 'm5')}),
	't', 'per key, the second message after the first, which failed once');
my $digest = 'sha256:' . sha256_hex($text_key);
is( $node->safe_psql(
		'postgres', q{
SELECT string_agg(message_id || '=' || CASE WHEN event_key LIKE 'sha256:%' THEN 'sha256:' || length(event_key)
	WHEN length(event_key) > 100 THEN left(event_key, 1) || length(event_key) ELSE event_key END, ',' ORDER BY message_id)
  FROM evbus.inbox}),
	'm1=sha256:71,m2=sha256:71,m3=sha256:71,m4=k' . length($key500) . ',m5=k' . length($key500) . ',m6=short',
	'long keys are kept as their digest, shorter ones as they are');
is($node->safe_psql('postgres', q{SELECT event_key FROM evbus.inbox WHERE message_id = 'm1'}),
	$digest, 'the digest is SHA-256 of the key');
is( $node->safe_psql(
		'postgres', q{SELECT count(*) FROM evbus.inbox WHERE state = 'handled' AND attempts = 2}),
	'3', 'the three that failed once were handled at their second attempt');
unlike(slurp_file($node->logfile), qr/index row (size|requires)|background worker "evbus consumer".*exited with exit code 1/,
	'no index entry was too large, the consumer never stopped');

$node->stop;
done_testing();

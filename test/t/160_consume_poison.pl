# 160_consume_poison.pl - poison messages written by raw producers (kcat
# from files, Kafka's Java console producer for a null value) into one
# partition, between good messages: invalid JSON, invalid UTF-8, JSON with
# \u0000, a raw NUL byte, JSON that is not an object (array, string), a
# value over evbus.max_message_bytes, a null value (tombstone) and a
# cap-msg-id that is empty.  None reaches the handler, none crashes
# anything (same evbus processes, no server restart), each is dead-lettered at once
# with its raw bytes and its error code, and the partition keeps flowing:
# the good messages after them -- one with CAP headers, one from a foreign
# producer without any header -- are handled.
use strict;
use warnings;

use Digest::MD5 qw(md5_hex);
use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);

my $bootstrap = kafka_bootstrap();
my $prefix = "t160.$$.";
my $group = "t160_$$";
my $topic = "${prefix}Poison";
kafka_admin('topics', '--create', '--topic', $topic, '--partitions', '1');

my $node = new_node(
	'poison',
	kafka => 1,
	conf => [
		"evbus.topic_prefix = '$prefix'",
		"evbus.group_name = '$group'",
		"evbus.retry_interval = '100ms'",
		"evbus.retry_max_interval = '500ms'",
		'evbus.max_message_bytes = 10000'
	]);
$node->safe_psql('postgres', 'CREATE EXTENSION evbus');

sub sql { return $node->safe_psql('postgres', $_[0]); }

sql(as_subscriber($node) . q{
CREATE TABLE effects (payload jsonb, headers jsonb);
CREATE SEQUENCE handler_calls;
CREATE PROCEDURE on_poison(payload jsonb, headers jsonb) LANGUAGE plpgsql AS $$
BEGIN
	PERFORM pg_catalog.nextval('public.handler_calls');
	INSERT INTO public.effects VALUES (payload, headers);
END $$;
SELECT evbus.subscribe('Poison', 'on_poison(jsonb,jsonb)');
});
# every evbus process (launcher, publisher worker, consumer): none may crash
my $evbus_pids_sql = q{SELECT string_agg(backend_type || ' ' || pid, ', ' ORDER BY backend_type, pid)
                         FROM pg_stat_activity WHERE backend_type LIKE 'evbus%'};
ok(wait_for_sql($node, 'postgres', q{SELECT evbus.consumer_pid() IS NOT NULL}, 't', 30), 'the consumer runs');
my $worker = sql($evbus_pids_sql);
note "evbus processes: $worker";
my $postmaster_start = sql('SELECT pg_postmaster_start_time()');

my $listener = $node->background_psql('postgres');
$listener->query_safe('LISTEN evbus_dead_letter');

# one message with kcat, its value the bytes of a file
my $dir = PostgreSQL::Test::Utils::tempdir();
my $file_no = 0;
sub kcat_send
{
	my ($bytes, @headers) = @_;
	my $file = "$dir/msg" . $file_no++;
	open(my $fh, '>:raw', $file) or die "$file: $!";
	print $fh $bytes;
	close $fh;
	my @cmd = ('kcat', '-b', $bootstrap, '-P', '-t', $topic, '-k', 'poison-key',
		(map { ('-H', $_) } @headers), $file);
	system(@cmd) == 0 or die "kcat failed: @cmd\n";
}
sub cap { my ($id) = @_; return ("cap-msg-id=$id", 'cap-msg-name=Poison'); }
sub uuid { return sql('SELECT gen_random_uuid()'); }

my $big = '{"blob":"' . ('x' x 20000) . '"}';
# offset => [ bytes, expected error code ] (undef: a good message)
my @messages = (
	[ '{"n":0,"good":true}', undef ],
	[ '{"n":1,', 'invalid_json' ],
	[ "{\"n\":2,\"s\":\"\xff\xfe\xc3\"}", 'invalid_utf8' ],
	[ '{"n":3,"s":"a\u0000b"}', 'nul_byte' ],
	[ "{\"n\":4,\"s\":\"a\0b\"}", 'nul_byte' ],
	[ '[5,"not an object"]', 'not_an_object' ],
	[ '"6 is a string"', 'not_an_object' ],
	[ $big, 'too_large' ],
	[ undef, 'no_value' ],          # tombstone, sent below with Java
	[ '{"n":9}', 'invalid_message_id' ],
	[ '{"n":10,"good":true}', undef ],    # foreign: no header at all
	[ '{"n":11,"good":true}', undef ],
);
my %id_of;
for my $off (0 .. $#messages)
{
	my ($bytes, $code) = @{ $messages[$off] };
	my $id = uuid();
	$id_of{$off} = $id;
	if ($off == 8)
	{
		java_produce($topic, "cap-msg-id:$id,cap-msg-name:Poison\tpoison-key\t\\N");
	}
	elsif ($off == 9)
	{
		kcat_send($bytes, 'cap-msg-id=', 'cap-msg-name=Poison');
	}
	elsif ($off == 10)
	{
		kcat_send($bytes);
	}
	else
	{
		kcat_send($bytes, cap($id));
	}
}
my $total = scalar @messages;
# (not kcat_consume: its JSON decoding dies on the invalid UTF-8 value)
my @offsets = map { /^0 (\d+)$/ ? $1 : () }
  `timeout 60 kcat -b $bootstrap -C -t $topic -o beginning -e -q -f '%p %o\\n'`;
is_deeply(\@offsets, [ 0 .. $total - 1 ],
	"the $total messages are at offsets 0.." . ($total - 1) . ' of the one partition');

ok( wait_for_sql($node, 'postgres',
		qq{SELECT sum(next_offset) FROM evbus.consumer_offsets WHERE topic = '$topic'}, $total, 30),
	'the group consumed past every message: the partition keeps flowing');
ok(wait_for_sql($node, 'postgres', q{SELECT count(*) FROM effects}, '3', 10), 'the three good messages were handled');
is( sql(q{SELECT string_agg(payload->>'n', ',' ORDER BY (payload->>'n')::int) FROM effects}),
	'0,10,11', 'the good ones and only they reached the handler');
is(sql(q{SELECT last_value FROM handler_calls}), '3', 'the handler was called 3 times, never for poison');
is(sql(q{SELECT headers ? 'cap-msg-id' FROM effects WHERE payload->>'n' = '10'}), 'f',
	'the foreign message (no header) is handled too');

# --- dead letters -------------------------------------------------------------------
my %dead = map { my @f = split /\|/; ($f[0] => [ @f[1 .. $#f] ]) } split /\n/, sql(
	qq{SELECT kafka_offset, error_code, direction, group_name, topic, kafka_partition,
	          coalesce(md5(raw_value), 'NULL'), coalesce(length(raw_value), -1)
	     FROM evbus.dead_letters ORDER BY kafka_offset});
for my $off (0 .. $#messages)
{
	my ($bytes, $code) = @{ $messages[$off] };
	next unless defined $code;
	my $d = $dead{$off};
	ok($d, "offset $off ($code) is a dead letter") or next;
	is($d->[0], $code, "offset $off: error_code $code");
	is("$d->[1]|$d->[2]|$d->[3]|$d->[4]", "consume|$group|$topic|0",
		"offset $off: direction, group, topic, partition");
	if (defined $bytes)
	{
		is("$d->[5] $d->[6]", md5_hex($bytes) . ' ' . length($bytes), "offset $off: raw_value holds the bytes sent");
	}
	else
	{
		is($d->[5], 'NULL', "offset $off: a null value has a null raw_value");
	}
}
is(scalar(keys %dead), 9, 'nine dead letters, no more');
is( sql(qq{SELECT count(*) FROM evbus.dead_letters WHERE error_message IS NULL OR error_message = ''}),
	'0', 'each with an error message');
note sql(q{SELECT string_agg(kafka_offset || ' ' || error_code || ': ' || error_message, E'\n' ORDER BY kafka_offset)
             FROM evbus.dead_letters});
my $mid_of_8 = sql(q{SELECT message_id FROM evbus.dead_letters WHERE kafka_offset = 8});
is($mid_of_8, $id_of{8}, 'the tombstone\'s dead letter keeps its cap-msg-id');
my $n_notified = () = $listener->query_safe('SELECT 1') =~ /Asynchronous notification "evbus_dead_letter"/g;
note "$n_notified NOTIFY evbus_dead_letter for 9 poison messages";
$listener->quit;

# --- nothing crashed ------------------------------------------------------------------
is(sql($evbus_pids_sql), $worker, 'the evbus processes (worker, consumer) are the same');
is(sql('SELECT pg_postmaster_start_time()'), $postmaster_start, 'the server did not restart');
$node->log_check('no crash in the server log', 0,
	log_unlike => [qr/terminated by signal|server process .* was terminated|PANIC|TRAP/]);

# still flowing: a good message published through evbus
my $after = sql(q{SELECT evbus.publish('Poison', '{"n": 12, "good": true}')});
ok(wait_for_sql($node, 'postgres', qq{SELECT count(*) FROM effects WHERE headers->>'cap-msg-id' = '$after'}, '1', 20),
	'a later event is handled');
is(sql(qq{SELECT handled FROM evbus.stats WHERE side = 'consume' AND topic = '$topic'}),
	'4', 'evbus.stats: 4 handled');
note sql(qq{SELECT * FROM evbus.stats WHERE side = 'consume' AND topic = '$topic'});

# a replay reads the poison again: dead-lettered already, it is neither
# logged nor counted again
my $dead_metric_sql =
  q{SELECT sum(value)::int FROM evbus.metrics() WHERE metric = 'evbus_consume_dead_total'};
my $dead_counted = sql($dead_metric_sql);
is($dead_counted, '9', 'evbus_consume_dead_total counts the nine dead letters');
my $warned_sql = sub { my $n = () = slurp_file($node->logfile) =~ /cannot be decoded/g; $n };
is($warned_sql->(), 9, 'a WARNING for each');
my $replay = sql(q{SELECT evbus.replay('Poison', from_offset => 0)});
ok(wait_for_sql($node, 'postgres', "SELECT done_at IS NOT NULL FROM evbus.replays WHERE id = $replay", 't', 30),
	'a replay of the topic from offset 0 is done');
is( sql(qq{SELECT sum((r.value->>1)::int - (r.value->>0)::int)
	         FROM evbus.replays, jsonb_each(rewound) r WHERE id = $replay}),
	$total + 1, 'it rewound the partition by all its messages');
ok( wait_for_sql($node, 'postgres',
		qq{SELECT sum(next_offset) FROM evbus.consumer_offsets WHERE topic = '$topic'}, $total + 1, 30),
	'the group read the partition again to its end');
is(sql(q{SELECT count(*) FROM evbus.dead_letters}), '9', 'still nine dead letters');
is(sql($dead_metric_sql), $dead_counted, 'evbus_consume_dead_total unchanged');
is($warned_sql->(), 9, 'no WARNING for the poison read again');

$node->stop;
done_testing();

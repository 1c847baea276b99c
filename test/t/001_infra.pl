# 001_infra.pl - the test infrastructure itself, no evbus SQL: the broker
# started by test/kafka/kafka.sh takes 3 messages with keys and headers from
# Kafka's Java console producer, and both consumers the other tests rely on
# (kcat, i.e. librdkafka, and Kafka's Java console consumer) read back the
# same topic, keys, values and headers.  Then the broker is stopped and
# started again (kafka_stop/kafka_start): same address, messages still there.
use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;
use EvbusTest;

my $bootstrap = kafka_bootstrap();    # skips the test when no broker
like($bootstrap, qr/^127\.0\.0\.1:\d+$/, "bootstrap address $bootstrap");

# a fresh topic per run, so re-running against the same broker works
my $topic = "evbus_infra_$$" . '_' . time();

my @sent = (
	{ key => 'k1', value => '{"n":1}', headers => [ [ 'cap-msg-id', 'id-1' ], [ 'cap-msg-name', 'infra.test' ] ] },
	{ key => 'k2', value => '{"n":2}', headers => [ [ 'cap-msg-id', 'id-2' ], [ 'cap-msg-name', 'infra.test' ] ] },
	{ key => 'k3', value => 'plain text value', headers => [ [ 'cap-msg-id', 'id-3' ] ] },
);
java_produce($topic,
	map { join(',', map { "$_->[0]:$_->[1]" } @{ $_->{headers} }) . "\t$_->{key}\t$_->{value}" } @sent);
pass('Java console producer sent 3 messages');

# librdkafka's view
my @got = kcat_consume($topic, 3, 60);
is(scalar @got, 3, 'kcat read 3 messages');
my %by_key = map { $_->{key} => $_ } @got;
for my $s (@sent)
{
	my $m = $by_key{ $s->{key} };
	ok($m, "kcat: message with key $s->{key}") or next;
	is($m->{topic},   $topic,      "kcat: $s->{key} topic");
	is($m->{payload}, $s->{value}, "kcat: $s->{key} value");
	is_deeply($m->{header_list}, $s->{headers}, "kcat: $s->{key} headers, in order");
	is($m->{headers}{'cap-msg-id'}, $s->{headers}[0][1], "kcat: $s->{key} header by name");
	like($m->{partition}, qr/^\d+$/, "kcat: $s->{key} partition");
	like($m->{offset},    qr/^\d+$/, "kcat: $s->{key} offset");
}

# Kafka's own Java consumer's view
my @lines = java_consume($topic, 3, 60);
is(scalar @lines, 3, 'Java console consumer read 3 messages')
  or diag(join("\n", @lines));
my %line_by_key;
for my $l (@lines)
{
	my ($part, $off, $hdrs, $key, $value) = split /\t/, $l, 5;
	like($part, qr/^Partition:\d+$/, "java: partition field of '$l'");
	like($off,  qr/^Offset:\d+$/,    "java: offset field of '$l'");
	$line_by_key{$key} = { headers => $hdrs, value => $value, part => $part, off => $off };
}
for my $s (@sent)
{
	my $m = $line_by_key{ $s->{key} };
	ok($m, "java: message with key $s->{key}") or next;
	is($m->{value}, $s->{value}, "java: $s->{key} value");
	is($m->{headers}, join(',', map { "$_->[0]:$_->[1]" } @{ $s->{headers} }),
		"java: $s->{key} headers");
	my $k = $by_key{ $s->{key} };
	is($m->{part}, "Partition:$k->{partition}", "java and kcat agree on $s->{key}'s partition")
	  if $k;
	is($m->{off}, "Offset:$k->{offset}", "java and kcat agree on $s->{key}'s offset")
	  if $k;
}

# a restart (what the fault tests do) keeps the address and the data
kafka_stop();
is(kafka_start(), $bootstrap, 'broker restarted on the same address');
my @again = kcat_consume($topic, 3, 60);
is_deeply([ sort map { "$_->{key}=$_->{payload}" } @again ],
	[ sort map { "$_->{key}=$_->{value}" } @sent ],
	'messages survive a broker restart');

done_testing();

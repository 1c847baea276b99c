# 258_late_statement_timeout.pl - evbus.handler_timeout firing while a
# handler's error is being raised, after the handler's last check for
# interrupts, cancels nothing else.
#
# The timeout's cancel used to stay pending past the call: the consumer's
# own recording of the failure raised it ("canceling statement due to
# user request"), the consumer ended, and the attempt was charged as
# "interrupted" instead of the handler's error.  Each handler call here
# sleeps a little less than the timeout, then raises an error whose
# 40 MB message takes tens of milliseconds to build, with the sleeps
# 5 ms apart so that the timeout fires inside that build in some of them.
# Every message must end as a dead letter with the handler's own error
# (P0001), or 57014 when the timeout came first, and the consumer must
# never restart.
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;

kafka_bootstrap();
my $prefix = "t258.$$.";
my $node = new_node(
	'late_timeout',
	kafka => 1,
	conf => [ "evbus.topic_prefix = '$prefix'", "evbus.handler_timeout = '1s'" ]);
$node->safe_psql('postgres', 'CREATE EXTENSION evbus');
$node->safe_psql(
	'postgres', as_subscriber($node) . q{
CREATE PROCEDURE late(payload jsonb) LANGUAGE plpgsql AS $$
BEGIN
	PERFORM pg_catalog.pg_sleep((payload->>'sleep')::float8);
	RAISE EXCEPTION '%', pg_catalog.repeat(pg_catalog.repeat('x', 10000), 4000);
END $$;
SELECT evbus.subscribe('Late', 'late(jsonb)', max_retries => 0);
});
ok(wait_for_sql($node, 'postgres', q{SELECT evbus.consumer_pid() IS NOT NULL}, 't', 30),
	'the consumer runs');
my $consumer = $node->safe_psql('postgres', 'SELECT evbus.consumer_pid()');
my $log_offset = -s $node->logfile;

# sleeps of 0.900 to 1.045 s, 5 ms apart: the last ones outlast the timeout
my $n = 30;
$node->safe_psql('postgres',
	qq{SELECT count(evbus.publish('Late', jsonb_build_object('sleep', 0.9 + 0.005 * i), 'k' || i))
	     FROM generate_series(0, $n - 1) i});
ok( wait_for_sql(
		$node, 'postgres',
		q{SELECT count(*) FROM evbus.dead_letters WHERE integration_event = 'Late'},
		$n, 180),
	"all $n messages are dead-lettered");
is( $node->safe_psql(
		'postgres',
		q{SELECT string_agg(DISTINCT error_code, ',' ORDER BY error_code)
		    FROM evbus.dead_letters WHERE integration_event = 'Late'
		     AND error_code NOT IN ('P0001', '57014')}),
	'',
	'each with the handler error or the timeout, none interrupted');
is($node->safe_psql('postgres', 'SELECT evbus.consumer_pid()'),
	$consumer, 'the consumer never restarted');
unlike(
	substr(slurp_file($node->logfile), $log_offset),
	qr/canceling statement due to user request/,
	'no cancel outside a handler call');
diag(
	$node->safe_psql(
		'postgres',
		q{SELECT string_agg((payload->>'sleep') || ' ' || error_code, ', ' ORDER BY (payload->>'sleep')::float8)
		    FROM evbus.dead_letters WHERE integration_event = 'Late'}));

done_testing();

# 232_terminate_handler.pl - termination interrupts a handler, which
# cannot catch it: pg_terminate_backend of the consumer ends it within
# seconds even while a handler loops catching query_canceled, and
# `pg_ctl stop -m fast` is not delayed by a handler sleeping for a minute.
# The same for the publisher: termination ends it in a lock wait.
# After the restart each message is handled exactly once: the interrupted
# attempt left no effect, and the offsets live in the database.
# Nor does a handler that catches its cancel at every call hold the
# consumer for ever: at twice evbus.handler_timeout the consumer ends
# itself, with a WARNING naming the handler; each such attempt counts,
# the message is dead-lettered after its last retry, and a message of
# another handler is handled meanwhile.
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run ();
use Time::HiRes qw(time sleep);

kafka_bootstrap();
my $prefix = "t232.$$.";
my $node = new_node(
	'terminate_handler',
	kafka => 1,
	conf => [
		"evbus.topic_prefix = '$prefix'",
		"evbus.group_name = 't232_$$'",
		"evbus.handler_timeout = '5s'",
		"evbus.retry_interval = '200ms'"
	]);
$node->safe_psql('postgres', 'CREATE EXTENSION evbus');

# Each handler misbehaves on its first call only (a sequence counts calls:
# it is not rolled back with the attempt).
$node->safe_psql(
	'postgres', as_subscriber($node) . q{
CREATE TABLE effects (handler text, n int);   -- no unique constraint
CREATE SEQUENCE stubborn_calls;
CREATE SEQUENCE slow_calls;
CREATE PROCEDURE on_stubborn(payload jsonb) LANGUAGE plpgsql AS $$
BEGIN
	IF pg_catalog.nextval('public.stubborn_calls') = 1 THEN
		LOOP
			BEGIN
				PERFORM pg_catalog.pg_sleep(0.5);
			EXCEPTION WHEN query_canceled THEN
				NULL;		-- the handler timeout: ignored
			END;
		END LOOP;
	END IF;
	INSERT INTO public.effects VALUES ('stubborn', (payload->>'n')::int);
END $$;
CREATE PROCEDURE on_slow(payload jsonb) LANGUAGE plpgsql AS $$
BEGIN
	IF pg_catalog.nextval('public.slow_calls') = 1 THEN
		PERFORM pg_catalog.pg_sleep(60);
	END IF;
	INSERT INTO public.effects VALUES ('slow', (payload->>'n')::int);
END $$;
SELECT evbus.subscribe('Stubborn', 'on_stubborn(jsonb)');
SELECT evbus.subscribe('Slow', 'on_slow(jsonb)');
});

sub wait_for
{
	my ($what, $timeout) = @_;
	my $deadline = time() + $timeout;
	while (time() < $deadline)
	{
		return 1 if $what->();
		sleep 0.1;
	}
	return 0;
}

# --- pg_terminate_backend ends a handler that catches query_canceled -------
$node->safe_psql('postgres', q{SELECT evbus.publish('Stubborn', '{"n": 1}')});
ok(wait_for_sql($node, 'postgres', 'SELECT last_value >= 1 AND is_called FROM stubborn_calls', 't', 60),
	'the stubborn handler runs');
sleep 6;	# past the handler timeout, which it ignores, and short of twice it
is($node->safe_psql('postgres', 'SELECT count(*) FROM effects'), '0', 'and keeps running past its timeout');
my $pid = $node->safe_psql('postgres', 'SELECT evbus.consumer_pid()');
my $t0 = time();
$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)");
ok(wait_for(sub { !kill(0, $pid) }, 5), 'pg_terminate_backend ends the consumer within 5 s');
note sprintf('consumer gone after %.1f s', time() - $t0);
ok(wait_for_sql($node, 'postgres', q{SELECT count(*) FROM effects WHERE handler = 'stubborn'}, '1', 60),
	'a new consumer handles the message');
sleep 2;
is($node->safe_psql('postgres', q{SELECT count(*) FROM effects WHERE handler = 'stubborn'}), '1',
	'exactly once');

# --- the publisher too: termination ends it in a lock wait ------------------
# a session holds the outbox tables: the publisher's next claim waits
my ($lock_out, $lock_err) = ('', '');
my $locker = IPC::Run::start(
	[ $node->installed_command('psql'), '-XAtq', '-d', $node->connstr('postgres'), '-c',
	  'BEGIN; LOCK TABLE evbus.outbox_0, evbus.outbox_1 IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(60)' ],
	'<', \undef, '>', \$lock_out, '2>', \$lock_err);
ok( wait_for_sql($node, 'postgres',
		q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'evbus publisher' AND wait_event_type = 'Lock'},
		'1', 30),
	'the publisher waits for the outbox lock');
$pid = $node->safe_psql('postgres', 'SELECT evbus.publisher_pid()');
$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)");
ok(wait_for(sub { !kill(0, $pid) }, 5), 'pg_terminate_backend ends the publisher within 5 s');
$node->safe_psql('postgres',
	q{SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'BEGIN; LOCK TABLE evbus.outbox_0%'});
$locker->finish;
ok(wait_for_sql($node, 'postgres', 'SELECT evbus.publisher_pid() IS NOT NULL', 't', 10),
	'and a new publisher takes over');

# --- a fast shutdown does not wait for a handler sleeping a minute ---------
$node->safe_psql('postgres', q{ALTER SYSTEM SET evbus.handler_timeout = '120s'; SELECT pg_reload_conf()});
sleep 1;
$node->safe_psql('postgres', q{SELECT evbus.publish('Slow', '{"n": 2}')});
ok(wait_for_sql($node, 'postgres', 'SELECT last_value >= 1 AND is_called FROM slow_calls', 't', 60),
	'the slow handler runs');
sleep 1;
$t0 = time();
my $stopped = PostgreSQL::Test::Utils::system_log($node->installed_command('pg_ctl'),
	'-D', $node->data_dir, '-m', 'fast', '-t', '30', 'stop') == 0;
my $took = time() - $t0;
ok($stopped && $took < 10, 'pg_ctl stop -m fast finishes within 10 s') or diag sprintf('took %.1f s', $took);
note sprintf('fast shutdown took %.1f s', $took);
if (!$stopped)
{
	PostgreSQL::Test::Utils::system_log($node->installed_command('pg_ctl'),
		'-D', $node->data_dir, '-m', 'immediate', 'stop');
}
$node->_update_pid(0);
$node->start;
ok(wait_for_sql($node, 'postgres', q{SELECT count(*) FROM effects WHERE handler = 'slow'}, '1', 60),
	'after the restart the slow message is handled');
sleep 2;
is($node->safe_psql('postgres', q{SELECT handler, count(*) FROM effects GROUP BY 1 ORDER BY 1}),
	"slow|1\nstubborn|1", 'each message exactly once');
is($node->safe_psql('postgres', q{SELECT count(*) FROM evbus.inbox WHERE state <> 'handled'}), '0',
	'nothing pending or dead');

# --- a handler that ignores its timeout at every call ---------------------
$node->safe_psql(
	'postgres', as_subscriber($node) . q{
CREATE SEQUENCE deaf_calls;
CREATE PROCEDURE on_deaf(payload jsonb) LANGUAGE plpgsql AS $$
BEGIN
	PERFORM pg_catalog.nextval('public.deaf_calls');
	LOOP
		BEGIN
			PERFORM pg_catalog.pg_sleep(0.2);
		EXCEPTION WHEN query_canceled THEN
			NULL;		-- the handler timeout: ignored, every time
		END;
	END LOOP;
END $$;
CREATE PROCEDURE on_other(payload jsonb) LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO public.effects VALUES ('other', (payload->>'n')::int);
END $$;
SELECT evbus.subscribe('Deaf', 'on_deaf(jsonb)', NULL, 1);
SELECT evbus.subscribe('Other', 'on_other(jsonb)');
});
$node->safe_psql('postgres', q{ALTER SYSTEM SET evbus.handler_timeout = '1s'; SELECT pg_reload_conf()});
sleep 1;
my $log_offset = -s $node->logfile;
$pid = $node->safe_psql('postgres', 'SELECT evbus.consumer_pid()');
$t0 = time();
$node->safe_psql('postgres', q{SELECT evbus.publish('Deaf', '{"n": 3}')});
ok(wait_for(sub { !kill(0, $pid) }, 60), 'the consumer ends while the deaf handler runs');
note sprintf('consumer gone after %.1f s', time() - $t0);
ok( $node->wait_for_log(
		qr/WARNING:  evbus: handler public\.on_deaf\(pg_catalog\.jsonb\) was still running at twice evbus\.handler_timeout \(1000 ms\)/,
		$log_offset),
	'a WARNING names the handler');
$node->safe_psql('postgres', q{SELECT evbus.publish('Other', '{"n": 4}')});
ok( wait_for_sql($node, 'postgres',
		q{SELECT count(*) FROM evbus.dead_letters WHERE integration_event = 'Deaf'}, '1', 90),
	'after its retry the deaf message is dead-lettered');
is( $node->safe_psql('postgres', q{SELECT error_code FROM evbus.dead_letters WHERE integration_event = 'Deaf'}),
	'interrupted', 'as an attempt the consumer did not live through');
is($node->safe_psql('postgres', q{SELECT last_value FROM deaf_calls}), '2',
	'the handler ran twice (one retry), each call ended with the consumer');
ok(wait_for_sql($node, 'postgres', q{SELECT count(*) FROM effects WHERE handler = 'other'}, '1', 60),
	"another handler's message is handled");
ok(wait_for_sql($node, 'postgres', 'SELECT evbus.consumer_pid() IS NOT NULL', 't', 30),
	'and a consumer runs');

$node->stop;
done_testing();

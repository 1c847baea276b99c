# 212_handler_run_as.pl - a handler never runs as a superuser, nor as a
# role that does not control it.
#  - a superuser cannot subscribe (42501, hint: SET ROLE);
#  - a role cannot subscribe a handler owned by a role it is not a member
#    of (42501): that owner could redefine it to act as the subscriber;
#  - a handler owned by a role the subscriber is a member of is accepted;
#  - the subscriber made a superuser after subscribing: its messages fail
#    (42501) and are retried, the handler never runs; made an ordinary
#    role again, the message is handled once;
#  - the handler's owner changed to a role the subscriber is not a member
#    of: the same (42501, retried, never run), until the owner is back;
#  - CONNECT on the database revoked from PUBLIC, which bob had it through:
#    his messages fail (42501, retried, never run), and a role without it
#    cannot subscribe; granted to a role bob is a member of, handled.
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);

kafka_bootstrap();
my $prefix = "t212.$$.";
my $group = "t212_$$";
my $node = new_node(
	'run_as',
	kafka => 1,
	conf => [
		"evbus.topic_prefix = '$prefix'",
		"evbus.group_name = '$group'",
		"evbus.retry_interval = '100ms'",
		"evbus.retry_max_interval = '300ms'"
	]);
$node->safe_psql('postgres', 'CREATE EXTENSION evbus');

sub sql { return $node->safe_psql('postgres', $_[0]); }

sql(q{
CREATE ROLE team;
CREATE ROLE bob IN ROLE team;
CREATE ROLE carol;
GRANT USAGE ON SCHEMA evbus TO team, carol;
GRANT CREATE ON SCHEMA public TO team, carol;
GRANT EXECUTE ON FUNCTION evbus.subscribe(text, regprocedure, text, integer),
	evbus.unsubscribe(text, regprocedure, text) TO team, carol;
CREATE TABLE runs (handler text, n int, who name, super boolean);
GRANT INSERT ON runs TO team, carol;

SET ROLE team;
CREATE PROCEDURE team_handler(payload jsonb, headers jsonb) LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO public.runs VALUES ('team', (payload->>'n')::int, current_user,
		(SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user));
END $$;
SET ROLE carol;
CREATE PROCEDURE carols(payload jsonb, headers jsonb) LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO public.runs VALUES ('carol', (payload->>'n')::int, current_user, NULL);
END $$;
RESET ROLE;
CREATE PROCEDURE superusers(payload jsonb, headers jsonb) LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO public.runs VALUES ('superusers', (payload->>'n')::int, current_user, NULL);
END $$;
});

# --- at subscribe time -------------------------------------------------------------
is(sqlstate_of($node, 'postgres', q{SELECT evbus.subscribe('RunAs', 'public.superusers(jsonb,jsonb)')}),
	'42501', 'a superuser cannot subscribe');
my (undef, undef, $err) = $node->psql('postgres', q{SELECT evbus.subscribe('RunAs', 'public.superusers(jsonb,jsonb)')});
like($err, qr/HINT:.*SET ROLE/, 'the hint says to SET ROLE to the role the handler should run as');
is(sqlstate_of($node, 'postgres', q{SET ROLE bob; SELECT evbus.subscribe('RunAs', 'public.carols(jsonb,jsonb)')}),
	'42501', "bob cannot subscribe carol's handler");
is(sql(q{SELECT count(*) FROM evbus.subscriptions}), '0', 'nothing subscribed');
sql(q{SET ROLE bob; SELECT evbus.subscribe('RunAs', 'public.team_handler(jsonb,jsonb)', max_retries => 1000)});
is(sql(q{SELECT run_as FROM evbus.subscriptions}), 'bob', "bob subscribes his team's handler; it runs as bob");

ok(wait_for_sql($node, 'postgres', q{SELECT evbus.consumer_pid() IS NOT NULL}, 't', 30), 'the consumer runs');
my $m1 = sql(q{SELECT evbus.publish('RunAs', '{"n": 1}')});
ok(wait_for_sql($node, 'postgres', q{SELECT who || ' ' || super FROM runs WHERE n = 1}, 'bob false', 60),
	'handled as bob, not a superuser');

# --- bob made a superuser since -------------------------------------------------------
sql(q{ALTER ROLE bob SUPERUSER});
my $m2 = sql(q{SELECT evbus.publish('RunAs', '{"n": 2}')});
ok( wait_for_sql($node, 'postgres',
		qq{SELECT attempts >= 3 AND state = 'pending' AND last_error_code = '42501' FROM evbus.inbox WHERE message_id = '$m2'},
		't', 60),
	'bob is a superuser now: the message fails with 42501 and is retried');
like(sql(qq{SELECT last_error_message FROM evbus.inbox WHERE message_id = '$m2'}), qr/superuser/,
	'the error says why');
is(sql(q{SELECT count(*) FROM runs WHERE n = 2}), '0', 'the handler never ran');
sql(q{ALTER ROLE bob NOSUPERUSER});
ok(wait_for_sql($node, 'postgres', q{SELECT who || ' ' || super FROM runs WHERE n = 2}, 'bob false', 60),
	'bob an ordinary role again: handled, as bob');

# --- the handler's owner changed since -------------------------------------------------
sql(q{ALTER PROCEDURE team_handler(jsonb, jsonb) OWNER TO carol});
my $m3 = sql(q{SELECT evbus.publish('RunAs', '{"n": 3}')});
ok( wait_for_sql($node, 'postgres',
		qq{SELECT attempts >= 3 AND state = 'pending' AND last_error_code = '42501' FROM evbus.inbox WHERE message_id = '$m3'},
		't', 60),
	'owned by carol now: the message fails with 42501 and is retried');
like(sql(qq{SELECT last_error_message FROM evbus.inbox WHERE message_id = '$m3'}), qr/owned by role carol/,
	'the error names the owner');
is(sql(q{SELECT count(*) FROM runs WHERE n = 3}), '0', 'the handler never ran');
sql(q{ALTER PROCEDURE team_handler(jsonb, jsonb) OWNER TO team});
ok(wait_for_sql($node, 'postgres', q{SELECT who FROM runs WHERE n = 3}, 'bob', 60),
	'owned by the team again: handled, as bob');

# --- CONNECT revoked since ------------------------------------------------------------
sql(q{REVOKE CONNECT ON DATABASE postgres FROM PUBLIC});
my $m4 = sql(q{SELECT evbus.publish('RunAs', '{"n": 4}')});
ok( wait_for_sql($node, 'postgres',
		qq{SELECT attempts >= 3 AND state = 'pending' AND last_error_code = '42501' FROM evbus.inbox WHERE message_id = '$m4'},
		't', 60),
	'bob may not connect any more: the message fails with 42501 and is retried');
like(sql(qq{SELECT last_error_message FROM evbus.inbox WHERE message_id = '$m4'}),
	qr/role bob may not connect to database "postgres"/, 'the error says why');
is(sql(q{SELECT count(*) FROM runs WHERE n = 4}), '0', 'the handler never ran');
is(sqlstate_of($node, 'postgres', q{SET ROLE carol; SELECT evbus.subscribe('RunAs', 'public.carols(jsonb,jsonb)')}),
	'42501', 'carol, who may not connect, cannot subscribe');
sql(q{GRANT CONNECT ON DATABASE postgres TO team});
ok(wait_for_sql($node, 'postgres', q{SELECT who FROM runs WHERE n = 4}, 'bob', 60),
	'CONNECT granted to his team: handled, as bob');
sql(q{GRANT CONNECT ON DATABASE postgres TO PUBLIC});

sleep 1;
is(sql(q{SELECT n, count(*) FROM runs GROUP BY n ORDER BY n}), "1|1\n2|1\n3|1\n4|1", 'each event handled once');
is(sql(q{SELECT count(*) FROM runs WHERE super OR who <> 'bob'}), '0', 'never as anyone but bob');

$node->stop;
done_testing();

# 222_handler_unqualified_names.pl - a handler is written like any other
# procedure: with unqualified names, resolved by the search_path a
# connection of its role would have ("$user", public by default), and it
# runs on the first attempt.  It still runs as its subscriber inside a
# security-restricted operation: a handler that tries to become a superuser,
# to switch role or to change its role fails (42501) and is dead-lettered,
# and nothing it tried took effect.
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;

kafka_bootstrap();
my $prefix = "t222.$$.";
my $group = "t222_$$";
my $node = new_node(
	'unqualified',
	kafka => 1,
	conf => [ "evbus.topic_prefix = '$prefix'", "evbus.group_name = '$group'" ]);
$node->safe_psql('postgres', 'CREATE EXTENSION evbus');

sub sql { return $node->safe_psql('postgres', $_[0]); }

sql(q{
CREATE ROLE carol;
CREATE SCHEMA carol AUTHORIZATION carol;
GRANT USAGE ON SCHEMA evbus TO carol;
GRANT EXECUTE ON FUNCTION evbus.subscribe(text, regprocedure, text, integer) TO carol;
CREATE TABLE public.payments (order_id int, amount numeric, fee numeric, by_role text, reads_evbus boolean);
GRANT INSERT ON public.payments TO carol;

SET ROLE carol;
SET search_path = carol, public;
CREATE FUNCTION fee(amount numeric) RETURNS numeric LANGUAGE sql AS $$ SELECT round(amount * 0.02, 2) $$;
CREATE PROCEDURE pay(payload jsonb) LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO payments (order_id, amount, fee, by_role, reads_evbus)
	VALUES ((payload->>'orderId')::int, (payload->>'amount')::numeric,
			fee((payload->>'amount')::numeric), current_user,
			has_table_privilege('evbus.subscriptions', 'SELECT'));
END $$;
CREATE PROCEDURE become_superuser(payload jsonb) LANGUAGE plpgsql AS $$
BEGIN
	ALTER ROLE carol SUPERUSER;
END $$;
CREATE PROCEDURE switch_role(payload jsonb) LANGUAGE plpgsql AS $$
BEGIN
	SET ROLE postgres;
END $$;
CREATE PROCEDURE change_authorization(payload jsonb) LANGUAGE plpgsql AS $$
BEGIN
	PERFORM set_config('session_authorization', 'postgres', false);
END $$;
SELECT evbus.subscribe('PaymentDue', 'pay(jsonb)');
SELECT evbus.subscribe('PaymentDue', 'become_superuser(jsonb)', max_retries => 0);
SELECT evbus.subscribe('PaymentDue', 'switch_role(jsonb)', max_retries => 0);
SELECT evbus.subscribe('PaymentDue', 'change_authorization(jsonb)', max_retries => 0);
});

ok(wait_for_sql($node, 'postgres', q{SELECT evbus.consumer_pid() IS NOT NULL}, 't', 30), 'the consumer runs');
sql(q{SELECT evbus.publish('PaymentDue', '{"orderId": 42, "amount": 99.90}', '42')});
ok(wait_for_sql($node, 'postgres',
		q{SELECT count(*) FROM evbus.inbox WHERE state <> 'pending'}, '4', 60),
	'the four handlers ran');

is(sql(q{SELECT order_id, amount, fee, by_role, reads_evbus FROM public.payments}),
	'42|99.90|2.00|carol|f',
	'the handler with unqualified names ran, as carol, with her privileges');
is(sql(q{SELECT state, attempts FROM evbus.inbox WHERE handler = 'carol.pay(pg_catalog.jsonb)'}),
	'handled|1', 'on its first attempt');
is(sql(q{SELECT string_agg(handler || ' ' || error_code, ', ' ORDER BY handler)
		   FROM evbus.dead_letters WHERE direction = 'consume'}),
	'carol.become_superuser(pg_catalog.jsonb) 42501, carol.change_authorization(pg_catalog.jsonb) 42501, carol.switch_role(pg_catalog.jsonb) 42501',
	'each escalation is refused (42501) and dead-lettered');
is(sql(q{SELECT rolsuper FROM pg_roles WHERE rolname = 'carol'}), 'f', 'carol is not a superuser');

$node->stop;
done_testing();

# 272_edit_and_retry.pl - evbus.edit_dead_letter replaces the payload of a
# dead letter and evbus.retry then runs the new one: on the consume side
# the handler gets the edited payload (from the inbox row: the Kafka
# message is not read again), on the publish side the edited event is
# published, with its original message id.  The original payload is kept
# in evbus.repair_log.  Bad input is refused, and a role granted EXECUTE
# on evbus.edit_dead_letter alone cannot edit what would run in another
# role's handler, nor what would be published.
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;

kafka_bootstrap();
my $prefix = "t272.$$.";
my $small = "${prefix}Small";
kafka_admin('topics', '--create', '--topic', $small, '--partitions', '1',
	'--config', 'max.message.bytes=1000');

my $node = new_node('edit_and_retry', kafka => 1, conf => ["evbus.topic_prefix = '$prefix'"]);
$node->safe_psql('postgres', 'CREATE EXTENSION evbus');

sub sql { return $node->safe_psql('postgres', $_[0]); }
my $me = sql('SELECT current_user');

sql(as_subscriber($node) . q{
CREATE TABLE handled (payload jsonb);
CREATE PROCEDURE strict_handler(payload jsonb, headers jsonb) LANGUAGE plpgsql AS $$
BEGIN
	IF NOT (payload ? 'amount') THEN
		RAISE EXCEPTION 'no amount' USING ERRCODE = 'EV020';
	END IF;
	INSERT INTO public.handled VALUES (payload);
END $$;
SELECT evbus.subscribe('Paid', 'strict_handler(jsonb,jsonb)', max_retries => 0);
});
sql(q{
CREATE ROLE hostile LOGIN;
GRANT USAGE ON SCHEMA evbus TO hostile;
GRANT EXECUTE ON FUNCTION evbus.edit_dead_letter(text, jsonb, regprocedure, text, text) TO hostile;
});

# --- consume side ------------------------------------------------------------
my $paid = sql(q{SELECT evbus.publish('Paid', '{"order": 7, "amout": 10}')});
ok(wait_for_sql($node, 'postgres', qq{SELECT count(*) FROM evbus.dead_letters WHERE message_id = '$paid'}, '1', 60),
	'a payload the handler refuses is dead-lettered');

is(sqlstate_of($node, 'postgres', qq{SELECT evbus.edit_dead_letter('$paid', '[1, 2]')}), '22023',
	'a payload that is not an object is refused');
is(sqlstate_of($node, 'postgres', qq{SELECT evbus.edit_dead_letter('$paid', NULL)}), '22004',
	'a NULL payload is refused');
is(sqlstate_of($node, 'postgres', q{SELECT evbus.edit_dead_letter('no-such-message', '{}')}), 'P0002',
	'an unknown message id is refused');
is(sqlstate_of($node, 'postgres', qq{SELECT evbus.edit_dead_letter('$paid', '{}', group_name => 'other')}), 'P0002',
	'a group the dead letter is not of is refused');

# a role granted only EXECUTE on the function: the payload would run in
# evbus_app's handler
my ($ret, $out, $err) = $node->psql('postgres',
	qq{SET ROLE hostile; SELECT evbus.edit_dead_letter('$paid', '{"order": 7, "amount": -1000}')});
like($err, qr/permission denied to edit the dead letter of message/, 'a hostile role cannot edit it');
like($err, qr/HINT:  Only role evbus_app or a role with its privileges may edit it/, 'the hint names the role');
is(sql(qq{SELECT payload FROM evbus.dead_letters WHERE message_id = '$paid'}), '{"amout": 10, "order": 7}',
	'the dead letter is unchanged');

# the subscriber itself may
sql(q{GRANT EXECUTE ON FUNCTION evbus.edit_dead_letter(text, jsonb, regprocedure, text, text) TO evbus_app});
sql(qq{SET ROLE evbus_app; SELECT evbus.edit_dead_letter('$paid', '{"order": 7, "amount": 10}',
                                                         handler => 'strict_handler(jsonb,jsonb)',
                                                         reason => 'typo in the producer')});
is(sql(qq{SELECT payload FROM evbus.dead_letters WHERE message_id = '$paid'}), '{"order": 7, "amount": 10}',
	'the dead letter carries the new payload');
is(sql(qq{SELECT payload FROM evbus.inbox WHERE message_id = '$paid'}), '{"order": 7, "amount": 10}',
	'and so does its inbox row');
is( sql(q{SELECT concat_ws('|', action, payload, new_payload, reason, done_by, session_role) FROM evbus.repair_log}),
	qq{edit|{"amout": 10, "order": 7}|{"order": 7, "amount": 10}|typo in the producer|evbus_app|$me},
	'the original payload is kept in evbus.repair_log, with who and why');
is(sql(qq{SELECT evbus.retry('$paid')}), 't', 'evbus.retry requeues it');
ok(wait_for_sql($node, 'postgres', q{SELECT payload FROM handled}, '{"order": 7, "amount": 10}', 30),
	'the handler ran with the edited payload');
is(sql(q{SELECT count(*) FROM evbus.dead_letters}), '0', 'no dead letter left');

# --- publish side ------------------------------------------------------------
my $big = sql(q{SELECT evbus.publish('Small', jsonb_build_object('n', 1,
	'blob', (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 300) g)))});
ok(wait_for_sql($node, 'postgres', qq{SELECT error_code FROM evbus.dead_letters WHERE message_id = '$big'},
	'MSG_SIZE_TOO_LARGE', 60), 'an oversized event is a publish side dead letter');
($ret, $out, $err) = $node->psql('postgres',
	qq{SET ROLE hostile; SELECT evbus.edit_dead_letter('$big', '{"n": 666}')});
like($err, qr/permission denied to edit the publish side dead letter/,
	'a role that may not call evbus.publish cannot edit what is published');
sql(qq{SELECT evbus.edit_dead_letter('$big', '{"n": 1, "blob": "trimmed"}', reason => 'too large')});
is(sql(qq{SELECT evbus.retry('$big'::uuid)}), 't', 'evbus.retry requeues it');
ok($node->poll_query_until('postgres', 'SELECT count(*) = 0 FROM evbus.outbox'), 'and it is published');
my @msgs = kcat_consume($small, 1, 30);
is(scalar @msgs, 1, 'the edited event is on the topic');
is($msgs[0]{headers}{'cap-msg-id'}, $big, 'with its original message id');
like($msgs[0]{payload} // $msgs[0]{value} // '', qr/"blob":"trimmed"/, 'and the edited payload');
is(sql(q{SELECT count(*) FROM evbus.repair_log WHERE action = 'edit' AND direction = 'publish' AND payload ? 'blob'
                                              AND new_payload->>'blob' = 'trimmed'}),
	'1', 'the original publish side payload is kept too');

$node->stop;
done_testing();

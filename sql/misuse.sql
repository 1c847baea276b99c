-- every misuse gets a clear error with an SQLSTATE
\set VERBOSITY default
\set SHOW_CONTEXT never
\set ON_ERROR_STOP 0

-- unknown domain event
SELECT evbus.raise('NobodyRegisteredThis', '{}');

-- wrong converter signatures
CREATE FUNCTION text_converter(payload text) RETURNS text LANGUAGE sql AS $$ SELECT payload $$;
CREATE FUNCTION two_args(a jsonb, b jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT a $$;
CREATE FUNCTION set_converter(payload jsonb) RETURNS SETOF jsonb LANGUAGE sql AS $$ SELECT payload $$;
CREATE PROCEDURE proc_converter(payload jsonb) LANGUAGE sql AS $$ SELECT 1 $$;
SELECT evbus.register_converter('D', 'I', 'text_converter(text)');
SELECT evbus.register_converter('D', 'I', 'two_args(jsonb, jsonb)');
SELECT evbus.register_converter('D', 'I', 'set_converter(jsonb)');
SELECT evbus.register_converter('D', 'I', 'proc_converter(jsonb)');
SELECT evbus.register_converter('D', 'I', 'no_such_function(jsonb)');

-- a converter must return a JSON object (or NULL)
CREATE FUNCTION array_converter(payload jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT '[1, 2]'::jsonb $$;
CREATE FUNCTION scalar_converter(payload jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT '42'::jsonb $$;
SELECT evbus.register_converter('ArrayEvent', 'ArrayIntegration', 'array_converter(jsonb)');
SELECT evbus.register_converter('ScalarEvent', 'ScalarIntegration', 'scalar_converter(jsonb)');
SELECT evbus.raise('ArrayEvent', '{}');
SELECT evbus.raise('ScalarEvent', '{}');

-- payloads must be objects
SELECT evbus.publish('Thing', '[1]');
SELECT evbus.publish('Thing', '"text"');
SELECT evbus.publish('Thing', 'null');

-- NULL arguments
SELECT evbus.publish(NULL, '{}');
SELECT evbus.publish('Thing', NULL);
SELECT evbus.raise(NULL, '{}');
SELECT evbus.raise('D', NULL);

-- payload over evbus.max_message_bytes (1000000 by default), refused at staging
SELECT evbus.publish('Big', jsonb_build_object('blob', repeat('x', 1000000)));
-- escapes count: 200,000 control characters are 1,200,000 bytes of JSON
SELECT evbus.publish('Big', jsonb_build_object('blob', repeat(E'\u0001', 200000)));
-- just under the limit is fine, and is stored intact (a toasted row)
SELECT evbus.publish('Big', jsonb_build_object('blob', repeat('x', 999980))) IS NOT NULL AS staged;
SELECT length(payload->>'blob') AS stored_length, payload->>'blob' = repeat('x', 999980) AS intact,
       pg_column_size(payload) < 100000 AS compressed
  FROM evbus.outbox WHERE integration_event = 'Big';

-- the key and the headers count too: payload + key + header names and
-- values over evbus.max_message_bytes is refused, for publish, raise and
-- capture (the payload here is 999,991 bytes of compact JSON)
SELECT evbus.publish('Big', jsonb_build_object('blob', repeat('x', 999980)), repeat('k', 9)) IS NOT NULL AS staged;
SELECT evbus.publish('Big', jsonb_build_object('blob', repeat('x', 999980)), repeat('k', 10));
SELECT evbus.publish('Big', jsonb_build_object('blob', repeat('x', 999980)), NULL,
                     jsonb_build_object('h', repeat('v', 9)));
SELECT evbus.publish('Big', '{}', repeat('k', 1000001));
CREATE FUNCTION identity_converter(payload jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT payload $$;
SELECT evbus.register_converter('BigDomain', 'BigIntegration', 'identity_converter(jsonb)');
SELECT evbus.raise('BigDomain', jsonb_build_object('blob', repeat('x', 999980)), repeat('k', 10));
CREATE TABLE big_rows (id text, body text);
CREATE TRIGGER big_rows_capture AFTER INSERT ON big_rows
	FOR EACH ROW EXECUTE FUNCTION evbus.capture('BigDomain', 'id');
INSERT INTO big_rows VALUES (repeat('k', 400000), repeat('x', 300000));
SELECT count(*) AS big_rows FROM big_rows;
SELECT integration_event, length(event_key) AS key_length FROM evbus.outbox
 WHERE integration_event IN ('Big', 'BigIntegration') AND event_key IS NOT NULL;

-- names that are not legal Kafka topic names
SELECT evbus.publish('', '{}');
SELECT evbus.publish('has space', '{}');
SELECT evbus.publish('..', '{}');
SELECT evbus.publish('ünïcode', '{}');
SELECT evbus.publish(repeat('a', 250), '{}');
-- an argument too long is quoted in part, never cut inside a character
SELECT evbus.publish('a' || repeat('é', 200), '{}');
SELECT evbus.raise(repeat('d', 300), '{}');
SELECT evbus.retry(side => repeat('s', 1000));
SELECT evbus.register_converter('ok', 'not/ok', 'array_converter(jsonb)');

-- headers: an object of strings, no reserved names
SELECT evbus.publish('Thing', '{}', NULL, '["a"]');
SELECT evbus.publish('Thing', '{}', NULL, '{"n": 1}');
SELECT evbus.publish('Thing', '{}', NULL, '{"n": {"nested": "x"}}');
SELECT evbus.publish('Thing', '{}', NULL, '{"cap-msg-id": "forged"}');
SELECT evbus.publish('Thing', '{}', NULL, '{"Evbus-Source": "forged"}');
SELECT evbus.publish('Thing', '{}', NULL, '{"traceparent": "x"}');
SELECT evbus.publish('Thing', '{}', NULL, '{"": "x"}');

-- a read-only transaction cannot stage
BEGIN READ ONLY;
SELECT evbus.publish('Thing', '{}');
ROLLBACK;
BEGIN READ ONLY;
SELECT evbus.raise('ArrayEvent', '{}');
ROLLBACK;

-- settings that reach the network cannot be changed by a session
SET evbus.brokers = 'evil.example.com:9092';
SET evbus.topic_prefix = 'x';
SET evbus.kafka_config_file = '/tmp/x';

-- the SQLSTATE of each misuse
CREATE FUNCTION sqlstate_of(sql text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
	state text;
BEGIN
	EXECUTE sql;
	RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
	GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE;
	RETURN state;
END $$;
SELECT misuse, sqlstate_of(statement) FROM (VALUES
	('unknown domain event', $$SELECT evbus.raise('NobodyRegisteredThis', '{}')$$),
	('wrong converter signature', $$SELECT evbus.register_converter('D', 'I', 'two_args(jsonb, jsonb)')$$),
	('converter returns non-object', $$SELECT evbus.raise('ArrayEvent', '{}')$$),
	('payload not an object', $$SELECT evbus.publish('Thing', '[1]')$$),
	('null name', $$SELECT evbus.publish(NULL, '{}')$$),
	('payload too large', $$SELECT evbus.publish('Big', jsonb_build_object('blob', repeat('x', 1000000)))$$),
	('payload + key too large', $$SELECT evbus.publish('Big', '{}', repeat('k', 1000001))$$),
	('invalid topic name', $$SELECT evbus.publish('has space', '{}')$$),
	('topic name too long', $$SELECT evbus.publish(repeat('a', 250), '{}')$$),
	('reserved header', $$SELECT evbus.publish('Thing', '{}', NULL, '{"cap-msg-id": "x"}')$$),
	('read-only transaction', $$SET TRANSACTION READ ONLY; SELECT evbus.publish('Thing', '{}')$$)
) AS m(misuse, statement);

SELECT count(*) AS staged FROM evbus.outbox;
DELETE FROM evbus.outbox_0;
DELETE FROM evbus.outbox_1;
SELECT evbus.unregister_converter('ArrayEvent', 'ArrayIntegration');
SELECT evbus.unregister_converter('ScalarEvent', 'ScalarIntegration');
SELECT evbus.unregister_converter('BigDomain', 'BigIntegration');

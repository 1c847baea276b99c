-- Settings of the Kafka side and message ids.

-- evbus.kafka_config_file (superuser only) and evbus.batch_max_bytes are
-- server settings: a session cannot change them
SET evbus.kafka_config_file = '/tmp/other.properties';
SET evbus.batch_max_bytes = '1MB';
SHOW evbus.batch_max_bytes;

-- message ids are text: a UUID from evbus, a Snowflake integer from CAP
SELECT attrelid::regclass, atttypid::regtype FROM pg_attribute
 WHERE attrelid IN ('evbus.inbox'::regclass, 'evbus.dead_letters'::regclass)
   AND attname = 'message_id' ORDER BY 1;

-- evbus.retry takes either; an unknown id is not found
SELECT evbus.retry('1795123456789012480');
SELECT evbus.retry('00000000-0000-0000-0000-000000000000'::uuid);

-- a dead letter of the publishing side goes back to the outbox by its id,
-- given as text or as a uuid
INSERT INTO evbus.dead_letters (message_id, direction, integration_event, payload,
                                staged_at, error_code, error_message)
VALUES ('0190f0e0-0000-7000-8000-000000000001', 'publish', 'Requeued', '{"n": 1}',
        now(), 'MSG_SIZE_TOO_LARGE', 'too large'),
       ('0190f0e0-0000-7000-8000-000000000002', 'publish', 'Requeued', '{"n": 2}',
        now(), 'MSG_SIZE_TOO_LARGE', 'too large');
SELECT evbus.retry('0190f0e0-0000-7000-8000-000000000001');
SELECT evbus.retry('0190f0e0-0000-7000-8000-000000000002'::uuid);
SELECT message_id, payload FROM evbus.outbox WHERE integration_event = 'Requeued' ORDER BY id;
SELECT count(*) FROM evbus.dead_letters WHERE integration_event = 'Requeued';

-- a role without EXECUTE can call neither form
CREATE ROLE evbus_retrier LOGIN;
GRANT USAGE ON SCHEMA evbus TO evbus_retrier;
SET ROLE evbus_retrier;
SELECT evbus.retry('1795123456789012480');
SELECT evbus.retry('00000000-0000-0000-0000-000000000000'::uuid);
RESET ROLE;
DROP OWNED BY evbus_retrier;
DROP ROLE evbus_retrier;

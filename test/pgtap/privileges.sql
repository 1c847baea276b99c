/*
 * privileges.sql - pgTAP: who may call and read what.  PUBLIC executes
 * nothing that writes and reads no table; an application role gets only
 * what it is granted (USAGE on schema evbus and EXECUTE on the functions
 * it calls) and still reads and writes no table, since the functions
 * write evbus's tables as the extension owner; evbus.stats is readable by
 * pg_monitor.  Checked for PUBLIC, for a role granted the producing API
 * and for one granted the consuming API, on every function, table, view
 * and sequence.  Runs in a transaction that it rolls back.
 */
BEGIN;
SELECT plan(124);

-- an application role that produces, one that consumes, one that monitors
CREATE ROLE evbus_pgtap_producer;
CREATE ROLE evbus_pgtap_consumer;
CREATE ROLE evbus_pgtap_monitor IN ROLE pg_monitor;
GRANT USAGE ON SCHEMA evbus TO evbus_pgtap_producer, evbus_pgtap_consumer;
GRANT EXECUTE ON FUNCTION evbus.publish(text, jsonb, text, jsonb, timestamptz),
					  evbus.raise(text, jsonb, text),
					  evbus.register_converter(text, text, regprocedure),
					  evbus.unregister_converter(text, text)
	TO evbus_pgtap_producer;
GRANT EXECUTE ON FUNCTION evbus.subscribe(text, regprocedure, text, integer),
					  evbus.unsubscribe(text, regprocedure, text)
	TO evbus_pgtap_consumer;

-- the schema: PUBLIC may not even look up its names
SELECT schema_privs_are('evbus', 'public', ARRAY[]::name[]);
SELECT schema_privs_are('evbus', 'evbus_pgtap_producer', ARRAY['USAGE']);
SELECT schema_privs_are('evbus', 'evbus_pgtap_consumer', ARRAY['USAGE']);
SELECT schema_privs_are('evbus', 'pg_monitor', ARRAY['USAGE']);

-- functions: what PUBLIC may execute
SELECT function_privs_are('evbus', 'register_converter', ARRAY['text', 'text', 'regprocedure'], 'public', ARRAY[]::name[]);
SELECT function_privs_are('evbus', 'unregister_converter', ARRAY['text', 'text'], 'public', ARRAY[]::name[]);
SELECT function_privs_are('evbus', 'raise', ARRAY['text', 'jsonb', 'text'], 'public', ARRAY[]::name[]);
SELECT function_privs_are('evbus', 'publish', ARRAY['text', 'jsonb', 'text', 'jsonb', 'timestamp with time zone'], 'public', ARRAY[]::name[]);
SELECT function_privs_are('evbus', 'capture', ARRAY[]::name[], 'public', ARRAY[]::name[]);
SELECT function_privs_are('evbus', 'subscribe', ARRAY['text', 'regprocedure', 'text', 'integer'], 'public', ARRAY[]::name[]);
SELECT function_privs_are('evbus', 'unsubscribe', ARRAY['text', 'regprocedure', 'text'], 'public', ARRAY[]::name[]);
SELECT function_privs_are('evbus', 'retry', ARRAY['text'], 'public', ARRAY[]::name[]);
SELECT function_privs_are('evbus', 'retry', ARRAY['uuid'], 'public', ARRAY[]::name[]);
SELECT function_privs_are('evbus', 'subscribe', ARRAY['text', 'regprocedure', 'evbus.on_dead_letter', 'text', 'integer'], 'public', ARRAY[]::name[]);
SELECT function_privs_are('evbus', 'retry', ARRAY['boolean', 'text', 'text', 'text', 'text', 'timestamp with time zone', 'timestamp with time zone'], 'public', ARRAY[]::name[]);
SELECT function_privs_are('evbus', 'discard', ARRAY['text', 'text'], 'public', ARRAY[]::name[]);
SELECT function_privs_are('evbus', 'discard', ARRAY['uuid', 'text'], 'public', ARRAY[]::name[]);
SELECT function_privs_are('evbus', 'discard', ARRAY['text', 'boolean', 'text', 'text', 'text', 'text', 'timestamp with time zone', 'timestamp with time zone'], 'public', ARRAY[]::name[]);
SELECT function_privs_are('evbus', 'edit_dead_letter', ARRAY['text', 'jsonb', 'regprocedure', 'text', 'text'], 'public', ARRAY[]::name[]);
SELECT function_privs_are('evbus', 'brokers', ARRAY[]::name[], 'public', ARRAY['EXECUTE']);
SELECT function_privs_are('evbus', 'publisher_pid', ARRAY[]::name[], 'public', ARRAY['EXECUTE']);
SELECT function_privs_are('evbus', 'consumer_pid', ARRAY[]::name[], 'public', ARRAY['EXECUTE']);
SELECT function_privs_are('evbus', 'worker_status', ARRAY[]::name[], 'public', ARRAY['EXECUTE']);
SELECT function_privs_are('evbus', 'message_chain', ARRAY['text'], 'public', ARRAY[]::name[]);
SELECT function_privs_are('evbus', '_config_changed', ARRAY[]::name[], 'public', ARRAY[]::name[]);
SELECT function_privs_are('evbus', '_refuse_handler_drop', ARRAY[]::name[], 'public', ARRAY[]::name[]);
SELECT function_privs_are('evbus', '_warn_published', ARRAY[]::name[], 'public', ARRAY[]::name[]);
SELECT function_privs_are('evbus', '_start_worker_at_commit', ARRAY[]::name[], 'public', ARRAY[]::name[]);

-- functions: what a role granted the producing API may execute
SELECT function_privs_are('evbus', 'register_converter', ARRAY['text', 'text', 'regprocedure'], 'evbus_pgtap_producer', ARRAY['EXECUTE']);
SELECT function_privs_are('evbus', 'unregister_converter', ARRAY['text', 'text'], 'evbus_pgtap_producer', ARRAY['EXECUTE']);
SELECT function_privs_are('evbus', 'raise', ARRAY['text', 'jsonb', 'text'], 'evbus_pgtap_producer', ARRAY['EXECUTE']);
SELECT function_privs_are('evbus', 'publish', ARRAY['text', 'jsonb', 'text', 'jsonb', 'timestamp with time zone'], 'evbus_pgtap_producer', ARRAY['EXECUTE']);
SELECT function_privs_are('evbus', 'capture', ARRAY[]::name[], 'evbus_pgtap_producer', ARRAY[]::name[]);
SELECT function_privs_are('evbus', 'subscribe', ARRAY['text', 'regprocedure', 'text', 'integer'], 'evbus_pgtap_producer', ARRAY[]::name[]);
SELECT function_privs_are('evbus', 'unsubscribe', ARRAY['text', 'regprocedure', 'text'], 'evbus_pgtap_producer', ARRAY[]::name[]);
SELECT function_privs_are('evbus', 'retry', ARRAY['text'], 'evbus_pgtap_producer', ARRAY[]::name[]);
SELECT function_privs_are('evbus', 'retry', ARRAY['uuid'], 'evbus_pgtap_producer', ARRAY[]::name[]);
SELECT function_privs_are('evbus', 'brokers', ARRAY[]::name[], 'evbus_pgtap_producer', ARRAY['EXECUTE']);
SELECT function_privs_are('evbus', 'publisher_pid', ARRAY[]::name[], 'evbus_pgtap_producer', ARRAY['EXECUTE']);
SELECT function_privs_are('evbus', 'consumer_pid', ARRAY[]::name[], 'evbus_pgtap_producer', ARRAY['EXECUTE']);
SELECT function_privs_are('evbus', 'worker_status', ARRAY[]::name[], 'evbus_pgtap_producer', ARRAY['EXECUTE']);
SELECT function_privs_are('evbus', 'message_chain', ARRAY['text'], 'evbus_pgtap_producer', ARRAY[]::name[]);
SELECT function_privs_are('evbus', '_config_changed', ARRAY[]::name[], 'evbus_pgtap_producer', ARRAY[]::name[]);
SELECT function_privs_are('evbus', '_refuse_handler_drop', ARRAY[]::name[], 'evbus_pgtap_producer', ARRAY[]::name[]);
SELECT function_privs_are('evbus', '_warn_published', ARRAY[]::name[], 'evbus_pgtap_producer', ARRAY[]::name[]);
SELECT function_privs_are('evbus', '_start_worker_at_commit', ARRAY[]::name[], 'evbus_pgtap_producer', ARRAY[]::name[]);

-- functions: what a role granted the consuming API may execute
SELECT function_privs_are('evbus', 'register_converter', ARRAY['text', 'text', 'regprocedure'], 'evbus_pgtap_consumer', ARRAY[]::name[]);
SELECT function_privs_are('evbus', 'unregister_converter', ARRAY['text', 'text'], 'evbus_pgtap_consumer', ARRAY[]::name[]);
SELECT function_privs_are('evbus', 'raise', ARRAY['text', 'jsonb', 'text'], 'evbus_pgtap_consumer', ARRAY[]::name[]);
SELECT function_privs_are('evbus', 'publish', ARRAY['text', 'jsonb', 'text', 'jsonb', 'timestamp with time zone'], 'evbus_pgtap_consumer', ARRAY[]::name[]);
SELECT function_privs_are('evbus', 'capture', ARRAY[]::name[], 'evbus_pgtap_consumer', ARRAY[]::name[]);
SELECT function_privs_are('evbus', 'subscribe', ARRAY['text', 'regprocedure', 'text', 'integer'], 'evbus_pgtap_consumer', ARRAY['EXECUTE']);
SELECT function_privs_are('evbus', 'unsubscribe', ARRAY['text', 'regprocedure', 'text'], 'evbus_pgtap_consumer', ARRAY['EXECUTE']);
SELECT function_privs_are('evbus', 'retry', ARRAY['text'], 'evbus_pgtap_consumer', ARRAY[]::name[]);
SELECT function_privs_are('evbus', 'retry', ARRAY['uuid'], 'evbus_pgtap_consumer', ARRAY[]::name[]);
SELECT function_privs_are('evbus', 'brokers', ARRAY[]::name[], 'evbus_pgtap_consumer', ARRAY['EXECUTE']);
SELECT function_privs_are('evbus', 'publisher_pid', ARRAY[]::name[], 'evbus_pgtap_consumer', ARRAY['EXECUTE']);
SELECT function_privs_are('evbus', 'consumer_pid', ARRAY[]::name[], 'evbus_pgtap_consumer', ARRAY['EXECUTE']);
SELECT function_privs_are('evbus', 'worker_status', ARRAY[]::name[], 'evbus_pgtap_consumer', ARRAY['EXECUTE']);
SELECT function_privs_are('evbus', 'message_chain', ARRAY['text'], 'evbus_pgtap_consumer', ARRAY[]::name[]);
SELECT function_privs_are('evbus', '_config_changed', ARRAY[]::name[], 'evbus_pgtap_consumer', ARRAY[]::name[]);
SELECT function_privs_are('evbus', '_refuse_handler_drop', ARRAY[]::name[], 'evbus_pgtap_consumer', ARRAY[]::name[]);
SELECT function_privs_are('evbus', '_warn_published', ARRAY[]::name[], 'evbus_pgtap_consumer', ARRAY[]::name[]);
SELECT function_privs_are('evbus', '_start_worker_at_commit', ARRAY[]::name[], 'evbus_pgtap_consumer', ARRAY[]::name[]);

-- tables, views and sequences: PUBLIC reads and writes none
SELECT table_privs_are('evbus', 'converters', 'public', ARRAY[]::name[]);
SELECT table_privs_are('evbus', 'outbox_0', 'public', ARRAY[]::name[]);
SELECT table_privs_are('evbus', 'outbox_1', 'public', ARRAY[]::name[]);
SELECT table_privs_are('evbus', 'outbox_published_0', 'public', ARRAY[]::name[]);
SELECT table_privs_are('evbus', 'outbox_published_1', 'public', ARRAY[]::name[]);
SELECT table_privs_are('evbus', 'dead_letters', 'public', ARRAY[]::name[]);
SELECT table_privs_are('evbus', 'subscriptions', 'public', ARRAY[]::name[]);
SELECT table_privs_are('evbus', 'consumer_offsets', 'public', ARRAY[]::name[]);
SELECT table_privs_are('evbus', 'inbox', 'public', ARRAY[]::name[]);
SELECT table_privs_are('evbus', 'publish_counters', 'public', ARRAY[]::name[]);
SELECT table_privs_are('evbus', 'outbox', 'public', ARRAY[]::name[]);
SELECT table_privs_are('evbus', 'stats', 'public', ARRAY[]::name[]);
SELECT sequence_privs_are('evbus', 'outbox_id_seq', 'public', ARRAY[]::name[]);
SELECT sequence_privs_are('evbus', 'dead_letters_id_seq', 'public', ARRAY[]::name[]);
SELECT sequence_privs_are('evbus', 'inbox_id_seq', 'public', ARRAY[]::name[]);
SELECT table_privs_are('evbus', 'repair_log', 'public', ARRAY[]::name[]);
SELECT table_privs_are('evbus', 'failures', 'public', ARRAY[]::name[]);
SELECT sequence_privs_are('evbus', 'repair_log_id_seq', 'public', ARRAY[]::name[]);

-- tables, views and sequences: the producing role reads and writes none (the functions write as the extension owner)
SELECT table_privs_are('evbus', 'converters', 'evbus_pgtap_producer', ARRAY[]::name[]);
SELECT table_privs_are('evbus', 'outbox_0', 'evbus_pgtap_producer', ARRAY[]::name[]);
SELECT table_privs_are('evbus', 'outbox_1', 'evbus_pgtap_producer', ARRAY[]::name[]);
SELECT table_privs_are('evbus', 'outbox_published_0', 'evbus_pgtap_producer', ARRAY[]::name[]);
SELECT table_privs_are('evbus', 'outbox_published_1', 'evbus_pgtap_producer', ARRAY[]::name[]);
SELECT table_privs_are('evbus', 'dead_letters', 'evbus_pgtap_producer', ARRAY[]::name[]);
SELECT table_privs_are('evbus', 'subscriptions', 'evbus_pgtap_producer', ARRAY[]::name[]);
SELECT table_privs_are('evbus', 'consumer_offsets', 'evbus_pgtap_producer', ARRAY[]::name[]);
SELECT table_privs_are('evbus', 'inbox', 'evbus_pgtap_producer', ARRAY[]::name[]);
SELECT table_privs_are('evbus', 'publish_counters', 'evbus_pgtap_producer', ARRAY[]::name[]);
SELECT table_privs_are('evbus', 'outbox', 'evbus_pgtap_producer', ARRAY[]::name[]);
SELECT table_privs_are('evbus', 'stats', 'evbus_pgtap_producer', ARRAY[]::name[]);
SELECT sequence_privs_are('evbus', 'outbox_id_seq', 'evbus_pgtap_producer', ARRAY[]::name[]);
SELECT sequence_privs_are('evbus', 'dead_letters_id_seq', 'evbus_pgtap_producer', ARRAY[]::name[]);
SELECT sequence_privs_are('evbus', 'inbox_id_seq', 'evbus_pgtap_producer', ARRAY[]::name[]);

-- tables, views and sequences: the consuming role reads and writes none
SELECT table_privs_are('evbus', 'converters', 'evbus_pgtap_consumer', ARRAY[]::name[]);
SELECT table_privs_are('evbus', 'outbox_0', 'evbus_pgtap_consumer', ARRAY[]::name[]);
SELECT table_privs_are('evbus', 'outbox_1', 'evbus_pgtap_consumer', ARRAY[]::name[]);
SELECT table_privs_are('evbus', 'outbox_published_0', 'evbus_pgtap_consumer', ARRAY[]::name[]);
SELECT table_privs_are('evbus', 'outbox_published_1', 'evbus_pgtap_consumer', ARRAY[]::name[]);
SELECT table_privs_are('evbus', 'dead_letters', 'evbus_pgtap_consumer', ARRAY[]::name[]);
SELECT table_privs_are('evbus', 'subscriptions', 'evbus_pgtap_consumer', ARRAY[]::name[]);
SELECT table_privs_are('evbus', 'consumer_offsets', 'evbus_pgtap_consumer', ARRAY[]::name[]);
SELECT table_privs_are('evbus', 'inbox', 'evbus_pgtap_consumer', ARRAY[]::name[]);
SELECT table_privs_are('evbus', 'publish_counters', 'evbus_pgtap_consumer', ARRAY[]::name[]);
SELECT table_privs_are('evbus', 'outbox', 'evbus_pgtap_consumer', ARRAY[]::name[]);
SELECT table_privs_are('evbus', 'stats', 'evbus_pgtap_consumer', ARRAY[]::name[]);
SELECT sequence_privs_are('evbus', 'outbox_id_seq', 'evbus_pgtap_consumer', ARRAY[]::name[]);
SELECT sequence_privs_are('evbus', 'dead_letters_id_seq', 'evbus_pgtap_consumer', ARRAY[]::name[]);
SELECT sequence_privs_are('evbus', 'inbox_id_seq', 'evbus_pgtap_consumer', ARRAY[]::name[]);

-- evbus.stats: readable by pg_monitor, nothing else
SELECT table_privs_are('evbus', 'stats', 'pg_monitor', ARRAY['SELECT']);
SELECT table_privs_are('evbus', 'outbox', 'pg_monitor', ARRAY[]::name[]);

-- what the grants mean in practice: the producing role stages events but
-- cannot read or forge the outbox ...
SET ROLE evbus_pgtap_producer;
SELECT isnt(evbus.publish('PgtapPrivileges', '{"n": 1}'), NULL,
			'the producing role stages an event with evbus.publish');
SELECT throws_ok($$SELECT count(*) FROM evbus.outbox$$, '42501', NULL,
				 'the producing role cannot read evbus.outbox');
SELECT throws_ok($$INSERT INTO evbus.outbox_0 (id, message_id, integration_event, payload, staged_at)
				   VALUES (-1, gen_random_uuid(), 'Forged', '{}', now())$$, '42501', NULL,
				 'the producing role cannot write the outbox tables');
SELECT throws_ok($$SELECT evbus.retry('00000000-0000-0000-0000-000000000000'::uuid)$$, '42501', NULL,
				 'the producing role cannot retry dead letters');
RESET ROLE;

-- ... the consuming role cannot stage ...
SET ROLE evbus_pgtap_consumer;
SELECT throws_ok($$SELECT evbus.publish('PgtapPrivileges', '{}')$$, '42501', NULL,
				 'the consuming role cannot stage an event');
SELECT throws_ok($$SELECT * FROM evbus.subscriptions$$, '42501', NULL,
				 'the consuming role cannot read evbus.subscriptions');
RESET ROLE;

-- ... a member of pg_monitor, granted nothing else, cannot stage ...
SET ROLE evbus_pgtap_monitor;
SELECT throws_ok($$SELECT evbus.publish('PgtapPrivileges', '{}')$$, '42501', NULL,
				 'a member of pg_monitor cannot stage an event');
RESET ROLE;

-- ... and reads evbus.stats with nothing more (pg_monitor has USAGE on
-- the schema and SELECT on the view)
SET ROLE evbus_pgtap_monitor;
SELECT lives_ok($$SELECT * FROM evbus.stats$$, 'a member of pg_monitor reads evbus.stats');
SELECT throws_ok($$SELECT * FROM evbus.dead_letters$$, '42501', NULL,
				 'a member of pg_monitor cannot read evbus.dead_letters');
SELECT throws_ok($$SELECT * FROM evbus.message_chain('x')$$, '42501', NULL,
				 'a member of pg_monitor cannot follow a message chain');
RESET ROLE;

SELECT * FROM finish();
ROLLBACK;

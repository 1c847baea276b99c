/*
 * schema.sql - pgTAP: the shape of evbus's SQL API, as evbus--0.2.sql
 * creates it.  Applications and operators rely on these names, argument
 * and column types, keys and comments; a change to any of them is a
 * change of the contract and must show up here.  Runs in a transaction
 * that it rolls back (test/pgtap/run.sh).
 */
BEGIN;
SELECT plan(139);

-- the extension and its fixed schema
SELECT has_extension('evbus', 'extension evbus is installed');
SELECT is((SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'evbus'),
		  '0.2', 'evbus is at version 0.2');
SELECT is((SELECT extrelocatable FROM pg_catalog.pg_extension WHERE extname = 'evbus'),
		  false, 'evbus is not relocatable');
SELECT has_schema('evbus');

-- exactly these relations, sequences and functions: an addition or a
-- removal is a change of the API
SELECT tables_are('evbus', ARRAY[
	'converters', 'outbox_0', 'outbox_1', 'outbox_published_0',
	'outbox_published_1', 'dead_letters', 'subscriptions',
	'consumer_offsets', 'inbox', 'publish_counters', 'repair_log',
	'publishing_pauses', 'replays', 'inbox_messages', 'database_identity']);
SELECT views_are('evbus', ARRAY['outbox', 'stats', 'failures']);
SELECT sequences_are('evbus', ARRAY['outbox_id_seq', 'dead_letters_id_seq', 'inbox_id_seq',
	'repair_log_id_seq', 'replays_id_seq']);
SELECT functions_are('evbus', ARRAY[
	'_config_changed', 'register_converter', 'unregister_converter',
	'raise', 'publish', 'capture', 'subscribe', 'unsubscribe',
	'_refuse_handler_drop', 'retry', 'brokers', 'publisher_pid',
	'consumer_pid', 'worker_status', 'message_chain', '_start_worker_at_commit',
	'discard', 'edit_dead_letter', 'pause_subscription', 'resume_subscription',
	'pause_publishing', 'resume_publishing', 'replay', 'metrics', '_inbox_counted',
	'adopt_copy', '_warn_published']);

-- every function with its argument types and its result
SELECT has_function('evbus', 'register_converter', ARRAY['text', 'text', 'regprocedure']);
SELECT function_returns('evbus', 'register_converter', ARRAY['text', 'text', 'regprocedure'], 'void');
SELECT has_function('evbus', 'unregister_converter', ARRAY['text', 'text']);
SELECT function_returns('evbus', 'unregister_converter', ARRAY['text', 'text'], 'boolean');
SELECT has_function('evbus', 'raise', ARRAY['text', 'jsonb', 'text']);
SELECT function_returns('evbus', 'raise', ARRAY['text', 'jsonb', 'text'], 'integer');
SELECT has_function('evbus', 'publish', ARRAY['text', 'jsonb', 'text', 'jsonb', 'timestamp with time zone']);
SELECT function_returns('evbus', 'publish', ARRAY['text', 'jsonb', 'text', 'jsonb', 'timestamp with time zone'], 'uuid');
SELECT has_function('evbus', 'capture', ARRAY[]::name[]);
SELECT function_returns('evbus', 'capture', ARRAY[]::name[], 'trigger');
SELECT has_function('evbus', 'subscribe', ARRAY['text', 'regprocedure', 'text', 'integer']);
SELECT function_returns('evbus', 'subscribe', ARRAY['text', 'regprocedure', 'text', 'integer'], 'void');
SELECT has_function('evbus', 'unsubscribe', ARRAY['text', 'regprocedure', 'text']);
SELECT function_returns('evbus', 'unsubscribe', ARRAY['text', 'regprocedure', 'text'], 'boolean');
SELECT has_function('evbus', 'retry', ARRAY['text']);
SELECT function_returns('evbus', 'retry', ARRAY['text'], 'boolean');
SELECT has_function('evbus', 'adopt_copy', ARRAY[]::name[]);
SELECT function_returns('evbus', 'adopt_copy', ARRAY[]::name[], 'void');
SELECT has_function('evbus', 'retry', ARRAY['uuid']);
SELECT function_returns('evbus', 'retry', ARRAY['uuid'], 'boolean');
SELECT has_function('evbus', 'subscribe', ARRAY['text', 'regprocedure', 'evbus.on_dead_letter', 'text', 'integer']);
SELECT function_returns('evbus', 'subscribe', ARRAY['text', 'regprocedure', 'evbus.on_dead_letter', 'text', 'integer'], 'void');
SELECT has_function('evbus', 'retry', ARRAY['boolean', 'text', 'text', 'text', 'text', 'timestamp with time zone', 'timestamp with time zone']);
SELECT function_returns('evbus', 'retry', ARRAY['boolean', 'text', 'text', 'text', 'text', 'timestamp with time zone', 'timestamp with time zone'], 'integer');
SELECT has_function('evbus', 'discard', ARRAY['text', 'text']);
SELECT function_returns('evbus', 'discard', ARRAY['text', 'text'], 'boolean');
SELECT has_function('evbus', 'discard', ARRAY['uuid', 'text']);
SELECT function_returns('evbus', 'discard', ARRAY['uuid', 'text'], 'boolean');
SELECT has_function('evbus', 'discard', ARRAY['text', 'boolean', 'text', 'text', 'text', 'text', 'timestamp with time zone', 'timestamp with time zone']);
SELECT function_returns('evbus', 'discard', ARRAY['text', 'boolean', 'text', 'text', 'text', 'text', 'timestamp with time zone', 'timestamp with time zone'], 'integer');
SELECT has_function('evbus', 'edit_dead_letter', ARRAY['text', 'jsonb', 'regprocedure', 'text', 'text']);
SELECT function_returns('evbus', 'edit_dead_letter', ARRAY['text', 'jsonb', 'regprocedure', 'text', 'text'], 'void');
SELECT enum_has_labels('evbus', 'on_dead_letter', ARRAY['skip', 'park']);
SELECT has_function('evbus', 'brokers', ARRAY[]::name[]);
SELECT function_returns('evbus', 'brokers', ARRAY[]::name[], 'text');
SELECT has_function('evbus', 'publisher_pid', ARRAY[]::name[]);
SELECT function_returns('evbus', 'publisher_pid', ARRAY[]::name[], 'integer');
SELECT has_function('evbus', 'consumer_pid', ARRAY[]::name[]);
SELECT function_returns('evbus', 'consumer_pid', ARRAY[]::name[], 'integer');
SELECT has_function('evbus', 'worker_status', ARRAY[]::name[]);
SELECT function_returns('evbus', 'worker_status', ARRAY[]::name[], 'setof record');
SELECT is((SELECT pg_catalog.pg_get_function_arguments('evbus.worker_status()'::regprocedure)),
		  'OUT worker text, OUT pid integer, OUT state text, OUT detail text',
		  'evbus.worker_status() returns (worker, pid, state, detail)');
SELECT has_function('evbus', 'message_chain', ARRAY['text']);
SELECT function_returns('evbus', 'message_chain', ARRAY['text'], 'setof record');
SELECT is((SELECT pg_catalog.pg_get_function_arguments('evbus.message_chain(text)'::regprocedure)),
		  'message_id text, OUT message_id text, OUT integration_event text, OUT caused_by text, OUT correlation_id text, OUT where_seen text, OUT state text, OUT seen_at timestamp with time zone, OUT depth integer',
		  'evbus.message_chain(text) returns (message_id, integration_event, caused_by, correlation_id, where_seen, state, seen_at, depth)');
SELECT has_function('evbus', '_config_changed', ARRAY[]::name[]);
SELECT function_returns('evbus', '_config_changed', ARRAY[]::name[], 'trigger');
SELECT has_function('evbus', '_refuse_handler_drop', ARRAY[]::name[]);
SELECT function_returns('evbus', '_refuse_handler_drop', ARRAY[]::name[], 'event_trigger');
SELECT has_function('evbus', '_warn_published', ARRAY[]::name[]);
SELECT function_returns('evbus', '_warn_published', ARRAY[]::name[], 'event_trigger');
SELECT has_function('evbus', '_start_worker_at_commit', ARRAY[]::name[]);
SELECT function_returns('evbus', '_start_worker_at_commit', ARRAY[]::name[], 'void');

-- the defaults that make the optional arguments optional
SELECT is((SELECT pg_catalog.pg_get_function_arguments('evbus.publish(text, jsonb, text, jsonb, timestamptz)'::regprocedure)),
		  'integration_event text, payload jsonb, key text DEFAULT NULL::text, headers jsonb DEFAULT NULL::jsonb, deliver_at timestamp with time zone DEFAULT NULL::timestamp with time zone',
		  'evbus.publish: key, headers and deliver_at are optional');
SELECT is((SELECT pg_catalog.pg_get_function_arguments('evbus.raise(text, jsonb, text)'::regprocedure)),
		  'domain_event text, payload jsonb, key text DEFAULT NULL::text',
		  'evbus.raise: key is optional');
SELECT is((SELECT pg_catalog.pg_get_function_arguments('evbus.subscribe(text, regprocedure, text, integer)'::regprocedure)),
		  'integration_event text, handler regprocedure, group_name text DEFAULT NULL::text, max_retries integer DEFAULT NULL::integer',
		  'evbus.subscribe: group_name and max_retries are optional');
SELECT is((SELECT pg_catalog.pg_get_function_arguments('evbus.unsubscribe(text, regprocedure, text)'::regprocedure)),
		  'integration_event text, handler regprocedure, group_name text DEFAULT NULL::text',
		  'evbus.unsubscribe: group_name is optional');

-- none runs with its owner's rights
SELECT is((SELECT pg_catalog.count(*)::integer FROM pg_catalog.pg_proc
		   WHERE pronamespace = 'evbus'::regnamespace AND prosecdef),
		  0, 'no evbus function is SECURITY DEFINER');

-- converters
SELECT columns_are('evbus', 'converters', ARRAY[
	'domain_event', 'integration_event', 'converter', 'registered_by', 'registered_at']);
SELECT col_type_is('evbus', 'converters', 'converter', 'text', 'converters.converter is text (a qualified signature, no reg* type)');
SELECT col_type_is('evbus', 'converters', 'registered_by', 'name', 'converters.registered_by is name');
SELECT col_is_pk('evbus', 'converters', ARRAY['domain_event', 'integration_event']::name[], 'the primary key of evbus.converters is (domain_event, integration_event)');
SELECT has_trigger('evbus', 'converters', 'converters_changed', 'evbus.converters has trigger converters_changed');
SELECT trigger_is('evbus', 'converters', 'converters_changed', 'evbus', '_config_changed');

-- the outbox: two tables used in turn, their published ranges, the view
SELECT columns_are('evbus', 'outbox', ARRAY[
	'id', 'message_id', 'integration_event', 'event_key', 'payload',
	'headers', 'domain_event', 'traceparent', 'staged_at', 'deliver_at']);
SELECT col_type_is('evbus', 'outbox', 'id', 'bigint', 'outbox.id is bigint');
SELECT col_type_is('evbus', 'outbox', 'message_id', 'uuid', 'outbox.message_id is uuid');
SELECT col_type_is('evbus', 'outbox', 'integration_event', 'text', 'outbox.integration_event is text');
SELECT col_type_is('evbus', 'outbox', 'event_key', 'text', 'outbox.event_key is text');
SELECT col_type_is('evbus', 'outbox', 'payload', 'jsonb', 'outbox.payload is jsonb');
SELECT col_type_is('evbus', 'outbox', 'headers', 'jsonb', 'outbox.headers is jsonb');
SELECT col_type_is('evbus', 'outbox', 'staged_at', 'timestamp with time zone', 'outbox.staged_at is timestamptz');
SELECT col_type_is('evbus', 'outbox', 'deliver_at', 'timestamp with time zone', 'outbox.deliver_at is timestamptz');
SELECT col_is_pk('evbus', 'outbox_0', 'id', 'the primary key of evbus.outbox_0 is (id)');
SELECT col_is_pk('evbus', 'outbox_1', 'id', 'the primary key of evbus.outbox_1 is (id)');
SELECT columns_are('evbus', 'outbox_1', ARRAY[
	'id', 'message_id', 'integration_event', 'event_key', 'payload',
	'headers', 'domain_event', 'traceparent', 'staged_at', 'deliver_at']);
SELECT columns_are('evbus', 'outbox_published_0', ARRAY['lo', 'hi']);
SELECT columns_are('evbus', 'outbox_published_1', ARRAY['lo', 'hi']);
SELECT is((SELECT pg_catalog.count(*)::integer FROM pg_catalog.pg_class
		   WHERE relnamespace = 'evbus'::regnamespace
			 AND relname IN ('outbox_0', 'outbox_1', 'outbox_published_0', 'outbox_published_1')
			 AND reloptions @> ARRAY['autovacuum_enabled=false']),
		  4, 'autovacuum is off for the outbox tables and their published ranges');

-- dead letters
SELECT columns_are('evbus', 'dead_letters', ARRAY[
	'id', 'message_id', 'direction', 'integration_event', 'topic',
	'event_key', 'payload', 'headers', 'domain_event', 'traceparent',
	'staged_at', 'group_name', 'handler', 'kafka_partition', 'kafka_offset',
	'raw_value', 'attempts', 'errors', 'error_code', 'error_message', 'dead_at']);
SELECT col_is_pk('evbus', 'dead_letters', 'id', 'the primary key of evbus.dead_letters is (id)');
SELECT col_type_is('evbus', 'dead_letters', 'message_id', 'text', 'dead_letters.message_id is text (a UUID or a CAP producer''s id)');
SELECT col_type_is('evbus', 'dead_letters', 'payload', 'jsonb', 'dead_letters.payload is jsonb');
SELECT col_type_is('evbus', 'dead_letters', 'raw_value', 'bytea', 'dead_letters.raw_value is bytea');
SELECT col_type_is('evbus', 'dead_letters', 'errors', 'jsonb', 'dead_letters.errors is jsonb');
SELECT col_type_is('evbus', 'dead_letters', 'error_code', 'text', 'dead_letters.error_code is text');
SELECT col_type_is('evbus', 'dead_letters', 'dead_at', 'timestamp with time zone', 'dead_letters.dead_at is timestamptz');
SELECT col_has_check('evbus', 'dead_letters', 'direction', 'dead_letters.direction is checked');

-- subscriptions
SELECT columns_are('evbus', 'subscriptions', ARRAY[
	'integration_event', 'group_name', 'handler', 'is_procedure',
	'takes_headers', 'run_as', 'max_retries', 'subscribed_at', 'on_dead_letter',
	'paused_at']);
SELECT col_is_pk('evbus', 'subscriptions', ARRAY['integration_event', 'group_name', 'handler']::name[], 'the primary key of evbus.subscriptions is (integration_event, group_name, handler)');
SELECT col_type_is('evbus', 'subscriptions', 'handler', 'text', 'subscriptions.handler is text (a qualified signature)');
SELECT col_type_is('evbus', 'subscriptions', 'run_as', 'regrole', 'subscriptions.run_as is regrole');
SELECT col_type_is('evbus', 'subscriptions', 'max_retries', 'integer', 'subscriptions.max_retries is integer');
SELECT col_has_check('evbus', 'subscriptions', 'on_dead_letter', 'subscriptions.on_dead_letter is checked');
SELECT has_trigger('evbus', 'subscriptions', 'subscriptions_changed', 'evbus.subscriptions has trigger subscriptions_changed');
SELECT trigger_is('evbus', 'subscriptions', 'subscriptions_changed', 'evbus', '_config_changed');

-- consumer offsets
SELECT columns_are('evbus', 'consumer_offsets', ARRAY[
	'group_name', 'topic', 'kafka_partition', 'next_offset',
	'high_watermark', 'updated_at']);
SELECT col_is_pk('evbus', 'consumer_offsets', ARRAY['group_name', 'topic', 'kafka_partition']::name[], 'the primary key of evbus.consumer_offsets is (group_name, topic, kafka_partition)');
SELECT col_type_is('evbus', 'consumer_offsets', 'next_offset', 'bigint', 'consumer_offsets.next_offset is bigint');

-- inbox
SELECT columns_are('evbus', 'inbox', ARRAY[
	'id', 'group_name', 'dedup_key', 'message_id', 'integration_event',
	'topic', 'kafka_partition', 'kafka_offset', 'handler', 'event_key',
	'payload', 'headers', 'state', 'attempts', 'next_attempt_at',
	'last_error_code', 'last_error_message', 'errors', 'received_at',
	'handled_at']);
SELECT col_is_pk('evbus', 'inbox', 'id', 'the primary key of evbus.inbox is (id)');
SELECT col_is_unique('evbus', 'inbox', ARRAY['group_name', 'dedup_key', 'handler']::name[]);
SELECT col_type_is('evbus', 'inbox', 'message_id', 'text', 'inbox.message_id is text');
SELECT col_type_is('evbus', 'inbox', 'state', 'text', 'inbox.state is text');
SELECT col_has_check('evbus', 'inbox', 'state', 'inbox.state is checked');
SELECT col_type_is('evbus', 'inbox', 'headers', 'jsonb', 'inbox.headers is jsonb');
SELECT indexes_are('evbus', 'inbox', ARRAY[
	'inbox_pkey', 'inbox_group_name_dedup_key_handler_key',
	'inbox_pending_key', 'inbox_pending_due', 'inbox_pending', 'inbox_handled_at', 'inbox_dead']);

-- publish counters and the stats view
SELECT columns_are('evbus', 'publish_counters', ARRAY[
	'integration_event', 'published', 'dead', 'last_published_at']);
SELECT col_is_pk('evbus', 'publish_counters', 'integration_event', 'the primary key of evbus.publish_counters is (integration_event)');
SELECT columns_are('evbus', 'stats', ARRAY[
	'side', 'topic', 'group_name', 'staged', 'published', 'handled',
	'retrying', 'dead', 'pending', 'lag', 'oldest_pending_age',
	'last_activity_at']);
SELECT col_type_is('evbus', 'stats', 'staged', 'bigint', 'stats.staged is bigint');
SELECT col_type_is('evbus', 'stats', 'lag', 'numeric', 'stats.lag is numeric');
SELECT col_type_is('evbus', 'stats', 'oldest_pending_age', 'interval', 'stats.oldest_pending_age is interval');

-- no foreign keys: rows of different tables are tied by name, not by
-- constraint (a dead letter outlives its outbox or inbox row)
SELECT is((SELECT pg_catalog.count(*)::integer FROM pg_catalog.pg_constraint
		   WHERE connamespace = 'evbus'::regnamespace AND contype = 'f'),
		  0, 'no foreign key in schema evbus');

-- the event trigger that keeps subscribed handlers from being dropped
SELECT is((SELECT evtevent || ' ' || evtfoid::regprocedure::text
		   FROM pg_catalog.pg_event_trigger WHERE evtname = 'evbus_refuse_handler_drop'),
		  'sql_drop evbus._refuse_handler_drop()',
		  'event trigger evbus_refuse_handler_drop runs on sql_drop');
SELECT is((SELECT evtevent || ' ' || evtfoid::regprocedure::text || ' ' || evtenabled::text || ' '
				  || pg_catalog.array_to_string(evttags, ',')
		   FROM pg_catalog.pg_event_trigger WHERE evtname = 'evbus_warn_published'),
		  'ddl_command_end evbus._warn_published() A CREATE PUBLICATION,ALTER PUBLICATION',
		  'event trigger evbus_warn_published runs always after CREATE and ALTER PUBLICATION');

-- pausing and replaying
SELECT function_returns('evbus', 'pause_subscription', ARRAY['text', 'regprocedure', 'text'], 'integer');
SELECT function_returns('evbus', 'resume_subscription', ARRAY['text', 'regprocedure', 'text'], 'integer');
SELECT function_returns('evbus', 'pause_publishing', ARRAY['text'], 'boolean');
SELECT function_returns('evbus', 'resume_publishing', ARRAY['text'], 'boolean');
SELECT function_returns('evbus', 'replay', ARRAY['text', 'text', 'timestamp with time zone', 'bigint', 'boolean'], 'bigint');
SELECT is((SELECT pg_catalog.pg_get_function_arguments('evbus.pause_subscription(text, regprocedure, text)'::regprocedure)),
		  'integration_event text, handler regprocedure DEFAULT NULL::regprocedure, group_name text DEFAULT NULL::text',
		  'evbus.pause_subscription: handler and group_name are optional');
SELECT is((SELECT pg_catalog.pg_get_function_arguments('evbus.replay(text, text, timestamptz, bigint, boolean)'::regprocedure)),
		  'integration_event text, group_name text DEFAULT NULL::text, from_time timestamp with time zone DEFAULT NULL::timestamp with time zone, from_offset bigint DEFAULT NULL::bigint, rerun boolean DEFAULT false',
		  'evbus.replay: all but integration_event are optional');
SELECT col_type_is('evbus', 'subscriptions', 'paused_at', 'timestamp with time zone', 'subscriptions.paused_at is timestamptz');
SELECT columns_are('evbus', 'publishing_pauses', ARRAY['integration_event', 'paused_by', 'paused_at']);
SELECT trigger_is('evbus', 'publishing_pauses', 'publishing_pauses_changed', 'evbus', '_config_changed');
SELECT columns_are('evbus', 'replays', ARRAY[
	'id', 'group_name', 'integration_event', 'from_time', 'from_offset',
	'rerun', 'requested_by', 'requested_at', 'done_at', 'rewound']);
SELECT trigger_is('evbus', 'replays', 'replays_changed', 'evbus', '_config_changed');

-- every table, view and public function is commented
SELECT is(ARRAY(SELECT c.relname::text FROM pg_catalog.pg_class c
				 WHERE c.relnamespace = 'evbus'::regnamespace AND c.relkind IN ('r', 'v')
				   AND pg_catalog.obj_description(c.oid, 'pg_class') IS NULL
				 ORDER BY 1),
		  ARRAY[]::text[], 'every table and view of evbus has a comment');
SELECT is(ARRAY(SELECT p.oid::regprocedure::text FROM pg_catalog.pg_proc p
				 WHERE p.pronamespace = 'evbus'::regnamespace AND p.proname !~ '^_'
				   AND pg_catalog.obj_description(p.oid, 'pg_proc') IS NULL
				 ORDER BY 1),
		  ARRAY[]::text[], 'every function of the API has a comment');

-- the settings, all under the reserved prefix evbus.
SELECT set_eq($$SELECT name::text FROM pg_catalog.pg_settings WHERE name LIKE 'evbus.%'$$,
			  ARRAY['evbus.batch_max_bytes', 'evbus.batch_size', 'evbus.brokers',
					'evbus.consumer_groups', 'evbus.copy_check_interval',
					'evbus.dead_letter_retention', 'evbus.group_name',
					'evbus.handler_timeout', 'evbus.inbox_retention',
					'evbus.kafka_config_file', 'evbus.max_message_bytes',
					'evbus.max_retries', 'evbus.outbox_rotation',
					'evbus.poll_interval', 'evbus.publish_events',
					'evbus.publish_linger', 'evbus.subscribe_events',
					'evbus.publish_linger_busy', 'evbus.retry_interval',
					'evbus.retry_max_interval', 'evbus.topic_prefix',
					'evbus.traceparent', 'evbus.wait_for_standbys',
					'evbus.idle_timeout'],
			  'the settings of evbus are exactly the documented ones');

SELECT * FROM finish();
ROLLBACK;

/* evbus--0.1.sql: schema, tables and SQL API of evbus 0.1 */

-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "CREATE EXTENSION evbus" to load this file. \quit

/*
 * Everything below lives in the fixed schema evbus.  Objects are qualified,
 * and the C functions that write evbus's tables switch to the extension
 * owner for the write only, so no table is granted to anyone and no
 * function runs user code with elevated rights.
 */

--------------------------------------------------------------------------
-- Converters: (domain event, integration event) -> SQL function
--------------------------------------------------------------------------

CREATE TABLE evbus.converters (
	domain_event		text NOT NULL,
	integration_event	text NOT NULL,
	converter			regprocedure NOT NULL,
	registered_by		regrole NOT NULL,
	registered_at		timestamptz NOT NULL DEFAULT pg_catalog.now(),
	PRIMARY KEY (domain_event, integration_event)
);
COMMENT ON TABLE evbus.converters IS
	'converter functions (jsonb) RETURNS jsonb that turn a domain event into an integration event';

/*
 * Any change to evbus.converters, by the API or by hand, invalidates the
 * converter cache of every backend at commit.
 */
CREATE FUNCTION evbus._converters_changed() RETURNS trigger
	AS 'MODULE_PATHNAME', 'evbus_converters_changed' LANGUAGE C;
REVOKE ALL ON FUNCTION evbus._converters_changed() FROM PUBLIC;
CREATE TRIGGER converters_changed
	AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON evbus.converters
	FOR EACH STATEMENT EXECUTE FUNCTION evbus._converters_changed();

--------------------------------------------------------------------------
-- Outbox: staged integration events waiting to be published
--------------------------------------------------------------------------

/*
 * One sequence orders all staged events; the worker publishes in id order
 * but never uses the highest id seen as a high-water mark (commit order is
 * not id order).  CACHE 1 keeps ids dense, so a gap is a rolled back or
 * still running transaction.
 */
CREATE SEQUENCE evbus.outbox_id_seq AS bigint CACHE 1;

/*
 * The outbox is two tables used in turn (by time, evbus.outbox_rotation):
 * staging writes to the current one, the worker deletes rows once Kafka has
 * acknowledged them, and truncates the other table once it holds no row, so
 * the outbox returns to empty without VACUUM FULL.
 */
CREATE TABLE evbus.outbox_0 (
	id				bigint PRIMARY KEY,
	message_id		uuid NOT NULL,
	integration_event text NOT NULL,
	event_key		text,
	payload			jsonb NOT NULL,
	headers			jsonb,
	domain_event	text,
	traceparent		text,
	staged_at		timestamptz NOT NULL,
	deliver_at		timestamptz
);
CREATE TABLE evbus.outbox_1 (LIKE evbus.outbox_0 INCLUDING ALL);
COMMENT ON TABLE evbus.outbox_0 IS 'outbox, half 0: see evbus.outbox';
COMMENT ON TABLE evbus.outbox_1 IS 'outbox, half 1: see evbus.outbox';

CREATE VIEW evbus.outbox AS
	SELECT id, message_id, integration_event, event_key, payload, headers,
		   domain_event, traceparent, staged_at, deliver_at
	  FROM evbus.outbox_0
	UNION ALL
	SELECT id, message_id, integration_event, event_key, payload, headers,
		   domain_event, traceparent, staged_at, deliver_at
	  FROM evbus.outbox_1;
COMMENT ON VIEW evbus.outbox IS
	'integration events staged by committed transactions and not yet acknowledged by Kafka';

--------------------------------------------------------------------------
-- Dead letters: events that cannot be published (or, later, handled)
--------------------------------------------------------------------------

CREATE TABLE evbus.dead_letters (
	id				bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	message_id		uuid NOT NULL,
	direction		text NOT NULL CHECK (direction IN ('publish', 'consume')),
	integration_event text NOT NULL,
	topic			text,
	event_key		text,
	payload			jsonb,
	headers			jsonb,
	domain_event	text,
	traceparent		text,
	staged_at		timestamptz,
	error_code		text NOT NULL,
	error_message	text NOT NULL,
	dead_at			timestamptz NOT NULL DEFAULT pg_catalog.now()
);
CREATE INDEX ON evbus.dead_letters (message_id);
CREATE INDEX ON evbus.dead_letters (dead_at);
COMMENT ON TABLE evbus.dead_letters IS
	'events that could not be published or handled, with the error; evbus.retry(message_id) requeues one';

--------------------------------------------------------------------------
-- Counters for evbus.stats (one row per integration event, updated once
-- per published batch by the worker, never on the staging path)
--------------------------------------------------------------------------

CREATE TABLE evbus.publish_counters (
	integration_event text PRIMARY KEY,
	published		bigint NOT NULL DEFAULT 0,
	dead			bigint NOT NULL DEFAULT 0,
	last_published_at timestamptz
);
COMMENT ON TABLE evbus.publish_counters IS
	'per integration event: how many events Kafka acknowledged and how many were dead-lettered';

CREATE VIEW evbus.stats AS
	WITH pending AS (
		SELECT integration_event, pg_catalog.count(*) AS pending,
			   pg_catalog.min(staged_at) AS oldest_staged_at
		  FROM evbus.outbox
		 GROUP BY integration_event
	)
	SELECT 'publish'::text AS side,
		   pg_catalog.current_setting('evbus.topic_prefix') OPERATOR(pg_catalog.||)
			   COALESCE(c.integration_event, p.integration_event) AS topic,
		   NULL::text AS group_name,
		   COALESCE(c.published, 0) OPERATOR(pg_catalog.+)
			   COALESCE(c.dead, 0) OPERATOR(pg_catalog.+)
			   COALESCE(p.pending, 0) AS staged,
		   COALESCE(c.published, 0) AS published,
		   COALESCE(c.dead, 0) AS dead,
		   COALESCE(p.pending, 0) AS pending,
		   pg_catalog.now() OPERATOR(pg_catalog.-) p.oldest_staged_at AS oldest_pending_age,
		   c.last_published_at
	  FROM evbus.publish_counters c
	  FULL JOIN pending p ON p.integration_event OPERATOR(pg_catalog.=) c.integration_event;
COMMENT ON VIEW evbus.stats IS
	'one row per side and topic: staged, published, dead and pending events, age of the oldest pending one';

--------------------------------------------------------------------------
-- SQL API: producing side
--------------------------------------------------------------------------

CREATE FUNCTION evbus.register_converter(domain_event text,
										 integration_event text,
										 converter regprocedure)
	RETURNS void
	AS 'MODULE_PATHNAME', 'evbus_register_converter'
	LANGUAGE C STRICT VOLATILE;
COMMENT ON FUNCTION evbus.register_converter(text, text, regprocedure) IS
	'register converter (jsonb) RETURNS jsonb turning domain_event into integration_event; replaces an existing one for the pair';

CREATE FUNCTION evbus.unregister_converter(domain_event text,
										   integration_event text)
	RETURNS boolean
	AS 'MODULE_PATHNAME', 'evbus_unregister_converter'
	LANGUAGE C STRICT VOLATILE;
COMMENT ON FUNCTION evbus.unregister_converter(text, text) IS
	'remove the converter of a (domain event, integration event) pair; false if there was none';

CREATE FUNCTION evbus.raise(domain_event text, payload jsonb,
							key text DEFAULT NULL)
	RETURNS integer
	AS 'MODULE_PATHNAME', 'evbus_raise'
	LANGUAGE C VOLATILE;
COMMENT ON FUNCTION evbus.raise(text, jsonb, text) IS
	'raise a domain event: run its converters and stage their integration events in this transaction; returns how many were staged';

CREATE FUNCTION evbus.publish(integration_event text, payload jsonb,
							  key text DEFAULT NULL, headers jsonb DEFAULT NULL,
							  deliver_at timestamptz DEFAULT NULL)
	RETURNS uuid
	AS 'MODULE_PATHNAME', 'evbus_publish'
	LANGUAGE C VOLATILE;
COMMENT ON FUNCTION evbus.publish(text, jsonb, text, jsonb, timestamptz) IS
	'stage an integration event directly (no converter) in this transaction; returns its message id';

CREATE FUNCTION evbus.capture() RETURNS trigger
	AS 'MODULE_PATHNAME', 'evbus_capture'
	LANGUAGE C;
COMMENT ON FUNCTION evbus.capture() IS
	'row trigger: EXECUTE FUNCTION evbus.capture(''DomainEvent'' [, ''key_column'']) raises the domain event with the row as payload';

--------------------------------------------------------------------------
-- SQL API: operations
--------------------------------------------------------------------------

CREATE FUNCTION evbus.retry(message_id uuid) RETURNS boolean
	AS 'MODULE_PATHNAME', 'evbus_retry'
	LANGUAGE C STRICT VOLATILE;
COMMENT ON FUNCTION evbus.retry(uuid) IS
	'requeue a dead-lettered event; false if no dead letter has this message id';

CREATE FUNCTION evbus.brokers() RETURNS text
	AS 'MODULE_PATHNAME', 'evbus_current_brokers'
	LANGUAGE C STRICT STABLE;
COMMENT ON FUNCTION evbus.brokers() IS
	'bootstrap servers the worker uses now (for ''embedded'': the in-process broker''s address)';

CREATE FUNCTION evbus.worker_pid() RETURNS integer
	AS 'MODULE_PATHNAME', 'evbus_worker_pid'
	LANGUAGE C STRICT VOLATILE;
COMMENT ON FUNCTION evbus.worker_pid() IS
	'process id of this database''s evbus worker, or NULL when none runs';

/* Starts this database's worker when CREATE EXTENSION commits. */
CREATE FUNCTION evbus._start_worker_at_commit() RETURNS void
	AS 'MODULE_PATHNAME', 'evbus_start_worker_at_commit'
	LANGUAGE C STRICT VOLATILE;
REVOKE ALL ON FUNCTION evbus._start_worker_at_commit() FROM PUBLIC;
SELECT evbus._start_worker_at_commit();

--------------------------------------------------------------------------
-- Privileges: nothing that writes is granted to PUBLIC
--------------------------------------------------------------------------

REVOKE ALL ON ALL TABLES IN SCHEMA evbus FROM PUBLIC;
REVOKE ALL ON SEQUENCE evbus.outbox_id_seq FROM PUBLIC;
REVOKE ALL ON FUNCTION evbus.register_converter(text, text, regprocedure) FROM PUBLIC;
REVOKE ALL ON FUNCTION evbus.unregister_converter(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION evbus.raise(text, jsonb, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION evbus.publish(text, jsonb, text, jsonb, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION evbus.capture() FROM PUBLIC;
REVOKE ALL ON FUNCTION evbus.retry(uuid) FROM PUBLIC;
GRANT SELECT ON evbus.stats TO pg_monitor;

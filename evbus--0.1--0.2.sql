/*
 * evbus--0.1--0.2.sql: ALTER EXTENSION evbus UPDATE from 0.1 to 0.2.
 *
 * evbus--0.1.sql is frozen as released; every schema change since ships
 * here and in evbus--0.2.sql (a fresh install), and the two must give the
 * same schema (test 340_extension_update.pl compares them).
 */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION evbus UPDATE TO '0.2'" to load this file. \quit

-- As in the install scripts, every name is schema-qualified and every
-- operator on user-visible data is written OPERATOR(pg_catalog.op).

/*
 * What caused what, as far as this database knows it: its inbox (handled
 * messages stay there evbus.inbox_retention, with their headers) and its
 * outbox (events not yet published).  A handler's staging writes
 * evbus-causation-id (the cap-msg-id of the message it handled) and
 * evbus-correlation-id (that message's own correlation id, else its
 * cap-msg-id); this walks the causation ids from message_id up to what
 * caused it and down to what it caused: depth < 0 for causes, 0 for the
 * message itself, > 0 for effects.  A message this database never saw
 * ends the walk (caused_by still names it).  Ids and names only, no
 * payload or header value; it reads the tables with the caller's
 * privileges and is not granted to PUBLIC (test 224_trace_causation.pl).
 */
CREATE FUNCTION evbus.message_chain(message_id text,
									OUT message_id text,
									OUT integration_event text,
									OUT caused_by text,
									OUT correlation_id text,
									OUT where_seen text,
									OUT state text,
									OUT seen_at timestamptz,
									OUT depth integer)
	RETURNS SETOF record
	LANGUAGE sql STABLE STRICT
	SET search_path = pg_catalog, pg_temp
	AS $$
	WITH RECURSIVE known AS MATERIALIZED (
		SELECT i.message_id, i.integration_event,
			   i.headers OPERATOR(pg_catalog.->>) 'evbus-causation-id' AS caused_by,
			   COALESCE(i.headers OPERATOR(pg_catalog.->>) 'evbus-correlation-id',
						i.message_id) AS correlation_id,
			   'inbox'::pg_catalog.text AS where_seen,
			   CASE WHEN pg_catalog.bool_or(i.state OPERATOR(pg_catalog.=) 'pending') THEN 'pending'
					WHEN pg_catalog.bool_or(i.state OPERATOR(pg_catalog.=) 'dead') THEN 'dead'
					ELSE 'handled' END AS state,
			   COALESCE(pg_catalog.max(i.handled_at), pg_catalog.min(i.received_at)) AS seen_at
		  FROM evbus.inbox i
		 WHERE i.message_id IS NOT NULL
		 GROUP BY 1, 2, 3, 4
		UNION ALL
		SELECT o.message_id::pg_catalog.text, o.integration_event,
			   o.headers OPERATOR(pg_catalog.->>) 'evbus-causation-id',
			   COALESCE(o.headers OPERATOR(pg_catalog.->>) 'evbus-correlation-id',
						o.message_id::pg_catalog.text),
			   'outbox', 'staged', o.staged_at
		  FROM evbus.outbox o
	), causes (message_id, depth) AS (
		SELECT $1, 0
		UNION ALL
		SELECT k.caused_by, c.depth OPERATOR(pg_catalog.-) 1
		  FROM causes c
		  JOIN known k ON k.message_id OPERATOR(pg_catalog.=) c.message_id
		 WHERE k.caused_by IS NOT NULL
	) CYCLE message_id SET is_cycle USING path,
	effects (message_id, depth) AS (
		SELECT $1, 0
		UNION ALL
		SELECT k.message_id, e.depth OPERATOR(pg_catalog.+) 1
		  FROM effects e
		  JOIN known k ON k.caused_by OPERATOR(pg_catalog.=) e.message_id
	) CYCLE message_id SET is_cycle USING path
	SELECT k.message_id, k.integration_event, k.caused_by, k.correlation_id,
		   k.where_seen, k.state, k.seen_at, c.depth
	  FROM (SELECT message_id, depth FROM causes WHERE NOT is_cycle
			UNION
			SELECT message_id, depth FROM effects WHERE NOT is_cycle) c
	  JOIN known k ON k.message_id OPERATOR(pg_catalog.=) c.message_id
	 ORDER BY c.depth, k.seen_at, k.message_id
$$;
REVOKE ALL ON FUNCTION evbus.message_chain(text) FROM PUBLIC;
COMMENT ON FUNCTION evbus.message_chain(text) IS
	'the messages this database saw (inbox) or staged (outbox) that caused, or were caused by, message_id, following evbus-causation-id: ids and names, with depth (< 0 causes, > 0 effects)';

--------------------------------------------------------------------------
-- pg_dump and pg_restore: what a dump of the database carries
--------------------------------------------------------------------------

/*
 * evbus's tables belong to the extension, so pg_dump leaves their rows
 * out unless they are marked here.  A dump carries the configuration
 * (converters, subscriptions), the events staged and not yet published,
 * and the consuming side's state (offsets, the inbox that de-duplicates
 * redeliveries, dead letters), with the sequences that number them, so
 * that a restored database publishes what was pending, with the same
 * message ids, and handles nothing twice (test 320_dump_restore.pl).
 *
 * Left out: the ranges of published ids (outbox_published_0/1) and the
 * published rows they cover, which the filter below skips, and the
 * statistics of evbus.publish_counters, which start again from zero, as
 * PostgreSQL's own statistics do after a restore.
 *
 * pg_dump runs with an empty search_path: the filters are qualified.
 * The workers of a database wait while a restore writes its tables
 * (restore.c).
 */
SELECT pg_catalog.pg_extension_config_dump('evbus.converters', '');
SELECT pg_catalog.pg_extension_config_dump('evbus.subscriptions', '');
SELECT pg_catalog.pg_extension_config_dump('evbus.consumer_offsets', '');
SELECT pg_catalog.pg_extension_config_dump('evbus.inbox', '');
SELECT pg_catalog.pg_extension_config_dump('evbus.inbox_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('evbus.dead_letters', '');
SELECT pg_catalog.pg_extension_config_dump('evbus.dead_letters_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('evbus.outbox_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('evbus.outbox_0',
	'WHERE NOT id OPERATOR(pg_catalog.<@) (SELECT COALESCE(pg_catalog.range_agg(pg_catalog.int8range(lo, hi, ''[]'')), ''{}'') FROM evbus.outbox_published_0)');
SELECT pg_catalog.pg_extension_config_dump('evbus.outbox_1',
	'WHERE NOT id OPERATOR(pg_catalog.<@) (SELECT COALESCE(pg_catalog.range_agg(pg_catalog.int8range(lo, hi, ''[]'')), ''{}'') FROM evbus.outbox_published_1)');

--------------------------------------------------------------------------
-- Pause, resume, replay
--------------------------------------------------------------------------

/*
 * A paused subscription's handler runs for nothing: its messages wait in
 * the inbox (pending, no attempt counted), and when every subscription of
 * a topic in a group is paused the consumer stops fetching the topic's
 * partitions, so that its lag grows in evbus.stats.  Resuming runs them
 * in per-key order (test 280_pause_subscription.pl).  NULL: not paused.
 */
ALTER TABLE evbus.subscriptions ADD COLUMN paused_at timestamptz;
COMMENT ON COLUMN evbus.subscriptions.paused_at IS
	'when the subscription was paused (evbus.pause_subscription); NULL: its handler runs';

/*
 * Integration events whose publishing is paused: their events stay staged
 * in the outbox (and move with the outbox rotation) until
 * evbus.resume_publishing (test 282_pause_publishing.pl).  A change wakes
 * the publisher through the relcache, as evbus.subscriptions does the
 * consumer.  A dump carries the pauses, as it carries the subscriptions'
 * (paused_at): a restored database keeps holding what was held (test
 * 320_dump_restore.pl).
 */
CREATE TABLE evbus.publishing_pauses (
	integration_event text PRIMARY KEY,
	paused_by		name NOT NULL,
	paused_at		timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE evbus.publishing_pauses IS
	'integration events whose publishing is paused: their events stay staged in the outbox';
REVOKE ALL ON evbus.publishing_pauses FROM PUBLIC;
CREATE TRIGGER publishing_pauses_changed
	AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON evbus.publishing_pauses
	FOR EACH STATEMENT EXECUTE FUNCTION evbus._config_changed();
SELECT pg_catalog.pg_extension_config_dump('evbus.publishing_pauses', '');

CREATE FUNCTION evbus.pause_subscription(integration_event text,
										 handler regprocedure DEFAULT NULL,
										 group_name text DEFAULT NULL)
	RETURNS integer
	AS 'MODULE_PATHNAME', 'evbus_pause_subscription'
	LANGUAGE C;
COMMENT ON FUNCTION evbus.pause_subscription(text, regprocedure, text) IS
	'pause the subscriptions of an integration event in a group (one handler, or all of them when handler is NULL): their messages wait in the inbox; returns how many were paused';

CREATE FUNCTION evbus.resume_subscription(integration_event text,
										  handler regprocedure DEFAULT NULL,
										  group_name text DEFAULT NULL)
	RETURNS integer
	AS 'MODULE_PATHNAME', 'evbus_resume_subscription'
	LANGUAGE C;
COMMENT ON FUNCTION evbus.resume_subscription(text, regprocedure, text) IS
	'resume paused subscriptions of an integration event in a group: their waiting messages run in per-key order; returns how many were resumed';

CREATE FUNCTION evbus.pause_publishing(integration_event text)
	RETURNS boolean
	AS 'MODULE_PATHNAME', 'evbus_pause_publishing'
	LANGUAGE C;
COMMENT ON FUNCTION evbus.pause_publishing(text) IS
	'stop publishing an integration event: its events stay staged in the outbox; false if it was paused already';

CREATE FUNCTION evbus.resume_publishing(integration_event text)
	RETURNS boolean
	AS 'MODULE_PATHNAME', 'evbus_resume_publishing'
	LANGUAGE C;
COMMENT ON FUNCTION evbus.resume_publishing(text) IS
	'publish a paused integration event again, its staged events first, in per-key order; false if it was not paused';

REVOKE ALL ON FUNCTION evbus.pause_subscription(text, regprocedure, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION evbus.resume_subscription(text, regprocedure, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION evbus.pause_publishing(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION evbus.resume_publishing(text) FROM PUBLIC;

/*
 * Replays asked for by evbus.replay, done by the consumer worker: it
 * resolves the offsets where each assigned partition of the topic starts
 * again (from_offset, or Kafka's first offset at from_time), rewinds the
 * stored offsets (never forwards), with rerun sets the handled inbox rows
 * of the replayed range pending again, then seeks its Kafka consumer.
 * done_at and rewound (per partition: the offsets from and to) say what
 * it did (test 284_replay.pl).
 */
CREATE TABLE evbus.replays (
	id				bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	group_name		text NOT NULL,
	integration_event text NOT NULL,
	from_time		timestamptz,
	from_offset		bigint CHECK (from_offset >= 0),
	rerun			boolean NOT NULL,
	requested_by	name NOT NULL,
	requested_at	timestamptz NOT NULL DEFAULT pg_catalog.now(),
	done_at			timestamptz,
	rewound			jsonb,
	CHECK ((from_time IS NULL) OPERATOR(pg_catalog.<>) (from_offset IS NULL))
);
COMMENT ON TABLE evbus.replays IS
	'replays of a topic for a consumer group (evbus.replay): asked for, and what the consumer rewound';
REVOKE ALL ON evbus.replays FROM PUBLIC;
CREATE TRIGGER replays_changed
	AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON evbus.replays
	FOR EACH STATEMENT EXECUTE FUNCTION evbus._config_changed();

CREATE FUNCTION evbus.replay(integration_event text,
							 group_name text DEFAULT NULL,
							 from_time timestamptz DEFAULT NULL,
							 from_offset bigint DEFAULT NULL,
							 rerun boolean DEFAULT false)
	RETURNS bigint
	AS 'MODULE_PATHNAME', 'evbus_replay'
	LANGUAGE C;
COMMENT ON FUNCTION evbus.replay(text, text, timestamptz, bigint, boolean) IS
	'read the topic of an integration event again for a group, from a time or an offset: without rerun nothing runs twice; with rerun the handlers run again for the replayed messages still in the inbox (header evbus-replay); returns the replay''s id in evbus.replays';
REVOKE ALL ON FUNCTION evbus.replay(text, text, timestamptz, bigint, boolean) FROM PUBLIC;

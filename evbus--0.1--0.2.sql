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
-- Metrics
--------------------------------------------------------------------------

/*
 * Every database's counters, gauges and histograms as Prometheus series,
 * one row per series: the metric's name, its kind (counter, gauge,
 * histogram: the _bucket rows with le, _sum and _count), its labels and
 * its value.  Reads shared memory only, no table, so that a scraper may
 * call it every few seconds whatever the size of the inbox; the workers
 * keep the numbers (metrics.c).  Readable by pg_monitor, like evbus.stats.
 */
CREATE FUNCTION evbus.metrics(OUT metric text, OUT kind text,
							  OUT database text, OUT worker text,
							  OUT topic text, OUT group_name text,
							  OUT le text, OUT error text,
							  OUT value double precision)
	RETURNS SETOF record
	AS 'MODULE_PATHNAME', 'evbus_metrics'
	LANGUAGE C STRICT VOLATILE;
COMMENT ON FUNCTION evbus.metrics() IS
	'counters, gauges and histograms of every database''s evbus workers as Prometheus series (metric, kind, labels, value), from shared memory';
REVOKE ALL ON FUNCTION evbus.metrics() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION evbus.metrics() TO pg_monitor;

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

/*
 * evbus.stats without reading the whole inbox.  The inbox keeps every
 * handled message for evbus.inbox_retention, millions of rows on a busy
 * database, and the view counted them all at each read.  Now the number
 * of messages per group and topic (distinct dedup keys, as the view
 * counts them) is kept in evbus.inbox_messages by statement triggers on
 * the inbox, whoever writes it (the consumer, its retention, a restore,
 * an operator); the view reads the pending and dead messages through
 * their partial indexes, which hold few rows, and a handled message is
 * one of the others.  Same numbers as a count of the whole inbox (test
 * 291_metrics_counts.pl compares them, after inserts, deletes and a
 * TRUNCATE), read in milliseconds with ten million inbox rows
 * (bench/metrics.sh).
 */
CREATE TABLE evbus.inbox_messages (
	group_name		text NOT NULL,
	topic			text NOT NULL,
	messages		bigint NOT NULL,
	PRIMARY KEY (group_name, topic)
);
COMMENT ON TABLE evbus.inbox_messages IS
	'per group and topic: the number of messages (distinct dedup keys) in evbus.inbox, kept by its triggers for evbus.stats';

/*
 * A message is counted when its first row arrives, and no longer when its
 * last row goes; rows of one message and group share its topic.  It runs
 * with the rights of whoever writes the inbox (the extension's owner, as
 * the workers and evbus.retry do, or a role it granted the inbox to, and
 * then evbus.inbox_messages too).
 */
CREATE FUNCTION evbus._inbox_counted() RETURNS trigger
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
	AS $$
BEGIN
	/*
	 * EXECUTE: planned at each call, when the inbox's size is known; a plan
	 * kept from a call on a small inbox scans it once per message.
	 */
	IF TG_OP OPERATOR(pg_catalog.=) 'INSERT' THEN
		EXECUTE '
		INSERT INTO evbus.inbox_messages AS c (group_name, topic, messages)
		SELECT n.group_name, n.topic, pg_catalog.count(*)
		  FROM (SELECT r.group_name, r.topic, r.dedup_key, pg_catalog.count(*) AS nrows
				  FROM new_rows r
				 GROUP BY r.group_name, r.topic, r.dedup_key) n
		 WHERE n.nrows OPERATOR(pg_catalog.=)
			   (SELECT pg_catalog.count(*) FROM evbus.inbox i
				 WHERE i.group_name OPERATOR(pg_catalog.=) n.group_name
				   AND i.dedup_key OPERATOR(pg_catalog.=) n.dedup_key)
		 GROUP BY n.group_name, n.topic
		ON CONFLICT (group_name, topic) DO UPDATE
		   SET messages = c.messages OPERATOR(pg_catalog.+) excluded.messages';
	ELSIF TG_OP OPERATOR(pg_catalog.=) 'DELETE' THEN
		EXECUTE '
		UPDATE evbus.inbox_messages c
		   SET messages = c.messages OPERATOR(pg_catalog.-) d.gone
		  FROM (SELECT o.group_name, o.topic, pg_catalog.count(DISTINCT o.dedup_key) AS gone
				  FROM old_rows o
				 WHERE NOT EXISTS (SELECT FROM evbus.inbox i
									WHERE i.group_name OPERATOR(pg_catalog.=) o.group_name
									  AND i.dedup_key OPERATOR(pg_catalog.=) o.dedup_key)
				 GROUP BY o.group_name, o.topic) d
		 WHERE c.group_name OPERATOR(pg_catalog.=) d.group_name
		   AND c.topic OPERATOR(pg_catalog.=) d.topic';
	ELSE
		DELETE FROM evbus.inbox_messages;
	END IF;
	RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION evbus._inbox_counted() FROM PUBLIC;

LOCK TABLE evbus.inbox IN SHARE ROW EXCLUSIVE MODE;
INSERT INTO evbus.inbox_messages (group_name, topic, messages)
SELECT group_name, topic, pg_catalog.count(DISTINCT dedup_key)
  FROM evbus.inbox
 GROUP BY group_name, topic;
CREATE TRIGGER inbox_inserted AFTER INSERT ON evbus.inbox
	REFERENCING NEW TABLE AS new_rows
	FOR EACH STATEMENT EXECUTE FUNCTION evbus._inbox_counted();
CREATE TRIGGER inbox_deleted AFTER DELETE ON evbus.inbox
	REFERENCING OLD TABLE AS old_rows
	FOR EACH STATEMENT EXECUTE FUNCTION evbus._inbox_counted();
CREATE TRIGGER inbox_truncated AFTER TRUNCATE ON evbus.inbox
	FOR EACH STATEMENT EXECUTE FUNCTION evbus._inbox_counted();
REVOKE ALL ON evbus.inbox_messages FROM PUBLIC;

CREATE OR REPLACE VIEW evbus.stats AS
	WITH pending AS (
		SELECT integration_event, pg_catalog.count(*) AS pending,
			   pg_catalog.min(staged_at) AS oldest_staged_at
		  FROM evbus.outbox
		 GROUP BY integration_event
	), waiting AS (
		/*
		 * A message is pending while a handler of it is, else dead if a
		 * handler gave up on it, else handled.  The pending rows and the
		 * dead ones have partial indexes.
		 */
		SELECT group_name, topic, dedup_key,
			   pg_catalog.bool_or(attempts OPERATOR(pg_catalog.>) 0) AS retrying,
			   pg_catalog.min(received_at) AS received_at
		  FROM evbus.inbox
		 WHERE state OPERATOR(pg_catalog.=) 'pending'
		 GROUP BY group_name, topic, dedup_key
	), given_up AS (
		SELECT DISTINCT i.group_name, i.topic, i.dedup_key
		  FROM evbus.inbox i
		 WHERE i.state OPERATOR(pg_catalog.=) 'dead'
		   AND NOT EXISTS (SELECT FROM waiting w
							WHERE w.group_name OPERATOR(pg_catalog.=) i.group_name
							  AND w.dedup_key OPERATOR(pg_catalog.=) i.dedup_key)
	), inbox AS (
		SELECT m.group_name, m.topic,
			   m.messages OPERATOR(pg_catalog.-) COALESCE(w.pending, 0)
				   OPERATOR(pg_catalog.-) COALESCE(g.dead, 0) AS handled,
			   COALESCE(w.retrying, 0) AS retrying,
			   COALESCE(w.pending, 0) AS pending,
			   COALESCE(g.dead, 0) AS dead,
			   w.oldest_pending_at,
			   (SELECT pg_catalog.max(i.handled_at) FROM evbus.inbox i
				 WHERE i.group_name OPERATOR(pg_catalog.=) m.group_name
				   AND i.topic OPERATOR(pg_catalog.=) m.topic) AS last_handled_at
		  FROM evbus.inbox_messages m
		  LEFT JOIN (SELECT group_name, topic, pg_catalog.count(*) AS pending,
							pg_catalog.count(*) FILTER (WHERE retrying) AS retrying,
							pg_catalog.min(received_at) AS oldest_pending_at
					   FROM waiting
					  GROUP BY group_name, topic) w
				 ON w.group_name OPERATOR(pg_catalog.=) m.group_name
					AND w.topic OPERATOR(pg_catalog.=) m.topic
		  LEFT JOIN (SELECT group_name, topic, pg_catalog.count(*) AS dead
					   FROM given_up
					  GROUP BY group_name, topic) g
				 ON g.group_name OPERATOR(pg_catalog.=) m.group_name
					AND g.topic OPERATOR(pg_catalog.=) m.topic
		 WHERE m.messages OPERATOR(pg_catalog.>) 0
	), lag AS (
		SELECT group_name, topic,
			   pg_catalog.sum(GREATEST(high_watermark OPERATOR(pg_catalog.-) next_offset, 0)) AS lag
		  FROM evbus.consumer_offsets
		 GROUP BY group_name, topic
	)
	SELECT 'publish'::text AS side,
		   pg_catalog.current_setting('evbus.topic_prefix') OPERATOR(pg_catalog.||)
			   COALESCE(c.integration_event, p.integration_event) AS topic,
		   NULL::text AS group_name,
		   COALESCE(c.published, 0) OPERATOR(pg_catalog.+)
			   COALESCE(c.dead, 0) OPERATOR(pg_catalog.+)
			   COALESCE(p.pending, 0) AS staged,
		   COALESCE(c.published, 0) AS published,
		   NULL::bigint AS handled,
		   NULL::bigint AS retrying,
		   COALESCE(c.dead, 0) AS dead,
		   COALESCE(p.pending, 0) AS pending,
		   NULL::numeric AS lag,
		   pg_catalog.now() OPERATOR(pg_catalog.-) p.oldest_staged_at AS oldest_pending_age,
		   c.last_published_at AS last_activity_at
	  FROM evbus.publish_counters c
	  FULL JOIN pending p ON p.integration_event OPERATOR(pg_catalog.=) c.integration_event
	UNION ALL
	SELECT 'consume'::text,
		   COALESCE(i.topic, l.topic),
		   COALESCE(i.group_name, l.group_name),
		   NULL::bigint, NULL::bigint,
		   COALESCE(i.handled, 0), COALESCE(i.retrying, 0), COALESCE(i.dead, 0),
		   COALESCE(i.pending, 0), l.lag,
		   pg_catalog.now() OPERATOR(pg_catalog.-) i.oldest_pending_at,
		   i.last_handled_at
	  FROM inbox i
	  FULL JOIN lag l ON l.group_name OPERATOR(pg_catalog.=) i.group_name
						 AND l.topic OPERATOR(pg_catalog.=) i.topic;
COMMENT ON VIEW evbus.stats IS
	'one row per side and topic (and group): staged, published, handled, retrying, dead, pending, consumer lag, age of the oldest pending event';
GRANT SELECT ON evbus.stats TO pg_monitor;

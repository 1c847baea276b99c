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
-- Repair in bulk
--------------------------------------------------------------------------

/*
 * What a dead letter does to the later events of its key, per
 * subscription: 'skip' lets them go on (the dead one is left behind),
 * 'park' holds them back, for that handler, until an operator retries,
 * edits or discards the dead one (test 274_park_key.pl).  A parked
 * message stays 'pending' in evbus.inbox with no next attempt, so the
 * consumer's per-key hold keeps its key waiting.
 */
ALTER TABLE evbus.subscriptions
	ADD COLUMN on_dead_letter text NOT NULL DEFAULT 'skip'
	CHECK (on_dead_letter IN ('skip', 'park'));

/*
 * The inbox's first lock here is the strongest this script takes on it
 * (ALTER TABLE, below): the database's consumer, still at 0.1, may be
 * writing it.  Holding CREATE INDEX's SHARE lock while waiting for ACCESS
 * EXCLUSIVE behind the consumer, which then waited to write, was a
 * deadlock (test 340_extension_update.pl).
 */
LOCK TABLE evbus.inbox IN ACCESS EXCLUSIVE MODE;

/*
 * The consumer finds the pending rows that may run now in one walk over
 * them in id order, each key's in order (inbox_due.c).
 */
CREATE INDEX inbox_pending ON evbus.inbox (id) WHERE state = 'pending';

/*
 * A discarded message keeps its inbox row, so that a redelivery is not
 * handled again; as 'discarded' it is neither dead nor pending, and goes
 * after evbus.inbox_retention like a handled one.
 */
ALTER TABLE evbus.inbox DROP CONSTRAINT inbox_state_check;
ALTER TABLE evbus.inbox ADD CONSTRAINT inbox_state_check
	CHECK (state IN ('pending', 'handled', 'dead', 'discarded'));

/*
 * The keys the inbox's indexes tell apart are compared byte by byte
 * (COLLATE "C", see evbus--0.2.sql): the table is not rewritten, its
 * indexes on them are built again.  evbus.stats of 0.1 reads dedup_key; it
 * is created again below (-- Metrics).
 */
DROP VIEW evbus.stats;
ALTER TABLE evbus.inbox
	ALTER COLUMN dedup_key TYPE text COLLATE "C",
	ALTER COLUMN event_key TYPE text COLLATE "C";

/*
 * Every discard and every edit of a dead letter, with who did it (the
 * role that called, current_user, and the session's role, session_user),
 * when, why, and what: the message, its event, group and handler, and its
 * payload before (payload) and, for an edit, after (new_payload).  Kept:
 * evbus deletes nothing from it; the extension owner trims it by hand.  A
 * dump carries it, as it does the dead letters (test 320_dump_restore.pl).
 */
CREATE TABLE evbus.repair_log (
	id				bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	action			text NOT NULL CHECK (action IN ('discard', 'edit')),
	message_id		text NOT NULL,
	direction		text NOT NULL,
	integration_event text NOT NULL,
	group_name		text,
	handler			text,
	event_key		text,
	error_code		text,
	payload			jsonb,			/* discarded, or before the edit */
	new_payload		jsonb,			/* edit: after */
	reason			text,
	done_by			name NOT NULL,	/* current_user */
	session_role	name NOT NULL,	/* session_user */
	done_at			timestamptz NOT NULL DEFAULT pg_catalog.now()
);
CREATE INDEX ON evbus.repair_log (message_id);
COMMENT ON TABLE evbus.repair_log IS
	'audit trail of evbus.discard and evbus.edit_dead_letter: who, when, why, and the payload before (and after) the change';
REVOKE ALL ON evbus.repair_log FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('evbus.repair_log', '');
SELECT pg_catalog.pg_extension_config_dump('evbus.repair_log_id_seq', '');

/*
 * Failures by kind: the dead letters ('dead'), and the handlers waiting
 * for their next retry ('retrying'), by side, integration event, group
 * and error code.  A parked message is dead.
 */
CREATE VIEW evbus.failures AS
	SELECT direction AS side, 'dead'::pg_catalog.text AS state,
		   integration_event, group_name, error_code,
		   pg_catalog.count(*) AS count,
		   pg_catalog.min(dead_at) AS first_seen,
		   pg_catalog.max(dead_at) AS last_seen,
		   (pg_catalog.array_agg(message_id ORDER BY dead_at DESC, id DESC))[1] AS sample_message_id
	  FROM evbus.dead_letters
	 GROUP BY direction, integration_event, group_name, error_code
	UNION ALL
	SELECT 'consume', 'retrying', integration_event, group_name, last_error_code,
		   pg_catalog.count(*),
		   pg_catalog.min(received_at),
		   pg_catalog.max((errors OPERATOR(pg_catalog.->) -1 OPERATOR(pg_catalog.->>) 'at')::pg_catalog.timestamptz),
		   (pg_catalog.array_agg(COALESCE(message_id, dedup_key) ORDER BY id DESC))[1]
	  FROM evbus.inbox
	 WHERE state OPERATOR(pg_catalog.=) 'pending' AND last_error_code IS NOT NULL
	   AND next_attempt_at IS NOT NULL
	 GROUP BY integration_event, group_name, last_error_code;
COMMENT ON VIEW evbus.failures IS
	'dead letters (state dead) and handlers waiting for a retry (state retrying) by side, integration event, group and error code: count, first and last seen, a sample message id';
REVOKE ALL ON evbus.failures FROM PUBLIC;

/*
 * evbus.subscribe with on_dead_letter: an overload rather than a new last
 * argument, so that the four-argument form, its grants and every call of
 * it stay as they were (it keeps a subscription's on_dead_letter, and a
 * new subscription skips).  on_dead_letter is an enum and comes third,
 * without a default: a call that names no on_dead_letter matches only
 * the four-argument form (an untyped literal prefers text).
 */
CREATE TYPE evbus.on_dead_letter AS ENUM ('skip', 'park');
COMMENT ON TYPE evbus.on_dead_letter IS
	'what a dead letter does to the later events of its key for that handler: skip (they go on) or park (they wait for it)';
CREATE FUNCTION evbus.subscribe(integration_event text, handler regprocedure,
								on_dead_letter evbus.on_dead_letter,
								group_name text DEFAULT NULL,
								max_retries integer DEFAULT NULL)
	RETURNS void
	AS 'MODULE_PATHNAME', 'evbus_subscribe_on_dead_letter'
	LANGUAGE C VOLATILE;
COMMENT ON FUNCTION evbus.subscribe(text, regprocedure, evbus.on_dead_letter, text, integer) IS
	'evbus.subscribe, choosing what a dead letter does to the later events of its key: skip or park';
REVOKE ALL ON FUNCTION evbus.subscribe(text, regprocedure, evbus.on_dead_letter, text, integer) FROM PUBLIC;

/*
 * Retry and discard by filter.  match_all comes first so that no call
 * with one argument matches this form as well as evbus.retry(text):
 * call it with named arguments.  A filter naming nothing is refused
 * unless match_all => true.
 */
CREATE FUNCTION evbus.retry(match_all boolean DEFAULT false,
							side text DEFAULT NULL,
							integration_event text DEFAULT NULL,
							group_name text DEFAULT NULL,
							error_code text DEFAULT NULL,
							dead_since timestamptz DEFAULT NULL,
							dead_until timestamptz DEFAULT NULL)
	RETURNS integer
	AS 'MODULE_PATHNAME', 'evbus_retry_filter'
	LANGUAGE C VOLATILE;
COMMENT ON FUNCTION evbus.retry(boolean, text, text, text, text, timestamptz, timestamptz) IS
	'requeue the dead letters that match every non-null filter (dead_at in [dead_since, dead_until)); returns how many';
REVOKE ALL ON FUNCTION evbus.retry(boolean, text, text, text, text, timestamptz, timestamptz) FROM PUBLIC;

CREATE FUNCTION evbus.discard(message_id text, reason text) RETURNS boolean
	AS 'MODULE_PATHNAME', 'evbus_discard'
	LANGUAGE C VOLATILE;
COMMENT ON FUNCTION evbus.discard(text, text) IS
	'give up on the dead letters of a message for good, recording who, when and why in evbus.repair_log; false if it has none';
REVOKE ALL ON FUNCTION evbus.discard(text, text) FROM PUBLIC;
CREATE FUNCTION evbus.discard(message_id uuid, reason text) RETURNS boolean
	AS 'MODULE_PATHNAME', 'evbus_discard_uuid'
	LANGUAGE C VOLATILE;
COMMENT ON FUNCTION evbus.discard(uuid, text) IS
	'evbus.discard(text, text) for a message id held as a uuid';
REVOKE ALL ON FUNCTION evbus.discard(uuid, text) FROM PUBLIC;

CREATE FUNCTION evbus.discard(reason text, match_all boolean DEFAULT false,
							  side text DEFAULT NULL,
							  integration_event text DEFAULT NULL,
							  group_name text DEFAULT NULL,
							  error_code text DEFAULT NULL,
							  dead_since timestamptz DEFAULT NULL,
							  dead_until timestamptz DEFAULT NULL)
	RETURNS integer
	AS 'MODULE_PATHNAME', 'evbus_discard_filter'
	LANGUAGE C VOLATILE;
COMMENT ON FUNCTION evbus.discard(text, boolean, text, text, text, text, timestamptz, timestamptz) IS
	'evbus.discard for the dead letters that match every non-null filter, as evbus.retry by filter; returns how many';
REVOKE ALL ON FUNCTION evbus.discard(text, boolean, text, text, text, text, timestamptz, timestamptz) FROM PUBLIC;

/*
 * Replace the payload of one dead letter (a consume side one: of one
 * handler in one group); evbus.retry then runs or publishes the new one.
 * Consume side: only a role with the privileges of the role the handler
 * runs as may, since the payload will run in that handler.  Publish side:
 * only a role that may call evbus.publish.
 */
CREATE FUNCTION evbus.edit_dead_letter(message_id text, payload jsonb,
									   handler regprocedure DEFAULT NULL,
									   group_name text DEFAULT NULL,
									   reason text DEFAULT NULL)
	RETURNS void
	AS 'MODULE_PATHNAME', 'evbus_edit_dead_letter'
	LANGUAGE C VOLATILE;
COMMENT ON FUNCTION evbus.edit_dead_letter(text, jsonb, regprocedure, text, text) IS
	'replace the payload of a dead letter (evbus.retry then runs it); the original is kept in evbus.repair_log';
REVOKE ALL ON FUNCTION evbus.edit_dead_letter(text, jsonb, regprocedure, text, text) FROM PUBLIC;
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
	handler			text,			/* every row of the group's topic has it; NULL: not known */
	PRIMARY KEY (group_name, topic)
);
COMMENT ON TABLE evbus.inbox_messages IS
	'per group and topic: the number of messages (distinct dedup keys) in evbus.inbox, and the handler of all its rows if they have one, kept by its triggers for evbus.stats';

/*
 * A message is counted when its first row arrives, and no longer when its
 * last row goes; rows of one message and group share its topic.  It runs
 * with the rights of whoever writes the inbox (the extension's owner, as
 * the workers and evbus.retry do, or a role it granted the inbox to, and
 * then evbus.inbox_messages too).
 *
 * Most groups have one handler per topic.  While every row of a group's
 * topic has the same handler (inbox_messages.handler), a row inserted
 * with that handler is a new message: another row of its message would
 * have that handler too, and the inbox's unique (group, dedup key,
 * handler) let only one in; so is a deleted row a message gone.  Such
 * rows are counted without looking at the inbox (one UPDATE per
 * statement instead of an index probe per message: bench/consume.sh, and
 * the trim of handled rows, test 236_inbox_retention.pl).  A row of
 * another handler (a second handler, a replaced one, an undecodable
 * message's '' row) makes the handler unknown (NULL) until the group's
 * topic has no message left; then each message is looked up among the
 * inbox's rows of its group.
 * Test 291_metrics_counts.pl compares the counts with a full count in
 * each of these cases.
 */
CREATE FUNCTION evbus._inbox_counted() RETURNS trigger
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
	AS $$
DECLARE
	s			record;
BEGIN
	IF TG_OP OPERATOR(pg_catalog.=) 'INSERT' THEN
		FOR s IN SELECT r.group_name, r.topic, pg_catalog.count(*) AS nrows,
						CASE WHEN pg_catalog.min(r.handler) OPERATOR(pg_catalog.=) pg_catalog.max(r.handler)
							 THEN pg_catalog.min(r.handler) END AS handler
				   FROM new_rows r
				  GROUP BY r.group_name, r.topic
		LOOP
			IF s.handler IS NOT NULL THEN
				UPDATE evbus.inbox_messages c
				   SET messages = c.messages OPERATOR(pg_catalog.+) s.nrows, handler = s.handler
				 WHERE c.group_name OPERATOR(pg_catalog.=) s.group_name
				   AND c.topic OPERATOR(pg_catalog.=) s.topic
				   AND (c.handler OPERATOR(pg_catalog.=) s.handler OR c.messages OPERATOR(pg_catalog.=) 0);
				CONTINUE WHEN FOUND;
				INSERT INTO evbus.inbox_messages (group_name, topic, messages, handler)
				VALUES (s.group_name, s.topic, s.nrows, s.handler)
				ON CONFLICT (group_name, topic) DO NOTHING;
				CONTINUE WHEN FOUND;
			END IF;

			/*
			 * EXECUTE: planned at each call, when the inbox's size is known;
			 * a plan kept from a call on a small inbox scans it once per
			 * message.
			 */
			EXECUTE '
			INSERT INTO evbus.inbox_messages AS c (group_name, topic, messages, handler)
			SELECT $1, $2, pg_catalog.count(*), NULL
			  FROM (SELECT r.dedup_key, pg_catalog.count(*) AS nrows
					  FROM new_rows r
					 WHERE r.group_name OPERATOR(pg_catalog.=) $1
					   AND r.topic OPERATOR(pg_catalog.=) $2
					 GROUP BY r.dedup_key) n
			 WHERE n.nrows OPERATOR(pg_catalog.=)
				   (SELECT pg_catalog.count(*) FROM evbus.inbox i
					 WHERE i.group_name OPERATOR(pg_catalog.=) $1
					   AND i.dedup_key OPERATOR(pg_catalog.=) n.dedup_key)
			ON CONFLICT (group_name, topic) DO UPDATE
			   SET messages = c.messages OPERATOR(pg_catalog.+) excluded.messages,
				   handler = NULL'
			USING s.group_name, s.topic;
		END LOOP;
	ELSIF TG_OP OPERATOR(pg_catalog.=) 'DELETE' THEN
		FOR s IN SELECT o.group_name, o.topic, pg_catalog.count(*) AS nrows,
						CASE WHEN pg_catalog.min(o.handler) OPERATOR(pg_catalog.=) pg_catalog.max(o.handler)
							 THEN pg_catalog.min(o.handler) END AS handler
				   FROM old_rows o
				  GROUP BY o.group_name, o.topic
		LOOP
			/* every row of the group's topic has that handler: a row is a message */
			UPDATE evbus.inbox_messages c
			   SET messages = c.messages OPERATOR(pg_catalog.-) s.nrows
			 WHERE c.group_name OPERATOR(pg_catalog.=) s.group_name
			   AND c.topic OPERATOR(pg_catalog.=) s.topic
			   AND c.handler OPERATOR(pg_catalog.=) s.handler;
			CONTINUE WHEN FOUND;
			EXECUTE '
			UPDATE evbus.inbox_messages c
			   SET messages = c.messages OPERATOR(pg_catalog.-) d.gone
			  FROM (SELECT pg_catalog.count(DISTINCT o.dedup_key) AS gone
					  FROM old_rows o
					 WHERE o.group_name OPERATOR(pg_catalog.=) $1
					   AND o.topic OPERATOR(pg_catalog.=) $2
					   AND NOT EXISTS (SELECT FROM evbus.inbox i
										WHERE i.group_name OPERATOR(pg_catalog.=) o.group_name
										  AND i.dedup_key OPERATOR(pg_catalog.=) o.dedup_key)) d
			 WHERE c.group_name OPERATOR(pg_catalog.=) $1
			   AND c.topic OPERATOR(pg_catalog.=) $2'
			USING s.group_name, s.topic;
		END LOOP;
	ELSE
		DELETE FROM evbus.inbox_messages;
	END IF;
	RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION evbus._inbox_counted() FROM PUBLIC;

LOCK TABLE evbus.inbox IN SHARE ROW EXCLUSIVE MODE;
INSERT INTO evbus.inbox_messages (group_name, topic, messages, handler)
SELECT group_name, topic, pg_catalog.count(DISTINCT dedup_key),
	   CASE WHEN pg_catalog.min(handler) OPERATOR(pg_catalog.=) pg_catalog.max(handler)
			THEN pg_catalog.min(handler) END
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
			   /* NULL: not known, no partition of it is held here (test 296) */
			   pg_catalog.sum(CASE WHEN high_watermark IS NOT NULL
							  THEN GREATEST(high_watermark OPERATOR(pg_catalog.-) next_offset, 0) END) AS lag
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

/*
 * The database evbus's rows belong to (copy_guard.c): the system
 * identifier of its server and its OID, entered by its first worker.  A
 * copy made with CREATE DATABASE ... TEMPLATE, or restored from a dump,
 * carries its original's row: while that original exists on the same
 * server, the copy's workers do not start, since they would publish the
 * original's events again and take partitions of its consumer groups
 * (test 326_database_copy.pl); evbus.adopt_copy() makes the copy a
 * database of its own.  A database restored on another server enters
 * itself beside the dumped row, which it then drops.  The database id
 * goes with the rows: a restore, a physical backup or pg_upgrade keeps
 * it, evbus.adopt_copy() and a database made from a template draw a new
 * one; it names the database in its
 * consumers' Kafka client ids, where a copy on another server is found
 * (group_copies.c, test 332_copy_elsewhere.pl).
 */
CREATE TABLE evbus.database_identity (
	system_identifier bigint NOT NULL,
	database_oid	oid NOT NULL,
	database_id		uuid NOT NULL DEFAULT pg_catalog.gen_random_uuid(),
	PRIMARY KEY (system_identifier, database_oid)
);
COMMENT ON TABLE evbus.database_identity IS
	'the server (system identifier) and database (OID) that evbus''s rows belong to, and the database''s id, which its copies carry; a copy of a database holds its original''s';
REVOKE ALL ON evbus.database_identity FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('evbus.database_identity', '');

CREATE FUNCTION evbus.adopt_copy() RETURNS void
	AS 'MODULE_PATHNAME', 'evbus_adopt_copy'
	LANGUAGE C STRICT VOLATILE;
COMMENT ON FUNCTION evbus.adopt_copy() IS
	'make this copy of another database of the server a database of its own: its evbus workers start';
REVOKE ALL ON FUNCTION evbus.adopt_copy() FROM PUBLIC;

/*
 * A WARNING for each publication that includes evbus's tables: a database
 * subscribed to it would receive this one's outbox, inbox and consumer
 * offsets as its own (test 246_publication_warning.pl).
 */
CREATE FUNCTION evbus._warn_published() RETURNS event_trigger
	AS 'MODULE_PATHNAME', 'evbus_warn_published'
	LANGUAGE C;
REVOKE ALL ON FUNCTION evbus._warn_published() FROM PUBLIC;
CREATE EVENT TRIGGER evbus_warn_published ON ddl_command_end
	WHEN TAG IN ('CREATE PUBLICATION', 'ALTER PUBLICATION')
	EXECUTE FUNCTION evbus._warn_published();
COMMENT ON EVENT TRIGGER evbus_warn_published IS
	'warns when a publication includes evbus''s tables (publish your own tables by name or by schema)';

/*
 * evbus's own triggers fire whatever session_replication_role says.  A
 * session that sets it to replica (a migration skipping foreign keys and
 * user triggers, say) would otherwise subscribe a handler that the
 * consumer never hears of, and workers of a database set so would insert
 * inbox rows that evbus.stats never counts (test 243_replica_role.pl).
 */
ALTER TABLE evbus.converters ENABLE ALWAYS TRIGGER converters_changed;
ALTER TABLE evbus.subscriptions ENABLE ALWAYS TRIGGER subscriptions_changed;
ALTER TABLE evbus.publishing_pauses ENABLE ALWAYS TRIGGER publishing_pauses_changed;
ALTER TABLE evbus.replays ENABLE ALWAYS TRIGGER replays_changed;
ALTER TABLE evbus.inbox ENABLE ALWAYS TRIGGER inbox_inserted;
ALTER TABLE evbus.inbox ENABLE ALWAYS TRIGGER inbox_deleted;
ALTER TABLE evbus.inbox ENABLE ALWAYS TRIGGER inbox_truncated;
ALTER EVENT TRIGGER evbus_refuse_handler_drop ENABLE ALWAYS;
ALTER EVENT TRIGGER evbus_warn_published ENABLE ALWAYS;

/*
 * A publication made before this script ran includes evbus's tables if it
 * is FOR ALL TABLES: warn of it now, as the event trigger above warns of
 * later ones (test 246_publication_warning.pl).
 */
CREATE FUNCTION evbus._warn_published_tables() RETURNS void
	AS 'MODULE_PATHNAME', 'evbus_warn_published_tables'
	LANGUAGE C;
SELECT evbus._warn_published_tables();
DROP FUNCTION evbus._warn_published_tables();

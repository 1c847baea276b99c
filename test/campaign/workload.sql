/*
 * workload.sql - the fault campaign's workload, installed in each of its
 * databases (campaign_a, campaign_b) after CREATE EXTENSION evbus, by
 *   psql -v ON_ERROR_STOP=1 -v letter=a -f workload.sql campaign_a
 * as a superuser.  `letter` prefixes the event ids and keys staged here.
 *
 * What it records is what the campaign's checker reads back:
 *   campaign.committed  one row per event staged, inserted in the very
 *                       transaction that stages it: the ground truth of
 *                       what committed (a rolled back event has no row)
 *   campaign.effects    one row per handler run that committed (no unique
 *                       constraint: a handler that ran twice for an event
 *                       shows as two rows)
 *   campaign.batch_calls the number of messages of each call of the batch
 *                       handler that committed (the test checks that some
 *                       had several)
 *   campaign.key_seq    the per-key sequence: a key's seq order is its
 *                       commit order, because the UPDATE holds the key's
 *                       row lock until the transaction ends
 *
 * Every event's payload carries event_id, db, key, seq, fail_times,
 * doomed (true only in transactions that roll back), caused_by, and its
 * Kafka key is its key.  Events are staged three ways: evbus.raise with a
 * converter (CampRaised), the evbus.capture trigger (CampCaptured) and
 * evbus.publish (CampPublished); handlers in campaign_b stage follow-ups
 * (CampChain) that campaign_a handles.
 *
 * The handler campaign.handle, subscribed by the unprivileged role
 * campaign_app (with its batch form campaign.handle_batch beside it),
 * records an effect, fails while its attempt number (from
 * evbus.inbox) is at most fail_times, sleeps past evbus.handler_timeout
 * on the first attempt of a "slow" event, naps briefly on a "nap" event
 * (so that a consumer killed at random is often inside a handler).
 */
\set ON_ERROR_STOP 1

DO $$
BEGIN
	IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'campaign_app') THEN
		CREATE ROLE campaign_app;
	END IF;
END $$;

CREATE SCHEMA campaign;

CREATE TABLE campaign.committed (
	event_id	text PRIMARY KEY,
	db			text NOT NULL,
	topic		text NOT NULL,
	key			text NOT NULL,
	seq			bigint NOT NULL,
	fail_times	int NOT NULL,
	caused_by	text,
	committed_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE campaign.effects (
	id			bigserial PRIMARY KEY,
	grp			text NOT NULL,
	db			text NOT NULL,
	handler		text NOT NULL,
	event_id	text NOT NULL,
	key			text NOT NULL,
	seq			bigint NOT NULL,
	handled_at	timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE TABLE campaign.key_seq (
	key			text PRIMARY KEY,
	seq			bigint NOT NULL
);

/* the size of each committed call of the batch handler */
CREATE TABLE campaign.batch_calls (
	messages	int NOT NULL
);

CREATE SEQUENCE campaign.event_no;

/* the rows the capture trigger turns into CampCaptured events */
CREATE TABLE campaign.captured (
	event_id	text PRIMARY KEY,
	db			text NOT NULL,
	key			text NOT NULL,
	seq			bigint NOT NULL,
	fail_times	int NOT NULL,
	doomed		boolean NOT NULL,
	caused_by	text,
	slow		boolean NOT NULL,
	nap			boolean NOT NULL,
	chain		boolean NOT NULL
);

/* the settings of this database's workload */
CREATE TABLE campaign.settings (
	letter		text NOT NULL,
	nkeys		int NOT NULL
);
INSERT INTO campaign.settings VALUES (:'letter', 40);

/*
 * next_seq(key): the key's next seq; holds the key's row lock until the
 * transaction ends, so a key's seq order is its commit order.
 */
CREATE FUNCTION campaign.next_seq(k text) RETURNS bigint LANGUAGE sql AS $$
	INSERT INTO campaign.key_seq AS s VALUES (k, 1)
	ON CONFLICT (key) DO UPDATE SET seq = s.seq + 1
	RETURNING seq
$$;

/* the converter of both domain events: the payload is the event already */
CREATE FUNCTION campaign.to_integration(payload jsonb) RETURNS jsonb
	LANGUAGE sql IMMUTABLE AS $$ SELECT payload - 'topic' $$;
SELECT evbus.register_converter('CampRaisedDomain', 'CampRaised',
								'campaign.to_integration(jsonb)');
SELECT evbus.register_converter('CampCapturedDomain', 'CampCaptured',
								'campaign.to_integration(jsonb)');
CREATE TRIGGER captured_events AFTER INSERT ON campaign.captured
	FOR EACH ROW EXECUTE FUNCTION evbus.capture('CampCapturedDomain', 'key');

/*
 * record(event_id, topic, key, fail_times, doomed, caused_by, slow, nap,
 * chain): stage one event the way its topic says, and its committed row,
 * in the caller's transaction.  Returns the event id.
 */
CREATE FUNCTION campaign.record(eid text, topic text, k text, fail_times int,
								doomed boolean, caused_by text,
								slow boolean, nap boolean, chain boolean)
	RETURNS text LANGUAGE plpgsql AS $$
DECLARE
	s bigint := campaign.next_seq(k);
	p jsonb;
BEGIN
	p := jsonb_build_object('event_id', eid, 'db', current_database(), 'key', k,
							'seq', s, 'fail_times', fail_times, 'doomed', doomed,
							'caused_by', caused_by, 'slow', slow, 'nap', nap,
							'chain', chain);
	INSERT INTO campaign.committed (event_id, db, topic, key, seq, fail_times, caused_by)
		VALUES (eid, current_database(), current_setting('evbus.topic_prefix') || topic,
				k, s, fail_times, caused_by);
	IF topic = 'CampRaised' THEN
		PERFORM evbus.raise('CampRaisedDomain', p, k);
	ELSIF topic = 'CampCaptured' THEN
		INSERT INTO campaign.captured
			VALUES (eid, current_database(), k, s, fail_times, doomed, caused_by, slow, nap, chain);
	ELSE
		PERFORM evbus.publish(topic, p, k);
	END IF;
	RETURN eid;
END $$;

/*
 * stage(topic, doomed): one event of the workload, with a random key of
 * this database and topic (evbus orders a key's events within a topic, a
 * partition: keys of their own per topic make a key's seq order the order
 * its handler must see) and random traits: most events succeed at once, some
 * fail once or twice, a few fail more often than evbus.max_retries
 * allows (dead letters), some nap in their handler, some are chained by
 * campaign_b's handler into a CampChain event.
 */
CREATE FUNCTION campaign.stage(topic text, doomed boolean) RETURNS text
	LANGUAGE plpgsql AS $$
DECLARE
	st campaign.settings;
	r float8 := random();
BEGIN
	SELECT * INTO st FROM campaign.settings;
	RETURN campaign.record(
		st.letter || '-' || nextval('campaign.event_no'), topic,
		st.letter || '-' || substr(topic, 5, 1) || '-k' || (1 + floor(random() * st.nkeys))::int,
		CASE WHEN r < 0.90 THEN 0 WHEN r < 0.97 THEN 1 + floor(random() * 2)::int ELSE 9 END,
		doomed, NULL, false, random() < 0.01, random() < 0.05);
END $$;

/* slow(): an event whose first handler attempt outlasts evbus.handler_timeout */
CREATE FUNCTION campaign.slow() RETURNS text LANGUAGE plpgsql AS $$
DECLARE
	st campaign.settings;
BEGIN
	SELECT * INTO st FROM campaign.settings;
	RETURN campaign.record(st.letter || '-' || nextval('campaign.event_no'), 'CampPublished',
						   st.letter || '-P-k' || (1 + floor(random() * st.nkeys))::int,
						   1, false, NULL, true, false, false);
END $$;

/* the handler's role: what it reads and writes, and the evbus API */
GRANT USAGE ON SCHEMA campaign TO campaign_app;
GRANT SELECT, INSERT ON campaign.committed, campaign.effects, campaign.batch_calls TO campaign_app;
GRANT SELECT, INSERT, UPDATE ON campaign.key_seq TO campaign_app;
GRANT SELECT ON campaign.settings TO campaign_app;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA campaign TO campaign_app;
GRANT EXECUTE ON FUNCTION campaign.next_seq(text), campaign.record(text, text, text, int, boolean, text, boolean, boolean, boolean) TO campaign_app;
GRANT USAGE ON SCHEMA evbus TO campaign_app;
GRANT SELECT ON evbus.inbox TO campaign_app;
GRANT EXECUTE ON FUNCTION evbus.subscribe(text, regprocedure, text, integer),
	evbus.publish(text, jsonb, text, jsonb, timestamptz) TO campaign_app;
GRANT CREATE ON SCHEMA campaign TO campaign_app;

SET ROLE campaign_app;

/*
 * handle(payload, headers): the campaign's handler.  The attempt number
 * is the inbox row's attempts, which already counts the running attempt.
 */
CREATE PROCEDURE campaign.handle(payload jsonb, headers jsonb) LANGUAGE plpgsql AS $$
DECLARE
	attempt int;
BEGIN
	SELECT i.attempts INTO attempt
	  FROM evbus.inbox i
	 WHERE i.group_name = handle.headers->>'evbus-group'
	   AND i.dedup_key = handle.headers->>'cap-msg-id'
	   AND i.handler = 'campaign.handle(pg_catalog.jsonb,pg_catalog.jsonb)';
	INSERT INTO campaign.effects (grp, db, handler, event_id, key, seq)
		VALUES (handle.headers->>'evbus-group', current_database(), 'handle',
				payload->>'event_id', payload->>'key', (payload->>'seq')::bigint);
	IF (payload->>'slow')::boolean AND attempt = 1 THEN
		PERFORM pg_sleep(60);	/* cancelled by evbus.handler_timeout */
	END IF;
	IF attempt IS NULL OR attempt <= (payload->>'fail_times')::int THEN
		RAISE EXCEPTION 'campaign: % fails on attempt % of %', payload->>'event_id',
			attempt, payload->>'fail_times' USING ERRCODE = 'CP001';
	END IF;
	IF (payload->>'nap')::boolean THEN
		PERFORM pg_sleep(0.1);
	END IF;
	IF current_database() = 'campaign_b' AND (payload->>'chain')::boolean THEN
		PERFORM campaign.record('b-ch-' || (payload->>'event_id'), 'CampChain',
								'b-ch-' || (payload->>'key'),
								CASE WHEN random() < 0.1 THEN 1 ELSE 0 END,
								false, payload->>'event_id', false, false, false);
	END IF;
END $$;

/*
 * handle_batch(payloads, headers): the same handler in the batch form,
 * subscribed beside handle, so that every message is handled twice in its
 * group, once per handler.  The call records an effect per message, then
 * fails as a whole if any of its messages is at an attempt that must fail
 * (evbus then calls it with one message at a time, and only that one
 * fails), sleeps past evbus.handler_timeout if one is a "slow" event at
 * its first attempt, naps if one naps.  It stages no follow-up: handle
 * does that.
 */
CREATE PROCEDURE campaign.handle_batch(payloads jsonb[], headers jsonb[]) LANGUAGE plpgsql AS $$
DECLARE
	attempt int;
	failing text;
	slow boolean := false;
	nap boolean := false;
BEGIN
	FOR i IN 1 .. coalesce(array_length(payloads, 1), 0) LOOP
		SELECT x.attempts INTO attempt
		  FROM evbus.inbox x
		 WHERE x.group_name = handle_batch.headers[i]->>'evbus-group'
		   AND x.dedup_key = handle_batch.headers[i]->>'cap-msg-id'
		   AND x.handler LIKE 'campaign.handle\_batch(%';
		INSERT INTO campaign.effects (grp, db, handler, event_id, key, seq)
			VALUES (handle_batch.headers[i]->>'evbus-group', current_database(), 'handle_batch',
					payloads[i]->>'event_id', payloads[i]->>'key', (payloads[i]->>'seq')::bigint);
		slow := slow OR ((payloads[i]->>'slow')::boolean AND attempt = 1);
		nap := nap OR (payloads[i]->>'nap')::boolean;
		IF failing IS NULL AND (attempt IS NULL OR attempt <= (payloads[i]->>'fail_times')::int) THEN
			failing := format('%s fails on attempt %s of %s', payloads[i]->>'event_id',
							  attempt, payloads[i]->>'fail_times');
		END IF;
	END LOOP;
	IF slow THEN
		PERFORM pg_sleep(60);	/* cancelled by evbus.handler_timeout */
	END IF;
	IF failing IS NOT NULL THEN
		RAISE EXCEPTION 'campaign: %', failing USING ERRCODE = 'CP001';
	END IF;
	IF nap THEN
		PERFORM pg_sleep(0.1);
	END IF;
	INSERT INTO campaign.batch_calls VALUES (coalesce(array_length(payloads, 1), 0));
END $$;

SELECT evbus.subscribe(t, h::regprocedure)
  FROM unnest(ARRAY['CampRaised', 'CampCaptured', 'CampPublished']) t,
       unnest(ARRAY['campaign.handle(jsonb, jsonb)', 'campaign.handle_batch(jsonb[], jsonb[])']) h;
SELECT evbus.subscribe('CampChain', h::regprocedure)
  FROM unnest(ARRAY['campaign.handle(jsonb, jsonb)', 'campaign.handle_batch(jsonb[], jsonb[])']) h
 WHERE current_database() = 'campaign_a';
RESET ROLE;

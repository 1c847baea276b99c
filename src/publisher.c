/*-------------------------------------------------------------------------
 *
 * publisher.c
 *	  Publishing: outbox -> Kafka, one step of the worker's loop at a time.
 *
 * A step serves librdkafka's delivery reports, then, in one short
 * transaction, records them (outbox.c "finish"), claims more events and
 * produces them.  The step runs the parts of the publisher, each of which
 * owns its state (publish.h):
 *
 *	publish_keys.c		per-key ordering: key state, events to produce alone
 *	publish_cursor.c	where to read: cursor, holes, revisits, sweep
 *	publish_reports.c	events in flight, delivery-report bookkeeping
 *	publish_producer.c	the producer's life cycle
 *	publish_pacing.c	when to claim, serve reports and record them
 *
 * This file produces the claimed rows and orders the parts within a step.
 * The flow of one event:
 *
 *	staged (row in the outbox)
 *	  -> claimed, the WAL behind the claim flushed (flush_behind_claim),
 *	     and produced: in flight (publish_reports.c)
 *	  -> delivery report PERSISTED: recorded as done (its id joins the
 *	     ranges of outbox_published.c; the row goes with its table's
 *	     TRUNCATE), counted as published
 *	  -> delivery report with a permanent error: produced again alone (the
 *	     broker refuses whole batches, so the culprit may be a neighbour);
 *	     refused alone, it is moved to dead letters
 *	  -> any other report (purged, fatal producer error): the row stays;
 *	     its key is blocked until this event is produced again and
 *	     PERSISTED, so later events of the key never overtake it.
 *
 * No event is ever given up on: the outbox row, not librdkafka's memory,
 * is the truth, and it goes only on PERSISTED.  A worker asked to stop
 * records the reports that come within a moment before it exits
 * (evbus_publisher_leave), so that a clean stop produces nothing again.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xlog.h"
#include "access/xlogdefs.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "evbus.h"
#include "publish.h"
#include "publisher.h"

/*
 * How long a worker asked to stop waits for the delivery reports of the
 * events it has in flight (evbus_publisher_leave): a broker's
 * acknowledgement takes milliseconds, and a server shutdown waits for the
 * worker.
 */
#define LEAVE_FLUSH_MS 500

/*
 * How long that recording may wait for a lock on evbus's tables that a
 * session holds (LOCK TABLE), and how long its statements may run: a
 * later SIGTERM does not cancel it (publisher_worker.c), so these bound
 * the delay it adds to a stop (test 235_publisher_stop.pl).  Events it
 * could not record go out again at the next start.
 */
#define LEAVE_LOCK_TIMEOUT "2s"
#define LEAVE_STATEMENT_TIMEOUT "5s"

static char source_name[NAMEDATALEN];
static MemoryContext publisher_cxt = NULL;	/* lives as long as the worker */
static MemoryContext batch_cxt = NULL;	/* one claim */
static TimestampTz last_maintain = 0;
static TimestampTz last_metrics = 0;	/* the outbox last counted */
static long metrics_interval_ms = 0;	/* until it is counted again */

/*
 * How often the outbox is counted for evbus.metrics() (its depth and
 * oldest event): every METRICS_INTERVAL_MS, or, when counting took long
 * (a backlog of millions), 20 times as long as the last count took, so
 * that counting never takes more than 5 % of the publisher's time.
 */
#define METRICS_INTERVAL_MS 5000
static int	step_passed = 0;	/* claimed rows the step did not hold back */

/* The wire headers (README.md, Wire format), then the user's. */
static rd_kafka_headers_t *
build_headers(const OutboxRow *row, const char *message_id, const char *sent)
{
	rd_kafka_headers_t *h = rd_kafka_headers_new(6 + row->nheaders);
	int			i;

	rd_kafka_header_add(h, "cap-msg-id", -1, message_id, -1);
	rd_kafka_header_add(h, "cap-msg-name", -1, row->integration_event, -1);
	rd_kafka_header_add(h, "cap-senttime", -1, sent, -1);
	rd_kafka_header_add(h, "evbus-source", -1, source_name, -1);
	if (row->domain_event)
		rd_kafka_header_add(h, "evbus-domain-event", -1, row->domain_event, -1);
	if (row->traceparent)
		rd_kafka_header_add(h, "traceparent", -1, row->traceparent, -1);
	for (i = 0; i < row->nheaders; i++)
		rd_kafka_header_add(h, row->header_names[i], -1, row->header_values[i], -1);
	return h;
}

/*
 * With evbus.wait_for_standbys set, the rows a step claims are not handed
 * to librdkafka inside the step's transaction: they are kept here, in
 * claim order, and sent after the transaction, once the named standbys
 * have flushed the WAL up to send_after, the insert position read after
 * the claims (standby_wait.c).  Everything else about them (in flight,
 * their key sent) is as if they had been sent; an event that cannot be
 * sent then, or that is given up on because the wait ended early, goes
 * through the delivery-report path as not confirmed (or refused), and is
 * produced again (test 300_failover_publish.pl).
 */
typedef struct DeferredSend
{
	char	   *topic;
	char	   *key;
	size_t		keylen;
	char	   *value;
	size_t		valuelen;
	rd_kafka_headers_t *headers;
	InflightMsg *msg;
} DeferredSend;

static bool deferring = false;	/* this step defers its sends */
static List *deferred = NIL;	/* of DeferredSend, in publisher_cxt */
static XLogRecPtr send_after = InvalidXLogRecPtr;

/* Keep one message for after the wait (see DeferredSend). */
static rd_kafka_resp_err_t
defer_send(const char *topic, const char *key, size_t keylen,
		   const char *value, size_t valuelen,
		   rd_kafka_headers_t *headers, InflightMsg *msg)
{
	MemoryContext old = MemoryContextSwitchTo(publisher_cxt);
	DeferredSend *d = palloc(sizeof(DeferredSend));

	d->topic = pstrdup(topic);
	d->key = palloc(keylen + 1);
	memcpy(d->key, key, keylen);
	d->keylen = keylen;
	d->value = value ? palloc(valuelen + 1) : NULL;
	if (value)
		memcpy(d->value, value, valuelen);
	d->valuelen = valuelen;
	d->headers = headers;
	d->msg = msg;
	deferred = lappend(deferred, d);
	MemoryContextSwitchTo(old);
	return RD_KAFKA_RESP_ERR_NO_ERROR;
}

/*
 * send_deferred --- after the step's transaction: wait for the standbys,
 * then send what the step claimed, in order.  If the wait ends early
 * (termination, reload), nothing is sent: each event is reported not
 * confirmed, and produced again by a later step; likewise every event
 * from the first one librdkafka refuses to queue (a full queue, say).
 */
static void
send_deferred(void)
{
	bool		go;
	ListCell   *lc;

	if (deferred == NIL)
		return;
	go = evbus_standby_wait(send_after, "publishing", -1);
	foreach(lc, deferred)
	{
		DeferredSend *d = lfirst(lc);
		rd_kafka_resp_err_t err = RD_KAFKA_RESP_ERR__PURGE_QUEUE;

		if (go)
			err = evbus_producer_send(evbus_pubproducer(), d->topic, d->key,
									  d->keylen, d->value, d->valuelen,
									  d->headers, d->msg);
		if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
		{
			/*
			 * Not queued: as if purged.  Nothing after it is sent either, so
			 * that no later event of its key overtakes it.
			 */
			rd_kafka_headers_destroy(d->headers);
			evbus_reports_on_delivery(d->msg, err, RD_KAFKA_MSG_STATUS_NOT_PERSISTED,
									  -1, -1);
			go = false;
		}
		pfree(d->topic);
		pfree(d->key);
		if (d->value)
			pfree(d->value);
	}
	list_free_deep(deferred);
	deferred = NIL;
}

typedef enum ProduceResult
{
	PRODUCED,
	HELD_BACK,					/* key blocked, or back-pressure: revisit */
	QUEUE_FULL
} ProduceResult;

/*
 * refused_before_queued --- librdkafka refused row before it was queued
 * (it may know the topic to be unauthorized already, say): the same as
 * the same error in a delivery report, and the key is released or held
 * back alike.  why, if not NULL, says why instead of err's text.
 */
static ProduceResult
refused_before_queued(const OutboxRow *row, uint64 keyhash,
					  rd_kafka_resp_err_t err, const char *why)
{
	if (err == RD_KAFKA_RESP_ERR__QUEUE_FULL)
	{
		evbus_revisit_add(row->id, false, keyhash);
		return QUEUE_FULL;
	}
	if (evbus_kafka_error_is_permanent(err))
	{
		evbus_reports_dead(row->id, row->table, row->integration_event, err, why);
		evbus_revisit_remove(row->id);
		evbus_key_done(keyhash, row->id, false);
		return PRODUCED;
	}
	evbus_key_failed(keyhash, row->id, false);
	evbus_revisit_add(row->id, true, keyhash);
	elog(DEBUG1, "evbus: event %lld refused before it was queued (%s), will produce it again",
		 (long long) row->id, rd_kafka_err2name(err));
	return HELD_BACK;
}

/*
 * produce_row --- produce one claimed row, unless it is in flight already
 * or its key is held back by an unconfirmed earlier event.
 */
static ProduceResult
produce_row(const OutboxRow *row, const char *sent, bool alone)
{
	uint64		keyhash = evbus_key_hash(row);
	uint32		key_topic;
	InflightMsg *msg;
	char	   *message_id;
	char		topic[EVBUS_MAX_TOPIC_LEN * 2 + 1];
	rd_kafka_headers_t *headers;
	rd_kafka_resp_err_t err;

	/*
	 * Already on its way, or delivered (or dead) but not recorded yet: a
	 * sweep page can produce a row past the forward cursor, which the next
	 * forward claim then reads again before the finish has recorded it.
	 */
	if (evbus_reports_holds(row->id))
	{
		evbus_revisit_remove(row->id);
		return PRODUCED;
	}

	snprintf(topic, sizeof(topic), "%s%s", evbus_topic_prefix, row->integration_event);
	key_topic = evbus_key_topic(row, topic);
	if (!evbus_key_may_produce(keyhash, row->id, key_topic))
	{
		evbus_revisit_add(row->id, false, keyhash);
		return HELD_BACK;
	}

	/*
	 * Staged before evbus.publish_events was set, or by a session that
	 * started before: refused as Kafka refuses a topic its ACLs deny (test
	 * 253_event_lists.pl).
	 */
	if (!evbus_may_publish(row->integration_event))
		return refused_before_queued(row, keyhash, RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
									 "evbus.publish_events of this database does not list it");

	message_id = evbus_uuid_to_cstring(&row->message_id);
	headers = build_headers(row, message_id, sent);
	msg = evbus_inflight_new(row, keyhash, key_topic, alone);

	if (deferring)
		err = defer_send(topic, row->key ? row->key : message_id,
						 strlen(row->key ? row->key : message_id),
						 row->payload, row->payload_len, headers, msg);
	else
		err = evbus_producer_send(evbus_pubproducer(), topic,
								  row->key ? row->key : message_id,
								  strlen(row->key ? row->key : message_id),
								  row->payload, row->payload_len,
								  headers, msg);
	pfree(message_id);
	if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
	{
		rd_kafka_headers_destroy(headers);
		evbus_inflight_discard(msg);
		return refused_before_queued(row, keyhash, err, NULL);
	}

	evbus_inflight_add(msg);
	evbus_key_sent(keyhash);
	evbus_revisit_remove(row->id);
	return PRODUCED;
}

/*
 * release_payload --- a claimed row's payload is no longer needed (librdkafka
 * copied it, or the row waits to be claimed again): free it now rather
 * than with the claim, so that the claim's payloads and librdkafka's
 * copies of them are not all held at once.
 */
static void
release_payload(OutboxRow *row)
{
	if (row->payload != NULL)
	{
		pfree(row->payload);
		row->payload = NULL;
	}
}

/*
 * flush_behind_claim --- before the rows a claim saw go to Kafka, flush the
 * WAL up to the insert position, which is past the commit record of every
 * transaction the claim's snapshot saw.  A transaction committed with
 * synchronous_commit = off is visible before its commit is on disk: sent
 * first, its events would outlive it if a crash then lost it (test
 * 306_async_commit_phantom.pl).  No I/O when the WAL is on disk that far
 * already (the commits were synchronous and nothing wrote since).  The
 * deferred sends of evbus.wait_for_standbys are flushed by their wait.
 */
static void
flush_behind_claim(void)
{
	if (!deferring)
		XLogFlush(evbus_standby_wait_target());
}

/* Produce claimed rows in order; false on back-pressure. */
static bool
produce_rows(OutboxRow *rows, int n)
{
	int			i;

	/* cap-senttime: when this batch was handed to the producer */
	const char *sent = n > 0 ? timestamptz_to_str(GetCurrentTimestamp()) : NULL;

	if (n > 0)
		flush_behind_claim();
	for (i = 0; i < n; i++)
	{
		ProduceResult result = produce_row(&rows[i], sent, false);

		if (result == PRODUCED)
			step_passed++;
		release_payload(&rows[i]);
		if (result == QUEUE_FULL)
		{
			for (i++; i < n; i++)
			{
				evbus_revisit_add(rows[i].id, false, evbus_key_hash(&rows[i]));
				release_payload(&rows[i]);
			}
			return false;
		}
	}
	return true;
}

/*
 * Look up remembered ids again (publish_cursor.c says which).  Returns
 * true when every one was looked up and produced or held back, false when
 * the step's bytes or librdkafka's queue ran out first: then no row past
 * the cursor may be produced in this step, as a later event of a key that
 * is free to go would overtake the key's remembered events not looked up
 * yet (test 260_inflight_refusal_order.pl makes keys hold events back).
 */
static bool
claim_revisits(void)
{
	int64	   *ids;
	int			nids;
	OutboxRow  *rows;
	int			n;
	int64		last_examined;

	nids = evbus_revisit_due_ids(batch_cxt, &ids);
	if (nids == 0)
		return true;
	if (evbus_claim_budget() <= 0)
		return false;

	n = evbus_outbox_claim_ids(ids, nids, evbus_claim_budget(), &rows, batch_cxt,
							   &last_examined);
	evbus_keys_forget_vanished(ids, nids, rows, n, last_examined);

	/*
	 * A row produced leaves the revisits (produce_row); one held back stays,
	 * and an event that failed stays one that failed, which its key's next
	 * blocker is looked up among (publish_keys.c).  Ids that are not (or no
	 * longer) due rows stay until they expire.
	 */
	return produce_rows(rows, n) && last_examined == PG_INT64_MAX;
}

/*
 * claim_forward --- the next rows past the cursor; returns true if the
 * batch was full (more rows are waiting).
 */
static bool
claim_forward(int limit)
{
	OutboxRow  *rows;
	bool		full;
	int			n = evbus_cursor_claim_forward(limit, evbus_claim_budget(),
											   &rows, batch_cxt, &full);

	produce_rows(rows, n);
	return full;
}

/* One page of the sweep that finds whatever the cursor left behind. */
static void
claim_sweep(int limit)
{
	OutboxRow  *rows;
	bool		full;
	int			n = evbus_cursor_sweep_page(limit, evbus_claim_budget(),
											&rows, batch_cxt, &full);

	/* produce the page first: its end is where the sweep resumes */
	evbus_cursor_sweep_advance(rows, n, produce_rows(rows, n), full);
}

/*
 * produce_solo --- isolate batch-level permanent errors: with nothing else
 * in flight, produce the lowest isolated event whose key it blocks, alone.
 * If no isolated event may go yet (its key waits for an earlier event),
 * look up the remembered ids so that the earlier event goes first.
 */
static void
produce_solo(void)
{
	int64		id;
	uint64		keyhash;
	OutboxRow  *rows;
	int			n;
	int64		last_examined;

	if (evbus_inflight_count() > 0)
		return;
	if (!evbus_solo_take_next(&id, &keyhash))
	{
		claim_revisits();
		return;
	}
	n = evbus_outbox_claim_ids(&id, 1, evbus_claim_budget(), &rows, batch_cxt,
							   &last_examined);
	if (n == 0)
	{
		evbus_key_forget_gone(keyhash, id);
		return;
	}
	flush_behind_claim();
	if (produce_row(&rows[0], timestamptz_to_str(GetCurrentTimestamp()), true) != PRODUCED)
		evbus_solo_add(id, keyhash);
}

/*
 * serve_reports --- serve librdkafka's callbacks (delivery reports); a key
 * whose later events waited for its first to be confirmed (publish_keys.c)
 * asks for a claim, which produces them after the linger.
 */
static void
serve_reports(void)
{
	evbus_producer_serve(evbus_pubproducer());
	if (evbus_keys_take_opened())
		evbus_pacing_request_claim();
}

/*
 * evbus_publisher_init --- set up state for this worker's database.
 */
void
evbus_publisher_init(const char *database_name)
{
	strlcpy(source_name, database_name, sizeof(source_name));
	publisher_cxt = AllocSetContextCreate(TopMemoryContext, "evbus publisher",
										  ALLOCSET_DEFAULT_SIZES);
	batch_cxt = AllocSetContextCreate(publisher_cxt, "evbus publisher batch",
									  ALLOCSET_DEFAULT_SIZES);
	evbus_reports_init(publisher_cxt);
	evbus_keys_init(publisher_cxt);
	evbus_cursor_init(publisher_cxt);
	evbus_publish_pauses_watch();
}

/*
 * claim --- the claims of a step, inside its transaction: the events to
 * produce alone, or the remembered ids and the rows past the cursor; then
 * a page of the sweep.  Returns true when more rows are waiting.
 */
static bool
claim(TimestampTz now)
{
	bool		more = false;
	bool		full = false;	/* rows past the cursor wait */
	bool		revisited = true;	/* every remembered id was looked up */
	int			limit = Min(evbus_batch_size,
							evbus_inflight_max() - evbus_inflight_count());

	evbus_inflight_step_begin();
	step_passed = 0;

	/*
	 * Neither the remembered ids nor the rows past the cursor can be events
	 * delivered but not yet recorded; a sweep page can, so the reports are
	 * recorded before one.
	 */
	pgstat_report_activity(STATE_RUNNING, "publishing");
	MemoryContextReset(batch_cxt);
	/* the claims read as of one moment (outbox_scan.c) */
	evbus_outbox_claims_begin();
	if (evbus_solo_count() > 0)
		produce_solo();
	else if ((revisited = claim_revisits()))
	{
		full = claim_forward(limit);

		/*
		 * A full claim whose every row was held back (each key waits for an
		 * event of it to be confirmed) is not followed at once: the keys ask
		 * for a claim when they are free (serve_reports), and the publisher
		 * does not read on and on only to hold rows back.
		 */
		more = full && step_passed > 0;
	}
	else
	{
		/* the rest of the revisits first: at once if these went out */
		more = step_passed > 0;
	}
	if (!full && revisited && evbus_solo_count() == 0)
		evbus_cursor_start_sweep(now);
	if (revisited && evbus_cursor_sweeping() && evbus_solo_count() == 0 &&
		evbus_inflight_count() < evbus_inflight_max() &&
		evbus_claim_budget() > 0)
	{
		evbus_reports_finish();
		claim_sweep(Min(evbus_batch_size,
						evbus_inflight_max() - evbus_inflight_count()));
		more = more || evbus_cursor_sweeping();
	}
	evbus_outbox_claims_end();
	MemoryContextReset(batch_cxt);
	evbus_pacing_claimed(now, more, step_passed);
	return more;
}

/*
 * evbus_publisher_step --- one pass: delivery reports, then in one
 * transaction their recording (when due) and the claims, then maintenance.
 *
 * claim_wanted: something other than delivery reports woke the worker (a
 * staging commit, the poll timer).  Returns true when more work is
 * waiting right now (do not sleep).
 */
bool
evbus_publisher_step(bool claim_wanted)
{
	bool		more = false;
	bool		claiming;
	bool		finishing;
	TimestampTz now;
	TimestampTz since;
	int			nunrecorded;

	evbus_pubproducer_sync();
	now = GetCurrentTimestamp();
	if (evbus_pubproducer() != NULL)
	{
		serve_reports();
		evbus_pacing_served(now);
	}

	if (claim_wanted || evbus_worker_wake_pending())
		evbus_pacing_request_claim();
	claiming = evbus_pubproducer() != NULL && evbus_inflight_room() &&
		evbus_pacing_claim_due(now);
	nunrecorded = evbus_reports_unrecorded(&since);
	finishing = evbus_pacing_finish_due(nunrecorded, since,
										evbus_pubproducer() != NULL, now);
	if (claiming || finishing)
	{
		if (claiming)
			evbus_worker_wake_consumed();
		deferring = claiming && evbus_standby_wait_enabled();
		evbus_worker_begin(evbus_publisher_shutdown);
		evbus_outbox_published_load();
		/* a resumed event's staged events are swept first, in id order */
		if (evbus_publish_pauses_refresh())
			evbus_cursor_sweep_first();
		if (finishing)
			evbus_reports_finish();
		if (claiming)
			more = claim(now);
		/* past the commit of every row the claims saw */
		if (deferring)
			send_after = evbus_standby_wait_target();
		evbus_worker_commit();
		deferring = false;
		send_deferred();
		if (evbus_stopping())
			return false;		/* the wait ended for it: leave now */
		if (evbus_pubproducer() != NULL)
			serve_reports();
	}

	if (TimestampDifferenceExceeds(last_maintain, now, 1000))
	{
		pgstat_report_activity(STATE_RUNNING, "maintaining the outbox");
		evbus_outbox_maintain(evbus_reports_holds, evbus_publisher_shutdown);
		evbus_keys_prune(now);
		last_maintain = now;
	}
	if (TimestampDifferenceExceeds(last_metrics, now, metrics_interval_ms))
	{
		TimestampTz started = GetCurrentTimestamp();
		TimestampTz counted;
		int64		depth;
		TimestampTz oldest;

		pgstat_report_activity(STATE_RUNNING, "counting the outbox");
		evbus_worker_begin(evbus_publisher_shutdown);
		evbus_outbox_published_load();
		evbus_outbox_depth(&depth, &oldest);
		evbus_worker_commit();
		evbus_metrics_set_outbox(depth, oldest);
		counted = GetCurrentTimestamp();
		metrics_interval_ms = Max(METRICS_INTERVAL_MS,
								  20 * (long) ((counted - started) / 1000));
		last_metrics = counted;
	}
	pgstat_report_activity(STATE_IDLE, NULL);
	return more && evbus_inflight_room();
}

/* What an error while the worker records at its exit means. */
static void
leave_context(void *arg)
{
	errcontext("recording the events Kafka acknowledged before the publisher exits; those not recorded are published again at its next start");
}

/*
 * evbus_publisher_leave --- before the worker exits on a termination
 * request (a server shutdown or restart; DROP, RENAME or a copy of the
 * database; pg_terminate_backend): wait up to LEAVE_FLUSH_MS for the
 * delivery reports of the events in flight, and record every event Kafka
 * acknowledged, so that the next start does not publish it again (test
 * 235_publisher_stop.pl), whether the request came while it waited or
 * cancelled a step, whose transaction may have been recording them.
 * Events still unacknowledged stay in the outbox.  Outside a transaction.
 */
void
evbus_publisher_leave(void)
{
	EvbusProducer *producer = evbus_pubproducer();
	TimestampTz since;
	ErrorContextCallback context;

	if (producer != NULL && !evbus_producer_failed(producer))
	{
		(void) evbus_producer_flush(producer, LEAVE_FLUSH_MS);
		serve_reports();
	}
	if (evbus_reports_unrecorded(&since) == 0)
		return;
	pgstat_report_activity(STATE_RUNNING, "recording deliveries before exit");
	context.callback = leave_context;
	context.arg = NULL;
	context.previous = error_context_stack;
	error_context_stack = &context;
	evbus_worker_begin(evbus_publisher_shutdown);
	(void) set_config_option("lock_timeout", LEAVE_LOCK_TIMEOUT, PGC_SUSET,
							 PGC_S_SESSION, GUC_ACTION_LOCAL, true, 0, false);
	(void) set_config_option("statement_timeout", LEAVE_STATEMENT_TIMEOUT, PGC_SUSET,
							 PGC_S_SESSION, GUC_ACTION_LOCAL, true, 0, false);

	/*
	 * Nor does the commit wait for a synchronous standby, which may be gone:
	 * a recording lost in a failover only publishes those events again.
	 */
	(void) set_config_option("synchronous_commit", "local", PGC_SUSET,
							 PGC_S_SESSION, GUC_ACTION_LOCAL, true, 0, false);
	evbus_outbox_published_load();
	evbus_reports_finish();
	evbus_worker_commit();
	error_context_stack = context.previous;
}

/*
 * reports_urgent --- must the worker wake as soon as delivery reports
 * arrive?  Only when it waits for them: with the most events or bytes in
 * flight it may have (back-pressure), during a backlog (each report frees
 * room for the next claim), or while an event refused in a batch waits for
 * the others to be acknowledged before it is produced alone.  Otherwise
 * they are served every REPORT_POLL_MS (publish_pacing.c), and at every
 * step.
 */
static bool
reports_urgent(void)
{
	return !evbus_inflight_room() || evbus_pacing_backlog() ||
		evbus_solo_count() > 0;
}

/*
 * evbus_publisher_wait_ms --- how long the worker may sleep: the poll
 * interval, or less while a claim lingers, events are in flight or
 * delivery reports wait to be recorded.
 */
long
evbus_publisher_wait_ms(void)
{
	TimestampTz since;
	int			nunrecorded = evbus_reports_unrecorded(&since);

	return evbus_pacing_wait_ms(evbus_inflight_count() > 0,
								evbus_pubproducer() != NULL,
								nunrecorded, since);
}

/*
 * The producer's wake-up descriptor while delivery reports are urgent,
 * or -1 (not publishing, or the reports can wait for the next step).
 */
int
evbus_publisher_wakeup_fd(void)
{
	EvbusProducer *producer = evbus_pubproducer();

	return producer && reports_urgent() ? evbus_producer_wakeup_fd(producer) : -1;
}

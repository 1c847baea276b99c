/*-------------------------------------------------------------------------
 *
 * publisher.c
 *	  Publishing: outbox -> Kafka, one step of the worker's loop at a time.
 *
 * A step serves librdkafka's delivery reports, then, in one short
 * transaction, records them (outbox.c "finish"), claims more events and
 * produces them.  At a trickle the steps are made to carry several events
 * each: a commit that wakes the worker within evbus.publish_linger of the
 * last claim waits for the end of that interval (at most one claim per
 * interval; evbus.publish_linger_busy while the CPUs are contended, see
 * cpu_pressure.c); a step woken only by delivery reports claims nothing; and
 * delivery reports are served every REPORT_POLL_MS unless the worker
 * waits for them, and recorded FINISH_DELAY_MS after the first of them was
 * served (or before a sweep reads the outbox), in the transaction of
 * whatever step comes then, so that one recording covers many reports.
 * While claims linger longer than those intervals, both wait as long as a
 * claim: then one step, one transaction, serves the reports, records
 * them and claims (report_poll_ms, finish_delay_ms).
 * The flow of one event:
 *
 *	staged (row in the outbox)
 *	  -> claimed and produced: in flight, remembered in `inflight`
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
 * Which rows to claim.  Rows are read in id order from a cursor just past
 * the highest id seen.  Commit order is not id order: a row below the
 * cursor may commit later.  So every id skipped over by the cursor (a
 * "hole": a rolled back or still running transaction, or an event not
 * due yet) is remembered for a while and looked up again, and when the
 * cursor has reached the end, a sweep from the lowest id finds whatever
 * is left.  No event is ever given up on: the outbox row, not librdkafka's
 * memory, is the truth, and it goes only on PERSISTED.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/hashfn.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/ipc.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "evbus.h"
#include "kafka.h"
#include "outbox.h"
#include "publisher.h"

/*
 * How long delivery reports wait to be recorded together (their rows stay
 * in the outbox meanwhile; a crash then publishes them again, with the
 * same message ids, as losing the worker's asynchronous commit would).
 */
#define FINISH_DELAY_MS 20

/*
 * How often delivery reports are served while nothing needs them at once.
 * librdkafka queues a report per produce request (one per partition and
 * claim); waking for each would cost the worker a wake-up and a step
 * several times per claim, and take the CPU from staging transactions at
 * every one.  They are needed at once only when the worker waits for them
 * (see reports_urgent).
 */
#define REPORT_POLL_MS 10

/* How long a hole is looked up by id before only sweeps look for it. */
#define HOLE_TIMEOUT_MS 10000
#define MAX_REVISITS 100000
#define MAX_HOLE_RUN 1000

/* A produced event waiting for its delivery report. */
typedef struct InflightMsg
{
	int64		id;				/* hash key */
	int			table;			/* evbus.outbox_<table> holds it */
	uint64		keyhash;
	char	   *integration_event;
	int			bytes;			/* payload bytes librdkafka holds for it */
	bool		solo;			/* produced alone, to isolate an error */
} InflightMsg;

/* Entry of `inflight`: the message librdkafka holds, by event id. */
typedef struct InflightEntry
{
	int64		id;				/* hash key */
	InflightMsg *msg;
} InflightEntry;

/*
 * An event refused with a permanent error while it shared a record batch
 * with others.  The broker refuses whole batches ("message too large" for
 * a compressed batch), so the error may belong to a neighbour: each such
 * event is produced again alone, and only an event refused alone is
 * dead-lettered.
 */
typedef struct SoloEvent
{
	int64		id;
	uint64		keyhash;
} SoloEvent;

/* Per-key state: how many in flight, and whether the key is blocked. */
typedef struct KeyState
{
	uint64		keyhash;		/* hash key */
	int			inflight;
	int			failed;			/* events of this key awaiting re-produce */
	int64		blocking_id;	/* lowest failed id; 0 if not blocked */
} KeyState;

/* An id to look up again: a hole, or a known row held back. */
typedef struct Revisit
{
	int64		id;				/* hash key */
	TimestampTz since;
	bool		failed;			/* a failed delivery: never expires */
	uint64		keyhash;
} Revisit;

static EvbusProducer *producer = NULL;
static char current_brokers[1024] = "";
static int	config_generation = 1;	/* bumped by each reload */
static int	failed_generation = 0;	/* when the producer last failed */
static int	checked_generation = 1;	/* the producer's settings last compared */
static uint64 producer_fingerprint = 0; /* evbus_kafka_conf_fingerprint */
static TimestampTz failed_at = 0;
static char source_name[NAMEDATALEN];

static MemoryContext publisher_cxt = NULL;	/* lives as long as the worker */
static MemoryContext batch_cxt = NULL;	/* one claim */
static HTAB *inflight = NULL;
static HTAB *unrecorded = NULL;	/* delivered or dead, not yet finished */
static HTAB *keys = NULL;
static HTAB *revisits = NULL;
static int	ninflight = 0;
static int64 inflight_bytes = 0;	/* payload bytes of the messages in flight */
static int64 step_budget = 0;	/* payload bytes the step may put in flight */
static int64 step_inflight_start = 0;	/* inflight_bytes when the step began */
static SoloEvent *solo = NULL;	/* sorted by id */
static int	nsolo = 0;
static int	solo_cap = 0;

static int64 max_seen = 0;		/* highest id ever claimed */
static int64 sweep_from = -1;	/* next id of the running sweep, -1: none */
static TimestampTz last_sweep = 0;
static TimestampTz last_maintain = 0;
static bool backlog = true;		/* the last claim left rows to claim */
static bool claim_requested = true;	/* a commit (or the timer) asked for one */
static TimestampTz last_claim_at = 0;

/* Results of delivery reports, recorded by the next finish. */
static int64 *done_ids = NULL;
static int *done_tables = NULL;
static char **done_events = NULL;
static int	ndone = 0;
static int	done_cap = 0;
static DeadEvent *dead = NULL;
static int	ndead = 0;
static int	dead_cap = 0;
static TimestampTz first_report_at = 0;	/* of the oldest unrecorded report */
static TimestampTz last_served_at = 0;	/* delivery reports last served */

static int
max_inflight(void)
{
	return Max(evbus_batch_size * 10, 1000);
}

/*
 * max_inflight_bytes --- the most payload bytes in flight (librdkafka holds
 * a copy of each until its delivery report): twice evbus.batch_max_bytes,
 * so that one claim is produced while the one before is being delivered.
 * With a claim bounded by evbus.batch_max_bytes too, and each claimed
 * payload freed once produced, the worker's memory is bounded by bytes,
 * not by rows times payload size: 400 events of 0.9 MB once took it to
 * 1.7 GB, and a backlog of large events at the default batch_size got it
 * killed for memory (test 254_publisher_memory.pl).
 */
static int64
max_inflight_bytes(void)
{
	return (int64) evbus_batch_max_bytes * 2;
}

/*
 * claim_budget --- payload bytes the step's claims may still read: what
 * the step may put in flight less what it has.  Rows held back (their key
 * waits) are read but not put in flight, so they do not use the budget up
 * and keep other keys from being claimed; their payloads are freed as
 * soon as they are looked at (release_payload).
 */
static int64
claim_budget(void)
{
	return step_budget - (inflight_bytes - step_inflight_start);
}

/* Payload bytes of claimed rows. */
static int64
rows_bytes(const OutboxRow *rows, int n)
{
	int64		bytes = 0;

	for (int i = 0; i < n; i++)
		bytes += rows[i].payload_len;
	return bytes;
}

/* Is there room for more events in flight, by count and by bytes? */
static bool
inflight_room(void)
{
	return ninflight < max_inflight() && inflight_bytes < max_inflight_bytes();
}

static uint64
key_hash(const OutboxRow *row)
{
	if (row->key == NULL)
		return hash_bytes_extended((const unsigned char *) &row->message_id,
								   sizeof(pg_uuid_t), 1);
	return hash_bytes_extended((const unsigned char *) row->key,
							   strlen(row->key), 0);
}

static KeyState *
key_state(uint64 keyhash, bool create)
{
	bool		found;
	KeyState   *ks = hash_search(keys, &keyhash, create ? HASH_ENTER : HASH_FIND,
								 &found);

	if (create && !found)
	{
		ks->inflight = 0;
		ks->failed = 0;
		ks->blocking_id = 0;
	}
	return ks;
}

static void
key_state_release(KeyState *ks)
{
	if (ks->inflight == 0 && ks->failed == 0)
		hash_search(keys, &ks->keyhash, HASH_REMOVE, NULL);
}

static void
add_revisit(int64 id, bool failed, uint64 keyhash)
{
	bool		found;
	Revisit    *rv;

	if (!failed && hash_get_num_entries(revisits) >= MAX_REVISITS)
		return;					/* the sweep will find it */
	rv = hash_search(revisits, &id, HASH_ENTER, &found);
	if (!found || !rv->failed)
		rv->since = GetCurrentTimestamp();
	if (!found || failed)
	{
		rv->failed = failed;
		rv->keyhash = keyhash;
	}
}

/* The lowest failed id of a key still to be produced again, or 0. */
static int64
next_failed_id(uint64 keyhash)
{
	HASH_SEQ_STATUS status;
	Revisit    *rv;
	int64		lowest = 0;

	hash_seq_init(&status, revisits);
	while ((rv = hash_seq_search(&status)) != NULL)
	{
		if (rv->failed && rv->keyhash == keyhash &&
			(lowest == 0 || rv->id < lowest))
			lowest = rv->id;
	}
	for (int i = 0; i < nsolo; i++)
		if (solo[i].keyhash == keyhash && (lowest == 0 || solo[i].id < lowest))
			lowest = solo[i].id;
	return lowest;
}

/*
 * key_block --- event id of the key failed and must be produced again:
 * the key's later events wait until it is confirmed (per-key order).
 */
static void
key_block(KeyState *ks, int64 id)
{
	if (ks->blocking_id != id)
		ks->failed++;
	if (ks->blocking_id == 0 || id < ks->blocking_id)
		ks->blocking_id = id;
}

/*
 * key_unblock --- event id of the key is done with (published, or dead):
 * if it held the key back, the key's next failed event, if any, does now.
 * The event must no longer be among the revisits or the solo events.
 */
static void
key_unblock(KeyState *ks, int64 id)
{
	if (ks->blocking_id == id)
	{
		ks->failed--;
		ks->blocking_id = ks->failed > 0 ? next_failed_id(ks->keyhash) : 0;
	}
}

/*
 * key_forget_gone --- event id of a key failed, and its row is gone from
 * the outbox (deleted by hand): it holds the key back no longer.  The
 * event must no longer be among the revisits or the solo events.
 */
static void
key_forget_gone(uint64 keyhash, int64 id)
{
	KeyState   *ks = key_state(keyhash, false);

	elog(LOG, "evbus: event %lld is no longer in the outbox; it holds its key back no longer",
		 (long long) id);
	if (ks == NULL)
		return;
	if (ks->blocking_id == id)
		key_unblock(ks, id);
	else if (ks->failed > 0)
		ks->failed--;
	key_state_release(ks);
}

static void
solo_add(int64 id, uint64 keyhash)
{
	int			i;

	for (i = 0; i < nsolo; i++)
		if (solo[i].id == id)
			return;
	if (nsolo == solo_cap)
	{
		solo_cap = Max(solo_cap * 2, 16);
		solo = solo ? repalloc(solo, sizeof(SoloEvent) * solo_cap) :
			MemoryContextAlloc(publisher_cxt, sizeof(SoloEvent) * solo_cap);
	}
	for (i = nsolo; i > 0 && solo[i - 1].id > id; i--)
		solo[i] = solo[i - 1];
	solo[i].id = id;
	solo[i].keyhash = keyhash;
	nsolo++;
}

static void
solo_remove(int64 id)
{
	int			i;

	for (i = 0; i < nsolo; i++)
	{
		if (solo[i].id == id)
		{
			memmove(&solo[i], &solo[i + 1], sizeof(SoloEvent) * (nsolo - i - 1));
			nsolo--;
			return;
		}
	}
}

static void
record_done(InflightMsg *msg)
{
	if (ndone == done_cap)
	{
		done_cap = Max(done_cap * 2, 1024);
		done_ids = repalloc(done_ids, sizeof(int64) * done_cap);
		done_tables = repalloc(done_tables, sizeof(int) * done_cap);
		done_events = repalloc(done_events, sizeof(char *) * done_cap);
	}
	if (ndone == 0 && ndead == 0)
		first_report_at = GetCurrentTimestamp();
	done_ids[ndone] = msg->id;
	done_tables[ndone] = msg->table;
	done_events[ndone] = msg->integration_event;
	ndone++;
	hash_search(unrecorded, &msg->id, HASH_ENTER, NULL);
}

static void
record_dead(int64 id, int table, rd_kafka_resp_err_t err)
{
	MemoryContext old = MemoryContextSwitchTo(publisher_cxt);

	if (ndead == dead_cap)
	{
		dead_cap = Max(dead_cap * 2, 16);
		dead = repalloc(dead, sizeof(DeadEvent) * dead_cap);
	}
	if (ndone == 0 && ndead == 0)
		first_report_at = GetCurrentTimestamp();
	hash_search(unrecorded, &id, HASH_ENTER, NULL);
	dead[ndead].id = id;
	dead[ndead].table = table;
	dead[ndead].error_code = rd_kafka_err2name(err);
	dead[ndead].error_message = pstrdup(rd_kafka_err2str(err));
	ndead++;
	MemoryContextSwitchTo(old);
}

/*
 * on_delivery --- a delivery report, from evbus_producer_serve.
 */
static void
on_delivery(void *opaque, rd_kafka_resp_err_t err, rd_kafka_msg_status_t status,
			int32 partition, int64 offset)
{
	InflightMsg *msg = (InflightMsg *) opaque;
	KeyState   *ks = key_state(msg->keyhash, true);

	hash_search(inflight, &msg->id, HASH_REMOVE, NULL);
	ninflight--;
	inflight_bytes -= msg->bytes;
	ks->inflight--;

	if (err == RD_KAFKA_RESP_ERR_NO_ERROR && status == RD_KAFKA_MSG_STATUS_PERSISTED)
	{
		record_done(msg);
		key_unblock(ks, msg->id);
	}
	else if (err != RD_KAFKA_RESP_ERR_NO_ERROR && evbus_kafka_error_is_permanent(err) &&
			 !msg->solo)
	{
		/* maybe a neighbour's fault: produce it again, alone */
		key_block(ks, msg->id);
		solo_add(msg->id, msg->keyhash);
		elog(DEBUG1, "evbus: event %lld refused in a batch (%s), producing it alone",
			 (long long) msg->id, rd_kafka_err2name(err));
	}
	else if (err != RD_KAFKA_RESP_ERR_NO_ERROR && evbus_kafka_error_is_permanent(err))
	{
		ereport(WARNING,
				(errmsg("evbus: event %lld of \"%s\" cannot be published: %s",
						(long long) msg->id, msg->integration_event,
						rd_kafka_err2str(err)),
				 errdetail("The event is moved to evbus.dead_letters.")));
		record_dead(msg->id, msg->table, err);
		key_unblock(ks, msg->id);
	}
	else
	{
		/* not confirmed: produce it again, and hold its key back till then */
		key_block(ks, msg->id);
		if (msg->solo)
			solo_add(msg->id, msg->keyhash);
		else
			add_revisit(msg->id, true, msg->keyhash);
		elog(DEBUG1, "evbus: delivery of event %lld not confirmed (%s), will produce it again",
			 (long long) msg->id, rd_kafka_err2name(err));
	}
	key_state_release(ks);
	/* integration_event stays referenced by done_events until finish */
	if (!(err == RD_KAFKA_RESP_ERR_NO_ERROR && status == RD_KAFKA_MSG_STATUS_PERSISTED))
		pfree(msg->integration_event);
	pfree(msg);
}

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

typedef enum ProduceResult
{
	PRODUCED,
	HELD_BACK,					/* key blocked, or back-pressure: revisit */
	QUEUE_FULL
} ProduceResult;

/*
 * produce_row --- produce one claimed row, unless it is in flight already
 * or its key is held back by an unconfirmed earlier event.
 */
static ProduceResult
produce_row(const OutboxRow *row, const char *sent, bool alone)
{
	uint64		keyhash = key_hash(row);
	KeyState   *ks;
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
	if (evbus_publisher_holds(row->id))
	{
		hash_search(revisits, &row->id, HASH_REMOVE, NULL);
		return PRODUCED;
	}

	ks = key_state(keyhash, false);
	if (ks && ks->blocking_id != 0 &&
		(ks->blocking_id != row->id || ks->inflight > 0))
	{
		add_revisit(row->id, false, keyhash);
		return HELD_BACK;
	}

	message_id = evbus_uuid_to_cstring(&row->message_id);
	snprintf(topic, sizeof(topic), "%s%s", evbus_topic_prefix, row->integration_event);
	headers = build_headers(row, message_id, sent);

	msg = MemoryContextAlloc(publisher_cxt, sizeof(InflightMsg));
	msg->id = row->id;
	msg->table = row->table;
	msg->keyhash = keyhash;
	msg->integration_event = MemoryContextStrdup(publisher_cxt, row->integration_event);
	msg->bytes = row->payload_len;
	msg->solo = alone;

	err = evbus_producer_send(producer, topic,
							  row->key ? row->key : message_id,
							  strlen(row->key ? row->key : message_id),
							  row->payload, row->payload_len,
							  headers, msg);
	pfree(message_id);
	if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
	{
		rd_kafka_headers_destroy(headers);
		pfree(msg->integration_event);
		pfree(msg);
		if (err == RD_KAFKA_RESP_ERR__QUEUE_FULL)
		{
			add_revisit(row->id, false, keyhash);
			return QUEUE_FULL;
		}
		/*
		 * Refused before it was queued (librdkafka may know the topic to be
		 * unauthorized already, say): the same as the same error in a
		 * delivery report, and the key is released or held back alike.
		 */
		ks = key_state(keyhash, true);
		if (evbus_kafka_error_is_permanent(err))
		{
			ereport(WARNING,
					(errmsg("evbus: event %lld of \"%s\" cannot be published: %s",
							(long long) row->id, row->integration_event,
							rd_kafka_err2str(err)),
					 errdetail("The event is moved to evbus.dead_letters.")));
			record_dead(row->id, row->table, err);
			hash_search(revisits, &row->id, HASH_REMOVE, NULL);
			key_unblock(ks, row->id);
			key_state_release(ks);
			return PRODUCED;
		}
		key_block(ks, row->id);
		add_revisit(row->id, true, keyhash);
		elog(DEBUG1, "evbus: event %lld refused before it was queued (%s), will produce it again",
			 (long long) row->id, rd_kafka_err2name(err));
		return HELD_BACK;
	}

	((InflightEntry *) hash_search(inflight, &row->id, HASH_ENTER, NULL))->msg = msg;
	ninflight++;
	inflight_bytes += msg->bytes;
	ks = key_state(keyhash, true);
	ks->inflight++;
	hash_search(revisits, &row->id, HASH_REMOVE, NULL);
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

/* Produce claimed rows in order; false on back-pressure. */
static bool
produce_rows(OutboxRow *rows, int n)
{
	int			i;
	/* cap-senttime: when this batch was handed to the producer */
	const char *sent = n > 0 ? timestamptz_to_str(GetCurrentTimestamp()) : NULL;

	for (i = 0; i < n; i++)
	{
		ProduceResult result = produce_row(&rows[i], sent, false);

		release_payload(&rows[i]);
		if (result == QUEUE_FULL)
		{
			for (i++; i < n; i++)
			{
				add_revisit(rows[i].id, false, key_hash(&rows[i]));
				release_payload(&rows[i]);
			}
			return false;
		}
	}
	return true;
}

/* Is id among rows (in id order)? */
static bool
rows_have(const OutboxRow *rows, int n, int64 id)
{
	int			low = 0;
	int			high = n - 1;

	while (low <= high)
	{
		int			mid = low + (high - low) / 2;

		if (rows[mid].id == id)
			return true;
		if (rows[mid].id < id)
			low = mid + 1;
		else
			high = mid - 1;
	}
	return false;
}

/*
 * forget_vanished --- events that failed (they were due rows then) and that
 * a claim of their ids did not find (rows, in id order) were deleted by
 * hand: they hold their keys back no longer.  Ids above last_examined
 * were not looked up (the claim was full) and are left alone.
 */
static void
forget_vanished(int64 *ids, int nids, OutboxRow *rows, int n,
				int64 last_examined)
{
	int			i;

	for (i = 0; i < nids; i++)
	{
		Revisit    *rv = hash_search(revisits, &ids[i], HASH_FIND, NULL);
		uint64		keyhash;

		if (rv == NULL || !rv->failed || ids[i] > last_examined ||
			rows_have(rows, n, ids[i]))
			continue;
		keyhash = rv->keyhash;
		hash_search(revisits, &ids[i], HASH_REMOVE, NULL);
		key_forget_gone(keyhash, ids[i]);
	}
}

/* Look up remembered ids again; holes expire after HOLE_TIMEOUT_MS. */
static void
claim_revisits(void)
{
	HASH_SEQ_STATUS status;
	Revisit    *rv;
	int64	   *ids;
	int			nids = 0;
	TimestampTz now = GetCurrentTimestamp();
	OutboxRow  *rows;
	int			n;
	int64		last_examined;

	if (hash_get_num_entries(revisits) == 0 || claim_budget() <= 0)
		return;
	ids = MemoryContextAlloc(batch_cxt, sizeof(int64) * hash_get_num_entries(revisits));
	hash_seq_init(&status, revisits);
	while ((rv = hash_seq_search(&status)) != NULL)
	{
		if (!rv->failed &&
			TimestampDifferenceExceeds(rv->since, now, HOLE_TIMEOUT_MS))
			hash_search(revisits, &rv->id, HASH_REMOVE, NULL);
		else
			ids[nids++] = rv->id;
	}
	if (nids == 0)
		return;

	n = evbus_outbox_claim_ids(ids, nids, claim_budget(), &rows, batch_cxt,
							   &last_examined);
	forget_vanished(ids, nids, rows, n, last_examined);

	/*
	 * A row produced leaves the revisits (produce_row); one held back
	 * stays, and an event that failed stays one that failed, which its
	 * key's next blocker is looked up among (next_failed_id).  Ids that
	 * are not (or no longer) due rows stay until they expire.
	 */
	produce_rows(rows, n);
}

/*
 * claim_forward --- the next rows past max_seen; returns true if the
 * batch was full (more rows are waiting).
 */
static bool
claim_forward(int limit)
{
	OutboxRow  *rows;
	int			n;
	int			i;
	int64		expected = max_seen + 1;
	int64		max_bytes = claim_budget();
	bool		full;

	if (max_bytes <= 0)
		return true;			/* the remembered ids took the step's bytes */
	n = evbus_outbox_claim_range(max_seen + 1, limit, max_bytes, &rows,
								 batch_cxt);
	full = n == limit || rows_bytes(rows, n) >= max_bytes;

	for (i = 0; i < n; i++)
	{
		int64		hole;

		/*
		 * Ids skipped over may still commit: remember them for a while.  A
		 * huge gap (a big rolled back transaction) is left to the sweep, as
		 * is everything below the first id this worker sees.  Ids skipped
		 * because they are done with (after a restart) are no holes.
		 */
		if (max_seen > 0 && rows[i].id - expected <= MAX_HOLE_RUN)
			for (hole = expected; hole < rows[i].id; hole++)
				if (!evbus_outbox_published_covers(0, hole, NULL) &&
					!evbus_outbox_published_covers(1, hole, NULL))
					add_revisit(hole, false, 0);
		expected = rows[i].id + 1;
		max_seen = rows[i].id;
	}
	produce_rows(rows, n);
	return full;
}

/* One page of the sweep that finds whatever the cursor left behind. */
static void
claim_sweep(int limit)
{
	OutboxRow  *rows;
	int			n;
	int64		max_bytes = claim_budget();
	bool		full;

	n = evbus_outbox_claim_range(sweep_from, limit, max_bytes, &rows,
								 batch_cxt);
	full = n == limit || rows_bytes(rows, n) >= max_bytes;

	/*
	 * Produce the page first: a short page is the sweep's last, not one to
	 * skip (a page cut short by its bytes is not short).  The forward
	 * cursor stays where it is, so the forward scan still notes the holes
	 * of this range.
	 */
	if (!produce_rows(rows, n) || !full)
		sweep_from = -1;		/* done (or resumed by the next sweep) */
	else
		sweep_from = rows[n - 1].id + 1;
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
	int			i;

	if (ninflight > 0)
		return;
	for (i = 0; i < nsolo; i++)
	{
		KeyState   *ks = key_state(solo[i].keyhash, false);

		if (ks == NULL || ks->blocking_id == 0 || ks->blocking_id == solo[i].id)
		{
			/* copies: solo_remove moves the entries after solo[i] down */
			int64		id = solo[i].id;
			uint64		keyhash = solo[i].keyhash;
			OutboxRow  *rows;
			int			n;
			int64		last_examined;

			n = evbus_outbox_claim_ids(&id, 1, claim_budget(), &rows, batch_cxt,
									   &last_examined);
			solo_remove(id);
			if (n == 0)
				key_forget_gone(keyhash, id);
			else if (n == 1 &&
					 produce_row(&rows[0], timestamptz_to_str(GetCurrentTimestamp()), true) != PRODUCED)
				solo_add(id, keyhash);
			return;
		}
	}
	claim_revisits();
}

/* Record delivery results in the database (inside the step's transaction). */
static void
finish_deliveries(void)
{
	int			i;

	if (ndone == 0 && ndead == 0)
		return;
	pgstat_report_activity(STATE_RUNNING, "recording deliveries");
	evbus_outbox_finish(done_ids, done_tables, done_events, ndone, dead, ndead);
	for (i = 0; i < ndone; i++)
	{
		hash_search(unrecorded, &done_ids[i], HASH_REMOVE, NULL);
		pfree(done_events[i]);
	}
	for (i = 0; i < ndead; i++)
	{
		hash_search(unrecorded, &dead[i].id, HASH_REMOVE, NULL);
		pfree(dead[i].error_message);
	}
	ndone = 0;
	ndead = 0;
}

/*
 * evbus_publisher_holds --- is the event of id in flight, or delivered
 * (or dead) and not yet recorded?  Then its row must stay where it is.
 */
bool
evbus_publisher_holds(int64 id)
{
	bool		found;

	hash_search(inflight, &id, HASH_FIND, &found);
	if (!found)
		hash_search(unrecorded, &id, HASH_FIND, &found);
	return found;
}

/*
 * forget_unreported --- after the producer was destroyed: events it never
 * reported on count as not confirmed, as if purged.  Its purge does not
 * wait for librdkafka's broker threads, so some purge reports may come too
 * late to be served before the handle goes; their events must not stay
 * "in flight" for ever (they would never be produced again, and a refused
 * event waiting to go alone would wait for them).
 */
static void
forget_unreported(void)
{
	HASH_SEQ_STATUS status;
	InflightEntry *entry;
	long		n = hash_get_num_entries(inflight);

	if (n == 0)
		return;
	ereport(LOG,
			(errmsg("evbus: %ld events were not reported on by the closed producer; they are produced again", n)));
	hash_seq_init(&status, inflight);
	while ((entry = hash_seq_search(&status)) != NULL)
		on_delivery(entry->msg, RD_KAFKA_RESP_ERR__PURGE_INFLIGHT,
					RD_KAFKA_MSG_STATUS_POSSIBLY_PERSISTED, -1, -1);
}

/*
 * Has a configuration reload changed what the producer was built from
 * (the file of evbus.kafka_config_file: a new password, say)?  Compared
 * once per reload.
 */
static bool
producer_settings_changed(const char *brokers)
{
	if (checked_generation == config_generation)
		return false;
	checked_generation = config_generation;
	return evbus_kafka_conf_fingerprint(brokers) != producer_fingerprint;
}

/*
 * (Re)create the producer when the brokers or its settings changed, or
 * after a fatal error.
 */
static void
sync_producer(void)
{
	char		buf[1024];
	const char *brokers = evbus_resolve_brokers(buf, sizeof(buf));

	if (producer != NULL &&
		(evbus_producer_failed(producer) || brokers == NULL ||
		 strcmp(brokers, current_brokers) != 0 ||
		 producer_settings_changed(brokers)))
	{
		ereport(LOG,
				(errmsg("evbus: closing the Kafka producer for %s", current_brokers)));
		evbus_producer_destroy(producer);	/* reports purges: keys blocked */
		producer = NULL;
		current_brokers[0] = '\0';
		forget_unreported();

		/*
		 * Reports served so far are recorded by the next step's finish, in
		 * its transaction (there is none here); until then `unrecorded`
		 * keeps their events from being produced again.
		 */
	}
	if (producer == NULL && brokers != NULL &&
		(config_generation != failed_generation ||
		 TimestampDifferenceExceeds(failed_at, GetCurrentTimestamp(), 30000)))
	{
		MemoryContext cxt = CurrentMemoryContext;

		/*
		 * A bad evbus.kafka_config_file must not crash-loop the worker: the
		 * error is logged, events wait in the outbox, and the producer is
		 * tried again after the next reload (or 30 s).
		 */
		PG_TRY();
		{
			producer_fingerprint = evbus_kafka_conf_fingerprint(brokers);
			checked_generation = config_generation;
			producer = evbus_producer_create(brokers, on_delivery);
			strlcpy(current_brokers, brokers, sizeof(current_brokers));
			ereport(LOG,
					(errmsg("evbus: publishing to %s", brokers)));
		}
		PG_CATCH();
		{
			MemoryContextSwitchTo(cxt);
			EmitErrorReport();
			FlushErrorState();
			producer = NULL;
			failed_generation = config_generation;
			failed_at = GetCurrentTimestamp();
			ereport(WARNING,
					(errmsg("evbus: not publishing: the Kafka producer could not be created"),
					 errhint(EVBUS_KAFKA_CLIENT_HINT)));
		}
		PG_END_TRY();
	}
}

/* After a configuration reload: try a failed producer again at once. */
void
evbus_publisher_reconfigured(void)
{
	config_generation++;
}

/*
 * evbus_publisher_init --- set up state for this worker's database.
 */
void
evbus_publisher_init(const char *database_name)
{
	HASHCTL		ctl;

	strlcpy(source_name, database_name, sizeof(source_name));
	publisher_cxt = AllocSetContextCreate(TopMemoryContext, "evbus publisher",
										  ALLOCSET_DEFAULT_SIZES);
	batch_cxt = AllocSetContextCreate(publisher_cxt, "evbus publisher batch",
									  ALLOCSET_DEFAULT_SIZES);
	done_ids = MemoryContextAlloc(publisher_cxt, sizeof(int64) * 1024);
	done_tables = MemoryContextAlloc(publisher_cxt, sizeof(int) * 1024);
	done_events = MemoryContextAlloc(publisher_cxt, sizeof(char *) * 1024);
	done_cap = 1024;
	dead = MemoryContextAlloc(publisher_cxt, sizeof(DeadEvent) * 16);
	dead_cap = 16;

	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(int64);
	ctl.hcxt = publisher_cxt;
	ctl.entrysize = sizeof(InflightEntry);
	inflight = hash_create("evbus in flight", 4096, &ctl,
						   HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	ctl.entrysize = sizeof(int64);
	unrecorded = hash_create("evbus unrecorded", 4096, &ctl,
							 HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	ctl.keysize = sizeof(uint64);
	ctl.entrysize = sizeof(KeyState);
	keys = hash_create("evbus keys", 1024, &ctl,
					   HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	ctl.keysize = sizeof(int64);
	ctl.entrysize = sizeof(Revisit);
	revisits = hash_create("evbus revisits", 1024, &ctl,
						   HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
}

/*
 * linger_ms --- how long commits gather between two claims: longer while
 * the CPUs are contended (cpu_pressure.c), when every step the worker saves
 * is CPU time for the transactions.
 */
static int
linger_ms(TimestampTz now)
{
	if (evbus_publish_linger_busy_ms > evbus_publish_linger_ms &&
		evbus_cpu_busy(now))
		return evbus_publish_linger_busy_ms;
	return evbus_publish_linger_ms;
}

/*
 * report_poll_ms, finish_delay_ms --- how often delivery reports are
 * served when nothing waits for them, and how long served reports wait to
 * be recorded: REPORT_POLL_MS and FINISH_DELAY_MS, or as long as claims
 * linger if that is longer.  With the CPUs contended (a 200 ms linger), a
 * step of its own for reports every 10 ms and a transaction of its own
 * for recording them every 20 ms cost the worker more than the claims.
 */
static int
report_poll_ms(TimestampTz now)
{
	return Max(REPORT_POLL_MS, linger_ms(now));
}

static int
finish_delay_ms(TimestampTz now)
{
	return Max(FINISH_DELAY_MS, linger_ms(now));
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

	sync_producer();
	now = GetCurrentTimestamp();
	if (producer != NULL)
	{
		evbus_producer_serve(producer);
		last_served_at = now;
	}

	if (claim_wanted || evbus_worker_wake_pending())
		claim_requested = true;
	claiming = producer != NULL && inflight_room() &&
		(backlog ||
		 (claim_requested &&
		  TimestampDifferenceExceeds(last_claim_at, now, linger_ms(now))));
	finishing = (ndone > 0 || ndead > 0) &&
		(ndone + ndead >= evbus_batch_size || producer == NULL ||
		 TimestampDifferenceExceeds(first_report_at, now, finish_delay_ms(now)));
	if (claiming || finishing)
	{
		if (claiming)
			evbus_worker_wake_consumed();
		evbus_worker_begin(evbus_publisher_shutdown);
		evbus_outbox_published_load();
		if (finishing)
			finish_deliveries();
		if (claiming)
		{
			int			limit = Min(evbus_batch_size, max_inflight() - ninflight);

			/* at least one row, however large (inflight_room: some room) */
			step_budget = Min((int64) evbus_batch_max_bytes,
							  max_inflight_bytes() - inflight_bytes);
			step_inflight_start = inflight_bytes;

			/*
			 * Neither the remembered ids nor the rows past the cursor can be
			 * events delivered but not yet recorded; a sweep page can, so
			 * the reports are recorded before one.
			 */
			pgstat_report_activity(STATE_RUNNING, "publishing");
			MemoryContextReset(batch_cxt);
			if (nsolo > 0)
				produce_solo();
			else
			{
				claim_revisits();
				more = claim_forward(limit);
			}
			if (!more && nsolo == 0 && sweep_from < 0 &&
				TimestampDifferenceExceeds(last_sweep, now, evbus_poll_interval_ms))
			{
				sweep_from = 0;
				last_sweep = now;
			}
			if (sweep_from >= 0 && nsolo == 0 && ninflight < max_inflight() &&
				claim_budget() > 0)
			{
				finish_deliveries();
				claim_sweep(Min(evbus_batch_size, max_inflight() - ninflight));
				more = more || sweep_from >= 0;
			}
			MemoryContextReset(batch_cxt);
			backlog = more;
			claim_requested = false;
			last_claim_at = now;
		}
		evbus_worker_commit();
		if (producer != NULL)
			evbus_producer_serve(producer);
	}

	if (TimestampDifferenceExceeds(last_maintain, now, 1000))
	{
		pgstat_report_activity(STATE_RUNNING, "maintaining the outbox");
		evbus_outbox_maintain();
		last_maintain = now;
	}
	pgstat_report_activity(STATE_IDLE, NULL);
	return more && inflight_room();
}

/* Milliseconds from now until deadline (rounded up), 0 if past. */
static long
ms_until(TimestampTz deadline)
{
	long		secs;
	int			usecs;

	TimestampDifference(GetCurrentTimestamp(), deadline, &secs, &usecs);
	return secs * 1000 + (usecs + 999) / 1000;
}

/*
 * reports_urgent --- must the worker wake as soon as delivery reports
 * arrive?  Only when it waits for them: with the most events or bytes in
 * flight it may have (back-pressure), during a backlog (each report frees room for
 * the next claim), or while an event refused in a batch waits for the
 * others to be acknowledged before it is produced alone.  Otherwise they
 * are served every REPORT_POLL_MS, and at every step.
 */
static bool
reports_urgent(void)
{
	return !inflight_room() || backlog || nsolo > 0;
}

/*
 * evbus_publisher_wait_ms --- how long the worker may sleep: the poll
 * interval, or less while a claim lingers, events are in flight or
 * delivery reports wait to be recorded.
 */
long
evbus_publisher_wait_ms(void)
{
	long		wait = evbus_poll_interval_ms;
	TimestampTz now = GetCurrentTimestamp();

	if (ninflight > 0 && producer != NULL)
		wait = Min(wait, ms_until(TimestampTzPlusMilliseconds(last_served_at,
															  report_poll_ms(now))));

	if (claim_requested && producer != NULL)
		wait = Min(wait, ms_until(TimestampTzPlusMilliseconds(last_claim_at,
															  linger_ms(now))));
	if (ndone > 0 || ndead > 0)
		wait = Min(wait, ms_until(TimestampTzPlusMilliseconds(first_report_at,
															  finish_delay_ms(now))));
	return wait;
}

/*
 * The producer's wake-up descriptor while delivery reports are urgent,
 * or -1 (not publishing, or the reports can wait for the next step).
 */
int
evbus_publisher_wakeup_fd(void)
{
	return producer && reports_urgent() ? evbus_producer_wakeup_fd(producer) : -1;
}

/* Drop the producer at exit: unacknowledged events stay in the outbox. */
void
evbus_publisher_shutdown(void)
{
	if (producer != NULL)
	{
		evbus_producer_destroy(producer);
		producer = NULL;
	}
}

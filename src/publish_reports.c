/*-------------------------------------------------------------------------
 *
 * publish_reports.c
 *	  The publisher's events in flight and its delivery-report bookkeeping.
 *
 * Each produced event is remembered in `inflight` until librdkafka reports
 * on it.  A report either makes it done (PERSISTED), dead (a permanent
 * error while produced alone), or one to produce again (the key's order is
 * kept by publish_keys.c).  Done and dead events are recorded in the
 * database together by the next finish (evbus_reports_finish), in the
 * transaction of a later step; until then they are `unrecorded`, and
 * their rows must stay in the outbox (evbus_reports_holds).
 *
 * In-flight events are bounded by count and by payload bytes: librdkafka
 * holds a copy of each payload until its report, so the worker's memory
 * is bounded by bytes, not by rows times payload size (test
 * 254_publisher_memory.pl).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "pgstat.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "evbus.h"
#include "publish.h"

/* A produced event waiting for its delivery report. */
struct InflightMsg
{
	int64		id;
	int			table;			/* evbus.outbox_<table> holds it */
	uint64		keyhash;
	uint32		topic;			/* evbus_key_topic */
	char	   *integration_event;
	int			bytes;			/* payload bytes librdkafka holds for it */
	TimestampTz staged_at;		/* for the acknowledgement latency */
	bool		solo;			/* produced alone, to isolate an error */
};

/* Entry of `inflight`: the message librdkafka holds, by event id. */
typedef struct InflightEntry
{
	int64		id;				/* hash key */
	InflightMsg *msg;
} InflightEntry;

static MemoryContext reports_cxt = NULL;	/* the publisher's */
static HTAB *inflight = NULL;
static HTAB *unrecorded = NULL; /* delivered or dead, not yet finished */
static int	ninflight = 0;
static int64 inflight_bytes = 0;	/* payload bytes of the messages in flight */
static int64 step_budget = 0;	/* payload bytes the step may put in flight */
static int64 step_inflight_start = 0;	/* inflight_bytes when the step began */

/* Results of delivery reports, recorded by the next finish. */
static int64 *done_ids = NULL;
static int *done_tables = NULL;
static char **done_events = NULL;
static TimestampTz *done_staged_at = NULL;	/* for evbus.metrics() */
static TimestampTz *done_acked_at = NULL;
static int	ndone = 0;
static int	done_cap = 0;
static DeadEvent *dead = NULL;
static int	ndead = 0;
static int	dead_cap = 0;
static TimestampTz first_report_at = 0; /* of the oldest unrecorded report */

/*
 * The first nrecording_done and nrecording_dead of them, which a finish
 * recorded in the open transaction: forgotten when it commits; an abort
 * leaves them to the next finish (reports_xact_callback).
 */
static int	nrecording_done = 0;
static int	nrecording_dead = 0;

static void reports_xact_callback(XactEvent event, void *arg);

/* evbus_reports_init --- set up the bookkeeping, in the publisher's context. */
void
evbus_reports_init(MemoryContext cxt)
{
	HASHCTL		ctl;

	reports_cxt = cxt;
	done_ids = MemoryContextAlloc(cxt, sizeof(int64) * 1024);
	done_tables = MemoryContextAlloc(cxt, sizeof(int) * 1024);
	done_events = MemoryContextAlloc(cxt, sizeof(char *) * 1024);
	done_staged_at = MemoryContextAlloc(cxt, sizeof(TimestampTz) * 1024);
	done_acked_at = MemoryContextAlloc(cxt, sizeof(TimestampTz) * 1024);
	done_cap = 1024;
	dead = MemoryContextAlloc(cxt, sizeof(DeadEvent) * 16);
	dead_cap = 16;

	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(int64);
	ctl.hcxt = cxt;
	ctl.entrysize = sizeof(InflightEntry);
	inflight = hash_create("evbus in flight", 4096, &ctl,
						   HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	ctl.entrysize = sizeof(int64);
	unrecorded = hash_create("evbus unrecorded", 4096, &ctl,
							 HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	RegisterXactCallback(reports_xact_callback, NULL);
}

/* The most events in flight. */
int
evbus_inflight_max(void)
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

/* How many events are in flight. */
int
evbus_inflight_count(void)
{
	return ninflight;
}

/* Is there room for more events in flight, by count and by bytes? */
bool
evbus_inflight_room(void)
{
	return ninflight < evbus_inflight_max() &&
		inflight_bytes < max_inflight_bytes();
}

/*
 * evbus_inflight_step_begin --- a step starts claiming: it may put
 * evbus.batch_max_bytes in flight, or what room is left (at least one
 * row, however large: evbus_inflight_room said there is some).
 */
void
evbus_inflight_step_begin(void)
{
	step_budget = Min((int64) evbus_batch_max_bytes,
					  max_inflight_bytes() - inflight_bytes);
	step_inflight_start = inflight_bytes;
}

/*
 * evbus_claim_budget --- payload bytes the step's claims may still read:
 * what the step may put in flight less what it has.  Rows held back (their
 * key waits) are read but not put in flight, so they do not use the budget
 * up and keep other keys from being claimed; their payloads are freed as
 * soon as they are looked at (publisher.c, release_payload).
 */
int64
evbus_claim_budget(void)
{
	return step_budget - (inflight_bytes - step_inflight_start);
}

/*
 * evbus_inflight_new --- the message to hand to librdkafka for row, of
 * the key keyhash, to topic (evbus_key_topic).
 */
InflightMsg *
evbus_inflight_new(const OutboxRow *row, uint64 keyhash, uint32 topic,
				   bool alone)
{
	InflightMsg *msg = MemoryContextAlloc(reports_cxt, sizeof(InflightMsg));

	msg->id = row->id;
	msg->table = row->table;
	msg->keyhash = keyhash;
	msg->topic = topic;
	msg->integration_event = MemoryContextStrdup(reports_cxt,
												 row->integration_event);
	msg->bytes = row->payload_len;
	msg->staged_at = row->staged_at;
	msg->solo = alone;
	return msg;
}

/* evbus_inflight_discard --- librdkafka did not take msg. */
void
evbus_inflight_discard(InflightMsg *msg)
{
	pfree(msg->integration_event);
	pfree(msg);
}

/* evbus_inflight_add --- librdkafka took msg: it is in flight. */
void
evbus_inflight_add(InflightMsg *msg)
{
	((InflightEntry *) hash_search(inflight, &msg->id, HASH_ENTER, NULL))->msg = msg;
	ninflight++;
	inflight_bytes += msg->bytes;
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
		done_staged_at = repalloc(done_staged_at, sizeof(TimestampTz) * done_cap);
		done_acked_at = repalloc(done_acked_at, sizeof(TimestampTz) * done_cap);
	}
	if (ndone == 0 && ndead == 0)
		first_report_at = GetCurrentTimestamp();
	done_ids[ndone] = msg->id;
	done_tables[ndone] = msg->table;
	done_events[ndone] = msg->integration_event;
	done_staged_at[ndone] = msg->staged_at;
	done_acked_at[ndone] = GetCurrentTimestamp();
	ndone++;
	hash_search(unrecorded, &msg->id, HASH_ENTER, NULL);
}

/*
 * evbus_reports_dead --- event id cannot be published (err is permanent,
 * and it was refused alone, or before it was queued): say so, and record
 * it to be moved to evbus.dead_letters by the next finish.  The one place
 * an event is dead-lettered (test 050_dead_letters.pl).  why, if not
 * NULL, says why instead of err's text (evbus refused it itself).
 */
void
evbus_reports_dead(int64 id, int table, const char *integration_event,
				   rd_kafka_resp_err_t err, const char *why)
{
	MemoryContext old;

	if (why == NULL)
		why = rd_kafka_err2str(err);
	ereport(WARNING,
			(errmsg("evbus: event %lld of \"%s\" cannot be published: %s",
					(long long) id, integration_event, why),
			 errdetail("The event is moved to evbus.dead_letters.")));
	old = MemoryContextSwitchTo(reports_cxt);
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
	dead[ndead].error_message = pstrdup(why);
	ndead++;
	MemoryContextSwitchTo(old);
}

/*
 * evbus_reports_on_delivery --- a delivery report, from
 * evbus_producer_serve (the producer's EvbusDeliveryCb).
 */
void
evbus_reports_on_delivery(void *opaque, rd_kafka_resp_err_t err,
						  rd_kafka_msg_status_t status,
						  int32 partition, int64 offset)
{
	InflightMsg *msg = (InflightMsg *) opaque;
	bool		persisted = err == RD_KAFKA_RESP_ERR_NO_ERROR &&
		status == RD_KAFKA_MSG_STATUS_PERSISTED;

	hash_search(inflight, &msg->id, HASH_REMOVE, NULL);
	ninflight--;
	inflight_bytes -= msg->bytes;

	if (persisted)
	{
		record_done(msg);
		evbus_key_persisted(msg->keyhash, msg->id, msg->topic);
	}
	else if (err != RD_KAFKA_RESP_ERR_NO_ERROR && evbus_kafka_error_is_permanent(err) &&
			 !msg->solo)
	{
		/* maybe a neighbour's fault: produce it again, alone */
		evbus_key_failed(msg->keyhash, msg->id, true);
		evbus_solo_add(msg->id, msg->keyhash);
		elog(DEBUG1, "evbus: event %lld refused in a batch (%s), producing it alone",
			 (long long) msg->id, rd_kafka_err2name(err));
	}
	else if (err != RD_KAFKA_RESP_ERR_NO_ERROR && evbus_kafka_error_is_permanent(err))
	{
		evbus_reports_dead(msg->id, msg->table, msg->integration_event, err, NULL);
		evbus_key_done(msg->keyhash, msg->id, true);
	}
	else
	{
		/* not confirmed: produce it again, and hold its key back till then */
		evbus_key_failed(msg->keyhash, msg->id, true);
		if (msg->solo)
			evbus_solo_add(msg->id, msg->keyhash);
		else
			evbus_revisit_add(msg->id, true, msg->keyhash);
		elog(DEBUG1, "evbus: delivery of event %lld not confirmed (%s), will produce it again",
			 (long long) msg->id, rd_kafka_err2name(err));
	}
	/* integration_event stays referenced by done_events until finish */
	if (!persisted)
		pfree(msg->integration_event);
	pfree(msg);
}

/*
 * evbus_reports_holds --- is the event of id in flight, or delivered
 * (or dead) and not yet recorded?  Then its row must stay where it is.
 */
bool
evbus_reports_holds(int64 id)
{
	bool		found;

	hash_search(inflight, &id, HASH_FIND, &found);
	if (!found)
		hash_search(unrecorded, &id, HASH_FIND, &found);
	return found;
}

/*
 * evbus_reports_forget_unreported --- after the producer was destroyed:
 * events it never reported on count as not confirmed, as if purged.  Its
 * purge does not wait for librdkafka's broker threads, so some purge
 * reports may come too late to be served before the handle goes; their
 * events must not stay "in flight" for ever (they would never be produced
 * again, and a refused event waiting to go alone would wait for them).
 * What the old producer proved about keys holds no more for the next one.
 */
void
evbus_reports_forget_unreported(void)
{
	HASH_SEQ_STATUS status;
	InflightEntry *entry;
	long		n = hash_get_num_entries(inflight);

	evbus_keys_new_producer();
	if (n == 0)
		return;
	ereport(LOG,
			(errmsg("evbus: %ld events were not reported on by the closed producer; they are produced again", n)));
	hash_seq_init(&status, inflight);
	while ((entry = hash_seq_search(&status)) != NULL)
		evbus_reports_on_delivery(entry->msg, RD_KAFKA_RESP_ERR__PURGE_INFLIGHT,
								  RD_KAFKA_MSG_STATUS_POSSIBLY_PERSISTED, -1, -1);
}

/*
 * evbus_reports_unrecorded --- how many reports wait to be recorded, and
 * (*since) when the oldest of them was served.
 */
int
evbus_reports_unrecorded(TimestampTz *since)
{
	*since = first_report_at;
	return ndone + ndead;
}

/*
 * evbus_reports_finish --- record delivery results in the database
 * (inside the step's transaction).  They are forgotten when that
 * transaction commits: one that a stop cancels after the finish (test
 * 235_publisher_stop.pl) leaves them to be recorded by the worker's
 * leaving (evbus_publisher_leave).
 */
void
evbus_reports_finish(void)
{
	int			new_done = ndone - nrecording_done;
	int			new_dead = ndead - nrecording_dead;

	/* a step may finish twice (before a sweep page): each report once */
	if (new_done == 0 && new_dead == 0)
		return;
	pgstat_report_activity(STATE_RUNNING, "recording deliveries");
	evbus_outbox_finish(done_ids + nrecording_done, done_tables + nrecording_done,
						done_events + nrecording_done, new_done,
						dead + nrecording_dead, new_dead);
	/* counted when this transaction commits (metrics.c) */
	evbus_metrics_published(done_staged_at + nrecording_done,
							done_acked_at + nrecording_done, new_done);
	evbus_metrics_publish_dead(new_dead);
	nrecording_done = ndone;
	nrecording_dead = ndead;
}

/*
 * forget_recorded --- drop the reports the committed transaction recorded;
 * the ones served since (a dead event of a claim after the finish) stay.
 */
static void
forget_recorded(void)
{
	int			i;
	int			rest;

	for (i = 0; i < nrecording_done; i++)
	{
		hash_search(unrecorded, &done_ids[i], HASH_REMOVE, NULL);
		pfree(done_events[i]);
	}
	rest = ndone - nrecording_done;
	memmove(done_ids, done_ids + nrecording_done, sizeof(int64) * rest);
	memmove(done_tables, done_tables + nrecording_done, sizeof(int) * rest);
	memmove(done_events, done_events + nrecording_done, sizeof(char *) * rest);
	memmove(done_staged_at, done_staged_at + nrecording_done,
			sizeof(TimestampTz) * rest);
	memmove(done_acked_at, done_acked_at + nrecording_done,
			sizeof(TimestampTz) * rest);
	ndone = rest;

	for (i = 0; i < nrecording_dead; i++)
	{
		hash_search(unrecorded, &dead[i].id, HASH_REMOVE, NULL);
		pfree(dead[i].error_message);
	}
	rest = ndead - nrecording_dead;
	memmove(dead, dead + nrecording_dead, sizeof(DeadEvent) * rest);
	ndead = rest;

	if (ndone == 0 && ndead == 0)
		first_report_at = 0;
}

/* At the end of the worker's transactions: see nrecording_done. */
static void
reports_xact_callback(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_COMMIT && (nrecording_done > 0 || nrecording_dead > 0))
		forget_recorded();
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT)
	{
		nrecording_done = 0;
		nrecording_dead = 0;
	}
}

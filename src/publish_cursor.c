/*-------------------------------------------------------------------------
 *
 * publish_cursor.c
 *	  Where the publisher reads the outbox: the cursor, the holes it skips,
 *	  the ids to look up again, and the sweep.
 *
 * Rows are read in id order from a cursor just past the highest id seen.
 * Commit order is not id order: a row below the cursor may commit later.
 * So every id skipped over by the cursor (a "hole": a rolled back or still
 * running transaction, or an event not due yet) is remembered for a while
 * and looked up again, and when the cursor has reached the end, a sweep
 * from the lowest id finds whatever is left.  Events held back (their key
 * waits) and events whose delivery failed are remembered the same way; a
 * failed one never expires (test 020_broker_outage.pl), a hole does after
 * HOLE_TIMEOUT_MS once no transaction that could have staged it is still
 * running, and the sweep then finds it (test 090_late_events.pl).  While
 * one may be, the id is kept: a transaction of a key that runs long would
 * otherwise be overtaken by the next transaction of its key, committed
 * after it but produced before the sweep finds the first (test
 * 402_long_transaction_key_order.pl).
 *
 * This part only reads: it returns the rows it claimed, and publisher.c
 * produces them.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/transam.h"
#include "utils/hsearch.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "evbus.h"
#include "publish.h"

/* How long a hole is looked up by id before only sweeps look for it. */
#define HOLE_TIMEOUT_MS 10000
#define MAX_REVISITS 100000
#define MAX_HOLE_RUN 1000

/*
 * Past this many remembered ids, holes expire after HOLE_TIMEOUT_MS even
 * while a transaction older than them runs (many rolled back ids and one
 * long transaction must not make every step look up tens of thousands of
 * ids): the sweep still finds what commits.
 */
#define MAX_LONG_HOLES 10000

/* An id to look up again: a hole, or a known row held back. */
typedef struct Revisit
{
	int64		id;				/* hash key */
	TimestampTz since;
	TransactionId xmax;			/* the next xid when it was noted: a
								 * transaction that staged it is older */
	bool		last_look;		/* expired: looked up once more, then gone */
	bool		failed;			/* a failed delivery: never expires */
	uint64		keyhash;
} Revisit;

static HTAB *revisits = NULL;
static int64 max_seen = 0;		/* highest id ever claimed */
static int64 sweep_from = -1;	/* next id of the running sweep, -1: none */
static TimestampTz last_sweep = 0;

/*
 * Set when a paused integration event was resumed (publish_pause.c): its
 * staged events lie below the cursor, older than anything of their key
 * staged since.  Until a sweep has gone through the whole outbox in id
 * order, nothing is claimed past the cursor and the holes are left to that
 * sweep, so that no later event of a key overtakes them (test
 * 282_pause_publishing.pl).
 */
static bool sweep_first = false;

/* evbus_cursor_init --- set up the revisits, in the publisher's context. */
void
evbus_cursor_init(MemoryContext cxt)
{
	HASHCTL		ctl;

	memset(&ctl, 0, sizeof(ctl));
	ctl.hcxt = cxt;
	ctl.keysize = sizeof(int64);
	ctl.entrysize = sizeof(Revisit);
	revisits = hash_create("evbus revisits", 1024, &ctl,
						   HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
}

/*
 * evbus_revisit_add --- remember id to look up again.  A failed event
 * (failed) stays one that failed until it is produced; past MAX_REVISITS
 * holes and held-back rows are left to the sweep.
 */
void
evbus_revisit_add(int64 id, bool failed, uint64 keyhash)
{
	bool		found;
	Revisit    *rv;

	if (!failed && hash_get_num_entries(revisits) >= MAX_REVISITS)
		return;					/* the sweep will find it */
	rv = hash_search(revisits, &id, HASH_ENTER, &found);
	if (!found || !rv->failed)
	{
		rv->since = GetCurrentTimestamp();
		rv->xmax = ReadNextTransactionId();
		rv->last_look = false;
	}
	if (!found || failed)
	{
		rv->failed = failed;
		rv->keyhash = keyhash;
	}
}

/* evbus_revisit_remove --- id was produced (or is done with). */
void
evbus_revisit_remove(int64 id)
{
	hash_search(revisits, &id, HASH_REMOVE, NULL);
}

/*
 * evbus_revisit_take_failed --- if id is remembered as a failed event,
 * forget it and return true with its key's hash.
 */
bool
evbus_revisit_take_failed(int64 id, uint64 *keyhash)
{
	Revisit    *rv = hash_search(revisits, &id, HASH_FIND, NULL);

	if (rv == NULL || !rv->failed)
		return false;
	*keyhash = rv->keyhash;
	hash_search(revisits, &id, HASH_REMOVE, NULL);
	return true;
}

/* The lowest failed id of a key among the revisits, or 0. */
int64
evbus_revisit_lowest_failed(uint64 keyhash)
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
	return lowest;
}

/*
 * may_still_commit --- might a transaction that staged rv's id still be
 * running?  RecentXmin is the oldest xid running at this backend's last
 * snapshot (an older one only keeps ids longer).
 */
static bool
may_still_commit(const Revisit *rv)
{
	return !TransactionIdIsValid(RecentXmin) ||
		TransactionIdPrecedes(RecentXmin, rv->xmax);
}

/*
 * evbus_revisit_due_ids --- the remembered ids to look up now, allocated
 * in cxt.  A hole older than HOLE_TIMEOUT_MS that no running transaction
 * can commit any more is looked up once more (the transaction that
 * staged it may have committed just before this step's snapshot, which
 * the lookup then sees) and forgotten at the next call.
 */
int
evbus_revisit_due_ids(MemoryContext cxt, int64 **ids)
{
	HASH_SEQ_STATUS status;
	Revisit    *rv;
	int			nids = 0;
	TimestampTz now = GetCurrentTimestamp();
	bool		keep_long;

	*ids = NULL;
	if (hash_get_num_entries(revisits) == 0)
		return 0;
	keep_long = hash_get_num_entries(revisits) <= MAX_LONG_HOLES;
	*ids = MemoryContextAlloc(cxt, sizeof(int64) * hash_get_num_entries(revisits));
	hash_seq_init(&status, revisits);
	while ((rv = hash_seq_search(&status)) != NULL)
	{
		if (!rv->failed &&
			TimestampDifferenceExceeds(rv->since, now, HOLE_TIMEOUT_MS) &&
			!(keep_long && may_still_commit(rv)))
		{
			if (rv->last_look)
			{
				hash_search(revisits, &rv->id, HASH_REMOVE, NULL);
				continue;
			}
			rv->last_look = true;
		}
		(*ids)[nids++] = rv->id;
	}
	return nids;
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

/*
 * evbus_cursor_claim_forward --- claim the next rows past the cursor (at
 * most limit rows, max_bytes of payload), remember the holes skipped and
 * move the cursor.  *full: the claim was full (more rows are waiting).
 */
int
evbus_cursor_claim_forward(int limit, int64 max_bytes, OutboxRow **rows,
						   MemoryContext cxt, bool *full)
{
	int			n;
	int			i;
	int64		expected = max_seen + 1;

	*rows = NULL;
	if (sweep_first)
	{
		*full = false;			/* the sweep goes first */
		return 0;
	}
	if (max_bytes <= 0)
	{
		*full = true;			/* the remembered ids took the step's bytes */
		return 0;
	}
	n = evbus_outbox_claim_range(max_seen + 1, limit, max_bytes, rows, cxt);
	*full = n == limit || rows_bytes(*rows, n) >= max_bytes;

	for (i = 0; i < n; i++)
	{
		int64		hole;
		int64		id = (*rows)[i].id;

		/*
		 * Ids skipped over may still commit: remember them for a while.  A
		 * huge gap (a big rolled back transaction) is left to the sweep.
		 * Below the first id this worker claims, the MAX_HOLE_RUN ids nearest
		 * to it are holes too: a transaction running when the worker started
		 * may commit an event of a key just before a later event of that key
		 * commits, and only a remembered id is looked up before the rows past
		 * the cursor are produced; the sweep, once per evbus.poll_interval,
		 * would find it after the later event (test
		 * 401_publisher_start_key_order.pl).  Ids skipped because they are
		 * done with (after a restart) are no holes.
		 */
		if (max_seen == 0)
			expected = Max(expected, id - MAX_HOLE_RUN);
		if (id - expected <= MAX_HOLE_RUN)
			for (hole = expected; hole < id; hole++)
				if (!evbus_outbox_published_covers(0, hole, NULL) &&
					!evbus_outbox_published_covers(1, hole, NULL))
					evbus_revisit_add(hole, false, 0);
		expected = id + 1;
		max_seen = id;
	}
	return n;
}

/*
 * evbus_cursor_start_sweep --- the cursor has reached the end: start a
 * sweep from the lowest id, at most once per evbus.poll_interval.
 */
void
evbus_cursor_start_sweep(TimestampTz now)
{
	if (sweep_from < 0 &&
		(sweep_first || TimestampDifferenceExceeds(last_sweep, now, evbus_poll_interval_ms)))
	{
		sweep_from = 0;
		last_sweep = now;
	}
}

/* Is a sweep running? */
bool
evbus_cursor_sweeping(void)
{
	return sweep_from >= 0;
}

/*
 * evbus_cursor_sweep_page --- claim one page of the running sweep;
 * *full as for evbus_cursor_claim_forward.
 */
int
evbus_cursor_sweep_page(int limit, int64 max_bytes, OutboxRow **rows,
						MemoryContext cxt, bool *full)
{
	int			n;

	n = evbus_outbox_claim_range(sweep_from, limit, max_bytes, rows, cxt);
	*full = n == limit || rows_bytes(*rows, n) >= max_bytes;
	return n;
}

/*
 * evbus_cursor_sweep_advance --- the page was produced (produced: without
 * back-pressure).  A short page is the sweep's last, not one to skip (a
 * page cut short by its bytes is not short).  The forward cursor stays
 * where it is, so the forward scan still notes the holes of this range.
 */
void
evbus_cursor_sweep_advance(const OutboxRow *rows, int n, bool produced,
						   bool full)
{
	if (produced && !full)
		sweep_first = false;	/* went through the whole outbox */
	if (!produced || !full)
		sweep_from = -1;		/* done (or resumed by the next sweep) */
	else
		sweep_from = rows[n - 1].id + 1;
}

/*
 * evbus_cursor_sweep_first --- a paused event was resumed: sweep the whole
 * outbox before claiming past the cursor again, and forget the holes
 * (the sweep finds them, in id order); failed events stay remembered,
 * since later events of their key wait for them.
 */
void
evbus_cursor_sweep_first(void)
{
	HASH_SEQ_STATUS status;
	Revisit    *rv;

	hash_seq_init(&status, revisits);
	while ((rv = hash_seq_search(&status)) != NULL)
	{
		if (!rv->failed)
			hash_search(revisits, &rv->id, HASH_REMOVE, NULL);
	}
	sweep_first = true;
	sweep_from = -1;			/* a running sweep may have passed them */
}

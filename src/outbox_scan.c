/*-------------------------------------------------------------------------
 *
 * outbox_scan.c
 *	  The worker's reads of outbox rows, by primary key, without
 *	  SPI, the planner or the executor.
 *
 *	  claim_range  the due events with id >= a bound, in id order, from
 *	               both tables of the outbox merged (a claim, a sweep page);
 *	  claim_ids    the due events among given ids, in id order;
 *	  pending_ids  the rows of a table the worker is not done with, due or
 *	               not (before its TRUNCATE);
 *	  depth        how many rows of both tables the worker is not done
 *	               with, and the oldest one's staging time (the metrics).
 *
 * Rows the worker is done with (published, dead-lettered) stay until their
 * table is truncated; every scan skips them, a range at a time
 * (outbox_published.c).
 *
 * The worker does these hundreds of times a second.  Through SPI, each
 * one set up an executor for a statement of one index scan, and the plan
 * was whatever the planner made of the statistics of the moment: the
 * plan kept for a DELETE planned right after a TRUNCATE (an empty table)
 * was a sequential scan, kept while the table grew for a minute or more.
 * Here every access is a scan of a primary key index, whatever the
 * statistics say, and costs what its rows cost.
 *
 * Reads use a fresh snapshot after a command counter increment, so they
 * see every commit up to now -- but the claims of one step all read with
 * the snapshot of its start (evbus_outbox_claims_begin): the ids looked
 * up again first, then the rows past the cursor.  Each with a snapshot of
 * its own, a transaction that committed between the two, with an event
 * among those ids (a hole when the cursor passed it) and a later event of
 * the same key past the cursor, had the later one produced first: only
 * the first lookup could have held it back behind the earlier one
 * (invariant I4 of test 400_fault_campaign.pl).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "executor/tuptable.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "outbox.h"

/* An index scan of one outbox table's primary key. */
typedef struct OutboxScan
{
	Relation	rel;
	Relation	index;
	IndexScanDesc scan;
	TupleTableSlot *slot;
	LOCKMODE	lockmode;
	int			table;
} OutboxScan;

static void
scan_open(OutboxScan *os, int table, LOCKMODE lockmode, Snapshot snapshot)
{
	Oid			pkey;

	os->lockmode = lockmode;
	os->table = table;
	os->rel = evbus_outbox_open(table, lockmode);
	pkey = RelationGetPrimaryKeyIndex(os->rel);
	if (!OidIsValid(pkey))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("table \"%s\" has no primary key", RelationGetRelationName(os->rel)),
				 errhint("Reinstall the extension: DROP EXTENSION evbus; CREATE EXTENSION evbus.")));
	os->index = index_open(pkey, AccessShareLock);
	os->scan = index_beginscan(os->rel, os->index, snapshot, 1, 0);
	os->slot = table_slot_create(os->rel, NULL);
}

/* Position the scan on ids op value (op: a btree strategy on int8). */
static void
scan_rescan(OutboxScan *os, StrategyNumber strategy, RegProcedure proc, int64 value)
{
	ScanKeyData key;

	/* attribute 1 of the index: its only column, id */
	ScanKeyInit(&key, 1, strategy, proc, Int64GetDatum(value));
	index_rescan(os->scan, &key, 1, NULL, 0);
}

static void
scan_close(OutboxScan *os)
{
	ExecDropSingleTupleTableSlot(os->slot);
	index_endscan(os->scan);
	index_close(os->index, AccessShareLock);
	table_close(os->rel, os->lockmode);
}

/* A registered snapshot that sees all commits and this transaction's changes. */
static Snapshot
fresh_snapshot(void)
{
	CommandCounterIncrement();
	return RegisterSnapshot(GetLatestSnapshot());
}

/* The snapshot of the running step's claims, or NULL (see above). */
static Snapshot claims_snapshot = NULL;

/*
 * evbus_outbox_claims_begin, evbus_outbox_claims_end --- around the claims
 * of a step, inside its transaction: they read as of the begin.
 */
void
evbus_outbox_claims_begin(void)
{
	claims_snapshot = fresh_snapshot();
}

void
evbus_outbox_claims_end(void)
{
	if (claims_snapshot != NULL)
		UnregisterSnapshot(claims_snapshot);
	claims_snapshot = NULL;
}

/* The snapshot a claim reads with: the step's, or a fresh one. */
static Snapshot
claim_snapshot(void)
{
	return claims_snapshot != NULL ? RegisterSnapshot(claims_snapshot) : fresh_snapshot();
}

static int64
slot_id(TupleTableSlot *slot)
{
	bool		isnull;

	return DatumGetInt64(slot_getattr(slot, EVBUS_OUTBOX_ID, &isnull));
}

/*
 * Is the row in slot due (no deliver_at, or deliver_at has come, and its
 * integration event's publishing not paused)?  A paused event's row waits
 * like one due later: next_pending still finds it, so the rotation keeps
 * it (test 282_pause_publishing.pl).
 */
static bool
slot_due(TupleTableSlot *slot)
{
	bool		isnull;
	Datum		d = slot_getattr(slot, EVBUS_OUTBOX_DELIVER_AT, &isnull);

	if (!isnull && DatumGetTimestampTz(d) > GetCurrentTransactionStartTimestamp())
		return false;
	if (evbus_publish_any_paused())
	{
		text	   *event = DatumGetTextPP(slot_getattr(slot, EVBUS_OUTBOX_INTEGRATION_EVENT,
														&isnull));

		return !evbus_publish_paused(VARDATA_ANY(event), VARSIZE_ANY_EXHDR(event));
	}
	return true;
}

/*
 * next_pending --- the next row of a scan in id order (>=) that the worker
 * is not done with, into its slot; false at the end.  A row it is done
 * with ends the scan's position: the scan starts again past its range.
 */
static bool
next_pending(OutboxScan *os)
{
	while (index_getnext_slot(os->scan, ForwardScanDirection, os->slot))
	{
		int64		last;

		if (!evbus_outbox_published_covers(os->table, slot_id(os->slot), &last))
			return true;
		scan_rescan(os, BTGreaterEqualStrategyNumber, F_INT8GE, last + 1);
	}
	return false;
}

/* The next due row of a scan in id order into its slot; false at the end. */
static bool
next_due(OutboxScan *os)
{
	while (next_pending(os))
		if (slot_due(os->slot))
			return true;
	return false;
}

static char *
text_or_null(TupleTableSlot *slot, int col)
{
	bool		isnull;
	Datum		d = slot_getattr(slot, col, &isnull);

	return isnull ? NULL : TextDatumGetCString(d);
}

/* Copy the row in slot into row (in cxt), printing the payload as compact JSON. */
static void
copy_row(OutboxScan *os, OutboxRow *row, MemoryContext cxt)
{
	TupleTableSlot *slot = os->slot;
	MemoryContext old = MemoryContextSwitchTo(cxt);
	bool		isnull;
	Datum		d;
	StringInfoData buf;

	row->id = slot_id(slot);
	row->table = os->table;
	memcpy(&row->message_id,
		   DatumGetUUIDP(slot_getattr(slot, EVBUS_OUTBOX_MESSAGE_ID, &isnull)),
		   sizeof(pg_uuid_t));
	row->integration_event = text_or_null(slot, EVBUS_OUTBOX_INTEGRATION_EVENT);
	row->key = text_or_null(slot, EVBUS_OUTBOX_EVENT_KEY);

	/*
	 * The payload is held once: the detoasted jsonb goes as soon as it is
	 * printed, into a buffer sized for it from the start and trimmed to fit,
	 * so that a claim of evbus.batch_max_bytes takes about that much memory
	 * (test 254_publisher_memory.pl).
	 */
	d = slot_getattr(slot, EVBUS_OUTBOX_PAYLOAD, &isnull);
	{
		Jsonb	   *jb = DatumGetJsonbP(d);

		initStringInfo(&buf);
		enlargeStringInfo(&buf, VARSIZE(jb));
		evbus_jsonb_to_compact(&buf, &jb->root);
		if ((Pointer) jb != DatumGetPointer(d))
			pfree(jb);
	}
	if (buf.maxlen > ALLOCSET_SEPARATE_THRESHOLD && buf.maxlen - buf.len > buf.len / 8)
		buf.data = repalloc(buf.data, buf.len + 1);
	row->payload = buf.data;
	row->payload_len = buf.len;

	row->nheaders = 0;
	row->header_names = row->header_values = NULL;
	d = slot_getattr(slot, EVBUS_OUTBOX_HEADERS, &isnull);
	if (!isnull)
	{
		Jsonb	   *jb = DatumGetJsonbP(d);
		int			n = JB_ROOT_COUNT(jb);
		JsonbIterator *it = JsonbIteratorInit(&jb->root);
		JsonbIteratorToken tok;
		JsonbValue	v;

		row->header_names = palloc(sizeof(char *) * Max(n, 1));
		row->header_values = palloc(sizeof(char *) * Max(n, 1));
		while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
		{
			if (tok == WJB_KEY)
				row->header_names[row->nheaders] =
					pnstrdup(v.val.string.val, v.val.string.len);
			else if (tok == WJB_VALUE && row->nheaders < n)
			{
				if (v.type == jbvString)
					row->header_values[row->nheaders] =
						pnstrdup(v.val.string.val, v.val.string.len);
				else
					row->header_values[row->nheaders] = pstrdup("");
				row->nheaders++;
			}
		}
	}
	row->domain_event = text_or_null(slot, EVBUS_OUTBOX_DOMAIN_EVENT);
	row->traceparent = text_or_null(slot, EVBUS_OUTBOX_TRACEPARENT);
	row->staged_at = DatumGetTimestampTz(slot_getattr(slot, EVBUS_OUTBOX_STAGED_AT, &isnull));
	MemoryContextSwitchTo(old);
}

/*
 * evbus_outbox_claim_range --- due events with id >= from_id, in id
 * order, at most limit, and no more once their payloads reach max_bytes
 * (the first row is always taken, however large): the scans of both
 * tables merged.  Must run inside evbus_worker_begin/commit.
 */
int
evbus_outbox_claim_range(int64 from_id, int limit, int64 max_bytes,
						 OutboxRow **rows, MemoryContext cxt)
{
	int64		bytes = 0;
	Snapshot	snapshot = claim_snapshot();
	OutboxScan	scans[2];
	bool		has[2];
	int			n = 0;
	int			cap = Max(Min(limit, 1024), 1);
	int			t;

	*rows = MemoryContextAlloc(cxt, sizeof(OutboxRow) * cap);
	for (t = 0; t < 2; t++)
	{
		scan_open(&scans[t], t, AccessShareLock, snapshot);
		scan_rescan(&scans[t], BTGreaterEqualStrategyNumber, F_INT8GE, from_id);
		has[t] = next_due(&scans[t]);
	}
	while (n < limit && (n == 0 || bytes < max_bytes) && (has[0] || has[1]))
	{
		int			lower;

		if (!has[1] || (has[0] && slot_id(scans[0].slot) < slot_id(scans[1].slot)))
			lower = 0;
		else
			lower = 1;
		if (n == cap)
		{
			cap = Min(cap * 2, limit);
			*rows = repalloc(*rows, sizeof(OutboxRow) * cap);
		}
		copy_row(&scans[lower], &(*rows)[n], cxt);
		bytes += (*rows)[n++].payload_len;
		has[lower] = next_due(&scans[lower]);
	}
	for (t = 0; t < 2; t++)
		scan_close(&scans[t]);
	UnregisterSnapshot(snapshot);
	return n;
}

/* ids sorted, without duplicates, in a copy; returns the count. */
static int
sorted_unique(int64 *ids, int nids, int64 **sorted)
{
	int			i;
	int			n = 0;

	*sorted = palloc(sizeof(int64) * Max(nids, 1));
	memcpy(*sorted, ids, sizeof(int64) * nids);
	qsort(*sorted, nids, sizeof(int64), evbus_int64_cmp);
	for (i = 0; i < nids; i++)
		if (n == 0 || (*sorted)[n - 1] != (*sorted)[i])
			(*sorted)[n++] = (*sorted)[i];
	return n;
}

/*
 * Is id a due row of the scan's table that the worker is not done with?
 * Then it is in the scan's slot.
 */
static bool
due_id(OutboxScan *os, int64 id)
{
	if (evbus_outbox_published_covers(os->table, id, NULL))
		return false;
	scan_rescan(os, BTEqualStrategyNumber, F_INT8EQ, id);
	while (index_getnext_slot(os->scan, ForwardScanDirection, os->slot))
		if (slot_due(os->slot))
			return true;
	return false;
}

/*
 * evbus_outbox_claim_ids --- the due events among ids, in id order, until
 * their payloads reach max_bytes (the first one found is always taken).
 * *last_examined is the highest id looked up: the ids above it were not
 * (PG_INT64_MAX when every id was).
 */
int
evbus_outbox_claim_ids(int64 *ids, int nids, int64 max_bytes,
					   OutboxRow **rows, MemoryContext cxt,
					   int64 *last_examined)
{
	int64		bytes = 0;
	Snapshot	snapshot = claim_snapshot();
	OutboxScan	scans[2];
	int64	   *sorted;
	int			nsorted = sorted_unique(ids, nids, &sorted);
	int			n = 0;
	int			likely = 0;
	int			i;
	int			t;

	*rows = MemoryContextAlloc(cxt, sizeof(OutboxRow) * Max(nsorted, 1));
	for (t = 0; t < 2; t++)
		scan_open(&scans[t], t, AccessShareLock, snapshot);
	/* an id is in one table at most: the previous id's, most likely */
	*last_examined = PG_INT64_MAX;
	for (i = 0; i < nsorted; i++)
	{
		if (n > 0 && bytes >= max_bytes)
		{
			*last_examined = sorted[i - 1];
			break;
		}
		if (!due_id(&scans[likely], sorted[i]))
		{
			if (!due_id(&scans[1 - likely], sorted[i]))
				continue;
			likely = 1 - likely;
		}
		copy_row(&scans[likely], &(*rows)[n], cxt);
		bytes += (*rows)[n++].payload_len;
	}
	for (t = 0; t < 2; t++)
		scan_close(&scans[t]);
	UnregisterSnapshot(snapshot);
	pfree(sorted);
	return n;
}

/*
 * evbus_outbox_pending_ids --- the ids of the rows of evbus.outbox_<table>
 * that the worker is not done with, due or not, in id order: at most max
 * of them into ids; returns how many there are, up to max + 1 (so that
 * max + 1 says "more than max").  Must run inside evbus_worker_begin/commit.
 */
int
evbus_outbox_pending_ids(int table, int max, int64 *ids)
{
	Snapshot	snapshot = fresh_snapshot();
	OutboxScan	os;
	int			n = 0;

	scan_open(&os, table, AccessShareLock, snapshot);
	scan_rescan(&os, BTGreaterEqualStrategyNumber, F_INT8GE, PG_INT64_MIN);
	while (n <= max && next_pending(&os))
	{
		if (n < max)
			ids[n] = slot_id(os.slot);
		n++;
	}
	scan_close(&os);
	UnregisterSnapshot(snapshot);
	return n;
}

/*
 * evbus_outbox_depth --- how many rows of both outbox tables the worker is
 * not done with (in flight, due or not), into *depth, and the earliest
 * staged_at among them into *oldest (0 when there is none), for
 * evbus.metrics().  The scans skip the published ranges, so this costs
 * what the rows waiting cost, not what a table holds: a count of the
 * evbus.outbox view reads every row of both tables, published or not,
 * which after a minute of 1,000 events/s took the worker tens of
 * milliseconds during which no claim was made (bench/peers.sh, latency).
 * Must run inside evbus_worker_begin/commit, the published ranges loaded.
 */
void
evbus_outbox_depth(int64 *depth, TimestampTz *oldest)
{
	Snapshot	snapshot = fresh_snapshot();
	int			table;

	*depth = 0;
	*oldest = 0;
	for (table = 0; table < 2; table++)
	{
		OutboxScan	os;

		scan_open(&os, table, AccessShareLock, snapshot);
		scan_rescan(&os, BTGreaterEqualStrategyNumber, F_INT8GE, PG_INT64_MIN);
		while (next_pending(&os))
		{
			bool		isnull;
			TimestampTz staged_at;

			staged_at = DatumGetTimestampTz(slot_getattr(os.slot,
														 EVBUS_OUTBOX_STAGED_AT,
														 &isnull));
			if (!isnull && (*oldest == 0 || staged_at < *oldest))
				*oldest = staged_at;
			(*depth)++;
			CHECK_FOR_INTERRUPTS();
		}
		scan_close(&os);
	}
	UnregisterSnapshot(snapshot);
}

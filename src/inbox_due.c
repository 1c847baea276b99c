/*-------------------------------------------------------------------------
 *
 * inbox_due.c
 *	  Which pending rows of the inbox may run now, for the retries'
 *	  transactions (evbus_inbox_dispatch_due): due, not paused, and in
 *	  each key's order; and, when none is left, when the next one will be.
 *
 * A row runs only after the earlier pending rows of its (group, handler,
 * event key).  One walk over the pending rows in id order (the order the
 * inbox received them in; the partial index inbox_pending) finds them: the
 * first row of a key that may run (due: a retry whose backoff ran out, a
 * message that waited for its key, an attempt a crash cut short; and its
 * subscription not paused) is taken, and so is each next row of that key
 * while it may run too; the first that may not (a retry still in its
 * backoff, a parked dead letter, a paused subscription) stops its key for
 * the rest of the walk: in id order the handling holds a key's later rows
 * back once one of them fails (inbox_retry.c).  A row without a key has no
 * order to keep.  The walk ends once it has taken as many rows as one
 * transaction may run, or at the last pending row.
 *
 * So a pass costs the rows it walks, not a lookup of every pending row's
 * earlier rows: a backlog of 20,000 pending rows on 40 keys used to run at
 * about 120 rows/s, each pass looking at every pending row twice, and 300
 * rows of one key took 300 transactions before a key's later rows ran with
 * its first (bench/inbox_backlog.sh; test 150_consume_key_order.pl).
 *
 * A walk that stopped for its budget leaves a cursor: the next walk
 * starts after the last row it looked at, goes to the last pending row,
 * then wraps around to the first and ends at the cursor.  Rows behind the
 * cursor that could not run were looked at already, and only a change can
 * let them run: so a backlog whose front rows wait behind a few retrying
 * keys is not read again at every transaction (each pass read them all:
 * 100,000 pending rows, 1 key in 8 behind a head retrying in an hour, ran
 * at 2,200 rows/s, three quarters of the consumer's time in the walk;
 * bench/inbox_backlog.sh).  Past the cursor a key first met may have
 * earlier pending rows behind it: one probe of the index inbox_pending_key
 * tells, and such a key waits for the wrap-around, where its rows are met
 * in order.  The next walk starts at the first pending row again once a
 * row behind the cursor that could not run comes due, when something
 * else changed the inbox (evbus_inbox_walk_from_start: the consumer was
 * woken by evbus.retry, a repair, a pause or resume, or a transaction of
 * the retries left rows pending), and at least every WALK_RESTART_MS.
 *
 * The keys met in a walk are told apart by a 64-bit hash of (group,
 * handler, event key); its entry keeps the key's first row's names, and a
 * row whose names differ from them (a collision) waits for another walk.
 *
 * Calls nothing of inbox.c.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/hashfn.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/timestamp.h"

#include "inbox.h"

/*
 * A page of the pending rows in id order after $1, each with whether it is
 * due now.  A page has a small LIMIT, so that its plan stays cheap however
 * many rows are pending (no JIT compilation) and the walk reads no more
 * pages than it needs.
 */
#define WALK_PAGE 256
#define PENDING_PAGE_SQL \
	"SELECT id, group_name, integration_event, handler, event_key, next_attempt_at," \
	" COALESCE(next_attempt_at OPERATOR(pg_catalog.<=) pg_catalog.now(), false)" \
	" FROM evbus.inbox WHERE state = 'pending' AND id OPERATOR(pg_catalog.>) $1" \
	" ORDER BY id LIMIT " CppAsString2(WALK_PAGE)

/* A paused subscription (group, integration event, handler). */
typedef struct PausedSub
{
	char	   *group;
	char	   *event;
	char	   *handler;
} PausedSub;

/* A key met in the walk: are its rows still taken? */
typedef struct WalkedKey
{
	uint64		keyhash;		/* hash key */
	bool		stopped;		/* a row of it may not run now */
	const char *group;			/* the names of the first row met */
	const char *handler;
	const char *event_key;
} WalkedKey;

/*
 * An earlier pending row of key ($1, $2, $3) than id $4? (the index
 * inbox_pending_key)
 */
#define EARLIER_ROW_SQL \
	"SELECT EXISTS (SELECT FROM evbus.inbox WHERE state = 'pending'" \
	" AND group_name OPERATOR(pg_catalog.=) $1 AND handler OPERATOR(pg_catalog.=) $2" \
	" AND event_key OPERATOR(pg_catalog.=) $3 AND id OPERATOR(pg_catalog.<) $4)"

/* The longest between two walks that start at the first pending row. */
#define WALK_RESTART_MS 10000

/*
 * Where the next walk starts: after the last row the previous walk looked
 * at, when it stopped for its budget; 0: at the first pending row.  And
 * when a row behind it that could not run may run (0: none), and when the
 * last walk from the first row started.
 */
static int64 resume_after = 0;
static TimestampTz behind_due = 0;
static TimestampTz walked_from_start_at = 0;

/*
 * evbus_inbox_walk_from_start --- the next walk starts at the first
 * pending row: something may have let a row behind the cursor run.
 */
void
evbus_inbox_walk_from_start(void)
{
	resume_after = 0;
}

/*
 * paused_subscriptions --- the paused subscriptions (SQL version 0.2; at
 * 0.1 nothing is paused), and those evbus.subscribe_events refuses
 * (event_lists.c).  A paused subscription's pending rows wait, due or
 * not, and are not the next due either: its handler runs again once
 * resumed, first of its key first (tests 280_pause_subscription.pl,
 * 253_event_lists.pl).
 */
static List *
paused_subscriptions(void)
{
	bool		pauses = evbus_pauses_present();
	bool		refusals = evbus_subscribe_events != NULL && evbus_subscribe_events[0] != '\0';
	List	   *paused = NIL;
	uint64		r;

	if (!pauses && !refusals)
		return NIL;
	if (SPI_execute(!pauses ?
					"SELECT group_name, integration_event, handler, false FROM evbus.subscriptions" :
					refusals ?
					"SELECT group_name, integration_event, handler, paused_at IS NOT NULL"
					" FROM evbus.subscriptions" :
					"SELECT group_name, integration_event, handler, true FROM evbus.subscriptions"
					" WHERE paused_at IS NOT NULL", true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read the subscriptions");
	for (r = 0; r < SPI_processed; r++)
	{
		HeapTuple	tup = SPI_tuptable->vals[r];
		PausedSub  *p = palloc(sizeof(PausedSub));
		bool		isnull;

		p->group = SPI_getvalue(tup, SPI_tuptable->tupdesc, 1);
		p->event = SPI_getvalue(tup, SPI_tuptable->tupdesc, 2);
		p->handler = SPI_getvalue(tup, SPI_tuptable->tupdesc, 3);
		if (DatumGetBool(SPI_getbinval(tup, SPI_tuptable->tupdesc, 4, &isnull)) ||
			!evbus_may_subscribe(p->event))
			paused = lappend(paused, p);
	}
	return paused;
}

/* is (group, event, handler) one of the paused subscriptions? */
static bool
is_paused(List *paused, const char *group, const char *event, const char *handler)
{
	ListCell   *lc;

	foreach(lc, paused)
	{
		PausedSub  *p = lfirst(lc);

		if (strcmp(p->group, group) == 0 && strcmp(p->event, event) == 0 &&
			strcmp(p->handler, handler) == 0)
			return true;
	}
	return false;
}

/* hash of (group, handler, event key), each with its terminating zero */
static uint64
key_hash(const char *group, const char *handler, const char *event_key)
{
	uint64		h = hash_bytes_extended((const unsigned char *) group, strlen(group) + 1, 0);

	h = hash_bytes_extended((const unsigned char *) handler, strlen(handler) + 1, h);
	return hash_bytes_extended((const unsigned char *) event_key, strlen(event_key) + 1, h);
}

/*
 * earlier_row_pending --- has key (group, handler, event_key) a pending row
 * before id?
 */
static bool
earlier_row_pending(const char *group, const char *handler, const char *event_key,
					int64 id)
{
	static SPIPlanPtr plan = NULL;
	Oid			types[4] = {TEXTOID, TEXTOID, TEXTOID, INT8OID};
	Datum		values[4];
	bool		isnull;

	values[0] = CStringGetTextDatum(group);
	values[1] = CStringGetTextDatum(handler);
	values[2] = CStringGetTextDatum(event_key);
	values[3] = Int64GetDatum(id);
	if (SPI_execute_plan(evbus_kept_plan(&plan, EARLIER_ROW_SQL, 4, types),
						 values, NULL, true, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not read the inbox");
	return DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
}

/* A walk in progress: what evbus_inbox_due_rows has found so far. */
typedef struct Walk
{
	List	   *paused;
	HTAB	   *keys;			/* of WalkedKey */
	int			budget;
	int			n;				/* rows taken, in ids */
	int64	   *ids;
	TimestampTz head_due;		/* the first due of a first row of its key */
	TimestampTz any_due;		/* the first due of any row that may not run */
	int64		last_seen;		/* the last row looked at */
} Walk;

/* A fresh table of the keys met. */
static HTAB *
new_keys(void)
{
	HASHCTL		ctl;

	ctl.keysize = sizeof(uint64);
	ctl.entrysize = sizeof(WalkedKey);
	ctl.hcxt = CurrentMemoryContext;
	return hash_create("evbus walked keys", 256, &ctl,
					   HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
}

/* The first of two due times, 0 standing for none. */
static TimestampTz
first_due(TimestampTz a, TimestampTz b)
{
	return a == 0 || (b != 0 && b < a) ? b : a;
}

/*
 * walk_part --- walk the pending rows after id after, up to id until (0:
 * the last), taking the rows that may run into w until its budget is
 * spent.  probe: the walk did not start at the first pending row, so a
 * key first met is asked for earlier pending rows.  Returns true if it
 * reached until (or the last row), false if the budget ran out first.
 */
static bool
walk_part(Walk *w, int64 after, int64 until, bool probe)
{
	Oid			types[1] = {INT8OID};

	for (;;)
	{
		static SPIPlanPtr plan = NULL;
		Datum		values[1] = {Int64GetDatum(after)};
		uint64		r;

		if (SPI_execute_plan(evbus_kept_plan(&plan, PENDING_PAGE_SQL, 1, types),
							 values, NULL, true, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not read the inbox");
		for (r = 0; r < SPI_processed; r++)
		{
			HeapTuple	tup = SPI_tuptable->vals[r];
			TupleDesc	desc = SPI_tuptable->tupdesc;
			bool		isnull;
			bool		at_null;
			int64		id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
			char	   *group;
			char	   *handler;
			char	   *event_key;
			Datum		at;
			char	   *event;
			bool		held;
			bool		runnable;
			bool		first_of_key = true;

			if (until != 0 && id > until)
				return true;
			if (w->n >= w->budget)
				return false;
			w->last_seen = after = id;
			group = SPI_getvalue(tup, desc, 2);
			handler = SPI_getvalue(tup, desc, 4);
			event_key = SPI_getvalue(tup, desc, 5);
			at = SPI_getbinval(tup, desc, 6, &at_null);
			event = w->paused != NIL ? SPI_getvalue(tup, desc, 3) : NULL;
			held = event != NULL && is_paused(w->paused, group, event, handler);
			runnable = !held && DatumGetBool(SPI_getbinval(tup, desc, 7, &isnull));
			if (event_key != NULL)
			{
				uint64		h = key_hash(group, handler, event_key);
				bool		found;
				WalkedKey  *k = hash_search(w->keys, &h, HASH_ENTER, &found);

				if (!found)
				{
					k->group = group;
					k->handler = handler;
					k->event_key = event_key;
					/* its earlier rows are behind the start: met later */
					k->stopped = probe && earlier_row_pending(group, handler, event_key, id);
					if (k->stopped)
						continue;
				}
				else if (k->stopped || strcmp(k->event_key, event_key) != 0 ||
						 strcmp(k->handler, handler) != 0 || strcmp(k->group, group) != 0)
					continue;	/* behind a row that may not run, or a
								 * collision */
				first_of_key = !found;
				k->stopped = !runnable;
			}
			if (runnable)
				w->ids[w->n++] = id;
			else if (!held && !at_null)
			{
				w->any_due = first_due(w->any_due, DatumGetTimestampTz(at));
				if (first_of_key)
					w->head_due = first_due(w->head_due, DatumGetTimestampTz(at));
			}
		}
		if (SPI_processed < WALK_PAGE)
			return true;
		SPI_freetuptable(SPI_tuptable);
	}
}

/*
 * evbus_inbox_due_rows --- the ids of at most budget pending rows that may
 * run now, each key's in order (see the top of this file).  Returns how
 * many, in *ids (palloc'd).  When it returns none, it walked every pending
 * row, and *next_due is when the first of them will be due (0: none will
 * until something changes: a parked or paused one); else *next_due is 0
 * (the rows it returns change what is due).  Inside a transaction, SPI
 * connected.
 */
int
evbus_inbox_due_rows(int budget, int64 **ids, TimestampTz *next_due)
{
	TimestampTz now = GetCurrentTimestamp();
	int64		start = resume_after;
	bool		whole;
	Walk		w;

	*ids = palloc(sizeof(int64) * Max(budget, 1));
	*next_due = 0;
	if (budget <= 0)
		return 0;

	if ((behind_due != 0 && now >= behind_due) ||
		TimestampDifferenceExceeds(walked_from_start_at, now, WALK_RESTART_MS))
		start = 0;
	if (start == 0)
	{
		behind_due = 0;
		walked_from_start_at = now;
	}
	memset(&w, 0, sizeof(w));
	w.paused = paused_subscriptions();
	w.keys = new_keys();
	w.budget = budget;
	w.ids = *ids;

	/* from the start (or the cursor) to the last row, then up to the cursor */
	whole = walk_part(&w, start, 0, start != 0);
	if (whole && start != 0)
	{
		hash_destroy(w.keys);
		w.keys = new_keys();
		whole = walk_part(&w, 0, start, false);
	}
	hash_destroy(w.keys);

	resume_after = whole ? 0 : w.last_seen;
	behind_due = whole ? 0 : first_due(behind_due, w.any_due);
	if (w.n == 0)
		*next_due = w.head_due;
	return w.n;
}

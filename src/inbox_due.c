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
 * A walk that stops for its budget is continued by the next one, after
 * the last row it looked at, with what it learnt of the keys: the rows
 * behind that point that could not run were looked at already, and only a
 * change lets them run, so a backlog whose front rows wait behind a few
 * retrying keys is not read again at every transaction (each pass read
 * them all: 100,000 pending rows, 1 key in 8 behind a head retrying in an
 * hour, ran at 2,000 rows/s, three quarters of the consumer's time in the
 * walk; bench/inbox_backlog.sh).  The walks in turn are then one walk
 * from the first pending row, the rows each took handled in between.  A
 * walk starts at the first pending row again once it reached the last,
 * once a row behind it that could not run comes due, when something else
 * changed the inbox or what may run (evbus_inbox_walk_from_start: the
 * consumer was woken by evbus.retry, a repair, a pause or resume, a new
 * subscription; a row a walk took was not handled: a retry, a parked
 * dead letter, a row left waiting), and at least every WALK_RESTART_MS.
 *
 * The keys met in a walk are told apart by a 64-bit hash of (group,
 * handler, event key).  Two keys with the same hash would be walked as
 * one: a row is still taken only when every earlier pending row of its
 * own key was taken, so a collision can delay a row (until the walk starts
 * again from the first row), never run one out of order.
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
#include "utils/memutils.h"
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
} WalkedKey;

/* The longest between two walks that start at the first pending row. */
#define WALK_RESTART_MS 10000

/*
 * The walk that the next call continues (see the top of this file): from
 * the first pending row when after is 0, else past after with the keys met
 * so far.
 */
typedef struct Walk
{
	MemoryContext cxt;			/* keys */
	HTAB	   *keys;			/* of WalkedKey */
	int64		after;			/* the last row looked at; 0: start again */
	TimestampTz started_at;		/* when it started at the first row */
	TimestampTz head_due;		/* the first due of a key's first row met */
	TimestampTz any_due;		/* the first due of any row met that may not
								 * run */
} Walk;

static Walk walk;

/*
 * evbus_inbox_walk_from_start --- the next walk starts at the first
 * pending row: something may have let a row behind the last walk run.
 */
void
evbus_inbox_walk_from_start(void)
{
	walk.after = 0;
}

/* Start the walk again at the first pending row. */
static void
walk_restart(TimestampTz now)
{
	HASHCTL		ctl;

	if (walk.cxt == NULL)
		walk.cxt = AllocSetContextCreate(TopMemoryContext, "evbus walked keys",
										 ALLOCSET_DEFAULT_SIZES);
	MemoryContextReset(walk.cxt);
	ctl.keysize = sizeof(uint64);
	ctl.entrysize = sizeof(WalkedKey);
	ctl.hcxt = walk.cxt;
	walk.keys = hash_create("evbus walked keys", 256, &ctl,
							HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	walk.after = 0;
	walk.started_at = now;
	walk.head_due = 0;
	walk.any_due = 0;
}

/* The first of two due times, 0 standing for none. */
static TimestampTz
first_due(TimestampTz a, TimestampTz b)
{
	return a == 0 || (b != 0 && b < a) ? b : a;
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
 * evbus_inbox_due_rows --- the ids of at most budget pending rows that may
 * run now, each key's in order (see the top of this file).  Returns how
 * many, in *ids (palloc'd).  When it returns none, the walk reached the
 * last pending row, and *next_due is when the first of them will be due
 * (0: none will until something changes: a parked or paused one); else
 * *next_due is 0 (the rows it returns change what is due).  Inside a
 * transaction, SPI connected.
 */
int
evbus_inbox_due_rows(int budget, int64 **ids, TimestampTz *next_due)
{
	TimestampTz now = GetCurrentTimestamp();
	List	   *paused;
	Oid			types[1] = {INT8OID};
	bool		reached_end = false;
	int			n = 0;

	*ids = palloc(sizeof(int64) * Max(budget, 1));
	*next_due = 0;
	if (budget <= 0)
		return 0;
	if (walk.after == 0 || (walk.any_due != 0 && now >= walk.any_due) ||
		TimestampDifferenceExceeds(walk.started_at, now, WALK_RESTART_MS))
		walk_restart(now);
	paused = paused_subscriptions();

	while (n < budget && !reached_end)
	{
		static SPIPlanPtr plan = NULL;
		Datum		values[1] = {Int64GetDatum(walk.after)};
		uint64		r;

		if (SPI_execute_plan(evbus_kept_plan(&plan, PENDING_PAGE_SQL, 1, types),
							 values, NULL, true, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not read the inbox");
		reached_end = SPI_processed < WALK_PAGE;
		for (r = 0; r < SPI_processed; r++)
		{
			HeapTuple	tup = SPI_tuptable->vals[r];
			TupleDesc	desc = SPI_tuptable->tupdesc;
			bool		isnull;
			bool		at_null;
			int64		id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
			char	   *group = SPI_getvalue(tup, desc, 2);
			char	   *handler = SPI_getvalue(tup, desc, 4);
			char	   *event_key = SPI_getvalue(tup, desc, 5);
			Datum		at = SPI_getbinval(tup, desc, 6, &at_null);
			char	   *event = paused != NIL ? SPI_getvalue(tup, desc, 3) : NULL;
			bool		held = event != NULL && is_paused(paused, group, event, handler);
			bool		runnable = !held && DatumGetBool(SPI_getbinval(tup, desc, 7, &isnull));
			bool		first_of_key = true;

			if (n >= budget)
			{
				reached_end = false;	/* rows left: the next walk goes on */
				break;
			}
			walk.after = id;
			if (event_key != NULL)
			{
				uint64		h = key_hash(group, handler, event_key);
				bool		found;
				WalkedKey  *k = hash_search(walk.keys, &h, HASH_ENTER, &found);

				if (found && k->stopped)
					continue;	/* behind a row that may not run */
				first_of_key = !found;
				k->stopped = !runnable;
			}
			if (runnable)
				(*ids)[n++] = id;
			else if (!held && !at_null)
			{
				walk.any_due = first_due(walk.any_due, DatumGetTimestampTz(at));
				if (first_of_key)
					walk.head_due = first_due(walk.head_due, DatumGetTimestampTz(at));
			}
		}
		SPI_freetuptable(SPI_tuptable);
	}

	if (n == 0)
		*next_due = walk.head_due;
	if (reached_end)
		walk.after = 0;			/* the next walk starts at the first row */
	return n;
}

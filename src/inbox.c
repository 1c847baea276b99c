/*-------------------------------------------------------------------------
 *
 * inbox.c
 *	  The consumer's transactions, the batch protocol: receive messages
 *	  into the inbox, run their handlers, advance the stored offsets.
 *
 * A received batch is handled in one transaction: decode each message
 * (undecodable ones are dead-lettered at once with their raw bytes),
 * insert a row per message and handler into evbus.inbox unless its
 * (group, message id, handler) is there already (a redelivery), run each
 * (message, handler) that may run now -- no earlier event of its key is
 * pending for that handler -- each in its own subtransaction (a handler's
 * rows in one go where it can: inbox_retry.c), record
 * failures for that handler alone (the error, and a retry scheduled with
 * exponential backoff and jitter, or after the last retry a dead letter
 * and NOTIFY evbus_dead_letter), and advance the stored offsets past the
 * batch.  Handler effects, the inbox state and the offsets commit
 * together; the rows of handlers that succeed are inserted as handled
 * straight away (a failure turns its row back to pending), so a handled
 * message costs one insert per handler.  One subscriber's failing handler
 * never rolls back, holds back or dead-letters another handler's work
 * (test 210_subscription_ownership.pl).
 *
 * A handler that crashes its backend takes that transaction with it, and
 * with it the record of the attempt.  So a batch is first noted outside
 * the database (attempt_marker.c), and after a crash the batches that
 * contain a message of the noted one go the careful way, in two
 * transactions:
 *
 *	1. record: insert the inbox rows as pending and count the attempt of
 *	   each message that may run now, and commit, on disk whatever
 *	   synchronous_commit says -- before any handler runs, so the crash
 *	   counts and a poison message cannot crash-loop the server (tests
 *	   130_consume_kill.pl, 136_consume_kill_async_commit.pl);
 *	2. handle: run the handlers as above, mark the successes handled, and
 *	   advance the stored offsets.
 *
 * Retries run in one transaction each (evbus_inbox_dispatch_due): the
 * rows were recorded before, and their attempts are counted in it; a
 * crash in a call rolls that back, and the attempt marker has the next
 * start count the attempt of the row whose call was running
 * (evbus_inbox_charge_attempt).  A row
 * waits while an earlier row of its key, group and handler is pending, so
 * per-key order holds through retries, per handler; other keys, and other
 * handlers of the same key, flow.
 *
 * This file holds the protocol and its transactions; its parts live
 * apart, and none of them calls back into it: decoding in inbox_decode.c;
 * running the dispatched rows, retries and dead letters in inbox_retry.c;
 * the stored offsets in consumer_offsets.c.  It calls nothing of
 * consumer.c either: how to let go of Kafka when the extension has been
 * dropped is registered once, by the consumer worker (evbus_inbox_init).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "storage/proc.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "inbox.h"

/*
 * How to let go of Kafka when a transaction finds the extension dropped
 * (evbus_worker_begin), set once by the consumer worker: the inbox calls
 * into the worker's consumers only through it.
 */
static void (*inbox_let_go) (void) = NULL;

/*
 * How many calls of per-message handlers a transaction may make: at most
 * EVBUS_CALLS_PER_TRANSACTION (consumer.h), fewer when the last
 * transaction measured took more than one subtransaction id per call (a
 * handler with subtransactions of its own, a PL/pgSQL EXCEPTION block),
 * so that a transaction stays within SUBXIDS_WANTED ids (inbox.h,
 * adapt_calls_budget).  The poll sizes batches by it; the calls
 * themselves stop at SUBXIDS_WANTED whatever it says
 * (evbus_inbox_handle_batch).
 */
static int	calls_budget = EVBUS_CALLS_PER_TRANSACTION;

/*
 * evbus_inbox_calls_budget --- how many calls of per-message handlers the
 * next transaction may make (the consumer's poll takes no more messages
 * than that).
 */
int
evbus_inbox_calls_budget(void)
{
	return calls_budget;
}

/*
 * adapt_calls_budget --- before the commit of a transaction that made
 * calls handler calls, measure the subtransaction ids it holds, and size
 * the next transaction's calls to stay within SUBXIDS_WANTED: one id is
 * the inbox insert's, the rest the calls' (test
 * 248_handler_subtransactions.pl).
 */
static void
adapt_calls_budget(int calls)
{
	TransactionId *children;
	int			subxids = xactGetCommittedChildren(&children);

	if (calls == 0)
		return;
	calls_budget = (SUBXIDS_WANTED - 1) * calls / Max(subxids - 1, 1);
	calls_budget = Max(1, Min(calls_budget, EVBUS_CALLS_PER_TRANSACTION));
}

/*
 * evbus_inbox_init --- register, once, how the consumer lets go of Kafka
 * when the extension has been dropped.  Before any other evbus_inbox_*.
 */
void
evbus_inbox_init(void (*let_go) (void))
{
	inbox_let_go = let_go;
}

/* Start one of the inbox's short transactions (evbus_worker_begin). */
static void
inbox_begin(void)
{
	Assert(inbox_let_go != NULL);
	evbus_worker_begin(inbox_let_go);
}

/* Is sub a subscription of (group, topic)? */
static inline bool
sub_of(const EvbusSubscription *sub, const char *group, const char *topic)
{
	return strcmp(sub->group_name, group) == 0 && strcmp(sub->topic, topic) == 0;
}

/* Subscriptions of (group, topic) among subs, in handler order. */
static List *
subs_for(List *subs, const char *group, const char *topic)
{
	List	   *result = NIL;
	ListCell   *lc;

	foreach(lc, subs)
	{
		EvbusSubscription *sub = lfirst(lc);

		if (sub_of(sub, group, topic))
			result = lappend(result, sub);
	}
	return result;
}

/*
 * evbus_inbox_handler_calls --- how many calls of per-message handlers a
 * message of (group, topic) makes when it runs: one per such handler
 * (batch handlers take a batch in one call).  Allocates nothing: the
 * consumer counts each message it polls against evbus_inbox_calls_budget.
 */
int
evbus_inbox_handler_calls(List *subs, const char *group, const char *topic)
{
	ListCell   *lc;
	int			calls = 0;

	foreach(lc, subs)
	{
		EvbusSubscription *sub = lfirst(lc);

		if (!sub->batch && sub_of(sub, group, topic))
			calls++;
	}
	return calls;
}

/* The subscription of (group, topic, handler) among subs, or NULL. */
static EvbusSubscription *
sub_named(List *subs, const char *group, const char *topic, const char *handler)
{
	ListCell   *lc;

	foreach(lc, subs)
	{
		EvbusSubscription *sub = lfirst(lc);

		if (sub_of(sub, group, topic) && strcmp(sub->signature, handler) == 0)
			return sub;
	}
	return NULL;
}

/* ------------------------------------------------------------------
 * Receiving
 * ------------------------------------------------------------------
 */

/* A text[] of n C strings; a NULL one is a NULL element. */
static ArrayType *
text_array(const char **strs, int n)
{
	Datum	   *elems = palloc(sizeof(Datum) * Max(n, 1));
	bool	   *nulls = palloc(sizeof(bool) * Max(n, 1));
	int			dims[1] = {n};
	int			lbs[1] = {1};
	int			i;

	for (i = 0; i < n; i++)
	{
		nulls[i] = strs[i] == NULL;
		elems[i] = strs[i] ? CStringGetTextDatum(strs[i]) : (Datum) 0;
	}
	return construct_md_array(elems, nulls, 1, dims, lbs, TEXTOID, -1, false, TYPALIGN_INT);
}

/*
 * A received batch on its way into the inbox: the messages in Kafka's
 * order, what decoding made of each, and who subscribes to each.
 */
typedef struct Batch
{
	const char *group;
	ReceivedMessage *msgs;
	int			n;
	Decoded    *dec;			/* per message */
	List	  **subs;			/* per message: its subscriptions, or NIL */
} Batch;

/* One row of the batch's insert into the inbox: a (message, handler). */
typedef struct InboxRow
{
	int			msg;			/* the message's index in the batch */
	EvbusSubscription *sub;		/* the handler's subscription */
	char	   *dedup_key;		/* message id, else topic/partition/offset */
	bool		runnable;		/* no earlier event of its key waits */
	int			attempts;		/* the attempts the insert counts */
} InboxRow;

/*
 * decode_and_route --- decode the batch, find each message's
 * subscriptions and dead-letter its poison.  Returns the number of inbox
 * rows the rest can make at most (one per message and handler).
 */
static int
decode_and_route(Batch *b, List *subs, MemoryContext batch_cxt)
{
	int			maxrows = 0;
	int			i;

	b->dec = palloc0(sizeof(Decoded) * b->n);
	b->subs = palloc0(sizeof(List *) * b->n);
	evbus_decode_batch(b->msgs, b->n, b->group, b->dec);

	for (i = 0; i < b->n; i++)
	{
		b->subs[i] = subs_for(subs, b->group, b->msgs[i].topic);
		if (b->dec[i].poison)
		{
			evbus_dead_letter_poison(b->group, &b->msgs[i], &b->dec[i],
									 b->subs[i] ? ((EvbusSubscription *) linitial(b->subs[i]))->integration_event :
									 b->msgs[i].topic);
			MemoryContextSwitchTo(batch_cxt);
		}
		else
			maxrows += list_length(b->subs[i]);
	}
	return maxrows;
}

/*
 * Is any row of the group pending?  Usually none is, and this one probe of
 * the pending rows' index spares keys_pending a probe per key.
 */
static bool
group_has_pending(const char *group)
{
	static SPIPlanPtr plan = NULL;
	Oid			types[1] = {TEXTOID};
	Datum		values[1];
	bool		isnull;

	values[0] = CStringGetTextDatum(group);
	if (SPI_execute_plan(evbus_kept_plan(&plan,
										 "SELECT EXISTS (SELECT FROM evbus.inbox"
										 " WHERE state = 'pending'"
										 " AND group_name OPERATOR(pg_catalog.=) $1)",
										 1, types),
						 values, NULL, true, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not read the inbox");
	return DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
}

/*
 * keys_pending --- which (handler, key) of the batch have an earlier event
 * pending in the inbox?  A HeldKey list, allocated in batch_cxt.
 */
static List *
keys_pending(const Batch *b, MemoryContext batch_cxt)
{
	static SPIPlanPtr keys_plan = NULL;
	List	   *pending_keys = NIL;
	const char **keys = palloc(sizeof(char *) * b->n);
	int			nkeys = 0;
	bool		pending;
	Oid			types[2] = {TEXTOID, TEXTARRAYOID};
	Datum		values[2];
	int			i;
	uint64		r;

	for (i = 0; i < b->n; i++)
		if (!b->dec[i].poison && b->subs[i] && b->dec[i].event_key)
			keys[nkeys++] = b->dec[i].event_key;
	if (nkeys == 0)
		return NIL;
	pending = group_has_pending(b->group);
	MemoryContextSwitchTo(batch_cxt);
	if (!pending)
		return NIL;
	values[0] = CStringGetTextDatum(b->group);
	values[1] = PointerGetDatum(text_array(keys, nkeys));
	if (SPI_execute_plan(evbus_kept_plan(&keys_plan,
										 "SELECT DISTINCT handler, event_key FROM evbus.inbox"
										 " WHERE state = 'pending'"
										 " AND group_name OPERATOR(pg_catalog.=) $1"
										 " AND event_key OPERATOR(pg_catalog.=) ANY ($2)",
										 2, types),
						 values, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read the inbox");
	MemoryContextSwitchTo(batch_cxt);
	for (r = 0; r < SPI_processed; r++)
		pending_keys = evbus_hold_key(pending_keys,
									  SPI_getvalue(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, 1),
									  SPI_getvalue(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, 2));
	return pending_keys;
}

/*
 * plan_rows --- the batch's inbox rows into rows, in Kafka's order, one
 * per handler (in subscription order); returns how many.  A row runs now
 * unless an earlier message of its key waits for that handler; a row's
 * attempts count this one if it runs now, and one more if its call was
 * running when the consumer stopped (attempt_marker.c).
 */
static int
plan_rows(const Batch *b, List *pending_keys, bool inserted_handled, InboxRow *rows)
{
	int			nrows = 0;
	int			i;

	for (i = 0; i < b->n; i++)
	{
		ListCell   *lc;
		char	   *dedup_key;

		if (b->dec[i].poison || b->subs[i] == NIL)
			continue;			/* dead-lettered, or unsubscribed */
		dedup_key = b->dec[i].message_id ? b->dec[i].message_id :
			psprintf("%s/%d/" INT64_FORMAT, b->msgs[i].topic, b->msgs[i].partition,
					 b->msgs[i].offset);
		foreach(lc, b->subs[i])
		{
			InboxRow   *row = &rows[nrows++];

			row->msg = i;
			row->sub = lfirst(lc);
			row->dedup_key = dedup_key;

			/*
			 * Blocked if an earlier message of its key waits in the inbox for
			 * this handler; a message behind another of the batch runs after
			 * it, in order, in the handling transaction (which holds it back
			 * if that one fails).
			 */
			row->runnable = !row->sub->paused &&
				!(b->dec[i].event_key &&
				  evbus_key_held(pending_keys, row->sub->signature, b->dec[i].event_key));
			row->attempts = row->runnable ? 1 : 0;
			/* its call was running when the consumer stopped: that counts */
			if (!inserted_handled &&
				evbus_attempt_marker_crashed(b->group, &b->msgs[i], row->sub->signature))
				row->attempts++;
		}
	}
	return nrows;
}

/*
 * new_rows --- the batch's rows as they go into the inbox, either way
 * (inbox_write.c, or insert_params for SQL): inserted handled if their
 * handler runs in this transaction (inserted_handled) and now.
 */
static InboxNewRow *
new_rows(const Batch *b, const InboxRow *rows, int nrows, bool inserted_handled)
{
	InboxNewRow *out = palloc(sizeof(InboxNewRow) * nrows);
	int			r;

	for (r = 0; r < nrows; r++)
	{
		const ReceivedMessage *m = &b->msgs[rows[r].msg];
		const Decoded *d = &b->dec[rows[r].msg];

		out[r].dedup_key = rows[r].dedup_key;
		out[r].message_id = d->message_id;
		out[r].integration_event = rows[r].sub->integration_event;
		out[r].topic = m->topic;
		out[r].partition = m->partition;
		out[r].offset = m->offset;
		out[r].event_key = d->event_key;
		out[r].payload = d->payload;
		out[r].headers = d->headers;
		out[r].attempts = rows[r].attempts;
		out[r].handled = rows[r].attempts > 0 && inserted_handled;
		out[r].handler = rows[r].sub->signature;
	}
	return out;
}

/*
 * insert_params --- the 13 parameters of the inbox insert (see
 * INBOX_INSERT_SQL): the group, then one array per column of rows.
 */
static void
insert_params(const char *group, const InboxNewRow *rows, int nrows, Datum *values)
{
	const char **dedup = palloc(sizeof(char *) * nrows);
	const char **mid = palloc(sizeof(char *) * nrows);
	const char **event = palloc(sizeof(char *) * nrows);
	const char **topic = palloc(sizeof(char *) * nrows);
	const char **key = palloc(sizeof(char *) * nrows);
	const char **handler = palloc(sizeof(char *) * nrows);
	Datum	   *part = palloc(sizeof(Datum) * nrows);
	Datum	   *offs = palloc(sizeof(Datum) * nrows);
	Datum	   *payload = palloc(sizeof(Datum) * nrows);
	Datum	   *headers = palloc(sizeof(Datum) * nrows);
	Datum	   *attempts = palloc(sizeof(Datum) * nrows);
	Datum	   *handled = palloc(sizeof(Datum) * nrows);
	int			r;

	for (r = 0; r < nrows; r++)
	{
		dedup[r] = rows[r].dedup_key;
		mid[r] = rows[r].message_id;
		event[r] = rows[r].integration_event;
		topic[r] = rows[r].topic;
		key[r] = rows[r].event_key;
		handler[r] = rows[r].handler;
		part[r] = Int32GetDatum(rows[r].partition);
		offs[r] = Int64GetDatum(rows[r].offset);
		payload[r] = JsonbPGetDatum(rows[r].payload);
		headers[r] = JsonbPGetDatum(rows[r].headers);
		attempts[r] = Int32GetDatum(rows[r].attempts);
		handled[r] = BoolGetDatum(rows[r].handled);
	}
	values[0] = CStringGetTextDatum(group);
	values[1] = PointerGetDatum(text_array(dedup, nrows));
	values[2] = PointerGetDatum(text_array(mid, nrows));
	values[3] = PointerGetDatum(text_array(event, nrows));
	values[4] = PointerGetDatum(text_array(topic, nrows));
	values[5] = PointerGetDatum(construct_array(part, nrows, INT4OID, 4, true, TYPALIGN_INT));
	values[6] = PointerGetDatum(construct_array(offs, nrows, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	values[7] = PointerGetDatum(text_array(key, nrows));
	values[8] = PointerGetDatum(construct_array(payload, nrows, JSONBOID, -1, false, TYPALIGN_INT));
	values[9] = PointerGetDatum(construct_array(headers, nrows, JSONBOID, -1, false, TYPALIGN_INT));
	values[10] = PointerGetDatum(construct_array(attempts, nrows, INT4OID, 4, true, TYPALIGN_INT));
	values[11] = PointerGetDatum(construct_array(handled, nrows, BOOLOID, 1, true, TYPALIGN_CHAR));
	values[12] = PointerGetDatum(text_array(handler, nrows));
}

/* The Dispatch of an inserted row (inbox id) of the batch. */
static Dispatch *
dispatch_of(const Batch *b, const InboxRow *row, int64 inbox_id)
{
	Dispatch   *dp = palloc0(sizeof(Dispatch));
	const Decoded *d = &b->dec[row->msg];

	dp->inbox_id = inbox_id;
	dp->group_name = pstrdup(b->group);
	dp->topic = b->msgs[row->msg].topic;
	dp->partition = b->msgs[row->msg].partition;
	dp->offset = b->msgs[row->msg].offset;
	dp->message_id = d->message_id;
	dp->payload = d->payload;
	dp->headers = d->headers;
	dp->attempts = row->attempts;
	dp->event_key = d->event_key;
	dp->handler = row->sub->signature;
	dp->sub = row->sub;
	return dp;
}

/*
 * The inbox insert of a batch, with its arrays as parameters (insert_params).
 * INBOX_INSERT_SQL(conflict) appends conflict to it: "" or an ON CONFLICT
 * clause.
 */
#define INBOX_INSERT_SQL(conflict) \
	"INSERT INTO evbus.inbox (group_name, dedup_key, message_id," \
	" integration_event, topic, kafka_partition, kafka_offset, event_key," \
	" payload, headers, state, attempts, next_attempt_at, handled_at, handler)" \
	" SELECT $1, d, m, e, t, p, o, k, pl, h," \
	" CASE WHEN x THEN 'handled' ELSE 'pending' END, a," \
	" CASE WHEN x THEN NULL ELSE pg_catalog.now() END," \
	" CASE WHEN x THEN pg_catalog.now() END, hd" \
	" FROM ROWS FROM (pg_catalog.unnest($2), pg_catalog.unnest($3)," \
	" pg_catalog.unnest($4), pg_catalog.unnest($5), pg_catalog.unnest($6)," \
	" pg_catalog.unnest($7), pg_catalog.unnest($8), pg_catalog.unnest($9)," \
	" pg_catalog.unnest($10), pg_catalog.unnest($11), pg_catalog.unnest($12)," \
	" pg_catalog.unnest($13))" \
	" AS u(d, m, e, t, p, o, k, pl, h, a, x, hd)" \
	conflict \
	" RETURNING id, dedup_key, handler"

static Oid	insert_types[13] = {TEXTOID, TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID,
	INT4ARRAYOID, INT8ARRAYOID, TEXTARRAYOID, JSONBARRAYOID, JSONBARRAYOID, INT4ARRAYOID,
BOOLARRAYOID, TEXTARRAYOID};

/*
 * insert_through_sql --- INBOX_INSERT_SQL(conflict) with the rows'
 * parameters (insert_params); the RETURNING rows are in SPI_tuptable.
 */
static void
insert_through_sql(SPIPlanPtr *plan, const char *sql, const char *group,
				   const InboxNewRow *rows, int nrows)
{
	Datum		values[13];

	insert_params(group, rows, nrows, values);
	if (SPI_execute_plan(evbus_kept_plan(plan, sql, 13, insert_types),
						 values, NULL, false, 0) != SPI_OK_INSERT_RETURNING)
		elog(ERROR, "could not insert into the inbox");
}

/*
 * insert_all_new --- insert every row, in a subtransaction, and give
 * their ids; false (and nothing inserted) if one of them is in the inbox
 * already.
 *
 * A message normally arrives once, so the rows are first inserted without
 * ON CONFLICT, whose check probes the inbox's unique index once more per
 * row before the insertion probes it again (bench/consume.sh): straight
 * into the table where inbox_write.c knows it, else through SQL.  The
 * unique index refuses a redelivered row (a replay, a message its
 * producer sent twice): then the subtransaction goes and the caller
 * inserts again, skipping the rows that are there (test
 * 291_metrics_counts.pl replays, 120_consume_redelivery.pl redelivers).
 */
static bool
insert_all_new(const char *group, const InboxNewRow *rows, int nrows, int64 *ids)
{
	static SPIPlanPtr plan = NULL;
	EvbusSubxact sx;
	bool		inserted = true;

	evbus_subxact_begin(&sx);
	PG_TRY();
	{
		Oid			relid = get_relname_relid("inbox", evbus_schema_oid());

		if (!OidIsValid(relid))
			elog(ERROR, "evbus.inbox does not exist");
		if (!evbus_inbox_write(relid, group, rows, nrows, ids))
		{
			uint64		r;

			insert_through_sql(&plan, INBOX_INSERT_SQL(""), group, rows, nrows);
			if (SPI_processed != (uint64) nrows)
				elog(ERROR, "evbus: inbox insert returned %lu rows of %d",
					 (unsigned long) SPI_processed, nrows);
			for (r = 0; r < SPI_processed; r++)
			{
				bool		isnull;

				ids[r] = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[r],
													 SPI_tuptable->tupdesc, 1, &isnull));
			}
		}
		evbus_subxact_commit(&sx);
	}
	PG_CATCH();
	{
		ErrorData  *edata = evbus_subxact_abort(&sx);

		if (edata->sqlerrcode != ERRCODE_UNIQUE_VIOLATION)
			ReThrowError(edata);
		FreeErrorData(edata);
		inserted = false;
	}
	PG_END_TRY();
	return inserted;
}

/*
 * insert_rows --- insert the rows into the inbox, unless their (group,
 * dedup key, handler) is there already (a redelivery), and append the
 * inserted rows that run now to *dispatch (allocated in batch_cxt).
 * Returns true if an inserted row was left waiting for an earlier event
 * of its key.
 */
static bool
insert_rows(const Batch *b, const InboxRow *rows, int nrows, bool inserted_handled,
			List **dispatch, MemoryContext batch_cxt)
{
	static SPIPlanPtr skip_existing_plan = NULL;
	InboxNewRow *inbox_rows = new_rows(b, rows, nrows, inserted_handled);
	int64	   *ids = palloc(sizeof(int64) * nrows);
	bool		left_pending = false;
	int			row = 0;
	uint64		r;

	if (insert_all_new(b->group, inbox_rows, nrows, ids))
	{
		MemoryContextSwitchTo(batch_cxt);
		for (row = 0; row < nrows; row++)
		{
			if (rows[row].runnable)
				*dispatch = lappend(*dispatch, dispatch_of(b, &rows[row], ids[row]));
			else
				left_pending = true;
		}
		return left_pending;
	}

	insert_through_sql(&skip_existing_plan,
					   INBOX_INSERT_SQL(" ON CONFLICT (group_name, dedup_key, handler) DO NOTHING"),
					   b->group, inbox_rows, nrows);
	MemoryContextSwitchTo(batch_cxt);

	/* RETURNING follows the insert order; rows not returned were redeliveries */
	for (r = 0; r < SPI_processed; r++)
	{
		bool		isnull;
		int64		id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[r],
													 SPI_tuptable->tupdesc, 1, &isnull));
		char	   *returned = SPI_getvalue(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, 2);
		char	   *returned_handler = SPI_getvalue(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, 3);

		while (row < nrows && (strcmp(rows[row].dedup_key, returned) != 0 ||
							   strcmp(rows[row].sub->signature, returned_handler) != 0))
			row++;
		if (row == nrows)
			elog(ERROR, "evbus: inbox insert returned an unexpected row");
		if (rows[row].runnable)
			*dispatch = lappend(*dispatch, dispatch_of(b, &rows[row], id));
		else
			left_pending = true;
		row++;
	}
	return left_pending;
}

/*
 * record_batch --- decode a received batch, dead-letter its poison, insert
 * the inbox rows of the rest, one per (message, handler) (redeliveries
 * excepted), and count the attempt of each that may run now: whose key
 * has no earlier row pending for that handler.  Those rows are inserted
 * as handled if inserted_handled (their handlers run in this transaction;
 * a failure sets the row back to pending), else as pending.  Returns the
 * rows to run, in Kafka's order (a message's handlers in subscription
 * order), in *dispatch (allocated in batch_cxt); returns true if some row
 * was left waiting for an earlier event of its key.
 */
static bool
record_batch(const char *group, List *subs, ReceivedMessage *msgs, int n,
			 bool inserted_handled, List **dispatch, MemoryContext batch_cxt)
{
	Batch		b = {group, msgs, n, NULL, NULL};
	int			maxrows = decode_and_route(&b, subs, batch_cxt);
	List	   *pending_keys = keys_pending(&b, batch_cxt);
	InboxRow   *rows = palloc(sizeof(InboxRow) * Max(maxrows, 1));
	int			nrows = plan_rows(&b, pending_keys, inserted_handled, rows);

	if (nrows == 0)
		return false;
	return insert_rows(&b, rows, nrows, inserted_handled, dispatch, batch_cxt);
}

/*
 * note_counted --- note in the attempt marker the rows of dispatch, whose
 * attempts the careful way has just counted and committed: after a crash
 * in the call of one of them, the others' are taken back
 * (evbus_inbox_take_back_attempts).
 */
static void
note_counted(List *dispatch)
{
	int64	   *ids = palloc(sizeof(int64) * Max(list_length(dispatch), 1));
	ListCell   *lc;

	foreach(lc, dispatch)
		ids[foreach_current_index(lc)] = ((Dispatch *) lfirst(lc))->inbox_id;
	evbus_attempt_marker_counted(ids, list_length(dispatch));
	pfree(ids);
}

/*
 * evbus_inbox_charge_attempt --- in a transaction of its own, on disk
 * before any handler runs, count one attempt of pending inbox row id: the
 * consumer stopped in its call, and the transaction that counted it is
 * gone (evbus_inbox_dispatch_due; attempt_marker.c).  So a
 * message whose handler crashes the server is dead-lettered as
 * "interrupted" after its retries, not run for ever (test
 * 130_consume_kill.pl).  A row the stopped transaction had inserted is
 * not there: nothing to count.
 */
void
evbus_inbox_charge_attempt(int64 id)
{
	Oid			types[1] = {INT8OID};
	Datum		values[1] = {Int64GetDatum(id)};

	inbox_begin();
	evbus_spi_exec("UPDATE evbus.inbox SET attempts = attempts OPERATOR(pg_catalog.+) 1"
				   " WHERE state = 'pending' AND id OPERATOR(pg_catalog.=) $1",
				   1, types, values, NULL, SPI_OK_UPDATE);
	if (SPI_processed > 0)
		ereport(LOG,
				(errmsg("evbus: the consumer stopped in the handler call of inbox row " INT64_FORMAT "; that attempt counts",
						id)));
	evbus_worker_commit_durable();
}

/*
 * evbus_inbox_take_back_attempts --- in a transaction of its own, on disk
 * before any handler runs, take back the attempt counted for each of the
 * n pending inbox rows ids: the consumer stopped in another row's call
 * (attempt_marker.c, test 138_consume_kill_neighbours.pl).
 */
void
evbus_inbox_take_back_attempts(const int64 *ids, int n)
{
	Oid			types[1] = {INT8ARRAYOID};
	Datum		values[1];

	inbox_begin();
	values[0] = evbus_int8_array(ids, n);
	evbus_spi_exec("UPDATE evbus.inbox SET attempts = pg_catalog.int4larger(attempts OPERATOR(pg_catalog.-) 1, 0)"
				   " WHERE state = 'pending' AND id OPERATOR(pg_catalog.=) ANY ($1)",
				   1, types, values, NULL, SPI_OK_UPDATE);
	ereport(LOG,
			(errmsg("evbus: the consumer stopped in one handler call; the attempt counted for %d other message(s) handled with it is taken back",
					n)));
	evbus_worker_commit_durable();
}

/*
 * evbus_inbox_receive --- handle a received batch: in one transaction, or
 * the careful way in two if it holds a message that was being handled
 * when the consumer stopped (see the top of this file).
 *
 * msgs are the batch in the order Kafka delivered them; offsets are the
 * next offsets to store per partition once the batch is handled.
 * commit_async: the batch commits without waiting for the disk (more
 * messages wait: consumer.c), whatever synchronous_commit says.
 * Returns true if messages were left pending (a retry, or waiting for an
 * earlier event of their key).
 */
bool
evbus_inbox_receive(const char *group, List *subs, ReceivedMessage *msgs, int n,
					NextOffset *offsets, int noffsets, bool commit_async)
{
	static MemoryContext batch_cxt = NULL;
	bool		careful;
	bool		left_pending;
	List	   *dispatch = NIL;
	int			calls;
	int			handled;
	MemoryContext old;

	if (batch_cxt == NULL)
		batch_cxt = AllocSetContextCreate(TopMemoryContext, "evbus receive",
										  ALLOCSET_DEFAULT_SIZES);
	careful = !evbus_attempt_marker_write(group, msgs, n);

	inbox_begin();
	old = MemoryContextSwitchTo(batch_cxt);
	left_pending = record_batch(group, subs, msgs, n, !careful, &dispatch, batch_cxt);
	if (careful)
	{
		/* the attempts are on disk before any handler runs */
		MemoryContextSwitchTo(old);
		evbus_worker_commit_durable();
		note_counted(dispatch);
		inbox_begin();
		old = MemoryContextSwitchTo(batch_cxt);
	}
	if (!evbus_inbox_handle_batch(dispatch, batch_cxt, !careful, &calls, &handled))
		left_pending = true;
	adapt_calls_budget(calls);
	evbus_store_offsets(group, offsets, noffsets);
	MemoryContextSwitchTo(old);
	if (commit_async)
		evbus_worker_commit_async();
	else
		evbus_worker_commit();
	/* committed: no batch in hand if the consumer stops from here on */
	evbus_attempt_marker_clear();

	MemoryContextReset(batch_cxt);
	return left_pending;
}

/* list_sort comparator: dispatched rows in inbox id order. */
static int
dispatch_id_order(const ListCell *a, const ListCell *b)
{
	int64		x = ((const Dispatch *) lfirst(a))->inbox_id;
	int64		y = ((const Dispatch *) lfirst(b))->inbox_id;

	return x < y ? -1 : x > y ? 1 : 0;
}

/*
 * evbus_inbox_dispatch_due --- run pending messages that may run now, each
 * key's in order (inbox_due.c): retries, messages that waited for their
 * key, attempts interrupted by a crash; as many as
 * evbus_inbox_calls_budget() says, in one transaction.  Returns when the
 * next pending message is due: a past time when this call ran some (the
 * worker calls again while more may be due), 0 if none will be until
 * something changes.
 *
 * The rows' attempts are counted first, in the transaction that runs them
 * (a handler reading its inbox row sees its attempt counted, as in a
 * received batch), not in one of their own committed on disk before: a
 * crash or a termination in a handler's call rolls the count back with
 * the rest, and the attempt marker, which names the running call's row,
 * has the consumer's next start count that attempt alone
 * (evbus_inbox_charge_attempt; tests 130_consume_kill.pl,
 * 138_consume_kill_neighbours.pl, 232_terminate_handler.pl).  The rows
 * stay locked until their outcomes are recorded, so that evbus.retry or a
 * repair waits for them.
 */
TimestampTz
evbus_inbox_dispatch_due(List *subs)
{
	static SPIPlanPtr plan = NULL;
	List	   *dispatch = NIL;
	int64	   *due;
	int			ndue;
	Oid			types[1] = {INT8ARRAYOID};
	Datum		values[1];
	int			calls;
	int			handled;
	TimestampTz next_due;
	uint64		i;
	MemoryContext batch_cxt;
	MemoryContext old;

	inbox_begin();
	ndue = evbus_inbox_due_rows(calls_budget, &due, &next_due);
	if (ndue == 0)
	{
		evbus_worker_commit();
		return next_due;
	}
	values[0] = evbus_int8_array(due, ndue);
	if (SPI_execute_plan(evbus_kept_plan(&plan,
										 "UPDATE evbus.inbox i SET attempts = attempts OPERATOR(pg_catalog.+) 1"
										 " WHERE id OPERATOR(pg_catalog.=) ANY ($1) AND state = 'pending'"
										 " RETURNING i.id, i.group_name, i.topic, i.message_id::pg_catalog.text,"
										 " i.payload, i.headers, i.attempts, i.event_key, i.handler,"
										 " i.kafka_partition, i.kafka_offset",
										 1, types),
						 values, NULL, false, 0) != SPI_OK_UPDATE_RETURNING)
		elog(ERROR, "could not read the inbox");
	batch_cxt = AllocSetContextCreate(TopMemoryContext, "evbus dispatch",
									  ALLOCSET_DEFAULT_SIZES);
	old = MemoryContextSwitchTo(batch_cxt);
	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		Dispatch   *dp = palloc0(sizeof(Dispatch));

		dp->inbox_id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		dp->group_name = SPI_getvalue(tup, desc, 2);
		dp->topic = SPI_getvalue(tup, desc, 3);
		dp->message_id = SPI_getvalue(tup, desc, 4);
		dp->payload = DatumGetJsonbPCopy(SPI_getbinval(tup, desc, 5, &isnull));
		dp->headers = DatumGetJsonbPCopy(SPI_getbinval(tup, desc, 6, &isnull));
		dp->attempts = DatumGetInt32(SPI_getbinval(tup, desc, 7, &isnull));
		dp->event_key = SPI_getvalue(tup, desc, 8);
		dp->handler = SPI_getvalue(tup, desc, 9);
		dp->partition = DatumGetInt32(SPI_getbinval(tup, desc, 10, &isnull));
		dp->offset = DatumGetInt64(SPI_getbinval(tup, desc, 11, &isnull));
		dp->sub = sub_named(subs, dp->group_name, dp->topic, dp->handler);
		dispatch = lappend(dispatch, dp);
	}
	list_sort(dispatch, dispatch_id_order);

	if (!evbus_attempt_marker_retries())
	{
		/* nothing would name a call that crashes: the count on disk first */
		MemoryContextSwitchTo(old);
		evbus_worker_commit_durable();
		inbox_begin();
		old = MemoryContextSwitchTo(batch_cxt);
	}

	/*
	 * In id order: a message handled here lets the next of its key go.  A row
	 * the walk took that is not handled now (a retry, a parked dead letter,
	 * left waiting) stops its key: the walk, which went on as if it ran,
	 * starts again at the first row (inbox_due.c).
	 */
	(void) evbus_inbox_handle_batch(dispatch, batch_cxt, false, &calls, &handled);
	if (handled < ndue)
		evbus_inbox_walk_from_start();
	adapt_calls_budget(calls);
	MemoryContextSwitchTo(old);
	evbus_worker_commit();
	evbus_attempt_marker_clear();
	MemoryContextDelete(batch_cxt);
	/* what ran changed what is due: the next call walks again */
	return GetCurrentTimestamp();
}

/*
 * evbus_inbox_maintain --- trim the inbox, in its own transaction, at most
 * TRIM_ROWS rows of each kind per call; returns true if a kind had more
 * rows due than that (the caller calls again soon: consumer_worker.c).
 *
 * A handled message's row goes after evbus.inbox_retention (the window in
 * which a redelivery is recognised).  A dead message's row goes with its
 * dead letter: once that is gone (deleted by evbus.dead_letter_retention,
 * or by hand) or older than evbus.dead_letter_retention; as long as the
 * dead letter is kept, evbus.retry() can requeue the message and a
 * redelivery is recognised (test 236_inbox_retention.pl).  0 keeps either
 * kind for ever.  The partial index inbox_dead finds the dead rows.
 *
 * Finding the dead rows whose dead letter is gone reads every dead row
 * and every dead letter of the consuming side (40 ms for 50,000 of each):
 * it runs every DEAD_TRIM_INTERVAL_MS, or every call while
 * evbus.dead_letter_retention is shorter, and at once again while it
 * still finds more than one call deletes.  Until then such a row only
 * keeps recognising a redelivery of its message a little longer.
 */
#define DEAD_TRIM_INTERVAL_MS (10 * 60 * 1000)
#define TRIM_ROWS 10000			/* rows of each kind per call */

bool
evbus_inbox_maintain(void)
{
	static TimestampTz next_dead_trim = 0;
	Oid			types[1] = {INT4OID};
	Datum		values[1];
	TimestampTz now = GetCurrentTimestamp();
	bool		more = false;

	if (evbus_inbox_retention_s <= 0 && evbus_dead_letter_retention_s <= 0)
		return false;
	inbox_begin();
	if (evbus_inbox_retention_s > 0)
	{
		values[0] = Int32GetDatum(evbus_inbox_retention_s);

		/*
		 * ORDER BY: the oldest rows through the handled_at index, whatever
		 * the statistics say; without them (a new, restored or upgraded
		 * inbox) the planner expected many rows due and read the whole inbox
		 * every 5 s to find none.  Deleted by their ctid: with statistics, a
		 * join on their ids was a hash join that read the whole inbox at each
		 * call (test 236_inbox_retention.pl).
		 */
		evbus_spi_exec("DELETE FROM evbus.inbox WHERE ctid OPERATOR(pg_catalog.=) ANY (ARRAY("
					   "SELECT ctid FROM evbus.inbox"
					   " WHERE handled_at OPERATOR(pg_catalog.<) (pg_catalog.now() OPERATOR(pg_catalog.-)"
					   " pg_catalog.make_interval(secs => $1))"
					   " ORDER BY handled_at LIMIT " CppAsString2(TRIM_ROWS) "))",
					   1, types, values, NULL, SPI_OK_DELETE);
		more = SPI_processed >= TRIM_ROWS;
	}
	if (evbus_dead_letter_retention_s > 0 && now >= next_dead_trim)
	{
		values[0] = Int32GetDatum(evbus_dead_letter_retention_s);
		evbus_spi_exec("DELETE FROM evbus.inbox WHERE ctid OPERATOR(pg_catalog.=) ANY (ARRAY("
					   "SELECT i.ctid FROM evbus.inbox i"
					   " WHERE i.state OPERATOR(pg_catalog.=) 'dead' AND NOT EXISTS"
					   " (SELECT FROM evbus.dead_letters d"
					   " WHERE d.direction OPERATOR(pg_catalog.=) 'consume'"
					   " AND d.group_name OPERATOR(pg_catalog.=) i.group_name"
					   " AND d.topic OPERATOR(pg_catalog.=) i.topic"
					   " AND d.kafka_partition OPERATOR(pg_catalog.=) i.kafka_partition"
					   " AND d.kafka_offset OPERATOR(pg_catalog.=) i.kafka_offset"
					   " AND d.dead_at OPERATOR(pg_catalog.>=) (pg_catalog.now() OPERATOR(pg_catalog.-)"
					   " pg_catalog.make_interval(secs => $1)))"
					   " LIMIT " CppAsString2(TRIM_ROWS) "))",
					   1, types, values, NULL, SPI_OK_DELETE);
		if (SPI_processed < TRIM_ROWS)
			next_dead_trim = TimestampTzPlusMilliseconds(now,
														 Min(DEAD_TRIM_INTERVAL_MS,
															 evbus_dead_letter_retention_s * 1000L));
		else
			more = true;
	}
	evbus_worker_commit();
	return more;
}

/*
 * evbus_inbox_cleanup_wake --- wake_at (0: none), or earlier when the trim
 * has rows falling due before it: the oldest handled row, or the dead row
 * of the oldest dead letter of the consuming side, which goes with it
 * (evbus_idle_cleanup_wake).  Read as the consumer goes idle, after its
 * last batch, in a transaction of its own (idle.c, test 237_idle_trim.pl).
 */
TimestampTz
evbus_inbox_cleanup_wake(TimestampTz wake_at)
{
	TimestampTz handled_due = 0;
	TimestampTz dead_due = 0;

	inbox_begin();
	if (evbus_inbox_retention_s > 0)
		handled_due = evbus_spi_oldest_due("SELECT pg_catalog.min(handled_at) FROM evbus.inbox",
										   evbus_inbox_retention_s);
	if (evbus_dead_letter_retention_s > 0)
		dead_due = evbus_spi_oldest_due("SELECT pg_catalog.min(dead_at) FROM"
										" (SELECT d.dead_at FROM evbus.dead_letters d"
										" WHERE d.direction OPERATOR(pg_catalog.=) 'consume'"
										" AND NOT" EVBUS_DEAD_LETTER_PARKS_SQL("d")
										" ORDER BY d.dead_at LIMIT 1) o",
										evbus_dead_letter_retention_s);
	evbus_worker_commit();
	wake_at = evbus_idle_cleanup_wake(wake_at, handled_due, evbus_inbox_retention_s);
	return evbus_idle_cleanup_wake(wake_at, dead_due, evbus_dead_letter_retention_s);
}

/*-------------------------------------------------------------------------
 *
 * inbox_retry.c
 *	  Running the (message, handler)s a transaction of the inbox
 *	  dispatches, and what follows a failure: a retry scheduled with
 *	  exponential backoff and jitter, or after the last retry a dead letter
 *	  and NOTIFY evbus_dead_letter.  Also the dead letter of an undecodable
 *	  message, with its raw bytes.
 *
 * Each (message, handler) runs in its own subtransaction (handler.c) and
 * its failure is recorded for that handler alone: one subscriber's failing
 * handler never rolls back, holds back or dead-letters another handler's
 * work (test 210_subscription_ownership.pl).  Once a message of a key stays
 * pending for a handler, the later messages of that key wait for that
 * handler (test 150_consume_key_order.pl).  A message whose attempts all
 * ended with the consumer gone is dead-lettered as "interrupted" without
 * running again, so a poison message cannot crash-loop the server (test
 * 130_consume_kill.pl).  A dead letter of a 'park' subscription holds its
 * key like a retry does (inbox_park.c, test 274_park_key.pl).
 *
 * Called by inbox.c inside its transactions; calls nothing of inbox.c.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "common/pg_prng.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

#include "inbox.h"

/* What running a dispatched (message, handler) came to. */
typedef enum Outcome
{
	HANDLED,					/* handlers succeeded; caller marks it handled */
	PENDING,					/* failed, retry scheduled */
	DEAD,						/* failed for the last time, dead-lettered */
	PARKED						/* the same, and its key waits (inbox_park.c) */
} Outcome;

/* A key held back for one handler: (handler, event key). */
typedef struct HeldKey
{
	const char *handler;
	const char *key;
} HeldKey;

/*
 * evbus_hold_key --- add (handler, key) to held, a list of keys held back
 * for one handler; the strings are not copied.
 */
List *
evbus_hold_key(List *held, const char *handler, const char *key)
{
	HeldKey    *h = palloc(sizeof(HeldKey));

	h->handler = handler;
	h->key = key;
	return lappend(held, h);
}

/* evbus_key_held --- is (handler, key) in held? */
bool
evbus_key_held(List *held, const char *handler, const char *key)
{
	ListCell   *lc;

	foreach(lc, held)
	{
		HeldKey    *h = lfirst(lc);

		if (strcmp(h->key, key) == 0 && strcmp(h->handler, handler) == 0)
			return true;
	}
	return false;
}

/*
 * evbus_dead_letter_poison --- a poison message: an inbox row (for
 * de-duplication; a redelivery is dead-lettered only once) and a dead
 * letter with its raw bytes, under integration_event.  A redelivery (a
 * replay reads it again, say) is neither logged nor counted again (test
 * 160_consume_poison.pl).
 */
void
evbus_dead_letter_poison(const char *group, const ReceivedMessage *m, const Decoded *d,
						 const char *integration_event)
{
	char	   *dedup = d->message_id ? d->message_id :
		psprintf("%s/%d/" INT64_FORMAT, m->topic, m->partition, m->offset);
	char	   *message_id = d->message_id;
	bytea	   *raw = NULL;
	Oid			types[9] = {TEXTOID, TEXTOID, TEXTOID, TEXTOID, INT4OID, INT8OID, TEXTOID, TEXTOID, BYTEAOID};
	Datum		values[9];
	char		nulls[9] = {' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' '};

	if (message_id == NULL)
	{
		pg_uuid_t	uuid;

		evbus_new_message_id(&uuid);
		message_id = evbus_uuid_to_cstring(&uuid);
	}
	if (m->value)
	{
		raw = palloc(VARHDRSZ + m->valuelen);
		SET_VARSIZE(raw, VARHDRSZ + m->valuelen);
		memcpy(VARDATA(raw), m->value, m->valuelen);
	}
	values[0] = CStringGetTextDatum(group);
	values[1] = CStringGetTextDatum(dedup);
	values[2] = CStringGetTextDatum(message_id);
	values[3] = CStringGetTextDatum(m->topic);
	values[4] = Int32GetDatum(m->partition);
	values[5] = Int64GetDatum(m->offset);
	values[6] = CStringGetTextDatum(d->poison);
	values[7] = CStringGetTextDatum(d->detail ? d->detail : d->poison);
	if (raw)
		values[8] = PointerGetDatum(raw);
	else
		nulls[8] = 'n';
	/* integration event: the subscription's, else the topic */
	evbus_spi_exec(psprintf("WITH i AS (INSERT INTO evbus.inbox (group_name, dedup_key, message_id,"
							" integration_event, topic, kafka_partition, kafka_offset, payload, headers,"
							" state, last_error_code, last_error_message)"
							" VALUES ($1, $2, $3, %s, $4, $5, $6, NULL, '{}', 'dead', $7, $8)"
							" ON CONFLICT (group_name, dedup_key, handler) DO NOTHING RETURNING message_id),"
							" d AS (INSERT INTO evbus.dead_letters (message_id, direction, integration_event,"
							" topic, group_name, kafka_partition, kafka_offset, raw_value, attempts,"
							" error_code, error_message)"
							" SELECT message_id, 'consume', %s, $4, $1, $5, $6, $9, 0, $7, $8 FROM i"
							" RETURNING message_id)"
							" SELECT pg_catalog.pg_notify('evbus_dead_letter', message_id::pg_catalog.text) FROM d",
							quote_literal_cstr(integration_event), quote_literal_cstr(integration_event)),
				   9, types, values, nulls, SPI_OK_SELECT);
	if (SPI_processed == 0)
	{
		ereport(DEBUG1,
				(errmsg("evbus: message at %s/%d/" INT64_FORMAT " cannot be decoded (%s); dead-lettered before",
						m->topic, m->partition, m->offset, d->poison)));
		return;
	}
	/* the publisher expires dead letters: an idle one learns of this one */
	evbus_wake_at_commit(true, false);
	ereport(WARNING,
			(errmsg("evbus: message at %s/%d/" INT64_FORMAT " cannot be decoded (%s); dead-lettered",
					m->topic, m->partition, m->offset, d->poison)));
	evbus_metrics_outcome('d');
}

/* Exponential backoff with +-20 % jitter, capped. */
static int64
backoff_ms(int attempts)
{
	double		ms = evbus_retry_interval_ms;
	int			i;

	for (i = 1; i < attempts && ms < evbus_retry_max_interval_ms; i++)
		ms *= 2;
	if (ms > evbus_retry_max_interval_ms)
		ms = evbus_retry_max_interval_ms;
	ms *= 0.8 + 0.4 * pg_prng_double(&pg_global_prng_state);
	return (int64) ms;
}

/* A handler's own retry budget. */
static int
max_retries_of(const EvbusSubscription *sub)
{
	return sub->max_retries >= 0 ? sub->max_retries : evbus_max_retries;
}

/*
 * Does the transaction hold SUBXIDS_WANTED subtransaction ids already?
 * Then it makes no more handler calls (inbox.h).
 */
static bool
subxids_full(void)
{
	return MyProc->subxidStatus.overflowed ||
		MyProc->subxidStatus.count >= SUBXIDS_WANTED;
}

/*
 * Note in the attempt marker that the call of d is about to run: a crash
 * in it is that row's attempt alone (attempt_marker.c).
 */
static void
mark_call(const Dispatch *d)
{
	evbus_attempt_marker_call(d->group_name, d->topic, d->partition, d->offset,
							  d->handler, d->inbox_id);
}

/*
 * note_call --- before the call of ds[i] (i >= 0): false if the
 * transaction may make no more calls (subxids_full), else mark_call.
 * After the call (i < 0): note that it returned.  An EvbusCallNote.
 */
static bool
note_call(void *arg, int i)
{
	Dispatch  **ds = arg;

	if (i < 0)
	{
		evbus_attempt_marker_call_done();
		return true;
	}
	if (subxids_full())
		return false;
	mark_call(ds[i]);
	return true;
}

/*
 * run_one --- run one dispatched (message, handler) (the handler
 * in its own subtransaction, handler.c) and record a failure (inside a
 * txn): the retry, or the dead letter, is this handler's alone.  Success
 * is left to the caller to record (in one statement for the batch).
 */
static Outcome record_failure(Dispatch *d, char *code, char *message);

static Outcome
run_one(Dispatch *d)
{
	char	   *code = NULL;
	char	   *message = NULL;

	if (d->sub == NULL)
	{
		code = "no_handler";
		message = psprintf("handler %s is not subscribed to this event in this group any more",
						   d->handler);
	}
	else if (d->attempts > max_retries_of(d->sub) + 1)
	{
		/*
		 * every attempt so far ended with the consumer gone: a crash, or a
		 * call past twice the handler timeout (handler_timeout.c)
		 */
		code = "interrupted";
		message = psprintf("each of the %d attempts ended with the consumer stopping while it ran the handlers "
						   "(a crash, a termination, or a call still running at twice evbus.handler_timeout)",
						   d->attempts - 1);
		/* this one did not run: the dead letter records the others */
		d->attempts--;
	}
	else
	{
		TimestampTz started = GetCurrentTimestamp();
		bool		ok;
		int64		took;

		mark_call(d);
		ok = evbus_run_handler(d->sub, &d->payload, &d->headers, 1, &code, &message);
		evbus_attempt_marker_call_done();
		took = GetCurrentTimestamp() - started;

		/* counted when the transaction commits (metrics.c) */
		evbus_metrics_handler_ran(took);
		if (ok)
		{
			evbus_metrics_outcome('h');
			return HANDLED;
		}
	}

	return record_failure(d, code, message);
}

/*
 * record_failure --- the attempt of a dispatched (message, handler)
 * failed with code and message: schedule its retry, with backoff, or
 * after the last one dead-letter it (inside a txn).  The row's attempts
 * become d->attempts, which counts this one.
 */
static Outcome
record_failure(Dispatch *d, char *code, char *message)
{
	Oid			types[5] = {INT8OID, TEXTOID, TEXTOID, INT8OID, INT4OID};
	Datum		values[5];

	values[0] = Int64GetDatum(d->inbox_id);
	values[1] = CStringGetTextDatum(code);
	values[2] = CStringGetTextDatum(message);
	values[4] = Int32GetDatum(d->attempts);
	if (d->sub != NULL && d->attempts <= max_retries_of(d->sub))
	{
		values[3] = Int64GetDatum(backoff_ms(d->attempts));
		evbus_spi_exec("UPDATE evbus.inbox SET state = 'pending', handled_at = NULL, attempts = $5,"
					   " last_error_code = $2, last_error_message = $3,"
					   " errors = COALESCE(errors, '[]') OPERATOR(pg_catalog.||)"
					   " pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object('attempt', $5,"
					   " 'at', pg_catalog.now(), 'sqlstate', $2, 'message', $3)),"
					   " next_attempt_at = pg_catalog.clock_timestamp() OPERATOR(pg_catalog.+)"
					   " pg_catalog.make_interval(secs => $4::pg_catalog.float8 OPERATOR(pg_catalog./) 1000)"
					   " WHERE id OPERATOR(pg_catalog.=) $1",
					   5, types, values, NULL, SPI_OK_UPDATE);
		evbus_metrics_outcome('r');
		return PENDING;
	}

	/* out of retries: dead letter, NOTIFY; the key moves on or is parked */
	evbus_metrics_outcome('d');
	return evbus_inbox_dead_letter(d, code, message) ? PARKED : DEAD;
}

/* ------------------------------------------------------------------
 * Running a transaction's dispatched rows
 * ------------------------------------------------------------------
 */

/* Run sql, an UPDATE of the inbox rows whose ids are $1, on ids[0..n-1]. */
static void
update_rows(SPIPlanPtr *plan, const char *sql, int64 *ids, int n)
{
	Oid			types[1] = {INT8ARRAYOID};
	Datum		values[1];

	if (n == 0)
		return;
	values[0] = evbus_int8_array(ids, n);
	if (SPI_execute_plan(evbus_kept_plan(plan, sql, 1, types),
						 values, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not update the inbox");
}

/* Mark the given inbox rows handled, in one statement. */
static void
mark_handled(int64 *ids, int n)
{
	static SPIPlanPtr plan = NULL;

	update_rows(&plan, "UPDATE evbus.inbox SET state = 'handled',"
				" handled_at = pg_catalog.now(), next_attempt_at = NULL"
				" WHERE id OPERATOR(pg_catalog.=) ANY ($1)", ids, n);
}

/*
 * Leave the given inbox rows pending, due now, their attempt taken back
 * (they did not run), in one statement.
 */
static void
leave_waiting(int64 *ids, int n)
{
	static SPIPlanPtr plan = NULL;

	update_rows(&plan, "UPDATE evbus.inbox SET attempts = attempts OPERATOR(pg_catalog.-) 1,"
				" state = 'pending', handled_at = NULL, next_attempt_at = pg_catalog.now()"
				" WHERE id OPERATOR(pg_catalog.=) ANY ($1)", ids, n);
}

/*
 * hold_if_waiting --- after a failed attempt of d: a row left pending (a
 * retry) or parked holds back the later rows of its key for its handler
 * in this batch (*blocked), and a retry clears *none_pending.
 */
static void
hold_if_waiting(const Dispatch *d, Outcome outcome, List **blocked, bool *none_pending)
{
	if (outcome == PENDING)
		*none_pending = false;
	if ((outcome == PENDING || outcome == PARKED) && d->event_key)
		*blocked = evbus_hold_key(*blocked, d->handler, d->event_key);
}

/*
 * run_in_one_go --- run each handler over all its dispatched messages, in
 * Kafka's order, and set done[i] for the messages it handled or whose
 * attempt failed here.  A batch handler is called once with arrays, in
 * one subtransaction; if that call fails it has handled none, and its
 * messages are left to the caller, who calls it with one-element arrays,
 * so that the failing ones retry and dead-letter alone (test
 * 190_batch_handler.pl).  Any other handler is called once per message,
 * each call a subtransaction of its own (evbus_run_handler_each), until a
 * call fails: that message's attempt is recorded here (a retry or a dead
 * letter; its key is held in *blocked, and *none_pending cleared for a
 * retry) and the handler's later messages are left to the caller, one at
 * a time (test 192_handlers_in_one_go.pl).  Once the transaction holds
 * SUBXIDS_WANTED subtransaction ids, it calls no more: the messages not
 * called are the caller's too.  Only rows that may run at once (no key
 * held by a row of the batch) come here.  Unless many_per_call, a batch
 * handler's messages are the caller's: after a crash (the careful way) a
 * call of many messages would name none of them, so they go one at a time.
 * Appends the ids of the rows handled to handled[*nhandled].  Returns how
 * many handler calls it made, each in a subtransaction of its own.
 */
static int
run_in_one_go(Dispatch **ds, int n, bool many_per_call, bool *done, int64 *handled_ids,
			  int *nhandled, List **blocked, bool *none_pending, MemoryContext cxt)
{
	Jsonb	  **payloads = palloc(sizeof(Jsonb *) * n);
	Jsonb	  **headers = palloc(sizeof(Jsonb *) * n);
	int64	   *took = palloc(sizeof(int64) * n);
	int		   *which = palloc(sizeof(int) * n);
	Dispatch  **mine = palloc(sizeof(Dispatch *) * n);
	bool	   *seen = palloc0(sizeof(bool) * n);
	int			calls = 0;
	int			first;

	for (first = 0; first < n; first++)
	{
		EvbusSubscription *sub = ds[first]->sub;
		int			m = 0;
		int			handled;
		Outcome		outcome;
		int			i;
		char	   *code = NULL;
		char	   *message = NULL;
		TimestampTz started;

		if (seen[first] || sub == NULL || (sub->batch && !many_per_call))
			continue;
		for (i = first; i < n; i++)
		{
			if (ds[i]->sub != sub)
				continue;
			seen[i] = true;
			if (ds[i]->attempts > max_retries_of(sub) + 1)
				continue;		/* interrupted: run_one dead-letters it */
			which[m] = i;
			mine[m] = ds[i];
			payloads[m] = ds[i]->payload;
			headers[m] = ds[i]->headers;
			m++;
		}
		if (m < 2 || subxids_full())
			continue;			/* one message, or no more calls: the caller's */
		started = GetCurrentTimestamp();
		if (sub->batch)
		{
			/* a call of many messages names none of them (attempt_marker.c) */
			handled = evbus_run_handler(sub, payloads, headers, m, &code, &message) ? m : 0;
			evbus_metrics_handler_ran(GetCurrentTimestamp() - started);
		}
		else
			handled = evbus_run_handler_each(sub, payloads, headers, m, took,
											 note_call, mine, &code, &message);
		MemoryContextSwitchTo(cxt);
		calls += sub->batch ? 1 : handled + (code != NULL ? 1 : 0);

		/* counted when the transaction commits (metrics.c) */
		for (i = 0; i < handled; i++)
		{
			if (!sub->batch)
				evbus_metrics_handler_ran(took[i]);
			done[which[i]] = true;
			handled_ids[(*nhandled)++] = ds[which[i]]->inbox_id;
			evbus_metrics_outcome('h');
		}
		if (handled == m || (!sub->batch && code == NULL))
			continue;			/* all handled, or stopped: no more calls */
		if (sub->batch)
		{
			ereport(DEBUG1,
					(errmsg("evbus: batch handler %s failed for %d messages (%s: %s); handling them one at a time",
							sub->signature, m, code, message)));
			continue;
		}
		evbus_metrics_handler_ran(took[handled]);
		outcome = record_failure(ds[which[handled]], code, message);
		MemoryContextSwitchTo(cxt);
		hold_if_waiting(ds[which[handled]], outcome, blocked, none_pending);
		done[which[handled]] = true;
	}
	return calls;
}

/*
 * evbus_inbox_handle_batch --- run the dispatched messages in order and
 * record the outcomes: the successes in one statement, unless their rows
 * were inserted as handled already (inserted_handled; else each row is
 * pending, its attempt counted before).  Each handler call
 * is a subtransaction, and a call that writes takes an id; once the
 * transaction holds SUBXIDS_WANTED (inbox.h), it calls no more, and the
 * rows left are left pending, due now, for the retries' transactions
 * (a batch handler's failed batch, called again one message at a time,
 * makes one call per message: test 248_handler_subtransactions.pl).  Sets
 * *calls to the calls it made, and *handled_out to the messages handled.
 * Returns false if some message was left pending.
 */
bool
evbus_inbox_handle_batch(List *dispatch, MemoryContext cxt, bool inserted_handled,
						 int *calls, int *handled_out)
{
	bool		none_pending = true;
	int			n = list_length(dispatch);
	int64	   *handled = palloc(sizeof(int64) * Max(n, 1));
	int64	   *waiting = palloc(sizeof(int64) * Max(n, 1));
	bool	   *done = palloc0(sizeof(bool) * Max(n, 1));
	int			nhandled = 0;
	int			nwaiting = 0;
	List	   *blocked = NIL;	/* (handler, key) with a row left pending here */
	ListCell   *lc;

	*calls = 0;

	/*
	 * Each handler first in one go for all its messages.  Each call is noted
	 * (attempt_marker.c) as run_one notes it, so a crash counts against that
	 * call's message alone; but a batch handler's call of many messages names
	 * none, so in the careful way and the retries (!inserted_handled) batch
	 * handlers go one message at a time.
	 */
	if (n > 1)
	{
		Dispatch  **ds = palloc(sizeof(Dispatch *) * n);

		foreach(lc, dispatch)
			ds[foreach_current_index(lc)] = lfirst(lc);
		*calls = run_in_one_go(ds, n, inserted_handled, done, handled, &nhandled,
							   &blocked, &none_pending, cxt);
	}

	/*
	 * Each (message, handler) in its own subtransaction: a handler runs
	 * exactly once per recorded attempt, and a failure rolls back only its
	 * own effects for that message.  After a message of key K stays pending
	 * for handler H, the later messages of K in the batch do not run H: their
	 * attempt is taken back and they wait; other handlers of K, and other
	 * keys, go on (test 210_subscription_ownership.pl).  Once the
	 * subtransaction ids are used up, every later row waits likewise, so each
	 * key keeps its order.
	 */
	foreach(lc, dispatch)
	{
		Dispatch   *d = lfirst(lc);
		Outcome		outcome;

		if (done[foreach_current_index(lc)])
			continue;			/* handled, or its attempt recorded, in one go */
		if (subxids_full() ||
			(d->event_key && evbus_key_held(blocked, d->handler, d->event_key)))
		{
			waiting[nwaiting++] = d->inbox_id;
			none_pending = false;
			continue;
		}

		outcome = run_one(d);
		MemoryContextSwitchTo(cxt);
		(*calls)++;
		if (outcome == HANDLED)
			handled[nhandled++] = d->inbox_id;
		else
			hold_if_waiting(d, outcome, &blocked, &none_pending);
	}
	leave_waiting(waiting, nwaiting);
	if (!inserted_handled)
		mark_handled(handled, nhandled);
	*handled_out = nhandled;
	MemoryContextSwitchTo(cxt);
	return none_pending;
}

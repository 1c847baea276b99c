/*-------------------------------------------------------------------------
 *
 * inbox_park.c
 *	  A (message, handler) out of retries: its dead letter, and what it
 *	  does to the later events of its key for that handler.
 *
 * Per subscription (evbus.subscriptions.on_dead_letter): 'skip' marks the
 * inbox row dead and the key's later events go on; 'park' keeps the row
 * 'pending' with no next attempt, so the consumer's per-key hold (inbox.c:
 * a row waits while an earlier row of its group, handler and key is
 * pending) keeps the key's later events waiting, not attempted and not
 * dead, until an operator acts: evbus.retry sets a next attempt (and
 * resets the attempts), evbus.discard marks the row discarded, either of
 * which lets the key go on (test 274_park_key.pl).  Either way the dead
 * letter is written and NOTIFY evbus_dead_letter sent in the transaction
 * that records the last attempt.
 *
 * Called by inbox_retry.c inside its transactions; calls nothing of it.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/builtins.h"

#include "inbox.h"

/*
 * The dead letter of inbox row $1 with error ($2, $3) after $4 attempts; %s
 * is what becomes of the row: dead, or parked (pending with no next
 * attempt).
 */
#define DEAD_LETTER_SQL \
	"WITH i AS (UPDATE evbus.inbox SET %s, handled_at = NULL, attempts = $4," \
	" last_error_code = $2, last_error_message = $3, next_attempt_at = NULL," \
	" errors = COALESCE(errors, '[]') OPERATOR(pg_catalog.||)" \
	" pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object('attempt', $4," \
	" 'at', pg_catalog.now(), 'sqlstate', $2, 'message', $3))" \
	" WHERE id OPERATOR(pg_catalog.=) $1 RETURNING *)," \
	" d AS (INSERT INTO evbus.dead_letters (message_id, direction, integration_event," \
	" topic, event_key, payload, headers, group_name, handler, kafka_partition, kafka_offset," \
	" attempts, errors, error_code, error_message)" \
	" SELECT COALESCE(message_id, pg_catalog.gen_random_uuid()::pg_catalog.text), 'consume', integration_event," \
	" topic, event_key, payload, headers, group_name, handler, kafka_partition, kafka_offset," \
	" attempts, errors, $2, $3 FROM i RETURNING message_id)" \
	" SELECT pg_catalog.pg_notify('evbus_dead_letter', message_id::pg_catalog.text) FROM d"

/*
 * evbus_inbox_dead_letter --- dead-letter dispatched row d, which failed
 * for the last time with (code, message), after d->attempts attempts
 * (this one counted: the row's count may not include it yet), and warn.  Returns true if the
 * row was parked: its key's later events must wait for it (a row without
 * a key, or of a handler no longer subscribed, is never parked).  Inside
 * the caller's transaction.
 */
bool
evbus_inbox_dead_letter(const Dispatch *d, const char *code, const char *message)
{
	bool		park = d->sub != NULL && d->sub->park && d->event_key != NULL;
	Oid			types[4] = {INT8OID, TEXTOID, TEXTOID, INT4OID};
	Datum		values[4];

	values[0] = Int64GetDatum(d->inbox_id);
	values[1] = CStringGetTextDatum(code);
	values[2] = CStringGetTextDatum(message);
	values[3] = Int32GetDatum(d->attempts);
	evbus_spi_exec(psprintf(DEAD_LETTER_SQL, park ? "state = 'pending'" : "state = 'dead'"),
				   4, types, values, NULL, SPI_OK_SELECT);
	/* the publisher expires dead letters: an idle one learns of this one */
	evbus_wake_at_commit(true, false);
	ereport(WARNING,
			(errmsg("evbus: handler %s of message %s in group \"%s\" failed %d times; dead-lettered%s",
					d->handler, d->message_id ? d->message_id : "(no id)", d->group_name,
					d->attempts, park ? ", its key parked" : ""),
			 errdetail("Last error: %s: %s", code, message)));
	return park;
}

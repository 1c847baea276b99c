/*-------------------------------------------------------------------------
 *
 * dead_letters.c
 *	  evbus.dead_letters: what goes in from the publishing side, what comes
 *	  out again by evbus.retry (both sides), and what expires.
 *
 * An event the broker refuses for good (too large, invalid topic, not
 * authorized) is moved here by the publisher's finish, in the transaction
 * that records it done (evbus_dead_letter_unpublishable); a message whose
 * handler ran out of retries, or that cannot be decoded, is moved here by
 * the consumer in the transaction that records its last attempt
 * (inbox_retry.c), with the handler and every attempt's error.  Either
 * way NOTIFY evbus_dead_letter carries its message id.  evbus.retry puts
 * either kind back, and dead letters older than evbus.dead_letter_retention
 * are deleted.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "evbus.h"

/*
 * evbus_dead_letter_unpublishable --- move outbox row id of
 * evbus.outbox_<table> to the dead letters with its error, count it as
 * dead, and notify.  Must run inside evbus_worker_begin/commit (the
 * finish records the row as done in the same transaction).
 */
void
evbus_dead_letter_unpublishable(int table, int64 id, const char *error_code,
								const char *error_message)
{
	Oid			argtypes[4] = {INT8OID, TEXTOID, TEXTOID, TEXTOID};
	Datum		values[4];
	char		sql[1024];

	values[0] = Int64GetDatum(id);
	values[1] = CStringGetTextDatum(error_code);
	values[2] = CStringGetTextDatum(error_message);
	values[3] = CStringGetTextDatum(evbus_topic_prefix);
	snprintf(sql, sizeof(sql),
			 "WITH d AS ("
			 " INSERT INTO evbus.dead_letters (message_id, direction,"
			 " integration_event, topic, event_key, payload, headers,"
			 " domain_event, traceparent, staged_at, error_code, error_message)"
			 " SELECT message_id::pg_catalog.text, 'publish', integration_event,"
			 " $4 OPERATOR(pg_catalog.||) integration_event, event_key,"
			 " payload, headers, domain_event, traceparent, staged_at, $2, $3"
			 " FROM evbus.outbox_%d WHERE id OPERATOR(pg_catalog.=) $1"
			 " RETURNING message_id, integration_event),"
			 " c AS (INSERT INTO evbus.publish_counters AS c (integration_event, dead)"
			 " SELECT integration_event, 1 FROM d"
			 " ON CONFLICT (integration_event) DO UPDATE"
			 " SET dead = c.dead OPERATOR(pg_catalog.+) 1)"
			 " SELECT pg_catalog.pg_notify('evbus_dead_letter', message_id::pg_catalog.text)"
			 " FROM d",
			 table);
	evbus_spi_exec(sql, 4, argtypes, values, NULL, SPI_OK_SELECT);
}

/*
 * evbus_dead_letters_expire --- delete the dead letters older than
 * evbus.dead_letter_retention (0: keep them), the oldest first, at most
 * EXPIRE_ROWS per call: once a minute (as often as the retention if that
 * is shorter), and at each call (the publisher's, every second) while
 * more are due.  One statement for all of them held up publishing, 0.3 s
 * per 300,000 (test 236_inbox_retention.pl).  The dead letter of a parked
 * key stays until it is retried or discarded (EVBUS_DEAD_LETTER_PARKS_SQL).
 * Must run inside evbus_worker_begin/commit.
 */
#define EXPIRE_ROWS 10000

void
evbus_dead_letters_expire(void)
{
	static TimestampTz last_expiry = 0;
	static bool more_due = false;
	TimestampTz now = GetCurrentTimestamp();
	Oid			argtypes[1] = {INT4OID};
	Datum		values[1];

	if (evbus_dead_letter_retention_s <= 0)
		return;
	if (!more_due &&
		!TimestampDifferenceExceeds(last_expiry, now,
									(int) Min(60 * 1000L, evbus_dead_letter_retention_s * 1000L)))
		return;
	values[0] = Int32GetDatum(evbus_dead_letter_retention_s);
	evbus_spi_exec("DELETE FROM evbus.dead_letters WHERE ctid OPERATOR(pg_catalog.=) ANY (ARRAY("
				   "SELECT d.ctid FROM evbus.dead_letters d WHERE d.dead_at OPERATOR(pg_catalog.<)"
				   " (pg_catalog.now() OPERATOR(pg_catalog.-)"
				   " pg_catalog.make_interval(secs => $1))"
				   " AND NOT" EVBUS_DEAD_LETTER_PARKS_SQL("d")
				   " ORDER BY d.dead_at LIMIT " CppAsString2(EXPIRE_ROWS) "))",
				   1, argtypes, values, NULL, SPI_OK_DELETE);
	more_due = SPI_processed >= EXPIRE_ROWS;
	last_expiry = now;
}

/*
 * evbus_dead_letters_next_expiry --- when the oldest dead letter expires
 * (its dead_at plus evbus.dead_letter_retention; 0: none, or kept for
 * ever), read through the index on dead_at, passing over those of parked
 * keys, which do not expire: an idle publisher is started again for it
 * (idle.c).  Inside a transaction.
 */
TimestampTz
evbus_dead_letters_next_expiry(void)
{
	if (evbus_dead_letter_retention_s <= 0)
		return 0;
	return evbus_spi_oldest_due("SELECT pg_catalog.min(dead_at) FROM"
								" (SELECT d.dead_at FROM evbus.dead_letters d"
								" WHERE NOT" EVBUS_DEAD_LETTER_PARKS_SQL("d")
								" ORDER BY d.dead_at LIMIT 1) o",
								evbus_dead_letter_retention_s);
}

/*
 * evbus.retry(message_id text) -> boolean
 *
 * A message id is text: evbus's own are UUIDs, DotNetCore.CAP's are
 * Snowflake integers (test 256_cap_snowflake_ids.pl).
 *
 * Requeues a dead-lettered event of the publishing side: it goes back to
 * the outbox with its original message id (so a consumer that saw an
 * earlier copy still de-duplicates it) and is published again.  On the
 * consuming side, a dead message is handled again from the start (its
 * attempts reset), as is a parked one (pending with no next attempt,
 * inbox_park.c), and a failed one waiting for its retry is retried now.
 * Messages that could not be decoded stay dead: there is nothing to hand a
 * handler; discarded ones stay discarded (repair.c).
 */
PG_FUNCTION_INFO_V1(evbus_retry);
Datum
evbus_retry(PG_FUNCTION_ARGS)
{
	text	   *message_id = PG_GETARG_TEXT_PP(0);
	Oid			argtypes[1] = {TEXTOID};
	Datum		values[1];
	char		sql[1024];
	uint64		requeued;

	evbus_check_writable("retry an event");
	values[0] = PointerGetDatum(message_id);
	snprintf(sql, sizeof(sql),
			 "WITH d AS (DELETE FROM evbus.dead_letters"
			 " WHERE message_id OPERATOR(pg_catalog.=) $1"
			 " AND direction OPERATOR(pg_catalog.=) 'publish'"
			 " RETURNING message_id, integration_event, event_key, payload,"
			 " headers, domain_event, traceparent, staged_at),"
			 " c AS (UPDATE evbus.publish_counters c"
			 " SET dead = c.dead OPERATOR(pg_catalog.-) 1 FROM d"
			 " WHERE c.integration_event OPERATOR(pg_catalog.=) d.integration_event)"
			 " INSERT INTO evbus.outbox_%d (id, message_id, integration_event,"
			 " event_key, payload, headers, domain_event, traceparent, staged_at)"
			 " SELECT pg_catalog.nextval('evbus.outbox_id_seq'::pg_catalog.regclass),"
			 " message_id::pg_catalog.uuid, integration_event, event_key, payload, headers,"
			 " domain_event, traceparent, staged_at FROM d",
			 evbus_current_outbox_slot());

	requeued = evbus_execute_as_owner(sql, 1, argtypes, values, NULL);

	evbus_wake_at_commit(requeued > 0, false);

	/*
	 * The consuming side: a dead message goes back to pending with its
	 * attempts reset; a message waiting for a retry is retried now.  The
	 * consumer worker runs it within its poll interval.
	 */
	{
		uint64		consumed;

		consumed = evbus_execute_as_owner("WITH d AS (DELETE FROM evbus.dead_letters"
										  " WHERE message_id OPERATOR(pg_catalog.=) $1"
										  " AND direction OPERATOR(pg_catalog.=) 'consume'"
										  " AND raw_value IS NULL)"
										  " UPDATE evbus.inbox SET state = 'pending',"
										  " attempts = CASE WHEN state OPERATOR(pg_catalog.=) 'dead'"
										  " OR next_attempt_at IS NULL THEN 0 ELSE attempts END,"
										  " next_attempt_at = pg_catalog.now()"
										  " WHERE message_id OPERATOR(pg_catalog.=) $1"
										  " AND (state OPERATOR(pg_catalog.=) 'pending'"
										  " OR state OPERATOR(pg_catalog.=) 'dead')"
										  " AND payload IS NOT NULL",
										  1, argtypes, values, NULL);

		evbus_wake_at_commit(false, consumed > 0);
		requeued += consumed;
	}

	PG_RETURN_BOOL(requeued > 0);
}

/*
 * evbus.retry(message_id uuid) -> boolean: the same, for callers that
 * hold an evbus message id as a uuid.
 */
PG_FUNCTION_INFO_V1(evbus_retry_uuid);
Datum
evbus_retry_uuid(PG_FUNCTION_ARGS)
{
	char	   *message_id = evbus_uuid_to_cstring(PG_GETARG_UUID_P(0));

	return DirectFunctionCall1(evbus_retry, CStringGetTextDatum(message_id));
}

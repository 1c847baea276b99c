/*-------------------------------------------------------------------------
 *
 * inbox_due.c
 *	  Which pending rows of the inbox may run now, for the retries'
 *	  transactions (evbus_inbox_dispatch_due): due, not paused, and in
 *	  each key's order.
 *
 * A row runs only after the earlier pending rows of its (group, handler,
 * event key).  The first such row of a key runs when it is due (a retry
 * whose backoff ran out, a message that waited for its key, an attempt a
 * crash cut short).  The rows after it that are due too run after it in
 * the same transaction, up to the first that is not (a retry still in
 * its backoff, a parked dead letter, a paused subscription): in id order
 * the handling holds a key's later rows back once one of them fails
 * (inbox_retry.c).  Taking only the first row of each key made a key's
 * backlog go one row per round, two commits that wait for the disk each,
 * and each round's query read the key's other rows again: 300 rows of one
 * key took 300 transactions (test 150_consume_key_order.pl: 8 now).
 *
 * Calls nothing of inbox.c.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/array.h"
#include "utils/builtins.h"

#include "inbox.h"

/* The due rows first of their key, in id order: at most budget. */
#define HEADS_SQL \
	"SELECT id, group_name, handler, event_key FROM evbus.inbox i" \
	" WHERE state = 'pending' AND next_attempt_at OPERATOR(pg_catalog.<=) pg_catalog.now()%s" \
	" AND NOT EXISTS (SELECT 1 FROM evbus.inbox e WHERE e.state = 'pending'" \
	" AND e.group_name OPERATOR(pg_catalog.=) i.group_name" \
	" AND e.handler OPERATOR(pg_catalog.=) i.handler" \
	" AND e.event_key OPERATOR(pg_catalog.=) i.event_key" \
	" AND e.id OPERATOR(pg_catalog.<) i.id)" \
	" ORDER BY id LIMIT %d"

/*
 * The pending rows after each head of a key ($1 its id, $2 to $4 its
 * group, handler and key), in id order, at most $5 per key, each with
 * whether it may run now (due, not paused; NULL: parked).
 */
#define FOLLOWERS_SQL \
	"SELECT k.n, i.id, i.runnable" \
	" FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.int8[]), pg_catalog.unnest($2::pg_catalog.text[])," \
	" pg_catalog.unnest($3::pg_catalog.text[]), pg_catalog.unnest($4::pg_catalog.text[]))" \
	" WITH ORDINALITY AS k(head, g, h, ekey, n)" \
	" CROSS JOIN LATERAL (SELECT i.id," \
	" i.next_attempt_at OPERATOR(pg_catalog.<=) pg_catalog.now()%s AS runnable" \
	" FROM evbus.inbox i WHERE i.state = 'pending'" \
	" AND i.group_name OPERATOR(pg_catalog.=) k.g AND i.handler OPERATOR(pg_catalog.=) k.h" \
	" AND i.event_key OPERATOR(pg_catalog.=) k.ekey AND i.id OPERATOR(pg_catalog.>) k.head" \
	" ORDER BY i.id LIMIT $5) i" \
	" ORDER BY k.n, i.id"

/*
 * evbus_inbox_due_rows --- the ids of at most budget pending rows that may
 * run now, each key's in order (see the top of this file); paused is the
 * condition that leaves a paused subscription's row out (" AND NOT EXISTS
 * ...", on alias i), or "".  Returns how many, in *ids (palloc'd).
 */
int
evbus_inbox_due_rows(const char *paused, int budget, int64 **ids)
{
	int			n = 0;
	int			nkeys = 0;
	Datum	   *groups;
	Datum	   *handlers;
	Datum	   *keys;
	Datum	   *head_ids;
	Datum		values[5];
	Oid			types[5] = {INT8ARRAYOID, TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID, INT4OID};
	uint64		r;
	int32		last_key = 0;
	bool		key_stopped = false;

	*ids = palloc(sizeof(int64) * Max(budget, 1));
	if (SPI_execute(psprintf(HEADS_SQL, paused, budget), true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read the inbox");
	groups = palloc(sizeof(Datum) * Max(SPI_processed, 1));
	handlers = palloc(sizeof(Datum) * Max(SPI_processed, 1));
	keys = palloc(sizeof(Datum) * Max(SPI_processed, 1));
	head_ids = palloc(sizeof(Datum) * Max(SPI_processed, 1));
	for (r = 0; r < SPI_processed; r++)
	{
		HeapTuple	tup = SPI_tuptable->vals[r];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		char	   *key;

		(*ids)[n++] = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		key = SPI_getvalue(tup, desc, 4);
		if (key == NULL)
			continue;			/* no order to keep: no followers */
		head_ids[nkeys] = Int64GetDatum((*ids)[n - 1]);
		groups[nkeys] = CStringGetTextDatum(SPI_getvalue(tup, desc, 2));
		handlers[nkeys] = CStringGetTextDatum(SPI_getvalue(tup, desc, 3));
		keys[nkeys] = CStringGetTextDatum(key);
		nkeys++;
	}
	if (n >= budget || nkeys == 0)
		return n;

	/* each key's rows after its head, up to the first that may not run */
	values[0] = PointerGetDatum(construct_array(head_ids, nkeys, INT8OID, 8, FLOAT8PASSBYVAL,
												TYPALIGN_DOUBLE));
	values[1] = PointerGetDatum(construct_array(groups, nkeys, TEXTOID, -1, false, TYPALIGN_INT));
	values[2] = PointerGetDatum(construct_array(handlers, nkeys, TEXTOID, -1, false, TYPALIGN_INT));
	values[3] = PointerGetDatum(construct_array(keys, nkeys, TEXTOID, -1, false, TYPALIGN_INT));
	values[4] = Int32GetDatum(budget - n);
	if (SPI_execute_with_args(psprintf(FOLLOWERS_SQL, paused), 5, types, values, NULL,
							  true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read the inbox");
	for (r = 0; r < SPI_processed && n < budget; r++)
	{
		HeapTuple	tup = SPI_tuptable->vals[r];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		int32		key_n = (int32) DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		bool		runnable;

		if (key_n != last_key)
		{
			last_key = key_n;
			key_stopped = false;
		}
		runnable = DatumGetBool(SPI_getbinval(tup, desc, 3, &isnull));
		if (isnull || !runnable)
			key_stopped = true;
		if (!key_stopped)
			(*ids)[n++] = DatumGetInt64(SPI_getbinval(tup, desc, 2, &isnull));
	}
	return n;
}

/*-------------------------------------------------------------------------
 *
 * outbox.c
 *	  Storage work of the publisher, in the short transaction of a step
 *	  (publisher.c), except maintain, which has its own.
 *
 *	  claim    read a batch of staged events in id order (no row is
 *	           written or locked: one worker per database owns the
 *	           outbox; librdkafka only queues them, it never waits);
 *	  finish   delete the events Kafka acknowledged as PERSISTED, move the
 *	           permanently failed ones to evbus.dead_letters, count both;
 *	  maintain truncate the outbox table staging no longer writes to once
 *	           it is empty, and expire old dead letters.
 *
 * No transaction is open while the worker waits for the network.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/ipc.h"
#include "storage/lmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "access/table.h"
#include "storage/bufmgr.h"

#include "outbox.h"
#include "publisher.h"

#define CLAIM_COLUMNS \
	"SELECT id, message_id, integration_event, event_key, payload, headers," \
	" domain_event, traceparent, staged_at FROM evbus.outbox"
#define CLAIM_DUE \
	" (deliver_at IS NULL OR deliver_at OPERATOR(pg_catalog.<=) pg_catalog.now())"

static SPIPlanPtr claim_range_plan = NULL;
static SPIPlanPtr claim_ids_plan = NULL;
static SPIPlanPtr delete_plans[2] = {NULL, NULL};
static SPIPlanPtr count_plan = NULL;

static char *
text_or_null(HeapTuple tup, TupleDesc desc, int col)
{
	bool		isnull;
	Datum		d = SPI_getbinval(tup, desc, col, &isnull);

	return isnull ? NULL : TextDatumGetCString(d);
}

/* Copy one claimed row into cxt, printing the payload as compact JSON. */
static void
copy_row(HeapTuple tup, TupleDesc desc, OutboxRow *row, MemoryContext cxt)
{
	MemoryContext old = MemoryContextSwitchTo(cxt);
	bool		isnull;
	Datum		d;
	StringInfoData buf;

	row->id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
	memcpy(&row->message_id, DatumGetUUIDP(SPI_getbinval(tup, desc, 2, &isnull)),
		   sizeof(pg_uuid_t));
	row->integration_event = text_or_null(tup, desc, 3);
	row->key = text_or_null(tup, desc, 4);

	d = SPI_getbinval(tup, desc, 5, &isnull);
	initStringInfo(&buf);
	evbus_jsonb_to_compact(&buf, &DatumGetJsonbP(d)->root);
	row->payload = buf.data;
	row->payload_len = buf.len;

	row->nheaders = 0;
	row->header_names = row->header_values = NULL;
	d = SPI_getbinval(tup, desc, 6, &isnull);
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
	row->domain_event = text_or_null(tup, desc, 7);
	row->traceparent = text_or_null(tup, desc, 8);
	row->staged_at = DatumGetTimestampTz(SPI_getbinval(tup, desc, 9, &isnull));
	MemoryContextSwitchTo(old);
}

static int
copy_rows(OutboxRow **rows, MemoryContext cxt)
{
	uint64		i;
	int			n = (int) SPI_processed;

	*rows = MemoryContextAlloc(cxt, sizeof(OutboxRow) * Max(n, 1));
	for (i = 0; i < SPI_processed; i++)
		copy_row(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, &(*rows)[i], cxt);
	return n;
}

/*
 * evbus_outbox_claim_range --- due events with id >= from_id, in id
 * order, at most limit.  Must run inside evbus_worker_begin/commit.
 */
int
evbus_outbox_claim_range(int64 from_id, int limit, OutboxRow **rows,
						 MemoryContext cxt)
{
	Oid			argtypes[2] = {INT8OID, INT4OID};
	Datum		values[2];

	(void) evbus_kept_plan(&claim_range_plan,
						   CLAIM_COLUMNS " WHERE id OPERATOR(pg_catalog.>=) $1 AND" CLAIM_DUE
						   " ORDER BY id LIMIT $2",
						   2, argtypes);
	values[0] = Int64GetDatum(from_id);
	values[1] = Int32GetDatum(limit);

	/*
	 * Not read_only: a claim must see the deletes of the finish that ran
	 * before it in the same transaction (a read-only SPI call would keep
	 * the snapshot from before them and claim, and publish, those events
	 * again).
	 */
	if (SPI_execute_plan(claim_range_plan, values, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read the outbox");
	return copy_rows(rows, cxt);
}

static ArrayType *
int8_array(int64 *ids, int n)
{
	Datum	   *elems = palloc(sizeof(Datum) * Max(n, 1));
	int			i;

	for (i = 0; i < n; i++)
		elems[i] = Int64GetDatum(ids[i]);
	return construct_array(elems, n, INT8OID, sizeof(int64), FLOAT8PASSBYVAL,
						   TYPALIGN_DOUBLE);
}

/*
 * evbus_outbox_claim_ids --- the due events among ids, in id order.
 */
int
evbus_outbox_claim_ids(int64 *ids, int nids, OutboxRow **rows,
					   MemoryContext cxt)
{
	Oid			argtypes[1] = {INT8ARRAYOID};
	Datum		values[1];

	(void) evbus_kept_plan(&claim_ids_plan,
						   CLAIM_COLUMNS " WHERE id OPERATOR(pg_catalog.=) ANY ($1) AND" CLAIM_DUE
						   " ORDER BY id",
						   1, argtypes);
	values[0] = PointerGetDatum(int8_array(ids, nids));
	if (SPI_execute_plan(claim_ids_plan, values, NULL, false, 0) != SPI_OK_SELECT)	/* see above */
		elog(ERROR, "could not read the outbox");
	return copy_rows(rows, cxt);
}

/*
 * evbus_outbox_finish --- move dead events to evbus.dead_letters (and
 * NOTIFY evbus_dead_letter), delete the published and dead events from the
 * outbox, count both per integration event.  Must run inside
 * evbus_worker_begin/commit.
 */
void
evbus_outbox_finish(int64 *done_ids, char **done_events, int ndone,
					DeadEvent *dead, int ndead)
{
	int			i;
	int64	   *all_ids = palloc(sizeof(int64) * Max(ndone + ndead, 1));

	for (i = 0; i < ndead; i++)
	{
		Oid			argtypes[4] = {INT8OID, TEXTOID, TEXTOID, TEXTOID};
		Datum		values[4];

		values[0] = Int64GetDatum(dead[i].id);
		values[1] = CStringGetTextDatum(dead[i].error_code);
		values[2] = CStringGetTextDatum(dead[i].error_message);
		values[3] = CStringGetTextDatum(evbus_topic_prefix);
		evbus_spi_exec("WITH d AS ("
					" INSERT INTO evbus.dead_letters (message_id, direction,"
					" integration_event, topic, event_key, payload, headers,"
					" domain_event, traceparent, staged_at, error_code, error_message)"
					" SELECT message_id, 'publish', integration_event,"
					" $4 OPERATOR(pg_catalog.||) integration_event, event_key,"
					" payload, headers, domain_event, traceparent, staged_at, $2, $3"
					" FROM evbus.outbox WHERE id OPERATOR(pg_catalog.=) $1"
					" RETURNING message_id, integration_event),"
					" c AS (INSERT INTO evbus.publish_counters AS c (integration_event, dead)"
					" SELECT integration_event, 1 FROM d"
					" ON CONFLICT (integration_event) DO UPDATE"
					" SET dead = c.dead OPERATOR(pg_catalog.+) 1)"
					" SELECT pg_catalog.pg_notify('evbus_dead_letter', message_id::pg_catalog.text)"
					" FROM d",
					4, argtypes, values, NULL, SPI_OK_SELECT);
		all_ids[i] = dead[i].id;
	}
	for (i = 0; i < ndone; i++)
		all_ids[ndead + i] = done_ids[i];

	/*
	 * Delete by primary key, with kept plans.  The bounds let the plan
	 * scan only the range of the index the batch covers (ids of a batch
	 * are nearly contiguous), whatever the size of the array, instead of
	 * a sequential scan of the whole table.
	 */
	{
		int64		lo = PG_INT64_MAX;
		int64		hi = PG_INT64_MIN;
		Oid			del_types[3] = {INT8ARRAYOID, INT8OID, INT8OID};
		Datum		del_values[3];
		int			slot;

		for (i = 0; i < ndone + ndead; i++)
		{
			lo = Min(lo, all_ids[i]);
			hi = Max(hi, all_ids[i]);
		}

		del_values[0] = PointerGetDatum(int8_array(all_ids, ndone + ndead));
		del_values[1] = Int64GetDatum(lo);
		del_values[2] = Int64GetDatum(hi);
		for (slot = 0; slot < 2; slot++)
		{
			if (delete_plans[slot] == NULL)
			{
				char		sql[256];

				snprintf(sql, sizeof(sql),
						 "DELETE FROM evbus.outbox_%d WHERE id OPERATOR(pg_catalog.>=) $2"
						 " AND id OPERATOR(pg_catalog.<=) $3"
						 " AND id OPERATOR(pg_catalog.=) ANY ($1)", slot);
				(void) evbus_kept_plan(&delete_plans[slot], sql, 3, del_types);
			}
			if (SPI_execute_plan(delete_plans[slot], del_values, NULL, false, 0) != SPI_OK_DELETE)
				elog(ERROR, "could not delete from evbus.outbox_%d", slot);
		}
	}

	if (ndone > 0)
	{
		Datum	   *names = palloc(sizeof(Datum) * ndone);
		Oid			argtypes[1] = {TEXTARRAYOID};
		Datum		values[1];

		for (i = 0; i < ndone; i++)
			names[i] = CStringGetTextDatum(done_events[i]);
		values[0] = PointerGetDatum(construct_array(names, ndone, TEXTOID, -1,
													false, TYPALIGN_INT));
		if (SPI_execute_plan(evbus_kept_plan(&count_plan,
											 "INSERT INTO evbus.publish_counters AS c"
											 " (integration_event, published, last_published_at)"
											 " SELECT e, pg_catalog.count(*), pg_catalog.now()"
											 " FROM pg_catalog.unnest($1) e GROUP BY e"
											 " ON CONFLICT (integration_event) DO UPDATE"
											 " SET published = c.published OPERATOR(pg_catalog.+) excluded.published,"
											 " last_published_at = excluded.last_published_at",
											 1, argtypes), values, NULL, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "could not count published events");
	}
}

/*
 * truncate_if_empty --- TRUNCATE evbus.outbox_<slot> if it has pages but
 * no row.  The exclusive lock is only tried, never waited for, so
 * staging is not held up; emptiness is checked under the lock with a
 * fresh snapshot, so a row committed meanwhile is never lost.
 */
static void
truncate_if_empty(int slot)
{
	char		relname[NAMEDATALEN];
	Oid			relid;
	Relation	rel;
	BlockNumber nblocks;

	snprintf(relname, sizeof(relname), "outbox_%d", slot);
	relid = get_relname_relid(relname, evbus_schema_oid());
	if (!OidIsValid(relid))
		return;
	rel = table_open(relid, AccessShareLock);
	nblocks = RelationGetNumberOfBlocks(rel);
	table_close(rel, NoLock);
	if (nblocks == 0)
		return;
	if (!ConditionalLockRelationOid(relid, AccessExclusiveLock))
		return;

	snprintf(relname, sizeof(relname),
			 "SELECT 1 FROM evbus.outbox_%d LIMIT 1", slot);
	if (SPI_execute(relname, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read evbus.outbox_%d", slot);
	if (SPI_processed == 0)
	{
		snprintf(relname, sizeof(relname), "TRUNCATE evbus.outbox_%d", slot);
		if (SPI_execute(relname, false, 0) != SPI_OK_UTILITY)
			elog(ERROR, "could not truncate evbus.outbox_%d", slot);
		elog(DEBUG1, "evbus: truncated evbus.outbox_%d (%u pages)", slot, nblocks);
	}
}

/*
 * evbus_outbox_maintain --- keep the outbox small and expire dead letters.
 */
void
evbus_outbox_maintain(void)
{
	static TimestampTz last_expiry = 0;
	TimestampTz now = GetCurrentTimestamp();
	int			current = (int) ((now / USECS_PER_SEC / evbus_outbox_rotation_s) % 2);

	evbus_worker_begin(evbus_publisher_shutdown);
	truncate_if_empty(1 - current);

	if (evbus_dead_letter_retention_s > 0 &&
		TimestampDifferenceExceeds(last_expiry, now, 60 * 1000))
	{
		Oid			argtypes[1] = {INT4OID};
		Datum		values[1];

		values[0] = Int32GetDatum(evbus_dead_letter_retention_s);
		evbus_spi_exec("DELETE FROM evbus.dead_letters WHERE dead_at OPERATOR(pg_catalog.<)"
					" (pg_catalog.now() OPERATOR(pg_catalog.-)"
					" pg_catalog.make_interval(secs => $1))",
					1, argtypes, values, NULL, SPI_OK_DELETE);
		last_expiry = now;
	}
	evbus_worker_commit();
}

/*-------------------------------------------------------------------------
 *
 * outbox.c
 *	  Storage work of the publisher, in the short transaction of a step
 *	  (publisher.c), except maintain, which has its own.  Claims (reading
 *	  a batch of staged events in id order; no row is written or locked:
 *	  one worker per database owns the outbox) are in outbox_scan.c.
 *
 *	  finish   record the events Kafka acknowledged as PERSISTED as done
 *	           (outbox_published.c: ranges of ids, no DELETE), move the
 *	           permanently failed ones to evbus.dead_letters
 *	           (dead_letters.c; done too), count both;
 *	  maintain truncate the outbox table staging no longer writes to once
 *	           the worker is done with every row in it (the few rows that
 *	           wait, for a deliver_at to come or for an earlier event of
 *	           their key, are moved to the other table first), and expire
 *	           old dead letters (dead_letters.c).
 *
 * No transaction is open while the worker waits for the network.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/lmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/timestamp.h"
#include "access/table.h"
#include "storage/bufmgr.h"

#include "outbox.h"

static SPIPlanPtr count_plan = NULL;

static int
cstring_ptr_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *) a, *(char *const *) b);
}

/*
 * count_published --- add the published events to evbus.publish_counters,
 * one row per integration event.  The names are counted here (a claim
 * carries hundreds of events, mostly of a few names), so the statement
 * gets one array element per name, not one per event.
 */
static void
count_published(char **events, int nevents)
{
	char	  **sorted = palloc(sizeof(char *) * nevents);
	Datum	   *names = palloc(sizeof(Datum) * nevents);
	Datum	   *counts = palloc(sizeof(Datum) * nevents);
	int			nnames = 0;
	int			i;
	Oid			argtypes[2] = {TEXTARRAYOID, INT8ARRAYOID};
	Datum		values[2];

	memcpy(sorted, events, sizeof(char *) * nevents);
	qsort(sorted, nevents, sizeof(char *), cstring_ptr_cmp);
	for (i = 0; i < nevents; i++)
	{
		int			run = 1;

		while (i + run < nevents && strcmp(sorted[i], sorted[i + run]) == 0)
			run++;
		names[nnames] = CStringGetTextDatum(sorted[i]);
		counts[nnames] = Int64GetDatum(run);
		nnames++;
		i += run - 1;
	}
	values[0] = PointerGetDatum(construct_array(names, nnames, TEXTOID, -1,
												false, TYPALIGN_INT));
	values[1] = PointerGetDatum(construct_array(counts, nnames, INT8OID, 8,
												FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	if (SPI_execute_plan(evbus_kept_plan(&count_plan,
										 "INSERT INTO evbus.publish_counters AS c"
										 " (integration_event, published, last_published_at)"
										 " SELECT u.e, u.n, pg_catalog.now()"
										 " FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2)) AS u(e, n)"
										 " ON CONFLICT (integration_event) DO UPDATE"
										 " SET published = c.published OPERATOR(pg_catalog.+) excluded.published,"
										 " last_published_at = excluded.last_published_at",
										 2, argtypes), values, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not count published events");
}

/*
 * evbus_outbox_finish --- copy dead events to evbus.dead_letters (and
 * NOTIFY evbus_dead_letter), record the published and dead events as done,
 * count both per integration event.  Must run inside
 * evbus_worker_begin/commit.
 */
void
evbus_outbox_finish(int64 *done_ids, int *done_tables, char **done_events,
					int ndone, DeadEvent *dead, int ndead)
{
	int			i;
	int			table;
	int64	   *ids = palloc(sizeof(int64) * Max(ndone + ndead, 1));

	for (i = 0; i < ndead; i++)
		evbus_dead_letter_unpublishable(dead[i].table, dead[i].id,
										dead[i].error_code, dead[i].error_message);

	/* done with: the published and the dead, per table */
	for (table = 0; table < 2; table++)
	{
		int			n = 0;

		for (i = 0; i < ndone; i++)
			if (done_tables[i] == table)
				ids[n++] = done_ids[i];
		for (i = 0; i < ndead; i++)
			if (dead[i].table == table)
				ids[n++] = dead[i].id;
		evbus_outbox_published_add(table, ids, n);
	}
	pfree(ids);

	if (ndone > 0)
		count_published(done_events, ndone);
}

/* At most this many waiting rows are moved so that their table can go. */
#define MOVE_MAX 100

/*
 * Which of a table's pending rows hold its TRUNCATE back: 0 if none (the
 * rows may move), -1 if the truncation must wait (more than MOVE_MAX rows
 * pending, a backlog; or one of them in flight, or delivered and not yet
 * recorded: its finish will name this table; held says which are).
 */
static int
pending_rows(int slot, int64 *ids, EvbusOutboxHeldFn held)
{
	int			n = evbus_outbox_pending_ids(slot, MOVE_MAX, ids);
	int			i;

	if (n > MOVE_MAX)
		return -1;
	for (i = 0; i < n; i++)
		if (held(ids[i]))
			return -1;
	return n;
}

/*
 * truncate_if_published --- TRUNCATE evbus.outbox_<slot> and its ranges
 * once the worker is done with every row in it.  Rows that still wait (a
 * deliver_at to come, a key held back by an earlier event), if there are
 * only a few and none of them is in flight, are moved to the current
 * table first, with their ids: one event due next week must not keep a
 * minute of published events on disk.  The exclusive locks are only
 * tried, never waited for, so neither staging nor a reader of
 * evbus.outbox is held up; the rows are listed again under the locks with
 * a fresh snapshot, so a row committed meanwhile is never lost.  When no
 * row waits, a worker of its own truncates instead (outbox_truncate.c),
 * so that the publisher's claims go on during the commit's file work; this
 * step does it only when no background worker slot is free.
 */
static void
truncate_if_published(int slot, int current, EvbusOutboxHeldFn held)
{
	char		relname[NAMEDATALEN];
	Oid			relid;
	Oid			ranges_relid;
	Relation	rel;
	BlockNumber nblocks;
	int64		ids[MOVE_MAX];
	int			n;
	char		sql[256];

	snprintf(relname, sizeof(relname), "outbox_%d", slot);
	relid = get_relname_relid(relname, evbus_schema_oid());
	snprintf(relname, sizeof(relname), "outbox_published_%d", slot);
	ranges_relid = get_relname_relid(relname, evbus_schema_oid());
	if (!OidIsValid(relid) || !OidIsValid(ranges_relid))
		return;
	rel = table_open(relid, AccessShareLock);
	nblocks = RelationGetNumberOfBlocks(rel);
	table_close(rel, NoLock);
	if (nblocks == 0)
	{
		/* truncated (by the worker below, or by hand): its ranges are moot */
		evbus_outbox_published_forget(slot);
		return;
	}
	n = pending_rows(slot, ids, held);
	if (n < 0)
		return;

	/*
	 * Nothing to move: the commit's file work is for a worker of its own,
	 * once the table's lock is free (a transaction that staged there and runs
	 * for hours would otherwise have a worker started every second).
	 */
	if (n == 0)
	{
		if (!ConditionalLockRelationOid(relid, AccessExclusiveLock))
			return;
		UnlockRelationOid(relid, AccessExclusiveLock);
		if (evbus_outbox_truncate_start(slot))
			return;
	}
	if (!ConditionalLockRelationOid(relid, AccessExclusiveLock) ||
		!ConditionalLockRelationOid(ranges_relid, AccessExclusiveLock))
		return;

	n = pending_rows(slot, ids, held);
	if (n < 0)
		return;
	if (n > 0)
	{
		Oid			argtypes[1] = {INT8ARRAYOID};
		Datum		values[1];

		values[0] = evbus_int8_array(ids, n);
		snprintf(sql, sizeof(sql),
				 "INSERT INTO evbus.outbox_%d SELECT * FROM evbus.outbox_%d"
				 " WHERE id OPERATOR(pg_catalog.=) ANY ($1)",
				 current, slot);
		evbus_spi_exec(sql, 1, argtypes, values, NULL, SPI_OK_INSERT);
		elog(DEBUG1, "evbus: moved %d waiting events from evbus.outbox_%d to evbus.outbox_%d",
			 n, slot, current);
	}
	snprintf(sql, sizeof(sql), "TRUNCATE evbus.outbox_%d, evbus.outbox_published_%d",
			 slot, slot);
	if (SPI_execute(sql, false, 0) != SPI_OK_UTILITY)
		elog(ERROR, "could not truncate evbus.outbox_%d", slot);
	evbus_outbox_published_forget(slot);
	elog(DEBUG1, "evbus: truncated evbus.outbox_%d (%u pages)", slot, nblocks);
}

/*
 * evbus_outbox_maintain --- keep the outbox small and expire dead letters,
 * in a transaction of its own.  held: is an event in flight, or delivered
 * and not yet recorded (its row must stay)?  let_go: what the worker lets
 * go of if the extension was dropped (evbus_worker_begin).  The publisher
 * passes both, so that the outbox never calls the publisher.
 */
void
evbus_outbox_maintain(EvbusOutboxHeldFn held, void (*let_go) (void))
{
	TimestampTz now = GetCurrentTimestamp();
	int			current = (int) ((now / USECS_PER_SEC / evbus_outbox_rotation_s) % 2);

	evbus_worker_begin(let_go);
	evbus_outbox_published_load();
	truncate_if_published(1 - current, current, held);

	evbus_dead_letters_expire();
	evbus_worker_commit();
}

/*-------------------------------------------------------------------------
 *
 * outbox_write.c
 *	  Writing one staged event into an outbox table, the way PostgreSQL
 *	  writes its own catalog rows: heap_insert and index_insert, without
 *	  SPI and the executor.
 *
 * Staging runs in the caller's transaction, often while it holds row
 * locks that other sessions queue for, so every microsecond it takes is
 * paid several times over.  An INSERT through SPI sets up a portal, a
 * snapshot and an executor for one row; this file does what that INSERT
 * would do to evbus.outbox_N and nothing else: take the next id from
 * evbus.outbox_id_seq, form the tuple, insert it (heap_insert toasts a
 * large payload and writes the WAL), insert its index entries, and count
 * the command.  evbus's own tables have no triggers, no CHECK constraints
 * and no row security; the NOT NULL columns are always given.  An index a
 * user added that this cannot maintain (on an expression, or partial) is
 * an error, not something skipped.
 *
 * Rows are only appended: the insert goes to this backend's last page or
 * the table's last, never, by the free space map, to the few bytes left at
 * the end of an older page.  The outbox only grows until it is truncated,
 * so those bytes are worth nothing, and writing into an old page after a
 * checkpoint puts a full-page image in the WAL: a smaller event put into
 * the remains of pages that larger ones had filled cost up to 350 B of WAL
 * per transaction more (bench/commit_overhead.sh with WAL_STATS=1, (c)
 * run after (b) in the same table).
 *
 * The relation and sequence oids are cached per backend and forgotten
 * when the relcache entry of either outbox table is invalidated (DROP
 * EXTENSION, but also every TRUNCATE, ANALYZE or ALTER TABLE, or a full
 * reset).  That can happen whenever a lock is taken: while this file opens
 * the table, and while it looks the oids up (each catalog lookup that
 * misses the syscache locks pg_class).  So the lookup fills locals, and
 * one write works on its own copies of the oids.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/heapam.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/index.h"
#include "catalog/namespace.h"
#include "commands/extension.h"
#include "commands/sequence.h"
#include "miscadmin.h"
#include "nodes/execnodes.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "storage/lmgr.h"
#include "storage/sinval.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"

#include "evbus.h"

/*
 * The names of evbus.outbox_N's columns (evbus.h numbers them), checked
 * against the table when it is opened, so that a table of another shape is
 * an error rather than misread data.
 */
static const char *const outbox_columns[EVBUS_OUTBOX_NATTS] = {
	[EVBUS_OUTBOX_ID - 1] = "id",
	[EVBUS_OUTBOX_MESSAGE_ID - 1] = "message_id",
	[EVBUS_OUTBOX_INTEGRATION_EVENT - 1] = "integration_event",
	[EVBUS_OUTBOX_EVENT_KEY - 1] = "event_key",
	[EVBUS_OUTBOX_PAYLOAD - 1] = "payload",
	[EVBUS_OUTBOX_HEADERS - 1] = "headers",
	[EVBUS_OUTBOX_DOMAIN_EVENT - 1] = "domain_event",
	[EVBUS_OUTBOX_TRACEPARENT - 1] = "traceparent",
	[EVBUS_OUTBOX_STAGED_AT - 1] = "staged_at",
	[EVBUS_OUTBOX_DELIVER_AT - 1] = "deliver_at"
};

static Oid	outbox_relids[2] = {InvalidOid, InvalidOid};
static Oid	outbox_seqid = InvalidOid;
static bool callback_registered = false;

static void
forget_oids(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == outbox_relids[0] || relid == outbox_relids[1])
	{
		outbox_relids[0] = outbox_relids[1] = InvalidOid;
		outbox_seqid = InvalidOid;
	}
}

/*
 * outbox_oids --- the oids of evbus.outbox_0, outbox_1 (relids[0], [1]) and
 * evbus.outbox_id_seq: cached, or looked up (once per backend, again after
 * an invalidation).
 *
 * The lookups can process invalidations, and so run forget_oids in the
 * middle of filling the cache: they fill the caller's variables, which
 * are checked and returned, and the cache only if no invalidation at all
 * arrived meanwhile (one might have been for a DROP EXTENSION).
 */
static void
outbox_oids(Oid *relids, Oid *seqid)
{
	uint64		inval_count;
	Oid			schema;

	if (OidIsValid(outbox_relids[0]) && OidIsValid(outbox_relids[1]) &&
		OidIsValid(outbox_seqid))
	{
		relids[0] = outbox_relids[0];
		relids[1] = outbox_relids[1];
		*seqid = outbox_seqid;
		return;
	}
	if (!callback_registered)
	{
		CacheRegisterRelcacheCallback(forget_oids, (Datum) 0);
		callback_registered = true;
	}
	inval_count = SharedInvalidMessageCounter;
	schema = evbus_schema_oid();
	relids[0] = get_relname_relid("outbox_0", schema);
	relids[1] = get_relname_relid("outbox_1", schema);
	*seqid = get_relname_relid("outbox_id_seq", schema);
	if (!OidIsValid(relids[0]) || !OidIsValid(relids[1]) || !OidIsValid(*seqid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("the outbox tables of evbus are missing"),
				 errhint("Reinstall the extension: DROP EXTENSION evbus; CREATE EXTENSION evbus.")));
	if (inval_count == SharedInvalidMessageCounter)
	{
		outbox_relids[0] = relids[0];
		outbox_relids[1] = relids[1];
		outbox_seqid = *seqid;
	}
}

/* The table must have exactly the columns evbus writes, in that order. */
static void
check_shape(Relation rel)
{
	TupleDesc	desc = RelationGetDescr(rel);
	int			i;
	bool		ok = desc->natts == EVBUS_OUTBOX_NATTS;

	for (i = 0; ok && i < EVBUS_OUTBOX_NATTS; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		ok = !att->attisdropped && strcmp(NameStr(att->attname), outbox_columns[i]) == 0 &&
			!att->atthasdef;
	}
	if (!ok || rel->trigdesc != NULL || rel->rd_rel->relrowsecurity ||
		(desc->constr && desc->constr->num_check > 0))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("table \"%s\" is not as evbus created it", RelationGetRelationName(rel)),
				 errdetail("Its columns, defaults, triggers, check constraints or row security were changed."),
				 errhint("Reinstall the extension: DROP EXTENSION evbus; CREATE EXTENSION evbus.")));
}

/* Insert the index entries of a new tuple. */
static void
insert_index_entries(Relation rel, HeapTuple tup, Datum *values, bool *isnull)
{
	List	   *indexes = RelationGetIndexList(rel);
	ListCell   *lc;

	foreach(lc, indexes)
	{
		Relation	index = index_open(lfirst_oid(lc), RowExclusiveLock);
		IndexInfo  *info = BuildIndexInfo(index);
		Datum		keys[INDEX_MAX_KEYS];
		bool		key_isnull[INDEX_MAX_KEYS];
		int			k;

		if (info->ii_Expressions != NIL || info->ii_Predicate != NIL)
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("index \"%s\" on \"%s\" is not supported",
							RelationGetRelationName(index), RelationGetRelationName(rel)),
					 errdetail("evbus maintains only plain indexes on its outbox tables, not expression or partial ones."),
					 errhint("Drop the index.")));
		for (k = 0; k < info->ii_NumIndexAttrs; k++)
		{
			AttrNumber	attno = info->ii_IndexAttrNumbers[k];

			keys[k] = values[attno - 1];
			key_isnull[k] = isnull[attno - 1];
		}
		(void) index_insert(index, keys, key_isnull, &tup->t_self, rel,
							index->rd_index->indisunique ? UNIQUE_CHECK_YES : UNIQUE_CHECK_NO,
							false, info);
		index_close(index, NoLock);
	}
	list_free(indexes);
}

/*
 * Open an outbox table and check that it is as evbus created it.
 *
 * A DROP EXTENSION that commits while this waits for the lock leaves no
 * table to open.  A worker then has nothing left to do and exits as it
 * does when it finds the extension gone at the start of a step (exit
 * code 0: not restarted, not a failure; test 040_lifecycle.pl); a
 * backend that stages gets an error.
 */
static Relation
open_checked(Oid relid, LOCKMODE lockmode)
{
	Relation	rel = try_table_open(relid, lockmode);

	if (rel == NULL)
	{
		if (IsBackgroundWorker && !OidIsValid(get_extension_oid("evbus", true)))
		{
			ereport(LOG,
					(errmsg("evbus: extension dropped, %s exiting",
							MyBgworkerEntry->bgw_type)));
			proc_exit(0);
		}
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("evbus's outbox table no longer exists"),
				 errhint("The extension evbus was dropped or is being dropped.")));
	}
	check_shape(rel);
	return rel;
}

/*
 * evbus_outbox_open --- open evbus.outbox_<slot> with lockmode, after
 * checking that it is as evbus created it (the worker reads its columns
 * by position, outbox_scan.c).
 */
Relation
evbus_outbox_open(int slot, LOCKMODE lockmode)
{
	Oid			relids[2];
	Oid			seqid;

	outbox_oids(relids, &seqid);
	return open_checked(relids[slot], lockmode);
}

/*
 * evbus_outbox_write --- insert one event into evbus.outbox_<slot>.
 *
 * values/isnull hold every column but the first (id), in table order;
 * returns the id drawn from evbus.outbox_id_seq.  The caller has checked
 * the NOT NULL columns.  Runs as whoever calls it: the caller decides who
 * may stage (the tables themselves are only the extension owner's).
 */
int64
evbus_outbox_write(int slot, Datum *values, bool *isnull)
{
	Datum		row[EVBUS_OUTBOX_NATTS];
	bool		row_isnull[EVBUS_OUTBOX_NATTS];
	Oid			relids[2];
	Oid			seqid;
	Relation	rel;
	HeapTuple	tup;
	int64		id;

	/* copies: opening the table may reset the cache */
	outbox_oids(relids, &seqid);
	rel = open_checked(relids[slot], RowExclusiveLock);

	id = nextval_internal(seqid, false);
	row[0] = Int64GetDatum(id);
	row_isnull[0] = false;
	memcpy(&row[1], values, sizeof(Datum) * (EVBUS_OUTBOX_NATTS - 1));
	memcpy(&row_isnull[1], isnull, sizeof(bool) * (EVBUS_OUTBOX_NATTS - 1));

	tup = heap_form_tuple(RelationGetDescr(rel), row, row_isnull);
	heap_insert(rel, tup, GetCurrentCommandId(true), HEAP_INSERT_SKIP_FSM, NULL);
	insert_index_entries(rel, tup, row, row_isnull);
	heap_freetuple(tup);

	/*
	 * The lock stays until the transaction ends, as an INSERT's does: it is
	 * what keeps the worker from truncating this table (outbox.c) while the
	 * row is not committed yet, and so invisible to the worker. Released
	 * here, a transaction that stayed open across a rotation would lose its
	 * events to the TRUNCATE (test 090_late_events.pl).
	 */
	table_close(rel, NoLock);
	CommandCounterIncrement();
	return id;
}

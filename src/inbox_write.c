/*-------------------------------------------------------------------------
 *
 * inbox_write.c
 *	  Inserting a received batch's rows into evbus.inbox through the
 *	  table access method and the executor's index and trigger calls,
 *	  without planning and running an INSERT statement.
 *
 * The consumer inserts a row per message and handler.  Through SQL
 * (INSERT ... SELECT FROM unnest of one array per column, RETURNING id)
 * a sixth to a quarter of the consumer's CPU per message went to the
 * statement around the rows rather than into them: the arrays, their
 * unnest into a tuplestore, projecting each row, the RETURNING tuples
 * (bench/consume.sh, BENCHMARKS.md).  Here each row goes from the batch into a slot, then
 * where an INSERT would put it: its id from the identity's sequence, the
 * table's constraints checked, the heap tuple (up to ROWS_PER_HEAP_WRITE
 * rows at once, as COPY writes them), the index entries (a
 * duplicate (group, dedup key, handler) throws the unique violation an
 * INSERT would), and the AFTER triggers, the statement ones with their
 * transition table (tests 113_inbox_write.pl and 291_metrics_counts.pl),
 * but for the counting trigger of evbus.inbox_messages when it is the
 * only one: then the rows are counted as it would count them, without
 * it (inbox_counts.c).
 *
 * It writes only a table it knows column by column.  A column it does
 * not know (an operator's, or another version's), a generated column or a
 * row-level insert trigger (an operator's, a foreign key's) and it
 * returns false, having written nothing, and the caller inserts through
 * SQL, which applies defaults and runs row triggers (test
 * 113_inbox_write.pl).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/dependency.h"
#include "catalog/pg_class.h"
#include "commands/sequence.h"
#include "commands/trigger.h"
#include "executor/executor.h"
#include "nodes/parsenodes.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/timestamp.h"

#include "inbox.h"

/*
 * Rows written to the heap at once (table_multi_insert): one buffer lookup
 * and lock and one WAL record per page they fill instead of per row.  Row
 * by row, finding the target page again had 5 % of the consumer's samples
 * (perf, bench/consume.sh with a batch handler).
 */
#define ROWS_PER_HEAP_WRITE 64

/* The columns of evbus.inbox, as this code fills them. */
typedef enum InboxColumn
{
	COL_ID,
	COL_GROUP_NAME,
	COL_DEDUP_KEY,
	COL_MESSAGE_ID,
	COL_INTEGRATION_EVENT,
	COL_TOPIC,
	COL_PARTITION,
	COL_OFFSET,
	COL_HANDLER,
	COL_EVENT_KEY,
	COL_PAYLOAD,
	COL_HEADERS,
	COL_STATE,
	COL_ATTEMPTS,
	COL_NEXT_ATTEMPT_AT,
	COL_LAST_ERROR_CODE,
	COL_LAST_ERROR_MESSAGE,
	COL_ERRORS,
	COL_RECEIVED_AT,
	COL_HANDLED_AT,
	INBOX_NCOLUMNS
} InboxColumn;

static const char *const column_names[INBOX_NCOLUMNS] = {
	"id", "group_name", "dedup_key", "message_id", "integration_event", "topic",
	"kafka_partition", "kafka_offset", "handler", "event_key", "payload", "headers",
	"state", "attempts", "next_attempt_at", "last_error_code", "last_error_message",
	"errors", "received_at", "handled_at"
};

/*
 * known_columns --- the attribute index (0-based) of each column in
 * rel's tuple descriptor; false if rel has a column this file does not
 * fill, lacks one, or generates one.
 */
static bool
known_columns(Relation rel, int *attidx)
{
	TupleDesc	desc = RelationGetDescr(rel);
	int			found = 0;
	int			a;

	if (desc->constr && desc->constr->has_generated_stored)
		return false;
	for (a = 0; a < desc->natts; a++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, a);
		int			c;

		if (att->attisdropped)
			continue;
		for (c = 0; c < INBOX_NCOLUMNS; c++)
			if (strcmp(NameStr(att->attname), column_names[c]) == 0)
				break;
		if (c == INBOX_NCOLUMNS)
			return false;
		attidx[c] = a;
		found++;
	}
	return found == INBOX_NCOLUMNS;
}

/* Does rel have a row-level INSERT trigger (only statement ones are ours)? */
static bool
has_row_insert_triggers(Relation rel)
{
	TriggerDesc *td = rel->trigdesc;

	return td != NULL && (td->trig_insert_before_row || td->trig_insert_after_row ||
						  td->trig_insert_instead_row);
}

/*
 * A text datum made once for the string at one address: most columns of a
 * batch's rows point to the same strings (the group, the subscription's
 * handler and event, the state), and making their text for each row again
 * had 2 % of the consumer's samples (perf, bench/consume.sh).
 */
typedef struct TextOnce
{
	const char *cstring;
	Datum		datum;
} TextOnce;

static Datum
text_once(TextOnce *t, const char *cstring)
{
	if (t->cstring != cstring)
	{
		t->cstring = cstring;
		t->datum = CStringGetTextDatum(cstring);
	}
	return t->datum;
}

/* The texts of the columns that repeat from row to row. */
typedef struct RepeatedTexts
{
	TextOnce	group;
	TextOnce	event;
	TextOnce	topic;
	TextOnce	handler;
	TextOnce	state;
} RepeatedTexts;

/* Fill slot with row r of the batch, its id being id. */
static void
fill_slot(TupleTableSlot *slot, const int *attidx, const char *group,
		  const InboxNewRow *r, int64 id, TimestampTz now, RepeatedTexts *texts)
{
	Datum	   *v = slot->tts_values;
	bool	   *null = slot->tts_isnull;

	ExecClearTuple(slot);
	memset(null, true, sizeof(bool) * slot->tts_tupleDescriptor->natts);

#define SET(col, datum) (v[attidx[col]] = (datum), null[attidx[col]] = false)
	SET(COL_ID, Int64GetDatum(id));
	SET(COL_GROUP_NAME, text_once(&texts->group, group));
	SET(COL_DEDUP_KEY, CStringGetTextDatum(r->dedup_key));
	if (r->message_id)
		SET(COL_MESSAGE_ID, CStringGetTextDatum(r->message_id));
	SET(COL_INTEGRATION_EVENT, text_once(&texts->event, r->integration_event));
	SET(COL_TOPIC, text_once(&texts->topic, r->topic));
	SET(COL_PARTITION, Int32GetDatum(r->partition));
	SET(COL_OFFSET, Int64GetDatum(r->offset));
	SET(COL_HANDLER, text_once(&texts->handler, r->handler));
	if (r->event_key)
		SET(COL_EVENT_KEY, CStringGetTextDatum(r->event_key));
	SET(COL_PAYLOAD, JsonbPGetDatum(r->payload));
	SET(COL_HEADERS, JsonbPGetDatum(r->headers));
	SET(COL_STATE, text_once(&texts->state, r->handled ? "handled" : "pending"));
	SET(COL_ATTEMPTS, Int32GetDatum(r->attempts));
	if (r->handled)
		SET(COL_HANDLED_AT, TimestampTzGetDatum(now));
	else
		SET(COL_NEXT_ATTEMPT_AT, TimestampTzGetDatum(now));
	SET(COL_RECEIVED_AT, TimestampTzGetDatum(now));
#undef SET
	ExecStoreVirtualTuple(slot);
}

/*
 * evbus_inbox_write --- insert the n rows of group into evbus.inbox (relid),
 * in their order, as INSERT would (see the top of this file), and give
 * each row's id in ids.  Returns false, having written nothing, if the
 * table is not one this file knows how to write: then the caller inserts
 * through SQL.  A row whose (group, dedup key, handler) is there already
 * throws the unique violation, leaving rows of the batch written: the
 * caller runs this in a subtransaction.
 */
bool
evbus_inbox_write(Oid relid, const char *group, const InboxNewRow *rows, int n,
				  int64 *ids)
{
	Relation	rel;
	int			attidx[INBOX_NCOLUMNS];
	EState	   *estate;
	RangeTblEntry *rte;
	ResultRelInfo *rri;
	TransitionCaptureState *capture;
	TupleTableSlot **slots;
	RepeatedTexts texts = {0};
	int			nslots;
	int			start;
	Oid			seqid;
	TimestampTz now = GetCurrentTransactionStartTimestamp();
	bool		count_here;
	int			i;

	rel = table_open(relid, RowExclusiveLock);
	if (rel->rd_rel->relkind != RELKIND_RELATION || !known_columns(rel, attidx) ||
		has_row_insert_triggers(rel))
	{
		table_close(rel, NoLock);
		return false;
	}
	seqid = getIdentitySequence(relid, TupleDescAttr(RelationGetDescr(rel), attidx[COL_ID])->attnum,
								false);

	/* the executor's state for one INSERT into rel, as range table entry 1 */
	estate = CreateExecutorState();
	rte = makeNode(RangeTblEntry);
	rte->rtekind = RTE_RELATION;
	rte->relid = relid;
	rte->relkind = RELKIND_RELATION;
	rte->rellockmode = RowExclusiveLock;
	ExecInitRangeTable(estate, list_make1(rte));
	rri = makeNode(ResultRelInfo);
	InitResultRelInfo(rri, rel, 1, NULL, 0);
	/* where the AFTER triggers look for it (else they open rel again) */
	estate->es_opened_result_relations = list_make1(rri);
	estate->es_output_cid = GetCurrentCommandId(true);
	ExecOpenIndices(rri, false);
	nslots = Min(n, ROWS_PER_HEAP_WRITE);
	slots = palloc(sizeof(TupleTableSlot *) * Max(nslots, 1));
	for (i = 0; i < nslots; i++)
		slots[i] = table_slot_create(rel, &estate->es_tupleTable);

	/* the counting trigger alone: counted here, after the rows */
	count_here = evbus_inbox_counts_here(rri->ri_TrigDesc);
	if (count_here)
		rri->ri_TrigDesc = NULL;

	AfterTriggerBeginQuery();
	capture = count_here ? NULL :
		MakeTransitionCaptureState(rel->trigdesc, relid, CMD_INSERT);
	ExecBSInsertTriggers(estate, rri);
	for (start = 0; start < n; start += nslots)
	{
		int			m = Min(nslots, n - start);
		int			j;

		/* what evaluating constraints and partial indexes allocated */
		ResetPerTupleExprContext(estate);
		for (j = 0; j < m; j++)
		{
			ids[start + j] = nextval_internal(seqid, false);
			fill_slot(slots[j], attidx, group, &rows[start + j], ids[start + j], now,
					  &texts);
			if (rel->rd_att->constr)
				ExecConstraints(rri, slots[j], estate);
		}
		table_multi_insert(rel, slots, m, estate->es_output_cid, 0, NULL);
		for (j = 0; j < m; j++)
		{
			List	   *recheck;

			recheck = ExecInsertIndexTuples(rri, slots[j], estate, false, false, NULL, NIL);
			ExecARInsertTriggers(estate, rri, slots[j], recheck, capture);
			list_free(recheck);
		}
	}
	ExecASInsertTriggers(estate, rri, capture);
	AfterTriggerEndQuery(estate);

	ExecCloseResultRelations(estate);
	ExecResetTupleTable(estate->es_tupleTable, false);
	FreeExecutorState(estate);
	table_close(rel, NoLock);

	/* later statements of the transaction see the rows */
	CommandCounterIncrement();
	if (count_here)
	{
		evbus_inbox_count(group, rows, n);
		CommandCounterIncrement();
	}
	return true;
}

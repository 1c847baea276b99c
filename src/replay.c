/*-------------------------------------------------------------------------
 *
 * replay.c
 *	  evbus.replay(): read a topic again for a consumer group, from a time
 *	  or an offset; and the consumer worker's side, which does it.
 *
 * The SQL function checks the request (the caller must be a member of the
 * owner of every subscription of the integration event in the group, as
 * for pausing) and records it in evbus.replays; its commit invalidates the
 * table's relcache entry and wakes the consumer worker.  The worker, at
 * its next pass and outside any transaction:
 *
 *	1. takes the group's Kafka consumer and the topic's partitions assigned
 *	   to it (none yet: the replay waits, and is tried again every second);
 *	2. resolves where each starts again: from_offset, or the first offset
 *	   at from_time (rd_kafka_offsets_for_times);
 *	3. in one transaction: rewinds the stored offsets (evbus.consumer_offsets,
 *	   which win over Kafka's, kafka_offsets.c) -- never forwards, which
 *	   would skip messages; with rerun, sets the handled inbox rows of the
 *	   replayed range pending again, with the headers evbus-replay and
 *	   evbus-replay-id, for the handlers subscribed now; marks the replay
 *	   done with what it rewound;
 *	4. seeks the consumer to the rewound offsets.
 *
 * The messages read again go through the inbox as any redelivery: the
 * ones it knows (within evbus.inbox_retention) are not handled again; with
 * rerun, their rows, pending again, run in per-key order as retries do
 * (test 284_replay.pl).  A crash between 3 and 4 loses nothing: the next
 * assignment starts at the stored offsets.
 *
 * Calls consumer.c (the group's consumer); nothing calls back.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "datatype/timestamp.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "consumer.h"
#include "kafka.h"

/* How long the worker waits for Kafka's answers about offsets. */
#define REPLAY_KAFKA_TIMEOUT_MS 5000
/*
 * How often a replay that waits for its partitions is tried again; and
 * after Kafka did not answer, which must not hold the worker up often.
 */
#define REPLAY_RETRY_MS 1000
#define REPLAY_KAFKA_RETRY_MS 30000

/* A replay asked for and not done yet, as the worker reads it. */
typedef struct Replay
{
	int64		id;
	char	   *group;
	char	   *event;
	bool		by_time;
	int64		from;			/* an offset, or ms since 1970 (by_time) */
	bool		rerun;
} Replay;

/* ---------- the SQL function ---------- */

/* The insert of a replay, as the extension owner, and its id. */
typedef struct ReplayInsert
{
	Datum		values[6];
	char		nulls[6];
	int64		id;
} ReplayInsert;

static void
run_replay_insert(void *arg)
{
	ReplayInsert *ri = (ReplayInsert *) arg;
	Oid			argtypes[6] = {TEXTOID, TEXTOID, TIMESTAMPTZOID, INT8OID, BOOLOID, OIDOID};
	bool		isnull;

	/* no row limit: it would keep the statement trigger from firing */
	if (SPI_execute_with_args("INSERT INTO evbus.replays (group_name, integration_event,"
							  " from_time, from_offset, rerun, requested_by)"
							  " VALUES ($1, $2, $3, $4, $5, (SELECT rolname FROM pg_catalog.pg_roles"
							  " WHERE oid OPERATOR(pg_catalog.=) $6)) RETURNING id",
							  6, argtypes, ri->values, ri->nulls, false, 0) != SPI_OK_INSERT_RETURNING ||
		SPI_processed != 1)
		elog(ERROR, "could not insert into evbus.replays");
	ri->id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
}

/* 22023 for a replay's arguments that make no sense, with a hint. */
static void
refuse_replay(const char *message, const char *hint)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("%s", message),
			 errhint("%s", hint)));
}

/*
 * evbus.replay(integration_event, group_name, from_time, from_offset,
 * rerun) -> bigint: the id of the replay in evbus.replays, which the
 * consumer worker does within a second or so (see atop this file).
 */
PG_FUNCTION_INFO_V1(evbus_replay);
Datum
evbus_replay(PG_FUNCTION_ARGS)
{
	ReplayInsert ri;
	char	   *event;
	char	   *group;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(4))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("integration event and rerun must not be null"),
				 errhint("Name the integration event whose topic to read again; rerun is true or false.")));
	if (!PG_ARGISNULL(2) && !PG_ARGISNULL(3))
		refuse_replay("a replay starts from a time or from an offset, not both",
					  "Give from_time or from_offset.");
	if (PG_ARGISNULL(2) && PG_ARGISNULL(3))
		refuse_replay("a replay needs from_time or from_offset",
					  "from_offset => 0 reads the whole topic again.");
	if (!PG_ARGISNULL(3) && PG_GETARG_INT64(3) < 0)
		refuse_replay("from_offset must not be negative",
					  "Offsets start at 0 in every partition.");
	/* Kafka's timestamps: milliseconds since 1970 (negative ones: sentinels) */
	if (!PG_ARGISNULL(2) &&
		(TIMESTAMP_NOT_FINITE(PG_GETARG_TIMESTAMPTZ(2)) ||
		 PG_GETARG_TIMESTAMPTZ(2) < SetEpochTimestamp()))
		refuse_replay("from_time must be a finite time from 1970-01-01 00:00 UTC on",
					  "Kafka's timestamps count from then; from_offset => 0 reads the whole topic again.");
	evbus_check_writable("replay a topic");
	event = text_to_cstring(PG_GETARG_TEXT_PP(0));
	group = PG_ARGISNULL(1) ? evbus_default_group() : text_to_cstring(PG_GETARG_TEXT_PP(1));
	evbus_check_subscriptions_owner(event, group, NULL, "replay");

	memset(ri.nulls, ' ', sizeof(ri.nulls));
	ri.values[0] = CStringGetTextDatum(group);
	ri.values[1] = CStringGetTextDatum(event);
	ri.values[2] = PG_GETARG_DATUM(2);
	ri.nulls[2] = PG_ARGISNULL(2) ? 'n' : ' ';
	ri.values[3] = PG_GETARG_DATUM(3);
	ri.nulls[3] = PG_ARGISNULL(3) ? 'n' : ' ';
	ri.values[4] = PG_GETARG_DATUM(4);
	ri.values[5] = ObjectIdGetDatum(GetUserId());
	evbus_spi_as_owner(run_replay_insert, &ri);
	evbus_wake_at_commit(false, true);
	PG_RETURN_INT64(ri.id);
}

/* ---------- the consumer worker's side ---------- */

static EvbusTableWatch replays = {"replays", InvalidOid, true};
static TimestampTz retry_at = 0;	/* a replay waits for its partitions */

/* evbus_replays_watch --- call once in the consumer worker. */
void
evbus_replays_watch(void)
{
	evbus_table_watch(&replays);
}

/*
 * The replays not done yet, into cxt; inside a transaction.  A from_time
 * that evbus.replay refuses (a row written otherwise) is taken as the
 * nearest time Kafka knows: before 1970, 0 (the beginning); infinity, a
 * time no message has.  Converting it failed, in every pass, and ended
 * the worker each time: a consumer that could never run (test
 * 284_replay.pl).
 */
static List *
load_replays(MemoryContext cxt)
{
	List	   *result = NIL;
	uint64		i;

	if (!evbus_table_watch_read(&replays))
		return NIL;				/* SQL version 0.1: no replays */
	if (SPI_execute("SELECT id, group_name, integration_event, from_time IS NOT NULL,"
					" COALESCE(from_offset, CASE"
					" WHEN from_time OPERATOR(pg_catalog.>=) 'infinity'::pg_catalog.timestamptz"
					" THEN 9223372036854775807"
					" WHEN from_time OPERATOR(pg_catalog.<) 'epoch'::pg_catalog.timestamptz THEN 0"
					" ELSE (pg_catalog.date_part('epoch', from_time)"
					" OPERATOR(pg_catalog.*) 1000)::pg_catalog.int8 END), rerun"
					" FROM evbus.replays WHERE done_at IS NULL ORDER BY id",
					false, 0) != SPI_OK_SELECT) /* a fresh snapshot */
		elog(ERROR, "could not read evbus.replays");
	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		MemoryContext old = MemoryContextSwitchTo(cxt);
		Replay	   *r = palloc0(sizeof(Replay));

		r->id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		r->group = TextDatumGetCString(SPI_getbinval(tup, desc, 2, &isnull));
		r->event = TextDatumGetCString(SPI_getbinval(tup, desc, 3, &isnull));
		r->by_time = DatumGetBool(SPI_getbinval(tup, desc, 4, &isnull));
		r->from = DatumGetInt64(SPI_getbinval(tup, desc, 5, &isnull));
		r->rerun = DatumGetBool(SPI_getbinval(tup, desc, 6, &isnull));
		result = lappend(result, r);
		MemoryContextSwitchTo(old);
	}
	return result;
}

/*
 * rewind_partition --- inside the replay's transaction: move the stored
 * offset of (topic, partition) back to target, and with rerun set the
 * handled rows of the offsets in between pending again.
 */
static void
rewind_partition(const Replay *r, const char *topic, int32 partition,
				 int64 target, int64 stored)
{
	Oid			types[7] = {TEXTOID, TEXTOID, INT4OID, INT8OID, INT8OID, TEXTOID, TEXTOID};
	Datum		values[7];

	values[0] = CStringGetTextDatum(r->group);
	values[1] = CStringGetTextDatum(topic);
	values[2] = Int32GetDatum(partition);
	values[3] = Int64GetDatum(target);
	values[4] = Int64GetDatum(stored);
	values[5] = CStringGetTextDatum(r->event);
	values[6] = CStringGetTextDatum(psprintf(INT64_FORMAT, r->id));
	evbus_spi_exec("UPDATE evbus.consumer_offsets SET next_offset = $4, updated_at = pg_catalog.now()"
				   " WHERE group_name OPERATOR(pg_catalog.=) $1 AND topic OPERATOR(pg_catalog.=) $2"
				   " AND kafka_partition OPERATOR(pg_catalog.=) $3",
				   4, types, values, NULL, SPI_OK_UPDATE);
	if (!r->rerun)
		return;
	/* the inbox's rows of the range run again, first of their key first */
	evbus_spi_exec("UPDATE evbus.inbox i SET state = 'pending', attempts = 0,"
				   " next_attempt_at = pg_catalog.now(), handled_at = NULL,"
				   " headers = i.headers OPERATOR(pg_catalog.||) pg_catalog.jsonb_build_object("
				   "'evbus-replay', 'true', 'evbus-replay-id', $7)"
				   " WHERE i.group_name OPERATOR(pg_catalog.=) $1 AND i.topic OPERATOR(pg_catalog.=) $2"
				   " AND i.kafka_partition OPERATOR(pg_catalog.=) $3"
				   " AND i.kafka_offset OPERATOR(pg_catalog.>=) $4"
				   " AND i.kafka_offset OPERATOR(pg_catalog.<) $5 AND i.state OPERATOR(pg_catalog.=) 'handled'"
				   " AND i.handler IN (SELECT s.handler FROM evbus.subscriptions s"
				   " WHERE s.group_name OPERATOR(pg_catalog.=) $1"
				   " AND s.integration_event OPERATOR(pg_catalog.=) $6)",
				   7, types, values, NULL, SPI_OK_UPDATE);
}

/*
 * rewind_offsets --- step 3 (atop this file) for the resolved partitions parts,
 * in a transaction of its own; each partition not rewound gets offset
 * RD_KAFKA_OFFSET_INVALID, so that the caller seeks only the others.
 */
static void
rewind_offsets(const Replay *r, rd_kafka_topic_partition_list_t *parts)
{
	StringInfoData rewound;
	Oid			types[2] = {INT8OID, TEXTOID};
	Datum		values[2];
	int			i;

	initStringInfo(&rewound);
	evbus_worker_begin(evbus_consumers_let_go);
	for (i = 0; i < parts->cnt; i++)
	{
		rd_kafka_topic_partition_t *p = &parts->elems[i];
		int64		stored = evbus_stored_offset(r->group, p->topic, p->partition);
		int64		target = p->err ? -1 : p->offset;

		/* nothing stored, no message at or after from_time, or ahead */
		if (stored < 0 || target < 0 || target >= stored)
		{
			p->offset = RD_KAFKA_OFFSET_INVALID;
			continue;
		}
		rewind_partition(r, p->topic, p->partition, target, stored);
		appendStringInfo(&rewound, "%s\"%d\": [" INT64_FORMAT ", " INT64_FORMAT "]",
						 rewound.len > 0 ? ", " : "", p->partition, target, stored);
		p->offset = target;
	}
	values[0] = Int64GetDatum(r->id);
	values[1] = CStringGetTextDatum(psprintf("{%s}", rewound.data));
	evbus_spi_exec("UPDATE evbus.replays SET done_at = pg_catalog.now(),"
				   " rewound = $2::pg_catalog.jsonb WHERE id OPERATOR(pg_catalog.=) $1",
				   2, types, values, NULL, SPI_OK_UPDATE);
	evbus_worker_commit();
	ereport(LOG,
			(errmsg("evbus: replay " INT64_FORMAT " of %s for group \"%s\"%s: rewound {%s}",
					r->id, r->event, r->group, r->rerun ? " (rerun)" : "", rewound.data)));
}

/*
 * replay_one --- steps 1 to 4 of a replay; false when it must wait (its
 * group's consumer or the topic's partitions are not there yet, or Kafka
 * did not answer: *kafka_failed).
 */
static bool
replay_one(const Replay *r, bool *kafka_failed)
{
	rd_kafka_t *rk = evbus_consumer_for_replay(r->group);
	rd_kafka_topic_partition_list_t *assignment = NULL;
	rd_kafka_topic_partition_list_t *parts;
	rd_kafka_topic_partition_list_t *seek;
	rd_kafka_error_t *error;
	char	   *topic;
	int			i;

	if (rk == NULL || rd_kafka_assignment(rk, &assignment) || assignment == NULL)
		return false;
	topic = psprintf("%s%s", evbus_topic_prefix, r->event);
	parts = rd_kafka_topic_partition_list_new(Max(assignment->cnt, 1));
	for (i = 0; i < assignment->cnt; i++)
		if (strcmp(assignment->elems[i].topic, topic) == 0)
			rd_kafka_topic_partition_list_add(parts, topic, assignment->elems[i].partition)->offset = r->from;
	rd_kafka_topic_partition_list_destroy(assignment);
	if (parts->cnt > 0 && r->by_time &&
		rd_kafka_offsets_for_times(rk, parts, REPLAY_KAFKA_TIMEOUT_MS) != RD_KAFKA_RESP_ERR_NO_ERROR)
	{
		ereport(LOG,
				(errmsg("evbus: replay " INT64_FORMAT ": Kafka did not say the offsets at its time; trying again in %d s",
						r->id, REPLAY_KAFKA_RETRY_MS / 1000)));
		*kafka_failed = true;
		rd_kafka_topic_partition_list_destroy(parts);
		return false;
	}
	if (parts->cnt == 0)
	{
		rd_kafka_topic_partition_list_destroy(parts);
		return false;
	}

	rewind_offsets(r, parts);

	seek = rd_kafka_topic_partition_list_new(parts->cnt);
	for (i = 0; i < parts->cnt; i++)
		if (parts->elems[i].offset != RD_KAFKA_OFFSET_INVALID)
			rd_kafka_topic_partition_list_add(seek, topic, parts->elems[i].partition)->offset =
				parts->elems[i].offset;
	if (seek->cnt > 0 &&
		(error = rd_kafka_seek_partitions(rk, seek, REPLAY_KAFKA_TIMEOUT_MS)) != NULL)
	{
		/* the stored offsets are rewound: the next assignment starts there */
		ereport(WARNING,
				(errmsg("evbus: replay " INT64_FORMAT ": could not seek the consumer of group \"%s\": %s",
						r->id, r->group, rd_kafka_error_string(error)),
				 errhint("Restart the consumer worker (pg_terminate_backend of the \"evbus consumer\"): it starts at the rewound offsets.")));
		rd_kafka_error_destroy(error);
	}
	rd_kafka_topic_partition_list_destroy(seek);
	rd_kafka_topic_partition_list_destroy(parts);
	return true;
}

/*
 * evbus_replays_run --- do the replays asked for, outside any transaction;
 * in each pass of the consumer worker, after the consumers are in sync.
 * Returns true when one was done (inbox rows may be pending again).
 */
bool
evbus_replays_run(void)
{
	MemoryContext cxt;
	List	   *asked;
	ListCell   *lc;
	bool		done = false;
	TimestampTz now = GetCurrentTimestamp();

	if (!replays.stale && (retry_at == 0 || now < retry_at))
		return false;
	retry_at = 0;
	cxt = AllocSetContextCreate(CurrentMemoryContext, "evbus replays", ALLOCSET_SMALL_SIZES);
	evbus_worker_begin(evbus_consumers_let_go);
	asked = load_replays(cxt);
	evbus_worker_commit();
	foreach(lc, asked)
	{
		bool		kafka_failed = false;

		if (replay_one(lfirst(lc), &kafka_failed))
			done = true;
		else
			retry_at = Max(retry_at,
						   TimestampTzPlusMilliseconds(now, kafka_failed ?
													   REPLAY_KAFKA_RETRY_MS : REPLAY_RETRY_MS));
	}
	MemoryContextDelete(cxt);
	return done;
}

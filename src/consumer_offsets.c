/*-------------------------------------------------------------------------
 *
 * consumer_offsets.c
 *	  The consumer's offsets in the database (evbus.consumer_offsets): the
 *	  next offset to read in each partition, and its high watermark.
 *
 * The database, not Kafka, owns the offsets: a batch's next offsets are
 * stored in the transaction that handles it (inbox.c), so handler effects,
 * inbox and offsets commit together, and a partition assigned to the
 * consumer starts where the database says (consumer.c).  A handled batch
 * never moves a stored offset backwards; a replay (replay.c) and a
 * partition's new log (evbus_forget_partition_log) do.  The high
 * watermarks only serve the lag shown in evbus.stats.
 *
 * Every function here runs inside its caller's transaction, with SPI
 * connected; none opens one.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/array.h"
#include "utils/builtins.h"

#include "inbox.h"

/*
 * evbus_store_offsets --- store the next offsets of a handled batch (never
 * moving one backwards), and the high watermarks they were read at, where
 * known: the lag in evbus.stats is then as current as the handled rows,
 * from a partition's first batch on (test 296_stats_lag_unassigned.pl);
 * in the batch's transaction.
 */
void
evbus_store_offsets(const char *group, NextOffset *offsets, int n)
{
	static SPIPlanPtr plan = NULL;
	Datum	   *topics = palloc(sizeof(Datum) * n);
	Datum	   *parts = palloc(sizeof(Datum) * n);
	Datum	   *nexts = palloc(sizeof(Datum) * n);
	Datum	   *highs = palloc(sizeof(Datum) * n);
	bool	   *high_nulls = palloc(sizeof(bool) * n);
	int			dims[1] = {n};
	int			lbs[1] = {1};
	Oid			types[5] = {TEXTOID, TEXTARRAYOID, INT4ARRAYOID, INT8ARRAYOID, INT8ARRAYOID};
	Datum		values[5];
	int			i;

	if (n == 0)
		return;
	for (i = 0; i < n; i++)
	{
		topics[i] = CStringGetTextDatum(offsets[i].topic);
		parts[i] = Int32GetDatum(offsets[i].partition);
		nexts[i] = Int64GetDatum(offsets[i].next_offset);
		highs[i] = Int64GetDatum(offsets[i].high_watermark);
		high_nulls[i] = offsets[i].high_watermark < 0;
	}
	values[0] = CStringGetTextDatum(group);
	values[1] = PointerGetDatum(construct_array(topics, n, TEXTOID, -1, false, TYPALIGN_INT));
	values[2] = PointerGetDatum(construct_array(parts, n, INT4OID, 4, true, TYPALIGN_INT));
	values[3] = PointerGetDatum(construct_array(nexts, n, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	values[4] = PointerGetDatum(construct_md_array(highs, high_nulls, 1, dims, lbs, INT8OID, 8,
												   FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	if (SPI_execute_plan(evbus_kept_plan(&plan,
										 "INSERT INTO evbus.consumer_offsets AS o"
										 " (group_name, topic, kafka_partition, next_offset, high_watermark)"
										 " SELECT $1, t, p, x, h FROM ROWS FROM (pg_catalog.unnest($2),"
										 " pg_catalog.unnest($3), pg_catalog.unnest($4), pg_catalog.unnest($5))"
										 " AS u(t, p, x, h)"
										 " ON CONFLICT (group_name, topic, kafka_partition) DO UPDATE"
										 " SET next_offset = GREATEST(o.next_offset, excluded.next_offset),"
										 " high_watermark = COALESCE(excluded.high_watermark, o.high_watermark),"
										 " updated_at = pg_catalog.now()",
										 5, types),
						 values, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not store the consumer offsets");
}

/*
 * evbus_stored_offset --- the stored next offset of a partition, or -1.
 */
int64
evbus_stored_offset(const char *group, const char *topic, int32 partition)
{
	Oid			types[3] = {TEXTOID, TEXTOID, INT4OID};
	Datum		values[3];
	int64		result = -1;

	values[0] = CStringGetTextDatum(group);
	values[1] = CStringGetTextDatum(topic);
	values[2] = Int32GetDatum(partition);
	if (SPI_execute_with_args("SELECT next_offset FROM evbus.consumer_offsets"
							  " WHERE group_name OPERATOR(pg_catalog.=) $1"
							  " AND topic OPERATOR(pg_catalog.=) $2"
							  " AND kafka_partition OPERATOR(pg_catalog.=) $3",
							  3, types, values, NULL, true, 1) == SPI_OK_SELECT &&
		SPI_processed == 1)
	{
		bool		isnull;

		result = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	}
	return result;
}

/*
 * evbus_forget_high_watermarks --- this database's consumer holds, of
 * group's partitions, only the nkeep given (keep_topics[i],
 * keep_partitions[i]; none when it has just joined or is leaving): the
 * high watermarks of the others are not known here any more, and
 * evbus.stats shows no lag for them rather than the last one seen, which
 * reads 0 while messages wait (test 296_stats_lag_unassigned.pl).  Nor
 * does evbus.metrics() for a topic none of whose partitions is kept.
 */
void
evbus_forget_high_watermarks(const char *group, const char **keep_topics,
							 const int32 *keep_partitions, int nkeep)
{
	Datum	   *topics = palloc(sizeof(Datum) * Max(nkeep, 1));
	Datum	   *parts = palloc(sizeof(Datum) * Max(nkeep, 1));
	Oid			types[3] = {TEXTOID, TEXTARRAYOID, INT4ARRAYOID};
	Datum		values[3];
	int			i;

	for (i = 0; i < nkeep; i++)
	{
		topics[i] = CStringGetTextDatum(keep_topics[i]);
		parts[i] = Int32GetDatum(keep_partitions[i]);
	}
	values[0] = CStringGetTextDatum(group);
	values[1] = PointerGetDatum(construct_array(topics, nkeep, TEXTOID, -1, false, TYPALIGN_INT));
	values[2] = PointerGetDatum(construct_array(parts, nkeep, INT4OID, 4, true, TYPALIGN_INT));
	if (SPI_execute_with_args("UPDATE evbus.consumer_offsets o SET high_watermark = NULL"
							  " WHERE o.group_name OPERATOR(pg_catalog.=) $1"
							  " AND o.high_watermark IS NOT NULL AND NOT EXISTS"
							  " (SELECT FROM ROWS FROM (pg_catalog.unnest($2), pg_catalog.unnest($3)) AS k(t, p)"
							  " WHERE k.t OPERATOR(pg_catalog.=) o.topic"
							  " AND k.p OPERATOR(pg_catalog.=) o.kafka_partition)",
							  3, types, values, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not forget the high watermarks of group \"%s\"", group);
	evbus_metrics_forget_lags(group, keep_topics, nkeep);
}

/*
 * evbus_store_high_watermarks --- record the high watermarks of a group's
 * partitions (for the lag in evbus.stats), and give evbus.metrics() the
 * group's lag per topic: the high watermarks less the stored next
 * offsets, summed over the partitions given.
 */
void
evbus_store_high_watermarks(const char *group, NextOffset *hwm, int n)
{
	int64	   *lags = palloc(sizeof(int64) * Max(n, 1));
	int			i;

	for (i = 0; i < n; i++)
	{
		Oid			types[4] = {TEXTOID, TEXTOID, INT4OID, INT8OID};
		Datum		values[4];
		bool		isnull;
		int64		next;

		values[0] = CStringGetTextDatum(group);
		values[1] = CStringGetTextDatum(hwm[i].topic);
		values[2] = Int32GetDatum(hwm[i].partition);
		values[3] = Int64GetDatum(hwm[i].high_watermark);
		if (SPI_execute_with_args("INSERT INTO evbus.consumer_offsets AS o (group_name, topic, kafka_partition,"
								  " next_offset, high_watermark) VALUES ($1, $2, $3, 0, $4)"
								  " ON CONFLICT (group_name, topic, kafka_partition) DO UPDATE"
								  " SET high_watermark = excluded.high_watermark"
								  " RETURNING o.next_offset",
								  4, types, values, NULL, false, 1) != SPI_OK_INSERT_RETURNING ||
			SPI_processed != 1)
			elog(ERROR, "could not store the high watermark of a partition");
		next = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
										   SPI_tuptable->tupdesc, 1, &isnull));
		lags[i] = Max(hwm[i].high_watermark - next, 0);
	}
	for (i = 0; i < n; i++)
	{
		int64		lag = 0;
		int			j;

		for (j = 0; j < i; j++)
			if (strcmp(hwm[j].topic, hwm[i].topic) == 0)
				break;
		if (j < i)
			continue;			/* this topic's lag is set already */
		for (j = i; j < n; j++)
			if (strcmp(hwm[j].topic, hwm[i].topic) == 0)
				lag += lags[j];
		evbus_metrics_set_lag(group, hwm[i].topic, lag);
	}
	pfree(lags);
}

/*
 * evbus_forget_partition_log --- group's partition topic[partition] has a
 * new log from offset from on, whose offsets the old log had used too
 * (consumer_positions.c, kafka_offsets.c): its stored offset goes back
 * to from, and the inbox forgets the handled messages without an id that
 * it read at those offsets in the old log, whose de-duplication keys
 * ("topic/partition/offset") the new log's messages would otherwise be
 * taken for (test 308_new_partition_log.pl).  A message of the old log
 * still pending or dead keeps its row and its key.  Returns how many
 * messages the inbox forgot.
 */
uint64
evbus_forget_partition_log(const char *group, const char *topic, int32 partition,
						   int64 from)
{
	Oid			types[6] = {TEXTOID, TEXTOID, INT4OID, INT8OID, TEXTOID, TEXTOID};
	Datum		values[6];

	values[0] = CStringGetTextDatum(group);
	values[1] = CStringGetTextDatum(topic);
	values[2] = Int32GetDatum(partition);
	values[3] = Int64GetDatum(from);
	/* a Kafka topic name has no '/': the keys of the partition, as a range */
	values[4] = CStringGetTextDatum(psprintf("%s/%d/", topic, partition));
	values[5] = CStringGetTextDatum(psprintf("%s/%d0", topic, partition));
	evbus_spi_exec("UPDATE evbus.consumer_offsets SET next_offset = $4, high_watermark = NULL,"
				   " updated_at = pg_catalog.now()"
				   " WHERE group_name OPERATOR(pg_catalog.=) $1"
				   " AND topic OPERATOR(pg_catalog.=) $2"
				   " AND kafka_partition OPERATOR(pg_catalog.=) $3",
				   6, types, values, NULL, SPI_OK_UPDATE);
	evbus_spi_exec("DELETE FROM evbus.inbox"
				   " WHERE group_name OPERATOR(pg_catalog.=) $1"
				   " AND dedup_key OPERATOR(pg_catalog.>=) ($5 COLLATE \"C\")"
				   " AND dedup_key OPERATOR(pg_catalog.<) ($6 COLLATE \"C\")"
				   " AND topic OPERATOR(pg_catalog.=) $2"
				   " AND kafka_partition OPERATOR(pg_catalog.=) $3"
				   " AND kafka_offset OPERATOR(pg_catalog.>=) $4"
				   " AND message_id IS NULL AND state OPERATOR(pg_catalog.=) 'handled'",
				   6, types, values, NULL, SPI_OK_DELETE);
	return SPI_processed;
}

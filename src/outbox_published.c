/*-------------------------------------------------------------------------
 *
 * outbox_published.c
 *	  Which outbox rows the worker is done with: id ranges per outbox table,
 *	  in the worker's memory and in evbus.outbox_published_<n>.
 *
 * A row Kafka acknowledged (or that went to the dead letters) is not
 * deleted: a DELETE per event costs WAL and worker CPU in proportion to
 * the events (a large share of what evbus adds to a staging transaction's
 * WAL; bench/commit_overhead.sh with WAL_STATS=1 shows it).  Instead its
 * id joins the ranges of its table.  A finish appends its ids as ranges (runs of consecutive ids: a
 * row or two per batch) to evbus.outbox_published_<n> in the finish's
 * transaction, and merges them into the copy in memory, which the claims
 * consult to skip rows already done (outbox_scan.c).  When the ranges of
 * the table staging no longer writes to cover every row in it, both
 * tables are truncated (outbox.c), and the ranges forgotten.
 *
 * The copy in memory is built from the tables when the worker starts: a
 * crash loses nothing but the finishes that did not commit, whose events
 * are published again with their message ids, as before.
 *
 * Ids are never reused (one sequence), so a range that outlives its rows
 * (a TRUNCATE by hand) is harmless.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/array.h"
#include "utils/memutils.h"

#include "outbox.h"

/* Disjoint ranges [lo[i], hi[i]], sorted, never adjacent (merged). */
typedef struct IdRanges
{
	int			n;
	int			cap;
	int64	   *lo;
	int64	   *hi;
} IdRanges;

static IdRanges ranges[2];
static bool loaded = false;
static SPIPlanPtr append_plan[2] = {NULL, NULL};

/*
 * find --- index of the last range with lo <= id, or -1.
 */
static int
find(const IdRanges *r, int64 id)
{
	int			low = 0;
	int			high = r->n - 1;
	int			found = -1;

	while (low <= high)
	{
		int			mid = low + (high - low) / 2;

		if (r->lo[mid] <= id)
		{
			found = mid;
			low = mid + 1;
		}
		else
			high = mid - 1;
	}
	return found;
}

/*
 * evbus_outbox_published_covers --- is id among the ids of table the
 * worker is done with?  Then *last is the end of its range, so that a
 * scan in id order can jump past the range at once.
 */
bool
evbus_outbox_published_covers(int table, int64 id, int64 *last)
{
	const IdRanges *r = &ranges[table];
	int			i = find(r, id);

	if (i < 0 || r->hi[i] < id)
		return false;
	if (last)
		*last = r->hi[i];
	return true;
}

/* Make room for n more ranges. */
static void
reserve(IdRanges *r, int n)
{
	if (r->n + n <= r->cap)
		return;
	r->cap = Max(r->cap * 2, r->n + n);
	r->cap = Max(r->cap, 64);
	if (r->lo == NULL)
	{
		r->lo = MemoryContextAlloc(TopMemoryContext, sizeof(int64) * r->cap);
		r->hi = MemoryContextAlloc(TopMemoryContext, sizeof(int64) * r->cap);
	}
	else
	{
		r->lo = repalloc(r->lo, sizeof(int64) * r->cap);
		r->hi = repalloc(r->hi, sizeof(int64) * r->cap);
	}
}

/*
 * add_range --- merge [lo, hi] into r: ranges that overlap or touch it
 * become one.
 */
static void
add_range(IdRanges *r, int64 lo, int64 hi)
{
	int			first = find(r, lo);	/* last range starting at or before lo */
	int			end;
	int			merged;

	/* the ranges that overlap or touch [lo, hi]: first .. end - 1 */
	if (first < 0 || r->hi[first] < lo - 1)
		first++;
	end = first;
	while (end < r->n && r->lo[end] <= hi + 1)
		end++;
	if (end > first)
	{
		lo = Min(lo, r->lo[first]);
		hi = Max(hi, r->hi[end - 1]);
	}
	merged = end - first;
	if (merged == 0)
	{
		reserve(r, 1);
		memmove(&r->lo[first + 1], &r->lo[first], sizeof(int64) * (r->n - first));
		memmove(&r->hi[first + 1], &r->hi[first], sizeof(int64) * (r->n - first));
		r->n++;
	}
	else if (merged > 1)
	{
		memmove(&r->lo[first + 1], &r->lo[end], sizeof(int64) * (r->n - end));
		memmove(&r->hi[first + 1], &r->hi[end], sizeof(int64) * (r->n - end));
		r->n -= merged - 1;
	}
	r->lo[first] = lo;
	r->hi[first] = hi;
}

/*
 * evbus_outbox_published_load --- build the copy in memory from the
 * tables, once per worker.  Must run inside evbus_worker_begin/commit.
 */
void
evbus_outbox_published_load(void)
{
	int			table;

	if (loaded)
		return;
	for (table = 0; table < 2; table++)
	{
		char		sql[128];
		uint64		i;

		ranges[table].n = 0;
		snprintf(sql, sizeof(sql),
				 "SELECT lo, hi FROM evbus.outbox_published_%d ORDER BY lo", table);
		if (SPI_execute(sql, true, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not read evbus.outbox_published_%d", table);
		for (i = 0; i < SPI_processed; i++)
		{
			bool		isnull;
			int64		lo = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i],
														 SPI_tuptable->tupdesc, 1, &isnull));
			int64		hi = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i],
														 SPI_tuptable->tupdesc, 2, &isnull));

			add_range(&ranges[table], lo, hi);
		}
		SPI_freetuptable(SPI_tuptable);
	}
	loaded = true;
}

/*
 * evbus_outbox_published_add --- the worker is done with ids of table:
 * append them as ranges to evbus.outbox_published_<table> and merge them
 * into the copy in memory.  Must run inside evbus_worker_begin/commit
 * (the finish's transaction: the ranges commit with the dead letters and
 * the counters, or not at all; a failed transaction ends the worker,
 * whose successor reloads the ranges).
 */
void
evbus_outbox_published_add(int table, int64 *ids, int nids)
{
	int64	   *sorted;
	Datum	   *los;
	Datum	   *his;
	int			nruns = 0;
	int			i;
	Oid			argtypes[2] = {INT8ARRAYOID, INT8ARRAYOID};
	Datum		values[2];
	char		sql[200];

	if (nids == 0)
		return;
	sorted = palloc(sizeof(int64) * nids);
	memcpy(sorted, ids, sizeof(int64) * nids);
	qsort(sorted, nids, sizeof(int64), evbus_int64_cmp);
	los = palloc(sizeof(Datum) * nids);
	his = palloc(sizeof(Datum) * nids);
	for (i = 0; i < nids; i++)
	{
		int64		lo = sorted[i];

		while (i + 1 < nids && sorted[i + 1] <= sorted[i] + 1)
			i++;
		los[nruns] = Int64GetDatum(lo);
		his[nruns] = Int64GetDatum(sorted[i]);
		nruns++;
		add_range(&ranges[table], lo, sorted[i]);
	}

	values[0] = PointerGetDatum(construct_array(los, nruns, INT8OID, 8,
												FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	values[1] = PointerGetDatum(construct_array(his, nruns, INT8OID, 8,
												FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	snprintf(sql, sizeof(sql),
			 "INSERT INTO evbus.outbox_published_%d (lo, hi)"
			 " SELECT * FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2))",
			 table);
	if (SPI_execute_plan(evbus_kept_plan(&append_plan[table], sql, 2, argtypes),
						 values, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not record published events in evbus.outbox_published_%d", table);
	pfree(sorted);
	pfree(los);
	pfree(his);
}

/*
 * evbus_outbox_published_forget --- table and its ranges were truncated
 * (in the current transaction, which commits before the next claim).
 */
void
evbus_outbox_published_forget(int table)
{
	ranges[table].n = 0;
}

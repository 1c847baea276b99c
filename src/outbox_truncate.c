/*-------------------------------------------------------------------------
 *
 * outbox_truncate.c
 *	  A short-lived background worker that truncates an outbox table the
 *	  publisher is done with, so that the publisher keeps claiming
 *	  meanwhile.
 *
 * TRUNCATE is cheap, its commit is not: PostgreSQL gives the old file's
 * disk space back then (ftruncate to 0), which for a minute of staging
 * or a burst of 200,000 events (tens of MB) took 25 to 55 ms on the
 * benchmark machine, and a publisher that truncated in its own step
 * claimed nothing meanwhile: every event committed then waited that long
 * (bench/peers.sh, latency).  So once the publisher has found every row of
 * the table staging no longer writes to done with (outbox.c), it starts
 * this worker, which:
 *
 *	  - takes both tables' exclusive locks, each only if free at once,
 *	    trying again for up to 100 ms (a staging transaction still writing
 *	    there keeps its RowExclusiveLock until it ends; each claim of the
 *	    publisher holds an AccessShareLock for a moment);
 *	  - checks again, under the locks, from the committed ranges of
 *	    evbus.outbox_published_<n>, that no row of evbus.outbox_<n> is
 *	    waiting (a row the check misses would be lost: test
 *	    081_truncate_worker.pl), along the primary key past the ranges,
 *	    so that the locks, which the publisher's claims wait for, are
 *	    held for milliseconds;
 *	  - truncates both, commits and exits.
 *
 * Anything else -- a lock taken, a row waiting, no free background worker
 * slot, an error -- leaves the table as it is: the publisher tries again
 * at its next maintenance (every second), and without a free slot it
 * truncates in its own step, as before.  The publisher forgets its
 * copy of the table's ranges once it finds the table empty.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "storage/lmgr.h"
#include "tcop/tcopprot.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"

#include "outbox.h"

PGDLLEXPORT void evbus_outbox_truncate_main(Datum main_arg);

/* The worker of this backend's last request, until it has exited. */
static BackgroundWorkerHandle *truncating = NULL;

/*
 * evbus_outbox_truncate_start --- start the worker that truncates
 * evbus.outbox_<slot> of this database.  Returns true if it runs or has
 * just been started (the caller leaves the table to it), false without a
 * free background worker slot (the caller truncates it itself).
 */
bool
evbus_outbox_truncate_start(int slot)
{
	BackgroundWorker worker;
	pid_t		pid;
	MemoryContext old;
	bool		started;

	if (truncating != NULL)
	{
		if (GetBackgroundWorkerPid(truncating, &pid) != BGWH_STOPPED)
			return true;
		pfree(truncating);
		truncating = NULL;
	}

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	strlcpy(worker.bgw_library_name, "evbus", BGW_MAXLEN);
	strlcpy(worker.bgw_function_name, "evbus_outbox_truncate_main", BGW_MAXLEN);
	snprintf(worker.bgw_name, BGW_MAXLEN,
			 "evbus outbox truncate for database %u", MyDatabaseId);
	strlcpy(worker.bgw_type, "evbus outbox truncate", BGW_MAXLEN);
	worker.bgw_main_arg = Int32GetDatum(slot);
	memcpy(worker.bgw_extra, &MyDatabaseId, sizeof(Oid));
	worker.bgw_notify_pid = MyProcPid;

	/* the handle outlives this transaction: it is looked at next time */
	old = MemoryContextSwitchTo(TopMemoryContext);
	started = RegisterDynamicBackgroundWorker(&worker, &truncating);
	MemoryContextSwitchTo(old);
	return started;
}

/*
 * all_done --- is every row of evbus.outbox_<slot> within the committed
 * ranges of evbus.outbox_published_<slot>?  Read under both exclusive
 * locks, so no row can come or go meanwhile, and along the primary key
 * past the ranges, as the publisher's claims do (outbox_scan.c): a scan
 * of every row would hold the locks, and so the publisher's next claim,
 * which reads both tables, for as long as it takes to read a minute of
 * staging.  A fresh process: the ranges in memory are those read here.
 */
static bool
all_done(int slot)
{
	int64		unused;

	evbus_outbox_published_load();
	return evbus_outbox_pending_ids(slot, 0, &unused) == 0;
}

/*
 * How many times, 1 ms apart, the worker tries to take both locks: the
 * publisher reads the table in each claim (an AccessShareLock for the
 * claim's transaction), so the first try may fall into one.
 */
#define LOCK_TRIES 100

/*
 * lock_both --- both exclusive locks, each only if free at once, tried
 * again until LOCK_TRIES have failed; never waited for, so that no
 * staging transaction queues behind this worker.
 */
static bool
lock_both(Oid relid, Oid ranges_relid)
{
	int			i;

	for (i = 0; i < LOCK_TRIES; i++)
	{
		if (ConditionalLockRelationOid(relid, AccessExclusiveLock))
		{
			if (ConditionalLockRelationOid(ranges_relid, AccessExclusiveLock))
				return true;
			UnlockRelationOid(relid, AccessExclusiveLock);
		}
		CHECK_FOR_INTERRUPTS();
		pg_usleep(1000L);
	}
	return false;
}

/*
 * truncate_if_done --- in the current transaction: truncate
 * evbus.outbox_<slot> and its ranges if both locks can be had and every
 * row is done with.
 */
static void
truncate_if_done(int slot)
{
	Oid			schema = get_namespace_oid("evbus", true);
	char		relname[NAMEDATALEN];
	Oid			relid;
	Oid			ranges_relid;
	char		sql[128];

	if (!OidIsValid(schema))
		return;					/* no evbus here any more */
	snprintf(relname, sizeof(relname), "outbox_%d", slot);
	relid = get_relname_relid(relname, schema);
	snprintf(relname, sizeof(relname), "outbox_published_%d", slot);
	ranges_relid = get_relname_relid(relname, schema);
	if (!OidIsValid(relid) || !OidIsValid(ranges_relid) ||
		!lock_both(relid, ranges_relid))
		return;

	/* a snapshot taken under the locks, for the check and the TRUNCATE */
	PushActiveSnapshot(GetTransactionSnapshot());
	SPI_connect();
	if (all_done(slot))
	{
		snprintf(sql, sizeof(sql), "TRUNCATE evbus.outbox_%d, evbus.outbox_published_%d",
				 slot, slot);
		if (SPI_execute(sql, false, 0) != SPI_OK_UTILITY)
			elog(ERROR, "could not truncate evbus.outbox_%d", slot);
		elog(DEBUG1, "evbus: truncated evbus.outbox_%d in its own worker", slot);
	}
	SPI_finish();
	PopActiveSnapshot();
}

/*
 * evbus_outbox_truncate_main --- the worker: main_arg is the table's
 * number, bgw_extra the database's OID.
 */
void
evbus_outbox_truncate_main(Datum main_arg)
{
	int			slot = DatumGetInt32(main_arg);
	Oid			dboid;

	memcpy(&dboid, MyBgworkerEntry->bgw_extra, sizeof(Oid));
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	/* never into a database being dropped (test 230_drop_database_guard.pl) */
	if (!evbus_db_may_start(dboid))
		proc_exit(0);
	BackgroundWorkerInitializeConnectionByOid(dboid, InvalidOid, 0);
	evbus_worker_settings();

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	pgstat_report_activity(STATE_RUNNING, "truncating the outbox");
	truncate_if_done(slot);
	CommitTransactionCommand();
	pgstat_report_activity(STATE_IDLE, NULL);
	proc_exit(0);
}

/*-------------------------------------------------------------------------
 *
 * launcher.c
 *	  The evbus launcher: starts one worker per database, and hosts the
 *	  embedded broker.
 *
 * The launcher is a static background worker that starts once recovery
 * has finished (never on a standby).  It connects to no database, reads
 * pg_database, and starts a worker for each database that accepts
 * connections; a worker whose database lacks the extension exits at once.
 * CREATE EXTENSION starts its database's worker when it commits (see
 * evbus._start_worker_at_commit), DROP EXTENSION makes the worker exit,
 * DROP DATABASE stops it first (evbus.c).
 *
 * When evbus.brokers = 'embedded', the launcher also runs librdkafka's
 * mock cluster (embedded.c): one broker for the whole server, shared by
 * all databases, living as long as the launcher.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_database.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"

#include "evbus.h"

/* Set by evbus._start_worker_at_commit(), acted upon at COMMIT. */
static bool start_worker_at_commit = false;

/* Register the launcher (from _PG_init, in the postmaster). */
void
evbus_register_launcher(void)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = 5;
	strlcpy(worker.bgw_library_name, "evbus", BGW_MAXLEN);
	strlcpy(worker.bgw_function_name, "evbus_launcher_main", BGW_MAXLEN);
	strlcpy(worker.bgw_name, "evbus launcher", BGW_MAXLEN);
	strlcpy(worker.bgw_type, "evbus launcher", BGW_MAXLEN);
	RegisterBackgroundWorker(&worker);
}

/*
 * evbus_start_worker --- register a dynamic worker for one database: its
 * publisher (which starts its consumer) or its consumer.
 *
 * The worker restarts 1 s after an error exit; it exits with 0 (and is
 * forgotten) when its database has no evbus or already has such a worker.
 */
bool
evbus_start_worker(Oid dboid, int role, bool wait_for_start)
{
	BackgroundWorker worker;
	BackgroundWorkerHandle *handle;
	pid_t		pid;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = 1;
	strlcpy(worker.bgw_library_name, "evbus", BGW_MAXLEN);
	if (role == EVBUS_PUBLISHER)
	{
		strlcpy(worker.bgw_function_name, "evbus_worker_main", BGW_MAXLEN);
		snprintf(worker.bgw_name, BGW_MAXLEN, "evbus worker for database %u", dboid);
		strlcpy(worker.bgw_type, "evbus worker", BGW_MAXLEN);
	}
	else
	{
		strlcpy(worker.bgw_function_name, "evbus_consumer_main", BGW_MAXLEN);
		snprintf(worker.bgw_name, BGW_MAXLEN, "evbus consumer for database %u", dboid);
		strlcpy(worker.bgw_type, "evbus consumer", BGW_MAXLEN);
	}
	worker.bgw_main_arg = ObjectIdGetDatum(dboid);
	worker.bgw_notify_pid = wait_for_start ? MyProcPid : 0;

	if (!RegisterDynamicBackgroundWorker(&worker, &handle))
	{
		ereport(WARNING,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("could not start the evbus worker for database %u", dboid),
				 errhint("Increase max_worker_processes.")));
		return false;
	}
	if (wait_for_start)
		return WaitForBackgroundWorkerStartup(handle, &pid) == BGWH_STARTED;
	return true;
}

/*
 * evbus_stop_worker --- make dboid's workers exit for good and wait (up to
 * 10 s) until they have.
 */
void
evbus_stop_worker(Oid dboid)
{
	pid_t		pids[2];
	int			n = evbus_request_worker_stop(dboid, pids, lengthof(pids));
	int			i;

	for (i = 0; i < n; i++)
		kill(pids[i], SIGTERM);
	for (i = 0; i < 1000 && evbus_worker_pid_for(dboid, -1) != 0; i++)
	{
		CHECK_FOR_INTERRUPTS();
		pg_usleep(10000L);
	}
}

static void
launcher_xact_callback(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_COMMIT && start_worker_at_commit)
	{
		start_worker_at_commit = false;
		evbus_start_worker(MyDatabaseId, EVBUS_PUBLISHER, false);
	}
	else if (event == XACT_EVENT_ABORT || event == XACT_EVENT_PREPARE)
		start_worker_at_commit = false;
}

void		evbus_launcher_xact_init(void);
void
evbus_launcher_xact_init(void)
{
	RegisterXactCallback(launcher_xact_callback, NULL);
}

/*
 * evbus._start_worker_at_commit() --- called by the install script: start
 * this database's worker once CREATE EXTENSION commits.
 */
PG_FUNCTION_INFO_V1(evbus_start_worker_at_commit);
Datum
evbus_start_worker_at_commit(PG_FUNCTION_ARGS)
{
	start_worker_at_commit = true;
	PG_RETURN_VOID();
}

/* Start a worker for every database that accepts connections. */
static void
start_all_workers(void)
{
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tup;
	List	   *dbs = NIL;
	ListCell   *lc;

	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while ((tup = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		Form_pg_database db = (Form_pg_database) GETSTRUCT(tup);

		if (db->datallowconn && !db->datistemplate)
		{
			MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

			dbs = lappend_oid(dbs, db->oid);
			MemoryContextSwitchTo(old);
		}
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	PopActiveSnapshot();
	CommitTransactionCommand();

	foreach(lc, dbs)
	{
		if (evbus_worker_pid_for(lfirst_oid(lc), EVBUS_PUBLISHER) == 0)
			evbus_start_worker(lfirst_oid(lc), EVBUS_PUBLISHER, false);
	}
	list_free(dbs);
}

/* Start or stop the embedded broker to match evbus.brokers. */
static void
sync_embedded_broker(void)
{
	if (strcmp(evbus_brokers, EVBUS_EMBEDDED) == 0)
		evbus_embedded_start();
	else
		evbus_embedded_stop();
}

void
evbus_launcher_main(Datum main_arg)
{
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	BackgroundWorkerUnblockSignals();

	BackgroundWorkerInitializeConnection(NULL, NULL, 0);
	pgstat_report_activity(STATE_RUNNING, "starting workers");

	sync_embedded_broker();
	start_all_workers();
	pgstat_report_activity(STATE_IDLE, NULL);

	while (!ShutdownRequestPending)
	{
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_EXIT_ON_PM_DEATH, -1L,
						 PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();

		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
			sync_embedded_broker();
		}
	}

	evbus_embedded_stop();
	proc_exit(0);
}

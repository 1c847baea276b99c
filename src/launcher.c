/*-------------------------------------------------------------------------
 *
 * launcher.c
 *	  The evbus launcher: keeps the workers of every database that has
 *	  evbus running, stops and starts them for the commands on a database
 *	  (database_guard.c), and hosts the embedded broker.
 *
 * The launcher is a static background worker that starts once recovery
 * has finished (never on a standby).  It connects to no database, so it
 * cannot see which databases have evbus: it looks, one database at a
 * time, by starting a worker there (a probe) and waiting until the worker
 * either finds evbus and stays, or exits.  Starting one worker per
 * database at once would take a background worker slot per database, and
 * with more databases than slots the ones late in pg_database would get
 * none (test 234_worker_slots.pl).  What it learns is kept in shared
 * memory (shmem.c): CREATE EXTENSION enters its database at COMMIT and
 * starts its worker, DROP EXTENSION removes it, DROP DATABASE marks it
 * while it runs (database_guard.c).
 *
 * Workers are never restarted by the postmaster (BGW_NEVER_RESTART): the
 * launcher does it.  Every LAUNCHER_NAP_MS it starts the worker (and,
 * once that runs, the consumer) of every evbus database where one is
 * missing -- it exited, crashed, or no slot was free -- unless one was
 * started within START_GRACE_MS and may still be coming up.  A start that
 * finds no free slot is logged once (WARNING, with a hint to raise
 * max_worker_processes) and shown by evbus.worker_status() in the
 * database, until the worker runs.  A worker that exited for want of work
 * (idle.c) is not missing: it is started when woken -- by a commit, which
 * sets the launcher's latch, or when the time it went idle until comes --
 * and all idle workers are woken when a reload changes the Kafka settings.
 * Idle consumers are woken by the launcher's watch over their topics
 * (wake_watch.c), served in its loop without waiting on the network.
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
#include "commands/dbcommands.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "storage/procarray.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "evbus.h"
#include "kafka.h"

/* How often the launcher looks for missing workers. */
#define LAUNCHER_NAP_MS 1000

/* A worker registered this recently may still be starting: not again. */
#define START_GRACE_MS 3000

/* How often pg_database is read again for new databases. */
#define SCAN_INTERVAL_MS 10000

/* How long a probe may take to find evbus before the launcher moves on. */
#define PROBE_TIMEOUT_MS 10000

/* How long DROP DATABASE waits for the workers to exit. */
#define STOP_TIMEOUT_MS 10000

/* Set by evbus._start_worker_at_commit(), acted upon at COMMIT. */
static bool start_worker_at_commit = false;
static char start_dbname[NAMEDATALEN];

/* Set when DROP EXTENSION evbus ran, acted upon at COMMIT. */
static bool forget_database_at_commit = false;

/* Set when a DROP EXTENSION evbus stopped the workers, until the end. */
static bool workers_stopped_for_drop = false;

/* A database that accepts connections, as the launcher's scan saw it. */
typedef struct LauncherDb
{
	Oid			dboid;
	char		name[NAMEDATALEN];
} LauncherDb;

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
 * notify_pid and handle are for the launcher's probes (0 and NULL
 * otherwise).  Nothing is started while DROP DATABASE runs in dboid.
 * Without a free background worker slot, the first failure since the
 * worker last ran is a WARNING (a LOG when workers go idle, and free
 * slots, after evbus.idle_timeout); the launcher retries.  The worker is
 * never restarted by the postmaster: it exits when its database has no
 * evbus or already has such a worker, and the launcher starts it again
 * when it is missing.  Nothing is started either while a restore writes
 * evbus's tables in dboid (restore.c).
 */
bool
evbus_start_worker(Oid dboid, const char *dbname, int role, pid_t notify_pid,
				   BackgroundWorkerHandle **handle)
{
	BackgroundWorker worker;
	BackgroundWorkerHandle *h;

	if (!evbus_db_may_start(dboid) || evbus_restore_in_progress(dboid, NULL))
		return false;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	strlcpy(worker.bgw_library_name, "evbus", BGW_MAXLEN);
	if (role == EVBUS_PUBLISHER)
	{
		strlcpy(worker.bgw_function_name, "evbus_publisher_main", BGW_MAXLEN);
		snprintf(worker.bgw_name, BGW_MAXLEN, "evbus publisher for database %u", dboid);
		strlcpy(worker.bgw_type, "evbus publisher", BGW_MAXLEN);
	}
	else
	{
		strlcpy(worker.bgw_function_name, "evbus_consumer_main", BGW_MAXLEN);
		snprintf(worker.bgw_name, BGW_MAXLEN, "evbus consumer for database %u", dboid);
		strlcpy(worker.bgw_type, "evbus consumer", BGW_MAXLEN);
	}
	worker.bgw_main_arg = ObjectIdGetDatum(dboid);
	worker.bgw_notify_pid = notify_pid;

	if (!RegisterDynamicBackgroundWorker(&worker, &h))
	{
		EvbusDatabase db;
		bool		installed = evbus_db_lookup(dboid, &db) &&
			db.state == EVBUS_DB_INSTALLED;

		/*
		 * With evbus.idle_timeout, workers exit for want of work and free
		 * their slots: a start that finds none waits its turn, which is no
		 * cause for a warning.
		 */
		if (evbus_db_start_failed(dboid, role))
			ereport(installed && evbus_idle_timeout_s == 0 ? WARNING : LOG,
					(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
					 installed ?
					 errmsg("could not start the evbus %s for database \"%s\": no free background worker slot",
							evbus_worker_role_name(role), dbname) :
					 errmsg("evbus: could not look for evbus in database \"%s\": no free background worker slot",
							dbname),
					 errdetail("evbus tries again every second, and says so only once."),
					 errhint("Raise max_worker_processes (now %d): each database with evbus uses two background workers, plus one for the evbus launcher.",
							 max_worker_processes)));
		return false;
	}
	evbus_db_start_registered(dboid, role);
	if (handle)
		*handle = h;
	else
		pfree(h);
	return true;
}

/*
 * evbus_stop_worker --- make dboid's workers exit and wait (up to
 * STOP_TIMEOUT_MS) until they have.  A handler they run is interrupted:
 * SIGTERM makes them exit even there (consumer_worker.c).
 */
void
evbus_stop_worker(Oid dboid)
{
	pid_t		pids[2];
	int			n = evbus_request_worker_stop(dboid, pids, lengthof(pids));
	int			i;

	for (i = 0; i < n; i++)
		kill(pids[i], SIGTERM);
	for (i = 0; i < STOP_TIMEOUT_MS / 10 && evbus_worker_pid_for(dboid, -1) != 0; i++)
	{
		CHECK_FOR_INTERRUPTS();
		pg_usleep(10000L);
	}
}

/* DROP EXTENSION evbus ran in this transaction: forget it at COMMIT. */
void
evbus_forget_database_at_commit(void)
{
	forget_database_at_commit = true;
}

/*
 * evbus_stop_workers_for_extension_drop --- DROP EXTENSION evbus by a role
 * that may drop it is about to run: stop this database's workers, and
 * start none until the transaction ends (evbus_db_begin_drop).  A worker
 * reading evbus's tables while the drop takes their locks one by one
 * deadlocked with it, and the drop failed (test 320_dump_restore.pl).  At
 * COMMIT the database is forgotten; at ABORT its workers start again.
 */
void
evbus_stop_workers_for_extension_drop(void)
{
	if (workers_stopped_for_drop || !evbus_db_begin_drop(MyDatabaseId))
		return;
	workers_stopped_for_drop = true;
	if (evbus_worker_pid_for(MyDatabaseId, -1) == 0)
		return;
	ereport(LOG,
			(errmsg("evbus: DROP EXTENSION evbus stops the workers of database \"%s\"",
					get_database_name(MyDatabaseId))));
	evbus_stop_worker(MyDatabaseId);
}

static void
launcher_xact_callback(XactEvent event, void *arg)
{
	/* a dump with its id restored elsewhere is no copy of this one now */
	if (event == XACT_EVENT_PRE_COMMIT && forget_database_at_commit)
	{
		evbus_identity_lock();
		evbus_identity_release_ids();
	}
	if (workers_stopped_for_drop &&
		(event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT ||
		 event == XACT_EVENT_PREPARE))
	{
		evbus_db_end_drop(MyDatabaseId, false);
		if (event != XACT_EVENT_COMMIT || !forget_database_at_commit)
			evbus_wake_launcher();
		workers_stopped_for_drop = false;
	}
	if (event == XACT_EVENT_COMMIT)
	{
		if (forget_database_at_commit)
			evbus_db_forget(MyDatabaseId);
		if (start_worker_at_commit)
		{
			evbus_db_installed(MyDatabaseId);
			evbus_db_wake(MyDatabaseId, -1);
			evbus_start_worker(MyDatabaseId, start_dbname, EVBUS_PUBLISHER, 0, NULL);
			evbus_wake_launcher();
		}
	}
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT ||
		event == XACT_EVENT_PREPARE)
	{
		start_worker_at_commit = false;
		forget_database_at_commit = false;
	}
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
	evbus_start_workers_at_commit();
	PG_RETURN_VOID();
}

/*
 * evbus_start_workers_at_commit --- enter this database as one with evbus
 * and start its workers once the transaction commits (CREATE EXTENSION,
 * evbus.adopt_copy()).
 */
void
evbus_start_workers_at_commit(void)
{
	char	   *name = get_database_name(MyDatabaseId);

	strlcpy(start_dbname, name ? name : "?", sizeof(start_dbname));
	start_worker_at_commit = true;
}

/* Read pg_database: the databases that accept connections. */
static List *
scan_databases(void)
{
	MemoryContext caller_cxt = CurrentMemoryContext;
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tup;
	List	   *dbs = NIL;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while ((tup = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		Form_pg_database pgdb = (Form_pg_database) GETSTRUCT(tup);

		if (pgdb->datallowconn && !pgdb->datistemplate)
		{
			MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);
			LauncherDb *db = palloc(sizeof(LauncherDb));

			db->dboid = pgdb->oid;
			strlcpy(db->name, NameStr(pgdb->datname), sizeof(db->name));
			dbs = lappend(dbs, db);
			MemoryContextSwitchTo(old);
		}
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	PopActiveSnapshot();
	CommitTransactionCommand();
	MemoryContextSwitchTo(caller_cxt);
	return dbs;
}

static LauncherDb *
find_scanned(List *dbs, Oid dboid)
{
	ListCell   *lc;

	foreach(lc, dbs)
	{
		LauncherDb *db = lfirst(lc);

		if (db->dboid == dboid)
			return db;
	}
	return NULL;
}

/*
 * probe --- start a worker in db to see whether it has evbus, and wait
 * until it knows (it enters the database in shared memory and stays, and
 * has started its consumer) or it exits.  One probe at a time, so that
 * looking takes one slot however many databases there are, and a
 * database found with evbus gets both its workers before the next probe
 * takes a slot.  False if no slot was free.
 */
static bool
probe(LauncherDb *db)
{
	BackgroundWorkerHandle *handle;
	TimestampTz start = GetCurrentTimestamp();
	EvbusDatabase entry;
	pid_t		pid;

	if (!evbus_start_worker(db->dboid, db->name, EVBUS_PUBLISHER, MyProcPid, &handle))
		return false;
	while (!ShutdownRequestPending &&
		   !TimestampDifferenceExceeds(start, GetCurrentTimestamp(), PROBE_TIMEOUT_MS))
	{
		if (evbus_db_lookup(db->dboid, &entry) && entry.state == EVBUS_DB_INSTALLED &&
			(evbus_worker_pid_for(db->dboid, EVBUS_CONSUMER) != 0 ||
			 entry.failed_since[EVBUS_CONSUMER] != 0))
			break;
		if (GetBackgroundWorkerPid(handle, &pid) == BGWH_STOPPED)
			break;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 50L, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
	pfree(handle);
	return true;
}

/*
 * Is the worker of role missing in db, and not just being started, nor
 * idle?  Idleness is read again here, not from the entry copied at the
 * start of the pass: a worker that went idle since then has freed its
 * slot, and must not be taken for one that exited.
 */
static bool
worker_missing(const EvbusDatabase *db, int role, TimestampTz now)
{
	return evbus_worker_pid_for(db->dboid, role) == 0 &&
		TimestampDifferenceExceeds(db->started_at[role], now, START_GRACE_MS) &&
		!evbus_db_role_idle(db->dboid, role);
}

/*
 * wake_when_due --- wake the idle workers of e whose time has come (the
 * deliver_at or retry they went idle before, idle.c); e is updated.
 */
static void
wake_when_due(EvbusDatabase *e, TimestampTz now)
{
	int			role;

	for (role = EVBUS_PUBLISHER; role <= EVBUS_CONSUMER; role++)
	{
		if (e->idle[role] && e->wake_at[role] != 0 && now >= e->wake_at[role])
		{
			elog(DEBUG1, "evbus: waking the %s of database %u: work is due",
				 evbus_worker_role_name(role), e->dboid);
			evbus_db_wake(e->dboid, role);
			e->idle[role] = false;
		}
	}
}

/*
 * launcher_pass --- one look at every database: restore entries whose
 * DROP DATABASE backend died, forget databases that are gone, start the
 * missing workers of evbus databases, then probe databases not yet
 * looked at (*probed lists those that were).  *dbs is pg_database as last
 * scanned; it is scanned again when an entry names a database not in it.
 */
static void
launcher_pass(List **dbs, List **probed)
{
	EvbusDatabase *entries = palloc(sizeof(EvbusDatabase) * EVBUS_MAX_TRACKED_DBS);
	int			n = evbus_db_snapshot(entries, EVBUS_MAX_TRACKED_DBS);
	TimestampTz now = GetCurrentTimestamp();
	bool		rescanned = false;
	int			i;
	ListCell   *lc;

	for (i = 0; i < n; i++)
	{
		EvbusDatabase *e = &entries[i];
		LauncherDb *db = find_scanned(*dbs, e->dboid);

		if (db == NULL && !rescanned)
		{
			list_free_deep(*dbs);
			*dbs = scan_databases();
			rescanned = true;
			db = find_scanned(*dbs, e->dboid);
		}
		if (e->state == EVBUS_DB_DROPPING)
		{
			/* its DROP DATABASE ended without saying so (the backend died) */
			if (BackendPidGetProc(e->dropper) == NULL)
			{
				evbus_db_end_drop(e->dboid, db == NULL);
				if (db == NULL)
					evbus_metrics_forget_database(e->dboid);
			}
			continue;
		}
		if (db == NULL)
		{
			evbus_db_forget(e->dboid);	/* also a dropped one's tombstone */
			continue;
		}
		if (e->state != EVBUS_DB_INSTALLED)
			continue;
		wake_when_due(e, now);
		if (worker_missing(e, EVBUS_PUBLISHER, now))
			evbus_start_worker(e->dboid, db->name, EVBUS_PUBLISHER, 0, NULL);
		else if ((evbus_db_role_idle(e->dboid, EVBUS_PUBLISHER) ||
				  evbus_worker_pid_for(e->dboid, EVBUS_PUBLISHER) != 0) &&
				 worker_missing(e, EVBUS_CONSUMER, now))
			evbus_start_worker(e->dboid, db->name, EVBUS_CONSUMER, 0, NULL);
	}
	pfree(entries);

	foreach(lc, *dbs)
	{
		LauncherDb *db = lfirst(lc);
		EvbusDatabase e;
		bool		known = evbus_db_lookup(db->dboid, &e);
		MemoryContext old;

		if (ShutdownRequestPending)
			break;
		if (known ? e.state != EVBUS_DB_UNPROBED : list_member_oid(*probed, db->dboid))
			continue;
		if (!probe(db))
			break;				/* no slot: the next pass tries again */
		old = MemoryContextSwitchTo(TopMemoryContext);
		*probed = lappend_oid(*probed, db->dboid);
		MemoryContextSwitchTo(old);
	}
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

/*
 * kafka_settings_fingerprint --- the Kafka settings as the launcher sees
 * them (evbus_kafka_conf_fingerprint of the resolved brokers; 0: none).
 */
static uint64
kafka_settings_fingerprint(void)
{
	char		buf[1024];
	const char *brokers = evbus_resolve_brokers(buf, sizeof(buf));

	return brokers ? evbus_kafka_conf_fingerprint(brokers) : 0;
}

static void
launcher_exit(int code, Datum arg)
{
	evbus_set_launcher_latch(NULL);
}

void
evbus_launcher_main(Datum main_arg)
{
	List	   *dbs = NIL;
	List	   *probed = NIL;
	TimestampTz last_scan = 0;
	MemoryContext pass_cxt;
	uint64		settings_seen;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	BackgroundWorkerUnblockSignals();

	evbus_reread_config_at_start();

	BackgroundWorkerInitializeConnection(NULL, NULL, 0);
	evbus_set_launcher_latch(MyLatch);
	before_shmem_exit(launcher_exit, (Datum) 0);
	pass_cxt = AllocSetContextCreate(TopMemoryContext, "evbus launcher pass",
									 ALLOCSET_DEFAULT_SIZES);

	pgstat_report_activity(STATE_RUNNING, "starting workers");
	sync_embedded_broker();
	settings_seen = kafka_settings_fingerprint();

	while (!ShutdownRequestPending)
	{
		TimestampTz now = GetCurrentTimestamp();
		MemoryContext old;
		int			fd;

		if (TimestampDifferenceExceeds(last_scan, now, SCAN_INTERVAL_MS))
		{
			list_free_deep(dbs);
			dbs = scan_databases();
			last_scan = now;
		}
		old = MemoryContextSwitchTo(pass_cxt);
		/* idle consumers' topics first: a message there starts its consumer */
		evbus_watch_serve(settings_seen);
		launcher_pass(&dbs, &probed);
		MemoryContextSwitchTo(old);
		MemoryContextReset(pass_cxt);
		pgstat_report_activity(STATE_IDLE, NULL);

		fd = evbus_watch_fd();
		(void) WaitLatchOrSocket(MyLatch,
								 WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH |
								 (fd >= 0 ? WL_SOCKET_READABLE : 0),
								 fd >= 0 ? fd : PGINVALID_SOCKET,
								 LAUNCHER_NAP_MS, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();

		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
			sync_embedded_broker();

			/*
			 * Other brokers or Kafka settings: idle workers start, to publish
			 * what waited for brokers and to subscribe there (idle.c).
			 */
			if (kafka_settings_fingerprint() != settings_seen)
			{
				settings_seen = kafka_settings_fingerprint();
				if (evbus_db_wake_all() > 0)
					ereport(LOG,
							(errmsg("evbus: the Kafka settings changed: idle workers start again")));
			}
		}
	}

	evbus_watch_stop();
	evbus_embedded_stop();
	proc_exit(0);
}

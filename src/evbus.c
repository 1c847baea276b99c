/*-------------------------------------------------------------------------
 *
 * evbus.c
 *	  Module entry point: _PG_init and the small SQL functions that report
 *	  the worker's state.
 *
 * evbus must be preloaded (shared_preload_libraries = 'evbus'): it needs
 * shared memory and a launcher started by the postmaster.  Loading it any
 * other way is refused with a hint.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"


#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "storage/ipc.h"
#include "tcop/utility.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "evbus.h"
#include "consumer.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

extern void evbus_staging_init(void);
extern void evbus_launcher_xact_init(void);
extern void evbus_group_copies_init(void);

static ProcessUtility_hook_type prev_ProcessUtility = NULL;

/* Does a DROP EXTENSION name evbus? */
static bool
drops_evbus(DropStmt *stmt)
{
	ListCell   *lc;

	if (stmt->removeType != OBJECT_EXTENSION)
		return false;
	foreach(lc, stmt->objects)
	{
		if (strcmp(strVal(lfirst(lc)), "evbus") == 0)
			return true;
	}
	return false;
}

/*
 * may_drop_evbus --- is evbus installed here, and may the current user
 * drop it (its owner, or a superuser)?  Anyone else's DROP EXTENSION
 * fails, and leaves the workers alone.
 */
static bool
may_drop_evbus(void)
{
	Oid			extension = get_extension_oid("evbus", true);

	return OidIsValid(extension) && pg_extension_ownercheck(extension, GetUserId());
}

/* At the exit of a restoring connection: the workers may start again. */
static void
restore_ended(int code, Datum arg)
{
	evbus_restore_clear_mark();
	evbus_db_wake(MyDatabaseId, -1);	/* the restore may have left work */
	evbus_wake_launcher();
}

/*
 * keep_workers_away_from_restore --- a COPY FROM into evbus's tables by a
 * role that may write them is a restore (restore.c): the database's
 * workers are stopped, and none starts there until this connection ends
 * (test 320_dump_restore.pl).
 */
static void
keep_workers_away_from_restore(CopyStmt *stmt)
{
	if (!evbus_restore_mark_copy(stmt))
		return;
	before_shmem_exit(restore_ended, (Datum) 0);
	ereport(LOG,
			(errmsg("evbus: a restore into database \"%s\" is writing evbus's tables; "
					"its workers wait until this connection ends",
					get_database_name(MyDatabaseId))));
	if (evbus_worker_pid_for(MyDatabaseId, -1) != 0)
		evbus_stop_worker(MyDatabaseId);
}

/*
 * evbus_process_utility --- keep the workers in step with the commands on
 * a database and DROP EXTENSION.
 *
 * DROP DATABASE, ALTER DATABASE ... RENAME TO or SET TABLESPACE, CREATE
 * DATABASE ... TEMPLATE: the workers are connected to their database and
 * would make these fail with "database is being accessed by other users",
 * so they are stopped first -- but only when the command is going to
 * proceed (database_guard.c: anyone else's leaves them alone), and started
 * again afterwards unless the database was dropped.
 * DROP EXTENSION evbus: the database is forgotten at COMMIT, so that the
 * launcher starts no worker there again.
 * DROP ROLE of a role that subscriptions of this database run as is
 * refused (test 216_dropped_handler.pl).
 * COPY FROM into evbus's tables (a restore) keeps the database's workers
 * away until the connection ends (restore.c, test 320_dump_restore.pl).
 * COMMIT PREPARED wakes the publisher, idle or not, at its commit: the
 * events of the prepared transaction are published at once (test
 * 238_idle_databases.pl).
 */
static void
evbus_process_utility(PlannedStmt *pstmt, const char *queryString,
					  bool readOnlyTree, ProcessUtilityContext context,
					  ParamListInfo params, QueryEnvironment *queryEnv,
					  DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *parsetree = pstmt->utilityStmt;
	Oid			guarded = InvalidOid;
	bool		forget = false;
	bool		commit_prepared = false;

	/* a role that evbus subscriptions run as is not dropped (subscriptions.c) */
	if (IsA(parsetree, DropRoleStmt))
		evbus_refuse_subscriber_drop((DropRoleStmt *) parsetree);
	else if (IsA(parsetree, DropdbStmt) || IsA(parsetree, RenameStmt) ||
			 IsA(parsetree, AlterDatabaseStmt) || IsA(parsetree, CreatedbStmt))
		guarded = evbus_database_guard(parsetree,
									   context == PROCESS_UTILITY_TOPLEVEL);
	else if (IsA(parsetree, DropStmt))
	{
		forget = drops_evbus((DropStmt *) parsetree);
		if (forget && may_drop_evbus())
			evbus_stop_workers_for_extension_drop();
	}
	else if (IsA(parsetree, CopyStmt))
		keep_workers_away_from_restore((CopyStmt *) parsetree);
	else if (IsA(parsetree, TransactionStmt))
		commit_prepared = ((TransactionStmt *) parsetree)->kind ==
			TRANS_STMT_COMMIT_PREPARED;

	PG_TRY();
	{
		if (prev_ProcessUtility)
			prev_ProcessUtility(pstmt, queryString, readOnlyTree, context,
								params, queryEnv, dest, qc);
		else
			standard_ProcessUtility(pstmt, queryString, readOnlyTree, context,
									params, queryEnv, dest, qc);
	}
	PG_CATCH();
	{
		evbus_database_guard_done(guarded, false);
		PG_RE_THROW();
	}
	PG_END_TRY();
	evbus_database_guard_done(guarded, true);
	if (forget)
		evbus_forget_database_at_commit();
	/* its events are not announced by the session that staged them */
	if (commit_prepared)
		evbus_wake_at_commit(true, false);
}

/*
 * _PG_init --- define settings, shared memory, hooks and the launcher.
 */
void
_PG_init(void)
{
	if (!process_shared_preload_libraries_in_progress)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("evbus must be loaded via shared_preload_libraries"),
				 errhint("Add evbus to shared_preload_libraries in postgresql.conf and restart the server.")));

	evbus_define_gucs();
	evbus_shmem_request();
	evbus_restore_init();
	evbus_metrics_init();
	evbus_staging_init();
	evbus_launcher_xact_init();
	evbus_group_copies_init();

	prev_ProcessUtility = ProcessUtility_hook;
	ProcessUtility_hook = evbus_process_utility;

	/*
	 * No launcher, hence no worker, in a server that pg_upgrade runs (binary
	 * upgrade mode, old cluster and new): they would publish, handle and
	 * write evbus's tables while it dumps and restores (test
	 * 345_pg_upgrade.pl).
	 */
	if (!IsBinaryUpgrade)
		evbus_register_launcher();
}

/*
 * evbus.brokers() --- the bootstrap servers the worker uses now.
 */
PG_FUNCTION_INFO_V1(evbus_current_brokers);
Datum
evbus_current_brokers(PG_FUNCTION_ARGS)
{
	char		buf[1024];
	const char *brokers = evbus_resolve_brokers(buf, sizeof(buf));

	if (brokers == NULL)
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(cstring_to_text(brokers));
}

/*
 * evbus.publisher_pid() --- process id of this database's publisher, or
 * NULL.
 */
PG_FUNCTION_INFO_V1(evbus_publisher_pid);
Datum
evbus_publisher_pid(PG_FUNCTION_ARGS)
{
	pid_t		pid = evbus_worker_pid_for(MyDatabaseId, EVBUS_PUBLISHER);

	if (pid == 0)
		PG_RETURN_NULL();
	PG_RETURN_INT32((int32) pid);
}

/*
 * evbus.consumer_pid() --- process id of this database's consumer worker
 * (the one that runs handlers), or NULL.
 */
PG_FUNCTION_INFO_V1(evbus_consumer_pid);
Datum
evbus_consumer_pid(PG_FUNCTION_ARGS)
{
	pid_t		pid = evbus_worker_pid_for(MyDatabaseId, EVBUS_CONSUMER);

	if (pid == 0)
		PG_RETURN_NULL();
	PG_RETURN_INT32((int32) pid);
}

/*
 * describe_worker --- the state and detail evbus.worker_status() shows for
 * this database's worker of role that is not running.
 */
static const char *
describe_worker(const EvbusDatabase *db, bool found, int role, char **detail)
{
	pid_t		restorer;

	if (found && db->state == EVBUS_DB_DROPPING)
	{
		*detail = pstrdup("DROP DATABASE, ALTER DATABASE ... RENAME TO or SET TABLESPACE, or CREATE DATABASE ... TEMPLATE "
						  "of this database is in progress.");
		return "stopped";
	}
	if (found && db->state == EVBUS_DB_COPY)
	{
		*detail = pstrdup("This database is a copy of another database of this server (CREATE DATABASE ... TEMPLATE, or a dump of it restored here): "
						  "its workers would act as that database's. The server log names it; evbus.adopt_copy() "
						  "makes this database one of its own.");
		return "stopped";
	}
	if (found && db->idle[role])
	{
		*detail = db->wake_at[role] != 0 ?
			psprintf("It had nothing to do for evbus.idle_timeout (or for a second while another database waited for a worker slot) and exited; "
					 "it starts again when there is work, or at %s.",
					 timestamptz_to_str(db->wake_at[role])) :
			pstrdup("It had nothing to do for evbus.idle_timeout (or for a second while another database waited for a worker slot) and exited; "
					"it starts again when there is work.");
		return "idle";
	}
	if (found && db->failed_since[role] != 0)
	{
		*detail = psprintf("No background worker slot has been free for it since %s; "
						   "evbus tries again every few seconds. Raise max_worker_processes "
						   "(now %d): each database with evbus uses two background workers, "
						   "plus one for the evbus launcher.",
						   timestamptz_to_str(db->failed_since[role]), max_worker_processes);
		return "no free slot";
	}
	if (evbus_restore_in_progress(MyDatabaseId, &restorer))
		*detail = psprintf("A restore is writing evbus's tables in this database "
						   "(the connection of process %d); the workers start when it ends.",
						   (int) restorer);
	else if (role == EVBUS_CONSUMER && evbus_worker_pid_for(MyDatabaseId, EVBUS_PUBLISHER) == 0)
		*detail = pstrdup("It starts once the worker runs.");
	else
		*detail = pstrdup("The evbus launcher starts it within seconds.");
	return "starting";
}

/*
 * evbus.worker_status() --- one row per worker of this database (the
 * publisher and the consumer): its process id, and when
 * it is not running, why (for example no free background worker slot,
 * test 234_worker_slots.pl, or "idle": exited for want of work, test
 * 238_idle_databases.pl).
 *
 * A call also tells the launcher that this database has evbus, in case it
 * could not look yet.
 */
PG_FUNCTION_INFO_V1(evbus_worker_status);
Datum
evbus_worker_status(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	EvbusDatabase db;
	bool		found;
	int			role;

	InitMaterializedSRF(fcinfo, 0);
	memset(&db, 0, sizeof(db));
	found = evbus_db_lookup(MyDatabaseId, &db);
	if (!found || db.state == EVBUS_DB_UNPROBED)
	{
		evbus_db_installed(MyDatabaseId);
		evbus_wake_launcher();
	}
	for (role = EVBUS_PUBLISHER; role <= EVBUS_CONSUMER; role++)
	{
		Datum		values[4];
		bool		nulls[4] = {false, false, false, false};
		pid_t		pid = evbus_worker_pid_for(MyDatabaseId, role);

		values[0] = CStringGetTextDatum(role == EVBUS_PUBLISHER ? "publisher" : "consumer");
		if (pid != 0)
		{
			values[1] = Int32GetDatum((int32) pid);
			values[2] = CStringGetTextDatum("running");
			nulls[3] = true;
		}
		else
		{
			char	   *detail;

			nulls[1] = true;
			values[2] = CStringGetTextDatum(describe_worker(&db, found, role, &detail));
			values[3] = CStringGetTextDatum(detail);
		}
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

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
#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "tcop/utility.h"
#include "utils/builtins.h"

#include "evbus.h"
#include "consumer.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

extern void evbus_staging_init(void);
extern void evbus_launcher_xact_init(void);

static ProcessUtility_hook_type prev_ProcessUtility = NULL;

/*
 * evbus_process_utility --- stop a database's worker before DROP DATABASE.
 *
 * The worker is connected to its database and would make DROP DATABASE
 * fail with "database is being accessed by other users".  If the drop
 * fails anyway, the worker is started again.
 */
static void
evbus_process_utility(PlannedStmt *pstmt, const char *queryString,
					  bool readOnlyTree, ProcessUtilityContext context,
					  ParamListInfo params, QueryEnvironment *queryEnv,
					  DestReceiver *dest, QueryCompletion *qc)
{
	Oid			dropped_db = InvalidOid;

	/* a role that evbus subscriptions run as is not dropped (subscriptions.c) */
	if (IsA(pstmt->utilityStmt, DropRoleStmt))
		evbus_refuse_subscriber_drop((DropRoleStmt *) pstmt->utilityStmt);

	if (IsA(pstmt->utilityStmt, DropdbStmt))
	{
		DropdbStmt *stmt = (DropdbStmt *) pstmt->utilityStmt;

		dropped_db = get_database_oid(stmt->dbname, true);
		if (OidIsValid(dropped_db) && evbus_worker_pid_for(dropped_db, -1) != 0)
			evbus_stop_worker(dropped_db);
		else
			dropped_db = InvalidOid;
	}

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
		if (OidIsValid(dropped_db))
			evbus_start_worker(dropped_db, EVBUS_PUBLISHER, false);
		PG_RE_THROW();
	}
	PG_END_TRY();
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
	evbus_staging_init();
	evbus_launcher_xact_init();

	prev_ProcessUtility = ProcessUtility_hook;
	ProcessUtility_hook = evbus_process_utility;

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
 * evbus.worker_pid() --- process id of this database's worker (the
 * publisher), or NULL.
 */
PG_FUNCTION_INFO_V1(evbus_worker_pid);
Datum
evbus_worker_pid(PG_FUNCTION_ARGS)
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

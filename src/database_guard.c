/*-------------------------------------------------------------------------
 *
 * database_guard.c
 *	  Let DROP, RENAME, SET TABLESPACE and copies of a database with evbus
 *	  through, although its workers are connected to it.
 *
 * DROP DATABASE, ALTER DATABASE ... RENAME TO, ALTER DATABASE ... SET
 * TABLESPACE and CREATE DATABASE ... TEMPLATE fail with "database is being
 * accessed by other users" while any other process is connected to the
 * database, and evbus's workers are.  So before such a command the
 * ProcessUtility hook (evbus.c) asks evbus_database_guard, which stops the
 * database's workers and keeps any from starting there -- but only when
 * the command is going to proceed: the database exists, the caller may do
 * it (owner, or superuser, as PostgreSQL checks), and it may run where it
 * is called.  Anyone else's command fails as before without disturbing the
 * workers (test 230_drop_database_guard.pl).  After the command, whether
 * it succeeded or failed, evbus_database_guard_done starts the workers
 * again, unless the database was dropped (test 328_database_commands.pl).
 *
 * A copy made with CREATE DATABASE ... TEMPLATE does not start workers of
 * its own while its original exists (copy_guard.c).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/pg_authid.h"
#include "commands/dbcommands.h"
#include "commands/defrem.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "utils/acl.h"
#include "utils/syscache.h"

#include "evbus.h"

/*
 * The guarded database's name after the command (for the workers started
 * again), and whether the command drops it.
 */
static char guarded_dbname[NAMEDATALEN];
static bool guarded_drop = false;

/* May the current user create databases (dbcommands.c's own check)? */
static bool
may_create_databases(void)
{
	HeapTuple	tup;
	bool		result;

	if (superuser())
		return true;
	tup = SearchSysCache1(AUTHOID, ObjectIdGetDatum(GetUserId()));
	if (!HeapTupleIsValid(tup))
		return false;
	result = ((Form_pg_authid) GETSTRUCT(tup))->rolcreatedb;
	ReleaseSysCache(tup);
	return result;
}

/* The value of option name in a list of DefElem, or NULL. */
static const char *
option_value(List *options, const char *name)
{
	ListCell   *lc;

	foreach(lc, options)
	{
		DefElem    *opt = lfirst(lc);

		if (strcmp(opt->defname, name) == 0 && opt->arg != NULL)
			return defGetString(opt);
	}
	return NULL;
}

/*
 * guarded_database --- the database stmt will make unavailable and that
 * PostgreSQL will attempt it on, with the checks it makes first; else
 * InvalidOid.  *name_after: its name once the command succeeded.
 */
static Oid
guarded_database(Node *stmt, bool is_top_level, const char **name_after)
{
	bool		top_level_only = true;
	bool		copy_source = false;
	const char *name = NULL;
	const char *new_name = NULL;
	Oid			dboid;
	bool		exists;

	if (IsA(stmt, DropdbStmt))
	{
		name = ((DropdbStmt *) stmt)->dbname;
		guarded_drop = true;
	}
	else if (IsA(stmt, RenameStmt) &&
			 ((RenameStmt *) stmt)->renameType == OBJECT_DATABASE)
	{
		name = ((RenameStmt *) stmt)->subname;
		new_name = ((RenameStmt *) stmt)->newname;
		top_level_only = false;
	}
	else if (IsA(stmt, AlterDatabaseStmt) &&
			 option_value(((AlterDatabaseStmt *) stmt)->options, "tablespace") != NULL)
		name = ((AlterDatabaseStmt *) stmt)->dbname;
	else if (IsA(stmt, CreatedbStmt))
	{
		name = option_value(((CreatedbStmt *) stmt)->options, "template");
		new_name = ((CreatedbStmt *) stmt)->dbname;
		copy_source = true;
	}
	if (name == NULL)
		return InvalidOid;
	/* PreventInTransactionBlock refuses these */
	if (top_level_only && (!is_top_level || IsTransactionBlock()))
		return InvalidOid;
	dboid = get_database_oid(name, true);
	if (!OidIsValid(dboid) ||
		(guarded_drop && evbus_database_is_template(dboid, &exists)))
		return InvalidOid;		/* "cannot drop a template database" */
	if (new_name != NULL && OidIsValid(get_database_oid(new_name, true)))
		return InvalidOid;		/* "already exists" */
	if (copy_source)
	{
		/*
		 * createdb: CREATEDB, and a template or the source's owner or a
		 * superuser.  The launcher starts no worker in a template; those that
		 * ran before it became one are not started again.
		 */
		if (!may_create_databases() ||
			(!evbus_database_is_template(dboid, &exists) &&
			 !pg_database_ownercheck(dboid, GetUserId())))
			return InvalidOid;
	}
	else
	{
		/* the others: not the current database, and its owner */
		if (dboid == MyDatabaseId || !pg_database_ownercheck(dboid, GetUserId()))
			return InvalidOid;
		if (new_name != NULL && !may_create_databases())
			return InvalidOid;	/* RenameDatabase's own check */
	}
	*name_after = copy_source || new_name == NULL ? name : new_name;
	return dboid;
}

/*
 * evbus_database_guard --- before a utility statement: if it is one of the
 * commands above and is going to proceed, mark the database (no worker
 * starts there) and stop its workers.  Returns the database, or InvalidOid
 * when nothing was touched.  The caller must call
 * evbus_database_guard_done with the result, also on error.
 */
Oid
evbus_database_guard(Node *stmt, bool is_top_level)
{
	const char *name_after = NULL;
	Oid			dboid;

	guarded_drop = false;
	dboid = guarded_database(stmt, is_top_level, &name_after);
	if (!OidIsValid(dboid) || !evbus_db_begin_drop(dboid))
		return InvalidOid;
	strlcpy(guarded_dbname, name_after, sizeof(guarded_dbname));
	PG_TRY();
	{
		evbus_stop_worker(dboid);
	}
	PG_CATCH();
	{
		evbus_database_guard_done(dboid, false);
		PG_RE_THROW();
	}
	PG_END_TRY();
	return dboid;
}

/*
 * evbus_database_guard_done --- after the command on a guarded database:
 * forget the database if it was dropped; else both its workers start
 * again at once (the launcher would within seconds), even if stopping them
 * took long.  A failed rename leaves the old name, which the workers read
 * themselves; the one given here only names the background worker.
 */
void
evbus_database_guard_done(Oid guarded, bool succeeded)
{
	bool		dropped = succeeded && guarded_drop;
	EvbusDatabase db;

	if (!OidIsValid(guarded))
		return;
	evbus_db_end_drop(guarded, dropped);
	if (dropped)
		evbus_metrics_forget_database(guarded);
	if (dropped || !evbus_db_lookup(guarded, &db) || db.state != EVBUS_DB_INSTALLED)
		return;
	if (!db.idle[EVBUS_PUBLISHER] && evbus_worker_pid_for(guarded, EVBUS_PUBLISHER) == 0)
		evbus_start_worker(guarded, guarded_dbname, EVBUS_PUBLISHER, 0, NULL);
	if (!db.idle[EVBUS_CONSUMER] && evbus_worker_pid_for(guarded, EVBUS_CONSUMER) == 0)
		evbus_start_worker(guarded, guarded_dbname, EVBUS_CONSUMER, 0, NULL);
	evbus_wake_launcher();
}

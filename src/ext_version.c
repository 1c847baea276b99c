/*-------------------------------------------------------------------------
 *
 * ext_version.c
 *	  Do this library and the SQL objects of a database speak the same
 *	  version of evbus?  The workers ask before they start working and
 *	  again while they run.
 *
 * The library (evbus.so) is loaded once, when the server starts; the SQL
 * objects are the version the database's last CREATE or ALTER EXTENSION
 * installed.  Installing a newer package and running ALTER EXTENSION
 * evbus UPDATE without restarting the server gives a database SQL objects
 * that the running library does not know: its queries could read a table
 * that changed shape.  So a worker reads pg_extension.extversion and works
 * only at a version of known_versions; at any other it logs once, naming
 * the database and the version, and waits on its latch, reading the
 * version again every second or so, quietly (the launcher does not start
 * a second worker while this one holds its slot, so the line is not
 * repeated).  Test 342_unknown_sql_version.pl guards this.
 *
 * Updates between known versions need no restart: the workers carry on
 * through ALTER EXTENSION evbus UPDATE (test 340_extension_update.pl).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_extension.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "commands/dbcommands.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "evbus.h"

/*
 * The versions of the SQL objects this library works with.  A version
 * belongs here only if every query of this library is right for its
 * schema: when a later version changes what the library reads or writes,
 * the older versions leave this list (and ALTER EXTENSION evbus UPDATE
 * brings a database to one that stays).  Test 340_extension_update.pl
 * runs the workers from 0.1 through the update to 0.2.
 */
static const char *const known_versions[] = {"0.1", "0.2"};

/* How often a waiting worker reads the version again, and a running one. */
#define VERSION_RECHECK_MS 1000

/* When a running worker last read the version (evbus_version_recheck). */
static TimestampTz last_check = 0;

/* The version this process last logged about; never logged twice. */
static char reported_version[NAMEDATALEN] = "";

/* This database's name, for the log lines (read once). */
static char dbname[NAMEDATALEN] = "";

/*
 * read_version --- pg_extension.extversion of evbus in this database, in
 * a short transaction of its own; NULL when evbus is not installed.  The
 * result is allocated in the caller's memory context.
 */
static char *
read_version(void)
{
	MemoryContext caller_cxt = CurrentMemoryContext;
	Datum		d;
	bool		isnull;
	char	   *version = NULL;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (dbname[0] == '\0')
	{
		char	   *name = get_database_name(MyDatabaseId);

		strlcpy(dbname, name ? name : "?", sizeof(dbname));
	}
	if (evbus_extension_attribute("evbus", Anum_pg_extension_extversion, &d, &isnull))
		version = MemoryContextStrdup(caller_cxt,
									  isnull ? "" : TextDatumGetCString(d));
	PopActiveSnapshot();
	CommitTransactionCommand();
	MemoryContextSwitchTo(caller_cxt);
	return version;
}

/* Is version one of known_versions? */
static bool
version_known(const char *version)
{
	int			i;

	for (i = 0; i < lengthof(known_versions); i++)
	{
		if (strcmp(version, known_versions[i]) == 0)
			return true;
	}
	return false;
}

/*
 * report_unknown --- the one line about this database being at version: a
 * WARNING from the publisher (report), a DEBUG1 line from the consumer,
 * so that the server log says it once per database and version.
 */
static void
report_unknown(const char *version, bool report)
{
	StringInfoData known;
	int			i;

	if (strcmp(reported_version, version) == 0)
		return;
	strlcpy(reported_version, version, sizeof(reported_version));
	initStringInfo(&known);
	for (i = 0; i < lengthof(known_versions); i++)
		appendStringInfo(&known, "%s%s", i > 0 ? ", " : "", known_versions[i]);
	ereport(report ? WARNING : DEBUG1,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("evbus: database \"%s\" has evbus version %s, which this library does not know",
					dbname, version),
			 errdetail("This library works with evbus versions %s; the workers of this database wait, publishing and handling nothing, until its version is one of them.",
					   known.data),
			 errhint("Restart the server to load the evbus library of version %s (install it first if need be), or ALTER EXTENSION evbus UPDATE to a version this library knows.",
					 version)));
	pfree(known.data);
}

/*
 * wait_until_known --- wait on the latch, reading the version every
 * VERSION_RECHECK_MS, until it is a known one.  Exits when evbus is no
 * longer installed, and on termination (quietly, as a worker terminated
 * at its wait point does: a fast shutdown logs no FATAL); reloads
 * the configuration on SIGHUP.  No transaction is open while it waits.
 */
static void
wait_until_known(const char *version, bool report)
{
	report_unknown(version, report);
	pgstat_report_activity(STATE_RUNNING, "waiting for an evbus version this library knows");
	for (;;)
	{
		char	   *now_version;

		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 VERSION_RECHECK_MS, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		/* terminated while waiting: leave quietly, as from the wait point */
		if (evbus_stopping())
			proc_exit(evbus_worker_stop_requested() ? 0 : 1);
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		now_version = read_version();
		if (now_version == NULL)
			proc_exit(0);		/* DROP EXTENSION: nothing to wait for */
		if (version_known(now_version))
		{
			ereport(report ? LOG : DEBUG1,
					(errmsg("evbus: database \"%s\" now has evbus version %s, which this library knows",
							dbname, now_version)));
			reported_version[0] = '\0';
			pfree(now_version);
			break;
		}
		report_unknown(now_version, report);
		pfree(now_version);
	}
	pgstat_report_activity(STATE_IDLE, NULL);
}

/*
 * evbus_version_wait --- at a worker's start, before its first query of
 * evbus's tables: return at once if this database's evbus version is
 * known to this library, else log it (once) and wait until it is.
 * report: this worker writes the WARNING (the publisher), not only a
 * DEBUG1 line (the consumer).  Exits when evbus is gone.
 */
void
evbus_version_wait(bool report)
{
	char	   *version = read_version();

	if (version == NULL)
		proc_exit(0);
	if (!version_known(version))
		wait_until_known(version, report);
	pfree(version);
	last_check = GetCurrentTimestamp();
}

/*
 * evbus_version_recheck --- in a running worker's loop, outside any
 * transaction: about once a second, read the version again.  Still
 * known: false, at once.  Changed to one this library does not know (an
 * ALTER EXTENSION evbus UPDATE to a newer version than the library
 * loaded): log it once, wait until it is known again, and return true:
 * the caller then exits to be started afresh by the launcher, since
 * whatever it held (a Kafka client, cached plans) belongs to the time
 * before.  Test 342_unknown_sql_version.pl.
 */
bool
evbus_version_recheck(bool report)
{
	TimestampTz now = GetCurrentTimestamp();
	char	   *version;

	if (!TimestampDifferenceExceeds(last_check, now, VERSION_RECHECK_MS))
		return false;
	last_check = now;
	version = read_version();
	if (version == NULL)
		return false;			/* DROP EXTENSION: the worker sees it */
	if (version_known(version))
	{
		pfree(version);
		return false;
	}
	wait_until_known(version, report);
	pfree(version);
	return true;
}

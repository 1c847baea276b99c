/*-------------------------------------------------------------------------
 *
 * copy_guard.c
 *	  Keep the workers of a copy of a database from acting as its original.
 *
 * CREATE DATABASE ... TEMPLATE copies a database with evbus as it is: its
 * outbox, its inbox, its subscriptions and their consumer groups.  On the
 * same server the copy talks to the same Kafka: its workers would publish
 * the original's pending events again and join the original's consumer
 * groups, where the copy's consumer takes partitions from the original's,
 * and the messages of those partitions are then handled in the copy and
 * never in the original, without a trace there.
 *
 * So evbus.database_identity holds the system identifier of the server and
 * the OID of the database evbus's rows belong to, entered by the first
 * worker that starts.  A worker that finds the row of another database of
 * this server, which still exists, is in a copy of it: it does not start,
 * and the database is marked as a copy in shared memory, so that the
 * launcher starts nothing there until evbus.adopt_copy() (or the next
 * server start, which looks again).  A row of another server (pg_upgrade,
 * a physical copy restored elsewhere), or of a database that no longer
 * exists (a copy made to rename, its original dropped), is taken over: the
 * rows are this database's now.  The table is not dumped, so a database
 * restored from a dump enters itself (test 326_database_copy.pl).
 *
 * A copy on another server with the same Kafka (a physical backup
 * restored, or a dump) is not seen: production.md says to start such a
 * server with evbus.brokers = ''.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_type.h"
#include "catalog/namespace.h"
#include "commands/dbcommands.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"

#include "evbus.h"

/* The row of evbus.database_identity, as read. */
typedef struct DatabaseIdentity
{
	bool		found;
	int64		system_identifier;
	Oid			database_oid;
} DatabaseIdentity;

/* Read evbus.database_identity; inside a transaction, connected to SPI. */
static DatabaseIdentity
read_identity(void)
{
	DatabaseIdentity id = {false, 0, InvalidOid};
	bool		isnull;

	evbus_spi_exec("SELECT system_identifier, database_oid FROM evbus.database_identity",
				   0, NULL, NULL, NULL, SPI_OK_SELECT);
	if (SPI_processed == 1)
	{
		id.found = true;
		id.system_identifier = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
														   SPI_tuptable->tupdesc, 1, &isnull));
		id.database_oid = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0],
														 SPI_tuptable->tupdesc, 2, &isnull));
	}
	return id;
}

/* Enter this database of this server as the one evbus's rows belong to. */
static void
write_identity(void)
{
	Oid			argtypes[2] = {INT8OID, OIDOID};
	Datum		values[2];

	values[0] = Int64GetDatum((int64) GetSystemIdentifier());
	values[1] = ObjectIdGetDatum(MyDatabaseId);
	evbus_spi_exec("INSERT INTO evbus.database_identity (system_identifier, database_oid)"
				   " VALUES ($1, $2) ON CONFLICT (one) DO UPDATE"
				   " SET system_identifier = excluded.system_identifier,"
				   " database_oid = excluded.database_oid",
				   2, argtypes, values, NULL, SPI_OK_INSERT);
}

/* Is id another database of this server, one that exists? */
static bool
names_another_database_here(const DatabaseIdentity *id)
{
	return id->found &&
		id->system_identifier == (int64) GetSystemIdentifier() &&
		id->database_oid != MyDatabaseId &&
		SearchSysCacheExists1(DATABASEOID, ObjectIdGetDatum(id->database_oid));
}

/*
 * evbus_copy_of --- at a worker's start, outside a transaction, in a
 * database with evbus: the name of the database of this server that this
 * one is a copy of, or NULL (and this database's identity entered or
 * taken over).  A schema without the table (evbus 0.1) is no copy.
 */
char *
evbus_copy_of(void)
{
	char	   *original = NULL;
	DatabaseIdentity id;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (OidIsValid(get_relname_relid("database_identity", get_namespace_oid("evbus", false))))
	{
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		id = read_identity();
		if (names_another_database_here(&id))
		{
			char	   *name = get_database_name(id.database_oid);

			if (name != NULL)
				original = MemoryContextStrdup(TopMemoryContext, name);
		}
		else if (!id.found || id.database_oid != MyDatabaseId ||
				 id.system_identifier != (int64) GetSystemIdentifier())
		{
			if (id.found)
				ereport(LOG,
						(errmsg("evbus: database \"%s\" takes over evbus's rows of database %u of system %lld",
								get_database_name(MyDatabaseId), id.database_oid,
								(long long) id.system_identifier),
						 errdetail("Upgraded, restored on another server, or copied from a database that no longer exists.")));
			write_identity();
		}
		SPI_finish();
	}
	PopActiveSnapshot();
	CommitTransactionCommand();
	return original;
}

/*
 * evbus_warn_copy --- log why a worker of dbname, a copy of original, does
 * not start, and keep the launcher from starting any there.  Outside a
 * transaction: the names are the caller's.
 */
void
evbus_warn_copy(const char *dbname, const char *original)
{
	evbus_db_copy(MyDatabaseId);
	ereport(WARNING,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("evbus: database \"%s\" is a copy of database \"%s\": its evbus workers do not start",
					dbname, original),
			 errdetail("They would publish the events of \"%s\" again and take partitions of its consumer groups.",
					   original),
			 errhint("To run evbus in the copy as a database of its own, give its subscriptions groups of their own, "
					 "then call evbus.adopt_copy() in it; or drop the extension there.")));
}

/*
 * evbus.adopt_copy() --- make this copy of another database of the server
 * a database of its own: evbus's rows are this database's from now on,
 * and its workers start at COMMIT.  It keeps its subscriptions' groups and
 * publishes the pending events it was copied with.  Not granted to PUBLIC.
 */
static void
adopt(void *arg)
{
	DatabaseIdentity id = read_identity();

	if (!names_another_database_here(&id))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("database \"%s\" is not a copy of another database of this server",
						get_database_name(MyDatabaseId)),
				 errhint("evbus.adopt_copy() is for a database made with CREATE DATABASE ... TEMPLATE from one with evbus.")));
	write_identity();
}

PG_FUNCTION_INFO_V1(evbus_adopt_copy);
Datum
evbus_adopt_copy(PG_FUNCTION_ARGS)
{
	/* evbus's tables belong to the extension's owner */
	evbus_spi_as_owner(adopt, NULL);
	evbus_start_workers_at_commit();
	PG_RETURN_VOID();
}

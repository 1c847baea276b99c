/*-------------------------------------------------------------------------
 *
 * copy_guard.c
 *	  Keep the workers of a copy of a database from acting as its original.
 *
 * CREATE DATABASE ... TEMPLATE copies a database with evbus as it is, and
 * so does a dump restored into another database: its outbox, its inbox,
 * its subscriptions and their consumer groups.  On the same server the
 * copy talks to the same Kafka: its workers would publish the original's
 * pending events again and join the original's consumer groups, where the
 * copy's consumer takes partitions from the original's, and the messages
 * of those partitions are then handled in the copy and never in the
 * original, without a trace there.
 *
 * So evbus.database_identity holds the system identifier of the server and
 * the OID of the database evbus's rows belong to, entered by the first
 * worker that starts, and dumped.  A worker that finds a row of another
 * database of this server, which still exists and is no template, is in a
 * copy of it: it does not start, and the database is marked as a copy in
 * shared memory, so that the launcher starts nothing there until
 * evbus.adopt_copy() (or the next server start, which looks again).  Otherwise the database enters
 * its own row and drops the others: rows of another server (pg_upgrade, a
 * database restored elsewhere) or of a database that no longer exists (a
 * copy made to rename, its original dropped) are taken over, with a LOG
 * line (test 326_database_copy.pl).  Only once: a second copy of a
 * dropped database is a copy of the database that took its rows over
 * first, while that one exists (identity_claims.c).  And a database that
 * would keep the database id (below) that another database of this
 * server holds is a copy of that one: a dump of another server's
 * database restored here twice, the second time (test
 * 320_dump_restore.pl).
 *
 * A restore's rows come after the restored database's workers started
 * (CREATE EXTENSION comes first): they may have entered their own row by
 * then, and find the original's beside it when they start again after
 * the restore (restore.c).
 *
 * A copy on another server with the same Kafka (a physical backup
 * restored, or a dump) is not seen here: the row also holds a database
 * id, drawn at the first entry and kept by every takeover (a dump, an
 * upgrade, a rename) but evbus.adopt_copy() and that of a template's
 * rows, by which the consumers find such a copy in their groups
 * (group_copies.c).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/uuid.h"

#include "evbus.h"

/* This database's id, known once evbus_copy_of found it ("": not yet). */
static char database_id[UUID_LEN * 2 + 5] = "";

/*
 * runs_workers --- does dboid exist and is it no template?  A template
 * runs no evbus workers (the launcher passes over it): a database made
 * from it, such as a new tenant's, is one of its own.
 */
static bool
runs_workers(Oid dboid)
{
	bool		exists;
	bool		is_template = evbus_database_is_template(dboid, &exists);

	return exists && !is_template;
}

/*
 * copy_source --- the OID of another database of this server that runs
 * evbus workers, which a row of evbus.database_identity names, or
 * InvalidOid; in *ours whether a row names this database, in *rows how
 * many there are, in *dropped the OIDs of the databases of this server
 * that rows name and that no longer exist, in *from_template whether a row
 * names a template database of this server.  Inside a transaction,
 * connected to SPI.
 */
static Oid
copy_source(bool *ours, uint64 *rows, List **dropped, bool *from_template)
{
	int64		here = (int64) GetSystemIdentifier();
	Oid			source = InvalidOid;
	uint64		i;

	*ours = false;
	*dropped = NIL;
	*from_template = false;
	evbus_spi_exec("SELECT system_identifier, database_oid FROM evbus.database_identity",
				   0, NULL, NULL, NULL, SPI_OK_SELECT);
	*rows = SPI_processed;
	for (i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		int64		system = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i],
														 SPI_tuptable->tupdesc, 1, &isnull));
		Oid			dboid = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[i],
														   SPI_tuptable->tupdesc, 2, &isnull));

		if (system != here)
			continue;
		if (dboid == MyDatabaseId)
			*ours = true;
		else
		{
			bool		exists;
			bool		is_template = evbus_database_is_template(dboid, &exists);

			if (exists && !is_template)
				source = dboid;
			else if (!exists)
				*dropped = lappend_oid(*dropped, dboid);
			else
				*from_template = true;
		}
	}
	return source;
}

/*
 * claimed_source --- the database of this server, still there and running
 * evbus workers, that took over the rows of one of the dropped databases
 * (identity_claims.c), or InvalidOid.  With dropped ones, the claims stay
 * locked until the end of the transaction (evbus_identity_lock), for
 * evbus_copy_of to claim them in turn.
 */
static Oid
claimed_source(List *dropped)
{
	ListCell   *lc;

	if (dropped != NIL)
		evbus_identity_lock();
	foreach(lc, dropped)
	{
		Oid			claimant;

		claimant = evbus_identity_claimant(GetSystemIdentifier(), lfirst_oid(lc));
		if (OidIsValid(claimant) && claimant != MyDatabaseId && runs_workers(claimant))
			return claimant;
	}
	return InvalidOid;
}

/*
 * identity_id --- the database id that entering this database's identity
 * keeps (enter_identity): that of a row of another database (the first
 * by system identifier and OID), which it takes over; else, unless
 * others_only, its own row's.  NULL if there is none.  Inside a transaction, connected to SPI.
 */
static char *
identity_id(bool others_only)
{
	Oid			argtypes[2] = {INT8OID, OIDOID};
	Datum		values[2];
	bool		isnull;
	Datum		id;

	values[0] = Int64GetDatum((int64) GetSystemIdentifier());
	values[1] = ObjectIdGetDatum(MyDatabaseId);
	evbus_spi_exec(psprintf("SELECT database_id::pg_catalog.text FROM evbus.database_identity"
							" WHERE %s"
							" ORDER BY system_identifier OPERATOR(pg_catalog.=) $1"
							" AND database_oid OPERATOR(pg_catalog.=) $2,"
							" system_identifier, database_oid LIMIT 1",
							others_only ?
							"NOT (system_identifier OPERATOR(pg_catalog.=) $1"
							" AND database_oid OPERATOR(pg_catalog.=) $2)" : "true"),
				   2, argtypes, values, NULL, SPI_OK_SELECT);
	if (SPI_processed != 1)
		return NULL;
	id = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	return isnull ? NULL : TextDatumGetCString(id);
}

/*
 * held_source --- the database of this server, still there and running
 * evbus workers, that holds the database id this one would keep
 * (identity_claims.c): one dump restored into two databases of the server
 * makes the second a copy of the first.  Unless this database holds the id
 * already (every start but the first), the ids stay locked until the end
 * of the transaction (evbus_identity_lock), for evbus_copy_of to hold this
 * database's in turn: the starts of the server's databases wait for each
 * other only while an id changes hands.  InvalidOid if none.
 */
static Oid
held_source(void)
{
	char	   *id = identity_id(false);
	Oid			holder;

	if (id == NULL)
		return InvalidOid;
	/* no other database takes an id from one that runs workers */
	if (evbus_identity_id_holder(id) == MyDatabaseId)
		return InvalidOid;
	evbus_identity_lock();
	holder = evbus_identity_id_holder(id);
	if (OidIsValid(holder) && holder != MyDatabaseId && runs_workers(holder))
		return holder;
	return InvalidOid;
}

/*
 * copied_from --- the database of this server that this one is a copy of:
 * one that rows of evbus.database_identity name, else one that took over
 * the rows of a dropped database that they name, else one that holds the
 * database id this one would keep (not for a database made from a
 * template, which draws one of its own); InvalidOid if none.  *ours,
 * *rows, *dropped and *from_template as for copy_source.
 */
static Oid
copied_from(bool *ours, uint64 *rows, List **dropped, bool *from_template)
{
	Oid			source = copy_source(ours, rows, dropped, from_template);

	if (!OidIsValid(source))
		source = claimed_source(*dropped);
	if (!OidIsValid(source) && !*from_template)
		source = held_source();
	return source;
}

/*
 * enter_identity --- make this database of this server the one evbus's
 * rows belong to: its row only.  Returns how many rows of others went.
 *
 * The row keeps the database id of the rows it takes over (the same
 * database, upgraded, restored or renamed), else its own, else a new one;
 * a new one always if new_id (evbus.adopt_copy(), or a database made from
 * a template: a database of its own from now on, as every other made from
 * that template).  Every copy of the database carries its id, which names
 * it in its consumer groups (group_copies.c, test 326_database_copy.pl).
 */
static uint64
enter_identity(bool new_id)
{
	Oid			argtypes[4] = {INT8OID, OIDOID, TEXTOID, BOOLOID};
	Datum		values[4];
	char		nulls[4] = {' ', ' ', 'n', ' '};
	char	   *taken_over = new_id ? NULL : identity_id(true);
	uint64		others;

	values[0] = Int64GetDatum((int64) GetSystemIdentifier());
	values[1] = ObjectIdGetDatum(MyDatabaseId);
	values[2] = taken_over ? CStringGetTextDatum(taken_over) : (Datum) 0;
	values[3] = BoolGetDatum(new_id);
	if (taken_over)
		nulls[2] = ' ';
	evbus_spi_exec("DELETE FROM evbus.database_identity"
				   " WHERE NOT (system_identifier OPERATOR(pg_catalog.=) $1"
				   " AND database_oid OPERATOR(pg_catalog.=) $2)",
				   2, argtypes, values, NULL, SPI_OK_DELETE);
	others = SPI_processed;
	/* $3: the id taken over, if any; $4: a new id in any case */
	evbus_spi_exec("INSERT INTO evbus.database_identity"
				   " (system_identifier, database_oid, database_id)"
				   " VALUES ($1, $2, COALESCE($3::pg_catalog.uuid, pg_catalog.gen_random_uuid()))"
				   " ON CONFLICT (system_identifier, database_oid) DO UPDATE"
				   " SET database_id = EXCLUDED.database_id"
				   " WHERE $3 IS NOT NULL OR $4",
				   4, argtypes, values, nulls, SPI_OK_INSERT);
	return others;
}

/*
 * remember_database_id --- keep this database's id for evbus_database_id:
 * once its identity is entered, its own row is the only one.
 */
static void
remember_database_id(void)
{
	char	   *id = identity_id(false);

	if (id != NULL)
		strlcpy(database_id, id, sizeof(database_id));
}

/*
 * evbus_database_id --- this database's id, as the worker's start found
 * it in evbus.database_identity (evbus_copy_of): a UUID; "" when unknown
 * (evbus 0.1's schema, which has no such table).
 */
const char *
evbus_database_id(void)
{
	return database_id;
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

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (OidIsValid(get_relname_relid("database_identity", evbus_schema_oid())))
	{
		bool		ours;
		uint64		rows;
		List	   *dropped;
		bool		from_template;
		Oid			source;

		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		source = copied_from(&ours, &rows, &dropped, &from_template);
		if (OidIsValid(source))
		{
			char	   *name = get_database_name(source);

			if (name != NULL)
				original = MemoryContextStrdup(TopMemoryContext, name);
		}
		else if (!ours || rows > 1)
		{
			ListCell   *lc;

			/* on disk first: a failed takeover is this database's to retry */
			foreach(lc, dropped)
				evbus_identity_claim(GetSystemIdentifier(), lfirst_oid(lc));
			if (enter_identity(from_template) > 0)
				ereport(LOG,
						(errmsg("evbus: database \"%s\" takes over evbus's rows of another database",
								get_database_name(MyDatabaseId)),
						 errdetail("Upgraded, restored on another server, or copied from a database that no longer exists.")));
		}
		if (!OidIsValid(source))
		{
			remember_database_id();

			/*
			 * Under the lock (held_source took it, but for a template's
			 * copy), and unless a DROP EXTENSION that committed meanwhile
			 * gave the id up (the lock reads the catalogs afresh).  Held
			 * already, it stays so: a drop takes the lock to give it up.
			 */
			if (database_id[0] != '\0' &&
				evbus_identity_id_holder(database_id) != MyDatabaseId)
			{
				evbus_identity_lock();
				if (OidIsValid(get_extension_oid("evbus", true)))
					evbus_identity_hold_id(database_id);
			}
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
	bool		ours;
	uint64		rows;
	List	   *dropped;
	bool		from_template;

	if (!OidIsValid(copied_from(&ours, &rows, &dropped, &from_template)))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("database \"%s\" is not a copy of another database of this server",
						get_database_name(MyDatabaseId)),
				 errhint("evbus.adopt_copy() is for a database made with CREATE DATABASE ... TEMPLATE, or restored from a dump, "
						 "from one with evbus on this server.")));
	(void) enter_identity(true);
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

/*-------------------------------------------------------------------------
 *
 * role_settings.c
 *	  The settings a new connection of a role to this database would have,
 *	  given to a handler run as that role: the server's and the database's
 *	  search_path and lock_timeout, then the role's own settings (ALTER
 *	  ROLE ... SET and ALTER ROLE ... IN DATABASE ... SET).
 *
 * A handler runs in the consumer's backend, whose own search_path is
 * pinned to pg_catalog, pg_temp for evbus's SQL (consumer_worker.c).  A
 * handler gets instead the search_path a connection would start with (the
 * reset value: postgresql.conf, or ALTER DATABASE ... SET), so that it is
 * written like any other procedure, with unqualified names (test
 * 222_handler_unqualified_names.pl).  Likewise its lock_timeout, which
 * the workers' own lock waits go without (spi_run.c, test
 * 249_worker_lock_timeout.pl).  This is the subscriber's own choice
 * and gives a handler nothing its role's own connections do not have: it
 * runs as that role, never a superuser, inside a security-restricted
 * operation.
 *
 * Everything is applied at GUC_ACTION_SAVE inside the handler's GUC nest
 * level (handler.c), so it lasts for that one handler run and is undone
 * with whatever the handler changed.  The role's settings are applied at
 * session priority, the more specific last: for all databases, then for
 * this one.  A setting that cannot be applied (for example "role" inside
 * a security-restricted operation) is skipped with a WARNING, as at
 * login, and the handler runs (test 220_handler_role_settings.pl).
 *
 * pg_db_role_setting is read once per role and consumer transaction: a
 * batch of messages handled as one role reads the catalog once.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/pg_db_role_setting.h"
#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "storage/proc.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/rel.h"

#include "consumer.h"
#include "evbus.h"

/* one role's settings: for all databases, then for this one (or NULL) */
typedef struct RoleSettings
{
	Oid			role;
	ArrayType  *all_databases;
	ArrayType  *this_database;
} RoleSettings;

/* the roles read in the current transaction (in TopTransactionContext) */
static List *read_roles = NIL;
static LocalTransactionId read_in_lxid = InvalidLocalTransactionId;

/*
 * read_setconfig --- the setconfig array of one (database, role) row of
 * pg_db_role_setting, copied into the current memory context, or NULL.
 */
static ArrayType *
read_setconfig(Relation rel, Oid database, Oid role)
{
	ScanKeyData keys[2];
	SysScanDesc scan;
	HeapTuple	tup;
	ArrayType  *config = NULL;

	ScanKeyInit(&keys[0], Anum_pg_db_role_setting_setdatabase,
				BTEqualStrategyNumber, F_OIDEQ, ObjectIdGetDatum(database));
	ScanKeyInit(&keys[1], Anum_pg_db_role_setting_setrole,
				BTEqualStrategyNumber, F_OIDEQ, ObjectIdGetDatum(role));
	scan = systable_beginscan(rel, DbRoleSettingDatidRolidIndexId, true,
							  NULL, 2, keys);
	tup = systable_getnext(scan);
	if (HeapTupleIsValid(tup))
	{
		bool		isnull;
		Datum		d = heap_getattr(tup, Anum_pg_db_role_setting_setconfig,
									 RelationGetDescr(rel), &isnull);

		if (!isnull)
			config = DatumGetArrayTypePCopy(d);
	}
	systable_endscan(scan);
	return config;
}

/*
 * settings_of --- the role's settings, read at its first handler run of
 * this transaction.
 */
static RoleSettings *
settings_of(Oid role)
{
	ListCell   *lc;
	RoleSettings *rs;
	Relation	rel;
	MemoryContext old;

	if (read_in_lxid != MyProc->lxid)
	{
		/* the list of an earlier transaction went with its memory */
		read_roles = NIL;
		read_in_lxid = MyProc->lxid;
	}
	foreach(lc, read_roles)
	{
		rs = (RoleSettings *) lfirst(lc);
		if (rs->role == role)
			return rs;
	}

	old = MemoryContextSwitchTo(TopTransactionContext);
	rs = palloc(sizeof(RoleSettings));
	rs->role = role;
	rel = table_open(DbRoleSettingRelationId, AccessShareLock);
	rs->all_databases = read_setconfig(rel, InvalidOid, role);
	rs->this_database = read_setconfig(rel, MyDatabaseId, role);
	table_close(rel, AccessShareLock);
	read_roles = lappend(read_roles, rs);
	MemoryContextSwitchTo(old);
	return rs;
}

/*
 * apply_setconfig --- apply each "name=value" of a setconfig array at
 * session priority, saved in the current GUC nest level; what cannot be
 * applied is a WARNING, not an error.
 */
static void
apply_setconfig(ArrayType *config)
{
	int			i;

	if (config == NULL || ARR_NDIM(config) != 1 ||
		ARR_ELEMTYPE(config) != TEXTOID)
		return;
	for (i = 1; i <= ARR_DIMS(config)[0]; i++)
	{
		Datum		d;
		bool		isnull;
		char	   *name;
		char	   *value;

		d = array_ref(config, 1, &i, -1, -1, false, TYPALIGN_INT, &isnull);
		if (isnull)
			continue;
		/* PostgreSQL 15's ParseLongOption returns malloc'd strings */
		ParseLongOption(TextDatumGetCString(d), &name, &value);
		if (value != NULL)
			(void) set_config_option(name, value, PGC_SUSET, PGC_S_SESSION,
									 GUC_ACTION_SAVE, true, WARNING, false);
		free(name);
		free(value);
	}
}

/*
 * give_back_reset_value --- set name, which the worker pins for its own
 * SQL (spi_run.c), to the value a new connection would start with, in
 * the current GUC nest level (unchanged when it already has it).
 */
static void
give_back_reset_value(const char *name)
{
	const char *reset = GetConfigOptionResetString(name);

	if (strcmp(GetConfigOption(name, false, false), reset) != 0)
		(void) set_config_option(name, reset, PGC_USERSET, PGC_S_SESSION,
								 GUC_ACTION_SAVE, true, 0, false);
}

/*
 * evbus_apply_login_settings --- give the handler about to run as role the
 * settings a new connection of that role would have.  Must be called
 * inside the handler's GUC nest level.
 */
void
evbus_apply_login_settings(Oid role)
{
	RoleSettings *rs = settings_of(role);

	give_back_reset_value("search_path");
	give_back_reset_value("lock_timeout");
	apply_setconfig(rs->all_databases);
	apply_setconfig(rs->this_database);
}

/*-------------------------------------------------------------------------
 *
 * handler_session.c
 *	  What one subscriber's handler leaves in the consumer's session that
 *	  another subscriber's handler could use: dblink's connections.
 *
 * The handlers of every subscriber of a database run in its one consumer
 * process, one after another.  Their settings are undone when they return
 * (handler.c), and PostgreSQL refuses them, as a security-restricted
 * operation, what would outlive them in the session: temporary objects,
 * prepared statements, LISTEN.  A loaded library keeps what it keeps for
 * the process, though, and dblink, shipped with PostgreSQL, keeps its
 * connections, the unnamed one and those opened by name, logged in as the
 * role that opened them: a handler of bob's could send statements through
 * a connection a handler of alice's left open, and run them as alice.  So
 * before the consumer runs a handler as another role than the last one it
 * ran a handler as, it closes every dblink connection; a role's own
 * handlers keep theirs from one call to the next (test
 * 226_handler_dblink.pl).
 *
 * dblink is found through this database's dblink extension, whose
 * functions are those a handler can call; without it nothing is done.
 * What other libraries keep for the process is not undone (README.md,
 * "Security").
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_language.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "fmgr.h"
#include "nodes/value.h"
#include "parser/parse_func.h"
#include "utils/array.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"

#include "consumer.h"

/* The role the last handler of this process ran as (InvalidOid: none). */
static Oid	last_run_as = InvalidOid;

/*
 * dblink_function --- the function name(argtypes) of dblink's schema, or
 * InvalidOid.  Only a C function: the consumer calls it as its own user,
 * and only a superuser can create one, whereas a function of another
 * language could be anyone's with CREATE on that schema.
 */
static Oid
dblink_function(const char *schema, const char *name, int nargs, Oid *argtypes)
{
	Oid			fn = LookupFuncName(list_make2(makeString(pstrdup(schema)),
											   makeString(pstrdup(name))),
									nargs, argtypes, true);
	HeapTuple	tup;
	bool		in_c = false;

	if (!OidIsValid(fn))
		return InvalidOid;
	tup = SearchSysCache1(PROCOID, ObjectIdGetDatum(fn));
	if (HeapTupleIsValid(tup))
	{
		in_c = ((Form_pg_proc) GETSTRUCT(tup))->prolang == ClanguageId;
		ReleaseSysCache(tup);
	}
	return in_c ? fn : InvalidOid;
}

/*
 * close_named --- dblink_disconnect(name) for each name that
 * dblink_get_connections() lists (it returns NULL when there is none).
 */
static void
close_named(Oid list_fn, Oid close_fn)
{
	LOCAL_FCINFO(fcinfo, 0);
	FmgrInfo	flinfo;
	Datum		names;
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	int			i;

	fmgr_info(list_fn, &flinfo);
	InitFunctionCallInfoData(*fcinfo, &flinfo, 0, InvalidOid, NULL, NULL);
	names = FunctionCallInvoke(fcinfo);
	if (fcinfo->isnull)
		return;
	deconstruct_array(DatumGetArrayTypeP(names), TEXTOID, -1, false, TYPALIGN_INT,
					  &elems, &nulls, &n);
	for (i = 0; i < n; i++)
		if (!nulls[i])
			(void) OidFunctionCall1(close_fn, elems[i]);
}

/*
 * close_unnamed --- dblink_disconnect(), which fails when there is no
 * unnamed connection: in a subtransaction, its error dropped.
 */
static void
close_unnamed(Oid close_fn)
{
	EvbusSubxact sx;

	evbus_subxact_begin(&sx);
	PG_TRY();
	{
		(void) OidFunctionCall0(close_fn);
		evbus_subxact_commit(&sx);
	}
	PG_CATCH();
	{
		FreeErrorData(evbus_subxact_abort(&sx));
	}
	PG_END_TRY();
}

/*
 * close_dblink_connections --- close every connection of dblink, if this
 * database has the extension.
 */
static void
close_dblink_connections(void)
{
	Oid			text_arg[1] = {TEXTOID};
	Datum		namespace;
	bool		isnull;
	char	   *schema;
	Oid			list_fn;
	Oid			close_by_name;
	Oid			close_unnamed_fn;

	if (!evbus_extension_attribute("dblink", Anum_pg_extension_extnamespace,
								   &namespace, &isnull) || isnull)
		return;
	schema = get_namespace_name(DatumGetObjectId(namespace));
	if (schema == NULL)
		return;
	list_fn = dblink_function(schema, "dblink_get_connections", 0, NULL);
	close_by_name = dblink_function(schema, "dblink_disconnect", 1, text_arg);
	close_unnamed_fn = dblink_function(schema, "dblink_disconnect", 0, NULL);
	if (OidIsValid(list_fn) && OidIsValid(close_by_name))
		close_named(list_fn, close_by_name);
	if (OidIsValid(close_unnamed_fn))
		close_unnamed(close_unnamed_fn);
}

/*
 * evbus_handler_session_for --- before a handler runs as run_as, as the
 * consumer's own user: if the last handler ran as another role, close
 * what it may have left open (see the top of this file).  An error here
 * fails the run, which is retried: the handler never runs beside another
 * role's connections.
 */
void
evbus_handler_session_for(Oid run_as)
{
	if (OidIsValid(last_run_as) && last_run_as != run_as)
		close_dblink_connections();
	last_run_as = run_as;
}

/*-------------------------------------------------------------------------
 *
 * subscriptions.c
 *	  evbus.subscribe / evbus.unsubscribe, and the consumer's view of the
 *	  subscriptions (which groups consume which topics with which handlers).
 *
 * A handler is a procedure or function taking (payload jsonb, headers
 * jsonb) or (payload jsonb); it runs as the role that subscribed it.  Any
 * change to evbus.subscriptions fires a statement trigger that invalidates
 * the table's relcache entry, which the consumer worker notices at its
 * next transaction and reloads its subscriptions: no restart needed.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/namespace.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/regproc.h"
#include "utils/syscache.h"

#include "evbus.h"
#include "consumer.h"

/* The group a subscription without an explicit group belongs to. */
char *
evbus_default_group(void)
{
	if (evbus_group_name && evbus_group_name[0] != '\0')
		return pstrdup(evbus_group_name);
	return get_database_name(MyDatabaseId);
}

/*
 * check_handler --- a procedure or function (jsonb [, jsonb]) the caller may
 * execute.  Returns whether it is a procedure and whether it takes headers.
 */
static void
check_handler(Oid fn, bool *is_procedure, bool *takes_headers)
{
	HeapTuple	tup;
	Form_pg_proc proc;
	AclResult	aclresult;
	bool		ok;

	tup = SearchSysCache1(PROCOID, ObjectIdGetDatum(fn));
	if (!HeapTupleIsValid(tup))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("function with OID %u does not exist", fn)));
	proc = (Form_pg_proc) GETSTRUCT(tup);
	ok = (proc->prokind == PROKIND_PROCEDURE || proc->prokind == PROKIND_FUNCTION) &&
		!proc->proretset &&
		(proc->pronargs == 1 || proc->pronargs == 2) &&
		proc->proargtypes.values[0] == JSONBOID &&
		(proc->pronargs == 1 || proc->proargtypes.values[1] == JSONBOID);
	*is_procedure = proc->prokind == PROKIND_PROCEDURE;
	*takes_headers = proc->pronargs == 2;
	ReleaseSysCache(tup);
	if (!ok)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_FUNCTION_DEFINITION),
				 errmsg("handler %s has the wrong signature", format_procedure(fn)),
				 errdetail("A handler is a procedure or a function taking (payload jsonb, headers jsonb) or (payload jsonb)."),
				 errhint("Declare it as CREATE PROCEDURE h(payload jsonb, headers jsonb).")));

	aclresult = pg_proc_aclcheck(fn, GetUserId(), ACL_EXECUTE);
	if (aclresult != ACLCHECK_OK)
		aclcheck_error(aclresult, OBJECT_FUNCTION, format_procedure(fn));
}

/*
 * evbus.subscribe(integration_event, handler, group_name, max_retries)
 */
PG_FUNCTION_INFO_V1(evbus_subscribe);
Datum
evbus_subscribe(PG_FUNCTION_ARGS)
{
	char	   *event;
	Oid			handler;
	char	   *group;
	bool		is_procedure;
	bool		takes_headers;
	Oid			argtypes[7] = {TEXTOID, TEXTOID, REGPROCEDUREOID, BOOLOID, BOOLOID, OIDOID, INT4OID};
	Datum		values[7];
	char		nulls[7] = {' ', ' ', ' ', ' ', ' ', ' ', ' '};

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("integration event and handler must not be null")));
	evbus_check_writable("subscribe a handler");
	event = text_to_cstring(PG_GETARG_TEXT_PP(0));
	handler = PG_GETARG_OID(1);
	group = PG_ARGISNULL(2) ? evbus_default_group() : text_to_cstring(PG_GETARG_TEXT_PP(2));
	evbus_check_event_name(event, "integration event");
	evbus_check_event_name(group, "consumer group");
	if (!PG_ARGISNULL(3) && PG_GETARG_INT32(3) < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_retries must not be negative")));
	check_handler(handler, &is_procedure, &takes_headers);

	values[0] = CStringGetTextDatum(event);
	values[1] = CStringGetTextDatum(group);
	values[2] = ObjectIdGetDatum(handler);
	values[3] = BoolGetDatum(is_procedure);
	values[4] = BoolGetDatum(takes_headers);
	values[5] = ObjectIdGetDatum(GetUserId());
	if (PG_ARGISNULL(3))
		nulls[6] = 'n';
	else
		values[6] = Int32GetDatum(PG_GETARG_INT32(3));
	evbus_execute_as_owner("INSERT INTO evbus.subscriptions (integration_event, group_name,"
				   " handler, is_procedure, takes_headers, run_as, max_retries)"
				   " VALUES ($1, $2, $3, $4, $5, $6::pg_catalog.regrole, $7)"
				   " ON CONFLICT (integration_event, group_name, handler) DO UPDATE"
				   " SET is_procedure = excluded.is_procedure,"
				   " takes_headers = excluded.takes_headers, run_as = excluded.run_as,"
				   " max_retries = excluded.max_retries, subscribed_at = pg_catalog.now()",
				   7, argtypes, values, nulls);
	PG_RETURN_VOID();
}

/*
 * evbus.unsubscribe(integration_event, handler, group_name) -> boolean
 */
PG_FUNCTION_INFO_V1(evbus_unsubscribe);
Datum
evbus_unsubscribe(PG_FUNCTION_ARGS)
{
	Oid			argtypes[3] = {TEXTOID, REGPROCEDUREOID, TEXTOID};
	Datum		values[3];

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		PG_RETURN_BOOL(false);
	evbus_check_writable("unsubscribe a handler");
	values[0] = PointerGetDatum(PG_GETARG_TEXT_PP(0));
	values[1] = ObjectIdGetDatum(PG_GETARG_OID(1));
	values[2] = PG_ARGISNULL(2) ? CStringGetTextDatum(evbus_default_group()) :
		PointerGetDatum(PG_GETARG_TEXT_PP(2));
	PG_RETURN_BOOL(evbus_execute_as_owner("DELETE FROM evbus.subscriptions"
								  " WHERE integration_event OPERATOR(pg_catalog.=) $1"
								  " AND handler OPERATOR(pg_catalog.=) $2"
								  " AND group_name OPERATOR(pg_catalog.=) $3",
								  3, argtypes, values, NULL) > 0);
}

/* ------------------------------------------------------------------
 * The consumer worker's view of the subscriptions
 * ------------------------------------------------------------------
 */

static bool subscriptions_stale = true;
static Oid	subscriptions_relid = InvalidOid;

static void
subscriptions_invalidated(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == subscriptions_relid)
		subscriptions_stale = true;
}

/* Call once in the consumer worker. */
void
evbus_subscriptions_watch(void)
{
	CacheRegisterRelcacheCallback(subscriptions_invalidated, (Datum) 0);
}

/* Have the subscriptions changed since the last evbus_load_subscriptions? */
bool
evbus_subscriptions_changed_since_load(void)
{
	return subscriptions_stale;
}

/*
 * evbus_load_subscriptions --- every subscription, ordered by group, topic
 * and handler, as a List of EvbusSubscription allocated in cxt.  Runs
 * inside a transaction with SPI connected.
 */
List *
evbus_load_subscriptions(MemoryContext cxt)
{
	List	   *result = NIL;
	uint64		i;

	subscriptions_stale = false;
	subscriptions_relid = get_relname_relid("subscriptions", evbus_schema_oid());

	if (SPI_execute("SELECT s.group_name, s.integration_event, s.handler::pg_catalog.oid,"
					" s.is_procedure, s.takes_headers, s.run_as::pg_catalog.oid,"
					" COALESCE(s.max_retries, -1), n.nspname, p.proname"
					" FROM evbus.subscriptions s"
					" JOIN pg_catalog.pg_proc p ON p.oid OPERATOR(pg_catalog.=) s.handler"
					" JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) p.pronamespace"
					" ORDER BY s.group_name, s.integration_event, s.handler::pg_catalog.oid",
					true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read evbus.subscriptions");

	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		MemoryContext old = MemoryContextSwitchTo(cxt);
		EvbusSubscription *sub = palloc0(sizeof(EvbusSubscription));

		sub->group_name = TextDatumGetCString(SPI_getbinval(tup, desc, 1, &isnull));
		sub->integration_event = TextDatumGetCString(SPI_getbinval(tup, desc, 2, &isnull));
		sub->handler = DatumGetObjectId(SPI_getbinval(tup, desc, 3, &isnull));
		sub->is_procedure = DatumGetBool(SPI_getbinval(tup, desc, 4, &isnull));
		sub->takes_headers = DatumGetBool(SPI_getbinval(tup, desc, 5, &isnull));
		sub->run_as = DatumGetObjectId(SPI_getbinval(tup, desc, 6, &isnull));
		sub->max_retries = DatumGetInt32(SPI_getbinval(tup, desc, 7, &isnull));
		sub->call_sql = psprintf(sub->is_procedure ? "CALL %s(%s)" : "SELECT %s(%s)",
								 quote_qualified_identifier(SPI_getvalue(tup, desc, 8),
															SPI_getvalue(tup, desc, 9)),
								 sub->takes_headers ? "$1, $2" : "$1");
		sub->topic = psprintf("%s%s", evbus_topic_prefix, sub->integration_event);
		result = lappend(result, sub);
		MemoryContextSwitchTo(old);
	}
	return result;
}

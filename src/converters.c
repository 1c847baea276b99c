/*-------------------------------------------------------------------------
 *
 * converters.c
 *	  The converter registry (evbus.converters) and its per-backend cache.
 *
 * evbus.raise looks up the converters of a domain event on every call, so
 * lookups are cached per backend.  Any change to evbus.converters, through
 * the API or by hand, fires a statement trigger that invalidates the
 * relcache entry of the table; every backend's relcache callback then
 * drops its cache at its next transaction, so a second session sees a new
 * converter without reconnecting.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/namespace.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/regproc.h"
#include "utils/syscache.h"

#include "evbus.h"

#define EVENT_NAME_KEYLEN (EVBUS_MAX_TOPIC_LEN + 8)

typedef struct ConverterCacheEntry
{
	char		domain_event[EVENT_NAME_KEYLEN];
	List	   *converters;		/* of EvbusConverter, in CacheMemoryContext */
} ConverterCacheEntry;

static MemoryContext converter_cache_cxt = NULL;
static HTAB *converter_cache = NULL;
static Oid	converters_relid = InvalidOid;
static bool callback_registered = false;

/* Relcache callback: forget everything when evbus.converters changes. */
static void
converter_cache_invalidate(Datum arg, Oid relid)
{
	if (relid != InvalidOid && relid != converters_relid)
		return;
	if (converter_cache_cxt != NULL)
		MemoryContextReset(converter_cache_cxt);
	converter_cache = NULL;
	converters_relid = InvalidOid;
}

static void
converter_cache_init(void)
{
	HASHCTL		ctl;

	if (!callback_registered)
	{
		CacheRegisterRelcacheCallback(converter_cache_invalidate, (Datum) 0);
		callback_registered = true;
		converter_cache_cxt = AllocSetContextCreate(CacheMemoryContext,
													"evbus converter cache",
													ALLOCSET_SMALL_SIZES);
	}
	converters_relid = get_relname_relid("converters", evbus_schema_oid());

	ctl.keysize = EVENT_NAME_KEYLEN;
	ctl.entrysize = sizeof(ConverterCacheEntry);
	ctl.hcxt = converter_cache_cxt;
	converter_cache = hash_create("evbus converters", 64, &ctl,
								  HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
}

/*
 * load_converters --- read the converters of one domain event (as the
 * extension owner: the table is not readable by PUBLIC).
 */
static List *
load_converters(const char *domain_event)
{
	static SPIPlanPtr plan = NULL;
	Oid			argtypes[1] = {TEXTOID};
	Datum		values[1];
	List	   *result = NIL;
	Oid			save_userid;
	int			save_sec_context;
	uint64		i;
	MemoryContext caller_cxt = CurrentMemoryContext;

	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(evbus_extension_owner(),
						   save_sec_context | SECURITY_LOCAL_USERID_CHANGE);
	PG_TRY();
	{
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		if (plan == NULL)
		{
			plan = SPI_prepare("SELECT integration_event, converter::pg_catalog.oid"
							   " FROM evbus.converters"
							   " WHERE domain_event OPERATOR(pg_catalog.=) $1"
							   " ORDER BY integration_event",
							   1, argtypes);
			if (plan == NULL)
				elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
			SPI_keepplan(plan);
		}
		values[0] = CStringGetTextDatum(domain_event);
		if (SPI_execute_plan(plan, values, NULL, true, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not read evbus.converters");

		for (i = 0; i < SPI_processed; i++)
		{
			HeapTuple	tup = SPI_tuptable->vals[i];
			TupleDesc	desc = SPI_tuptable->tupdesc;
			bool		isnull;
			MemoryContext old = MemoryContextSwitchTo(caller_cxt);
			EvbusConverter *conv = palloc(sizeof(EvbusConverter));

			conv->integration_event = TextDatumGetCString(SPI_getbinval(tup, desc, 1, &isnull));
			conv->converter = DatumGetObjectId(SPI_getbinval(tup, desc, 2, &isnull));
			result = lappend(result, conv);
			MemoryContextSwitchTo(old);
		}
		SPI_finish();
	}
	PG_FINALLY();
	{
		SetUserIdAndSecContext(save_userid, save_sec_context);
	}
	PG_END_TRY();
	return result;
}

/*
 * evbus_lookup_converters --- the converters of a domain event (cached).
 *
 * Returns a List of EvbusConverter owned by the cache: do not free it.
 */
List *
evbus_lookup_converters(const char *domain_event)
{
	ConverterCacheEntry *entry;
	bool		found;
	List	   *converters;

	if (strlen(domain_event) >= EVENT_NAME_KEYLEN)
		return NIL;				/* longer than any registered name */

	AcceptInvalidationMessages();
	if (converter_cache == NULL)
		converter_cache_init();

	entry = hash_search(converter_cache, domain_event, HASH_FIND, &found);
	if (found)
		return entry->converters;

	converters = load_converters(domain_event);
	/* the load may have run invalidations that destroyed the cache */
	if (converter_cache == NULL)
		converter_cache_init();
	entry = hash_search(converter_cache, domain_event, HASH_ENTER, &found);
	entry->converters = NIL;
	{
		MemoryContext old = MemoryContextSwitchTo(converter_cache_cxt);
		ListCell   *lc;

		foreach(lc, converters)
		{
			EvbusConverter *src = lfirst(lc);
			EvbusConverter *conv = palloc(sizeof(EvbusConverter));

			conv->integration_event = pstrdup(src->integration_event);
			conv->converter = src->converter;
			entry->converters = lappend(entry->converters, conv);
		}
		MemoryContextSwitchTo(old);
	}
	return entry->converters;
}

/*
 * check_converter_function --- refuse anything but f(jsonb) RETURNS jsonb
 * that the caller may execute.
 */
static void
check_converter_function(Oid fn)
{
	HeapTuple	tup;
	Form_pg_proc proc;
	AclResult	aclresult;

	tup = SearchSysCache1(PROCOID, ObjectIdGetDatum(fn));
	if (!HeapTupleIsValid(tup))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("function with OID %u does not exist", fn)));
	proc = (Form_pg_proc) GETSTRUCT(tup);
	if (proc->prokind != PROKIND_FUNCTION || proc->proretset ||
		proc->pronargs != 1 || proc->proargtypes.values[0] != JSONBOID ||
		proc->prorettype != JSONBOID)
	{
		ReleaseSysCache(tup);
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_FUNCTION_DEFINITION),
				 errmsg("converter %s has the wrong signature",
						format_procedure(fn)),
				 errdetail("A converter must be a function taking one jsonb argument and returning jsonb."),
				 errhint("Declare it as CREATE FUNCTION f(payload jsonb) RETURNS jsonb.")));
	}
	ReleaseSysCache(tup);

	aclresult = pg_proc_aclcheck(fn, GetUserId(), ACL_EXECUTE);
	if (aclresult != ACLCHECK_OK)
		aclcheck_error(aclresult, OBJECT_FUNCTION, format_procedure(fn));
}

/*
 * evbus.register_converter(domain_event, integration_event, converter)
 *
 * Registers (or replaces) the converter of a pair.  The caller must be
 * allowed to execute the converter; converters run as the role that raises
 * the domain event, like any function it calls.
 */
PG_FUNCTION_INFO_V1(evbus_register_converter);
Datum
evbus_register_converter(PG_FUNCTION_ARGS)
{
	char	   *domain_event = text_to_cstring(PG_GETARG_TEXT_PP(0));
	char	   *integration_event = text_to_cstring(PG_GETARG_TEXT_PP(1));
	Oid			converter = PG_GETARG_OID(2);
	Oid			argtypes[4] = {TEXTOID, TEXTOID, REGPROCEDUREOID, OIDOID};
	Datum		values[4];

	evbus_check_writable("register a converter");
	evbus_check_event_name(domain_event, "domain event");
	evbus_check_event_name(integration_event, "integration event");
	check_converter_function(converter);

	values[0] = CStringGetTextDatum(domain_event);
	values[1] = CStringGetTextDatum(integration_event);
	values[2] = ObjectIdGetDatum(converter);
	values[3] = ObjectIdGetDatum(GetUserId());
	evbus_execute_as_owner("INSERT INTO evbus.converters"
				 " (domain_event, integration_event, converter, registered_by)"
				 " VALUES ($1, $2, $3, $4::pg_catalog.regrole)"
				 " ON CONFLICT (domain_event, integration_event) DO UPDATE"
				 " SET converter = excluded.converter,"
				 " registered_by = excluded.registered_by,"
				 " registered_at = pg_catalog.now()",
				 4, argtypes, values, NULL);
	PG_RETURN_VOID();
}

/*
 * evbus.unregister_converter(domain_event, integration_event) -> boolean
 */
PG_FUNCTION_INFO_V1(evbus_unregister_converter);
Datum
evbus_unregister_converter(PG_FUNCTION_ARGS)
{
	Oid			argtypes[2] = {TEXTOID, TEXTOID};
	Datum		values[2];

	evbus_check_writable("unregister a converter");
	values[0] = PointerGetDatum(PG_GETARG_TEXT_PP(0));
	values[1] = PointerGetDatum(PG_GETARG_TEXT_PP(1));
	PG_RETURN_BOOL(evbus_execute_as_owner("DELETE FROM evbus.converters"
								" WHERE domain_event OPERATOR(pg_catalog.=) $1"
								" AND integration_event OPERATOR(pg_catalog.=) $2",
								2, argtypes, values, NULL) > 0);
}

/*
 * evbus._config_changed() --- statement trigger on evbus.converters and
 * evbus.subscriptions: invalidate the table's relcache entry at commit, so
 * every backend drops its converter cache and the consumer worker reloads
 * its subscriptions.
 */
PG_FUNCTION_INFO_V1(evbus_config_changed);
Datum
evbus_config_changed(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("evbus._config_changed() must be called as a trigger")));
	CacheInvalidateRelcache(trigdata->tg_relation);
	return PointerGetDatum(NULL);
}

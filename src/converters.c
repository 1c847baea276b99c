/*-------------------------------------------------------------------------
 *
 * converters.c
 *	  The converter registry (evbus.converters), who may change it, and its
 *	  per-backend cache.
 *
 * A pair (domain event, integration event) belongs to the role that
 * registered it: replacing or unregistering it takes the privileges of
 * that role, and its converter runs as that role (converter_call.c), never
 * as whoever raises the domain event.  The converter function must belong
 * to that role, to a role it is a member of, or to a superuser; otherwise
 * the function's owner could redefine it and run code as the registrant.
 * That is checked when the pair is registered and again at every call
 * (test 200_converter_ownership.pl).
 *
 * The table stores the function as its qualified signature and the role
 * by name; they are looked up when a backend loads the converters of a
 * domain event.  evbus.raise looks converters up on every call, so
 * lookups are cached per backend.  Any change to evbus.converters, through
 * the API or by hand, fires a statement trigger that invalidates the
 * relcache entry of the table; every backend's relcache callback then
 * drops its cache at its next transaction, so another backend sees a new
 * converter without reconnecting.  A change to any function or role drops
 * it too, so a function dropped and created again, or a renamed role, is
 * looked up anew.
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
#include "storage/sinval.h"
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

/* Forget every cached converter. */
static void
converter_cache_reset(void)
{
	if (converter_cache_cxt != NULL)
		MemoryContextReset(converter_cache_cxt);
	converter_cache = NULL;
	converters_relid = InvalidOid;
}

/* Relcache callback: forget everything when evbus.converters changes. */
static void
converter_cache_invalidate(Datum arg, Oid relid)
{
	if (relid != InvalidOid && relid != converters_relid)
		return;
	converter_cache_reset();
}

/*
 * Syscache callback: a function or a role changed (created, dropped,
 * renamed, given another owner): the cached lookups of signatures and role
 * names may be stale.
 */
static void
converter_lookups_invalidate(Datum arg, int cacheid, uint32 hashvalue)
{
	converter_cache_reset();
}

static void
converter_cache_init(void)
{
	HASHCTL		ctl;

	if (!callback_registered)
	{
		CacheRegisterRelcacheCallback(converter_cache_invalidate, (Datum) 0);
		CacheRegisterSyscacheCallback(PROCOID, converter_lookups_invalidate, (Datum) 0);
		CacheRegisterSyscacheCallback(AUTHOID, converter_lookups_invalidate, (Datum) 0);
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

/* A copy of conv in the current memory context. */
static EvbusConverter *
copy_converter(const EvbusConverter *conv)
{
	EvbusConverter *copy = palloc(sizeof(EvbusConverter));

	*copy = *conv;
	copy->integration_event = pstrdup(conv->integration_event);
	copy->signature = pstrdup(conv->signature);
	copy->registered_by = pstrdup(conv->registered_by);
	return copy;
}

/*
 * evbus_copy_converters --- a copy of a list of converters, in the current
 * memory context (the cache's list may go at the next invalidation).
 */
List *
evbus_copy_converters(List *converters)
{
	List	   *copy = NIL;
	ListCell   *lc;

	foreach(lc, converters)
		copy = lappend(copy, copy_converter(lfirst(lc)));
	return copy;
}

/* What load_converters reads, and where its result goes. */
typedef struct ConverterLoad
{
	const char *domain_event;
	MemoryContext result_cxt;
	List	   *result;			/* of EvbusConverter, in result_cxt */
} ConverterLoad;

/* Under SPI, as the extension owner: read and look up. */
static void
read_converters(void *arg)
{
	static SPIPlanPtr plan = NULL;
	ConverterLoad *load = (ConverterLoad *) arg;
	Oid			argtypes[1] = {TEXTOID};
	Datum		values[1];
	uint64		i;

	if (plan == NULL)
	{
		plan = SPI_prepare("SELECT c.integration_event, c.converter,"
						   " pg_catalog.to_regprocedure(c.converter)::pg_catalog.oid,"
						   " c.registered_by, r.oid"
						   " FROM evbus.converters c"
						   " LEFT JOIN pg_catalog.pg_roles r"
						   " ON r.rolname OPERATOR(pg_catalog.=) c.registered_by"
						   " WHERE c.domain_event OPERATOR(pg_catalog.=) $1"
						   " ORDER BY c.integration_event",
						   1, argtypes);
		if (plan == NULL)
			elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
		SPI_keepplan(plan);
	}
	values[0] = CStringGetTextDatum(load->domain_event);
	if (SPI_execute_plan(plan, values, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read evbus.converters");

	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		MemoryContext old = MemoryContextSwitchTo(load->result_cxt);
		EvbusConverter *conv = palloc(sizeof(EvbusConverter));
		Datum		d;

		conv->integration_event = TextDatumGetCString(SPI_getbinval(tup, desc, 1, &isnull));
		conv->signature = TextDatumGetCString(SPI_getbinval(tup, desc, 2, &isnull));
		d = SPI_getbinval(tup, desc, 3, &isnull);
		conv->converter = isnull ? InvalidOid : DatumGetObjectId(d);
		conv->registered_by = pstrdup(NameStr(*DatumGetName(SPI_getbinval(tup, desc, 4, &isnull))));
		d = SPI_getbinval(tup, desc, 5, &isnull);
		conv->run_as = isnull ? InvalidOid : DatumGetObjectId(d);
		load->result = lappend(load->result, conv);
		MemoryContextSwitchTo(old);
	}
}

/*
 * load_converters --- read the converters of one domain event (as the
 * extension owner: the table is not readable by PUBLIC), with their
 * functions and roles looked up by name (InvalidOid: none now).
 */
static List *
load_converters(const char *domain_event)
{
	ConverterLoad load = {domain_event, CurrentMemoryContext, NIL};

	evbus_spi_as_owner(read_converters, &load);
	return load.result;
}

/*
 * evbus_lookup_converters --- the converters of a domain event (cached).
 *
 * Returns a List of EvbusConverter that may belong to the cache: do not
 * free it, and copy it (evbus_copy_converters) before anything that can
 * process invalidations.
 */
List *
evbus_lookup_converters(const char *domain_event)
{
	ConverterCacheEntry *entry;
	bool		found;
	List	   *converters;
	uint64		inval_count;

	if (strlen(domain_event) >= EVENT_NAME_KEYLEN)
		return NIL;				/* longer than any registered name */

	AcceptInvalidationMessages();
	if (converter_cache == NULL)
		converter_cache_init();

	entry = hash_search(converter_cache, domain_event, HASH_FIND, &found);
	if (found)
		return entry->converters;

	inval_count = SharedInvalidMessageCounter;
	converters = load_converters(domain_event);

	/*
	 * An invalidation processed during the load (its catalog lookups take
	 * locks) may have come after the lookups it affects: use what was read
	 * this once, and cache only a load that no invalidation overtook.
	 */
	if (inval_count != SharedInvalidMessageCounter)
		return converters;
	if (converter_cache == NULL)
		converter_cache_init();
	entry = hash_search(converter_cache, domain_event, HASH_ENTER, &found);
	{
		MemoryContext old = MemoryContextSwitchTo(converter_cache_cxt);

		entry->converters = evbus_copy_converters(converters);
		MemoryContextSwitchTo(old);
	}
	return entry->converters;
}

/*
 * check_converter_shape --- refuse anything but f(jsonb) RETURNS jsonb.
 */
static void
check_converter_shape(Form_pg_proc proc, const char *signature)
{
	if (proc->prokind != PROKIND_FUNCTION || proc->proretset ||
		proc->pronargs != 1 || proc->proargtypes.values[0] != JSONBOID ||
		proc->prorettype != JSONBOID)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_FUNCTION_DEFINITION),
				 errmsg("converter %s has the wrong signature", signature),
				 errdetail("A converter must be a function taking one jsonb argument and returning jsonb."),
				 errhint("Declare it as CREATE FUNCTION f(payload jsonb) RETURNS jsonb.")));
}

/*
 * may_run_as --- may a function owned by fn_owner run as role run_as?
 *
 * Only if its owner could not gain anything by redefining it: the owner is
 * run_as itself, a role run_as is a member of (run_as can act as it
 * anyway), or a superuser.  Membership is checked without the superuser
 * shortcut: a superuser registering another role's function would let that
 * role run code as a superuser.
 */
static bool
may_run_as(Oid fn_owner, Oid run_as)
{
	return fn_owner == run_as || superuser_arg(fn_owner) ||
		is_member_of_role_nosuper(run_as, fn_owner);
}

/*
 * check_converter_function --- refuse anything but f(jsonb) RETURNS jsonb
 * that the registrant (the current user) may execute and that belongs to
 * it (may_run_as).  Returns its schema-qualified signature, as stored.
 */
static char *
check_converter_function(Oid fn)
{
	HeapTuple	tup;
	Form_pg_proc proc;
	AclResult	aclresult;
	Oid			fn_owner;
	char	   *display;

	tup = SearchSysCache1(PROCOID, ObjectIdGetDatum(fn));
	if (!HeapTupleIsValid(tup))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("function with OID %u does not exist", fn)));
	proc = (Form_pg_proc) GETSTRUCT(tup);
	display = format_procedure(fn);
	fn_owner = proc->proowner;
	PG_TRY();
	{
		check_converter_shape(proc, display);
	}
	PG_FINALLY();
	{
		ReleaseSysCache(tup);
	}
	PG_END_TRY();

	aclresult = pg_proc_aclcheck(fn, GetUserId(), ACL_EXECUTE);
	if (aclresult != ACLCHECK_OK)
		aclcheck_error(aclresult, OBJECT_FUNCTION, display);

	if (!may_run_as(fn_owner, GetUserId()))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("converter %s belongs to role \"%s\"",
						display, GetUserNameFromId(fn_owner, false)),
				 errdetail("A converter runs as the role that registers it (\"%s\"), so its function must belong to that role, to a role it is a member of, or to a superuser: its owner could otherwise redefine it and run code as the registrant.",
						   GetUserNameFromId(GetUserId(), false)),
				 errhint("Register a function of your own, or have role \"%s\" register its function.",
						 GetUserNameFromId(fn_owner, false))));
	return format_procedure_qualified(fn);
}

/*
 * evbus_check_converter --- at each call: the converter's function and
 * role still exist, the function still has the shape of a converter and
 * still belongs to a role it may run as (it may have been given to another
 * role since it was registered; test 200_converter_ownership.pl).
 */
void
evbus_check_converter(const EvbusConverter *conv, const char *domain_event)
{
	HeapTuple	tup;
	Form_pg_proc proc;

	if (!OidIsValid(conv->run_as))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("role \"%s\" that registered the converter of domain event \"%s\" to \"%s\" does not exist",
						conv->registered_by, domain_event, conv->integration_event),
				 errdetail("A converter runs as the role that registered it."),
				 errhint("A superuser can unregister it with evbus.unregister_converter().")));

	tup = OidIsValid(conv->converter) ?
		SearchSysCache1(PROCOID, ObjectIdGetDatum(conv->converter)) : NULL;
	if (!HeapTupleIsValid(tup))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("converter %s of domain event \"%s\" to \"%s\" does not exist",
						conv->signature, domain_event, conv->integration_event),
				 errhint("Create the function again, or unregister the converter with evbus.unregister_converter().")));
	proc = (Form_pg_proc) GETSTRUCT(tup);
	PG_TRY();
	{
		check_converter_shape(proc, conv->signature);
		if (!may_run_as(proc->proowner, conv->run_as))
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("converter %s of domain event \"%s\" to \"%s\" belongs to role \"%s\"",
							format_procedure(conv->converter), domain_event,
							conv->integration_event,
							GetUserNameFromId(proc->proowner, false)),
					 errdetail("It runs as role \"%s\", which registered it and is not a member of role \"%s\".",
							   conv->registered_by, GetUserNameFromId(proc->proowner, false)),
					 errhint("Give the function back to role \"%s\" with ALTER FUNCTION ... OWNER TO, or unregister the converter.",
							 conv->registered_by)));
	}
	PG_FINALLY();
	{
		ReleaseSysCache(tup);
	}
	PG_END_TRY();
}

/* A pair, and the role that registered it (NULL: no such pair). */
typedef struct PairOwner
{
	text	   *domain_event;
	text	   *integration_event;
	MemoryContext result_cxt;
	char	   *owner;			/* in result_cxt */
} PairOwner;

/* Under SPI, as the extension owner: lock the pair, read its owner. */
static void
read_pair_owner(void *arg)
{
	PairOwner  *pair = (PairOwner *) arg;
	Oid			argtypes[2] = {TEXTOID, TEXTOID};
	Datum		values[2];

	values[0] = PointerGetDatum(pair->domain_event);
	values[1] = PointerGetDatum(pair->integration_event);
	if (SPI_execute_with_args("SELECT registered_by FROM evbus.converters"
							  " WHERE domain_event OPERATOR(pg_catalog.=) $1"
							  " AND integration_event OPERATOR(pg_catalog.=) $2"
							  " FOR UPDATE",
							  2, argtypes, values, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read evbus.converters");
	if (SPI_processed > 0)
	{
		bool		isnull;
		Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc,
									  1, &isnull);

		pair->owner = MemoryContextStrdup(pair->result_cxt, NameStr(*DatumGetName(d)));
	}
}

/*
 * lock_pair_owner --- the role that registered a pair, or NULL if there
 * is no such pair.  The row stays locked (FOR UPDATE) until the end of the
 * transaction, so that the decision taken on its owner holds.  Read as the
 * extension owner: the table is not readable by PUBLIC.
 */
static char *
lock_pair_owner(text *domain_event, text *integration_event)
{
	PairOwner	pair = {domain_event, integration_event, CurrentMemoryContext, NULL};

	evbus_spi_as_owner(read_pair_owner, &pair);
	return pair.owner;
}

/*
 * check_pair_owner --- the current user may replace or remove a pair only
 * with the privileges of the role that registered it (a dropped role's
 * pairs: only a superuser).
 */
static void
check_pair_owner(const char *owner, text *domain_event,
				 text *integration_event)
{
	if (has_privs_of_role(GetUserId(), get_role_oid(owner, true)))
		return;
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("the converter of domain event \"%s\" to \"%s\" belongs to role \"%s\"",
					text_to_cstring(domain_event), text_to_cstring(integration_event), owner),
			 errdetail("A converter runs as the role that registered it; only a role with that role's privileges may replace or unregister it."),
			 errhint("Ask role \"%s\" to change it, or register your converter for another integration event.",
					 owner)));
}

/*
 * evbus.register_converter(domain_event, integration_event, converter)
 *
 * Registers the converter of a pair, to run as the calling role, or
 * replaces it if the caller has the privileges of the role that registered
 * it.  The caller must be allowed to execute the converter, which must
 * belong to it (check_converter_function).
 */
PG_FUNCTION_INFO_V1(evbus_register_converter);
Datum
evbus_register_converter(PG_FUNCTION_ARGS)
{
	text	   *domain_event = PG_GETARG_TEXT_PP(0);
	text	   *integration_event = PG_GETARG_TEXT_PP(1);
	Oid			converter = PG_GETARG_OID(2);
	char	   *signature;
	Oid			argtypes[4] = {TEXTOID, TEXTOID, TEXTOID, NAMEOID};
	Datum		values[4];

	evbus_check_writable("register a converter");
	evbus_check_event_name(text_to_cstring(domain_event), "domain event");
	evbus_check_event_name(text_to_cstring(integration_event), "integration event");
	signature = check_converter_function(converter);

	values[0] = PointerGetDatum(domain_event);
	values[1] = PointerGetDatum(integration_event);
	values[2] = CStringGetTextDatum(signature);
	values[3] = DirectFunctionCall1(namein,
									CStringGetDatum(GetUserNameFromId(GetUserId(), false)));

	/*
	 * Replace a pair whose owner was checked, locked meanwhile, or insert a
	 * new one.  If another transaction inserted the pair after it was found
	 * missing, the insert does nothing and the pair's owner is checked again.
	 */
	for (;;)
	{
		char	   *owner = lock_pair_owner(domain_event, integration_event);

		CHECK_FOR_INTERRUPTS();
		if (owner != NULL)
		{
			check_pair_owner(owner, domain_event, integration_event);
			evbus_execute_as_owner("UPDATE evbus.converters"
								   " SET converter = $3, registered_by = $4,"
								   " registered_at = pg_catalog.now()"
								   " WHERE domain_event OPERATOR(pg_catalog.=) $1"
								   " AND integration_event OPERATOR(pg_catalog.=) $2",
								   4, argtypes, values, NULL);
			break;
		}
		if (evbus_execute_as_owner("INSERT INTO evbus.converters"
								   " (domain_event, integration_event, converter, registered_by)"
								   " VALUES ($1, $2, $3, $4)"
								   " ON CONFLICT (domain_event, integration_event) DO NOTHING",
								   4, argtypes, values, NULL) > 0)
			break;
	}
	PG_RETURN_VOID();
}

/*
 * evbus.unregister_converter(domain_event, integration_event) -> boolean
 *
 * Removes a pair if the caller has the privileges of the role that
 * registered it; false if there is no such pair.
 */
PG_FUNCTION_INFO_V1(evbus_unregister_converter);
Datum
evbus_unregister_converter(PG_FUNCTION_ARGS)
{
	Oid			argtypes[2] = {TEXTOID, TEXTOID};
	Datum		values[2];
	char	   *owner;

	evbus_check_writable("unregister a converter");
	values[0] = PointerGetDatum(PG_GETARG_TEXT_PP(0));
	values[1] = PointerGetDatum(PG_GETARG_TEXT_PP(1));
	owner = lock_pair_owner(PG_GETARG_TEXT_PP(0), PG_GETARG_TEXT_PP(1));
	if (owner == NULL)
		PG_RETURN_BOOL(false);
	check_pair_owner(owner, PG_GETARG_TEXT_PP(0), PG_GETARG_TEXT_PP(1));
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

/*-------------------------------------------------------------------------
 *
 * converter_call.c
 *	  Run a converter: domain event payload in, integration event payload
 *	  (or NULL, "emit nothing") out, in the caller's transaction, as the
 *	  role that registered it.
 *
 * A converter runs as the role that registered it, never as the role that
 * raises the domain event: otherwise whoever may register a converter
 * could run code as anyone who raises, a superuser inserting into a
 * captured table included (test 200_converter_ownership.pl).  As
 * PostgreSQL does for index expressions and REFRESH MATERIALIZED VIEW, the
 * call is a security-restricted operation under the registrant's user id,
 * in a GUC nest level that is rolled back when it returns, so that no
 * setting it changes (SET, SET LOCAL, set_config) outlives it, and with
 * search_path = pg_catalog, pg_temp, so that what its names mean depends
 * on neither the raising session nor the registrant's session.  The
 * user id and sec context come back when it returns or fails; an error
 * aborts the raising transaction, and the abort rolls the GUC level back.
 *
 * evbus.raise runs once per domain event, inside the application's
 * transaction, so a converter call must cost little.  Each converter is
 * compiled once per backend into an expression, converter($1), planned
 * like any query expression: the planner inlines a simple SQL converter
 * (`SELECT jsonb_build_object(...)`) so that no function call remains,
 * and an expression evaluates without SPI, a portal or an executor start.
 * The planned expression is a CachedExpression (utils/cache/plancache.c):
 * it is marked invalid when the function, or a function inlined into it,
 * is replaced or dropped, and it is then planned again at the next call.
 *
 * What a per-call executor start would otherwise re-check, the cache keys
 * or invalidates on: a compiled converter belongs to one role (privileges
 * on functions called inside are checked when it is compiled, as that
 * role), is dropped when any function or role membership changes (a
 * GRANT or REVOKE on a built-in function is not a change the
 * CachedExpression tracks), and is not used under another search_path
 * (an inlined body's names were resolved under the one it was compiled
 * with: always pg_catalog, pg_temp, but pg_temp may be another schema
 * once the session has created its temporary schema).  A converter that
 * raises domain events itself (nesting) gets a private, one-time
 * compilation: an expression being evaluated is never evaluated again
 * from inside itself.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/executor.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "nodes/params.h"
#include "optimizer/optimizer.h"
#include "utils/acl.h"
#include "utils/datum.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/plancache.h"
#include "utils/regproc.h"
#include "utils/syscache.h"

#include "evbus.h"

/* Which compilation: a converter, as a role. */
typedef struct CompiledConverterKey
{
	Oid			converter;
	Oid			role;
} CompiledConverterKey;

/* One converter, compiled. */
typedef struct CompiledConverter
{
	CompiledConverterKey key;	/* hash key */
	CachedExpression *planned;	/* NULL until compiled */
	MemoryContext cxt;			/* holds state and search_path */
	ExprState  *state;
	OverrideSearchPath *search_path;	/* the one it was compiled under */
} CompiledConverter;

static HTAB *compiled = NULL;
static bool all_stale = false;	/* a function or a role membership changed */
static int	depth = 0;			/* converters running in this backend */
static ExprContext *econtext = NULL;	/* one per backend, reset per call */
static ParamListInfo params = NULL;

/* Forget a compiled converter (its function changed or is gone). */
static void
forget(CompiledConverter *entry)
{
	if (entry->planned)
		FreeCachedExpression(entry->planned);
	if (entry->cxt)
		MemoryContextDelete(entry->cxt);
	entry->planned = NULL;
	entry->cxt = NULL;
	entry->state = NULL;
	entry->search_path = NULL;
}

/* Any change of a function or of role membership: compile anew. */
static void
invalidate_all(Datum arg, int cacheid, uint32 hashvalue)
{
	all_stale = true;
}

/* converter($1), with $1 the domain event's payload (jsonb). */
static Expr *
call_expression(Oid converter)
{
	Param	   *arg = makeNode(Param);

	arg->paramkind = PARAM_EXTERN;
	arg->paramid = 1;
	arg->paramtype = JSONBOID;
	arg->paramtypmod = -1;
	arg->paramcollid = InvalidOid;
	arg->location = -1;
	return (Expr *) makeFuncExpr(converter, JSONBOID, list_make1(arg),
								 InvalidOid, InvalidOid, COERCE_EXPLICIT_CALL);
}

/* The one-parameter list of a call, holding payload. */
static void
set_payload(ParamListInfo list, Jsonb *payload)
{
	list->params[0].value = JsonbPGetDatum(payload);
	list->params[0].isnull = false;
	list->params[0].pflags = PARAM_FLAG_CONST;
	list->params[0].ptype = JSONBOID;
}

/*
 * compiled_converter --- converter($1) compiled for the current role,
 * planned once and again after each change that can affect it.
 */
static CompiledConverter *
compiled_converter(Oid converter)
{
	CompiledConverterKey key;
	CompiledConverter *entry;
	bool		found;

	if (compiled == NULL)
	{
		HASHCTL		ctl;
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

		ctl.keysize = sizeof(CompiledConverterKey);
		ctl.entrysize = sizeof(CompiledConverter);
		compiled = hash_create("evbus compiled converters", 32, &ctl,
							   HASH_ELEM | HASH_BLOBS);
		econtext = CreateStandaloneExprContext();
		params = makeParamList(1);
		params->numParams = 1;
		MemoryContextSwitchTo(old);
		CacheRegisterSyscacheCallback(PROCOID, invalidate_all, (Datum) 0);
		CacheRegisterSyscacheCallback(AUTHMEMROLEMEM, invalidate_all, (Datum) 0);
	}
	if (all_stale)
	{
		HASH_SEQ_STATUS seq;
		CompiledConverter *stale;

		hash_seq_init(&seq, compiled);
		while ((stale = hash_seq_search(&seq)) != NULL)
			forget(stale);
		all_stale = false;
	}

	memset(&key, 0, sizeof(key));
	key.converter = converter;
	key.role = GetUserId();
	entry = hash_search(compiled, &key, HASH_ENTER, &found);
	if (!found)
	{
		entry->planned = NULL;
		entry->cxt = NULL;
		forget(entry);
	}
	else if (entry->planned &&
			 (!entry->planned->is_valid ||
			  !OverrideSearchPathMatchesCurrent(entry->search_path)))
		forget(entry);

	if (entry->planned == NULL)
	{
		MemoryContext old;

		entry->cxt = AllocSetContextCreate(TopMemoryContext, "evbus converter",
										   ALLOCSET_SMALL_SIZES);
		PG_TRY();
		{
			entry->search_path = GetOverrideSearchPath(entry->cxt);
			entry->planned = GetCachedExpression((Node *) call_expression(converter));
			old = MemoryContextSwitchTo(entry->cxt);
			entry->state = ExecInitExpr((Expr *) entry->planned->expr, NULL);
			MemoryContextSwitchTo(old);
		}
		PG_CATCH();
		{
			/* an error leaves the entry empty, to be compiled next time */
			forget(entry);
			PG_RE_THROW();
		}
		PG_END_TRY();
	}
	return entry;
}

/*
 * evaluate_nested --- converter($1) called from inside a running converter:
 * planned and evaluated privately, in memory that goes with the call.
 */
static Jsonb *
evaluate_nested(Oid converter, Jsonb *payload)
{
	MemoryContext cxt = AllocSetContextCreate(CurrentMemoryContext,
											  "evbus nested converter",
											  ALLOCSET_SMALL_SIZES);
	MemoryContext old = MemoryContextSwitchTo(cxt);
	ExprState  *state = ExecInitExpr(expression_planner(call_expression(converter)), NULL);
	ExprContext *nested = CreateStandaloneExprContext();
	ParamListInfo nested_params = makeParamList(1);
	Datum		result;
	bool		isnull;
	Jsonb	   *jb = NULL;

	nested_params->numParams = 1;
	set_payload(nested_params, payload);
	nested->ecxt_param_list_info = nested_params;
	MemoryContextSwitchTo(old);

	result = ExecEvalExprSwitchContext(state, nested, &isnull);
	if (!isnull)
		jb = DatumGetJsonbPCopy(result);
	FreeExprContext(nested, true);
	MemoryContextDelete(cxt);
	return jb;
}

/*
 * evbus_call_converter --- run one converter as the role that registered
 * it; NULL means "emit nothing".  The result must be a JSON object.
 */
Jsonb *
evbus_call_converter(const EvbusConverter *conv, const char *domain_event,
					 Jsonb *payload)
{
	AclResult	aclresult;
	Datum		result;
	bool		isnull;
	Jsonb	   *volatile jb = NULL;
	Oid			save_userid;
	int			save_sec_context;
	int			save_nestlevel;

	/* it exists, is a converter and belongs to a role it may run as */
	evbus_check_converter(conv, domain_event);

	/*
	 * Checked at every call, as the SPI plan's executor start did: an inlined
	 * converter leaves no function call in its compiled form for the executor
	 * to check.
	 */
	aclresult = pg_proc_aclcheck(conv->converter, conv->run_as, ACL_EXECUTE);
	if (aclresult != ACLCHECK_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for function %s",
						format_procedure(conv->converter)),
				 errdetail("The converter of domain event \"%s\" to \"%s\" runs as role \"%s\", which registered it.",
						   domain_event, conv->integration_event, conv->registered_by),
				 errhint("Grant EXECUTE on the function to role \"%s\".",
						 conv->registered_by)));

	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(conv->run_as,
						   save_sec_context | SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
	save_nestlevel = NewGUCNestLevel();
	depth++;
	PG_TRY();
	{
		(void) set_config_option("search_path", EVBUS_PINNED_SEARCH_PATH,
								 PGC_USERSET, PGC_S_SESSION,
								 GUC_ACTION_SAVE, true, 0, false);
		if (depth > 1)
			jb = evaluate_nested(conv->converter, payload);
		else
		{
			CompiledConverter *entry = compiled_converter(conv->converter);

			ResetExprContext(econtext);
			set_payload(params, payload);
			econtext->ecxt_param_list_info = params;
			result = ExecEvalExprSwitchContext(entry->state, econtext, &isnull);
			/* out of the expression's memory, which the next call resets */
			jb = isnull ? NULL : DatumGetJsonbPCopy(result);
		}
		/* roll back every setting it changed, even a plain SET */
		AtEOXact_GUC(false, save_nestlevel);
	}
	PG_FINALLY();
	{
		depth--;
		SetUserIdAndSecContext(save_userid, save_sec_context);
	}
	PG_END_TRY();
	if (jb == NULL)
		return NULL;

	if (!JB_ROOT_IS_OBJECT(jb) || JB_ROOT_IS_SCALAR(jb))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("converter %s returned a non-object",
						format_procedure(conv->converter)),
				 errdetail("Converting domain event \"%s\" to \"%s\" must yield a JSON object or NULL.",
						   domain_event, conv->integration_event)));
	return jb;
}

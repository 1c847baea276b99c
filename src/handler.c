/*-------------------------------------------------------------------------
 *
 * handler.c
 *	  Running one handler for one message: in its own subtransaction, as
 *	  the role that subscribed it, with that role's settings and
 *	  evbus.handler_timeout as statement timeout.
 *
 * Each handler of a message is a unit of its own: a failure rolls back
 * that handler's effects only, and the error (SQLSTATE and message) goes
 * back to the caller, which records it for that handler in the same
 * (outer) transaction (test 210_subscription_ownership.pl).  Handlers
 * cannot control the transaction (SPI is atomic here: COMMIT in a
 * procedure is an error like any other) and run as a security-restricted
 * operation, like PostgreSQL's own maintenance commands running user code.
 *
 * Before each run the subscription is checked again: its role exists and
 * is not a superuser, its handler exists (resolved from its signature)
 * and is owned by that role or a role it is a member of.  A check that
 * fails is a failed attempt like any other: retried, then dead-lettered,
 * the handler never run (tests 212_handler_run_as.pl,
 * 216_dropped_handler.pl).
 *
 * A handler runs with the settings a new connection of its role to this
 * database would have: the server's and the database's search_path (not
 * the consumer's pinned one), then the role's own settings (ALTER ROLE
 * ... SET, for all databases then for this one: role_settings.c, tests
 * 220_handler_role_settings.pl, 222_handler_unqualified_names.pl).  Every
 * setting a handler changes, even
 * with set_config(..., false), is undone when it returns: the next
 * handler, whoever runs it, and the consumer's own transactions start
 * from the same settings (test 214_handler_settings.pl).
 *
 * What a handler stages continues the trace of the message it handles and
 * names it as its cause (handler_trace.c, test 224_trace_causation.pl).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/syscache.h"
#include "utils/timeout.h"

#include "consumer.h"

/*
 * Prepared CALL/SELECT per handler function, kept across transactions.
 * Keyed on the function's OID: the statement text is derived from it
 * (name, schema, procedure or not, arity), and a statement text that no
 * longer matches (a renamed function) is prepared again (test
 * 218_handler_plan_cache.pl).
 */
typedef struct HandlerPlan
{
	Oid			fn;				/* hash key */
	char	   *sql;			/* in TopMemoryContext */
	SPIPlanPtr	plan;
} HandlerPlan;

static HTAB *plans = NULL;

static SPIPlanPtr
handler_plan(Oid fn, const char *sql, int nargs, Oid *argtypes)
{
	HandlerPlan *entry;
	SPIPlanPtr	plan;

	if (plans == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(Oid);
		ctl.entrysize = sizeof(HandlerPlan);
		plans = hash_create("evbus handler plans", 32, &ctl, HASH_ELEM | HASH_BLOBS);
	}
	entry = hash_search(plans, &fn, HASH_FIND, NULL);
	if (entry != NULL && strcmp(entry->sql, sql) == 0)
		return entry->plan;
	if (entry != NULL)
	{
		SPI_freeplan(entry->plan);
		pfree(entry->sql);
		hash_search(plans, &fn, HASH_REMOVE, NULL);
	}

	/* only a prepared plan enters the cache (preparing may throw) */
	plan = SPI_prepare(sql, nargs, argtypes);
	if (plan == NULL)
		elog(ERROR, "could not prepare \"%s\": %s", sql,
			 SPI_result_code_string(SPI_result));
	SPI_keepplan(plan);
	entry = hash_search(plans, &fn, HASH_ENTER, NULL);
	entry->plan = plan;
	entry->sql = MemoryContextStrdup(TopMemoryContext, sql);
	return plan;
}

/* Drop prepared plans (subscriptions changed). */
void
evbus_forget_handler_plans(void)
{
	HASH_SEQ_STATUS status;
	HandlerPlan *entry;

	if (plans == NULL)
		return;
	hash_seq_init(&status, plans);
	while ((entry = hash_seq_search(&status)) != NULL)
	{
		SPI_freeplan(entry->plan);
		pfree(entry->sql);
	}
	hash_destroy(plans);
	plans = NULL;
}

/*
 * checked_call --- check the subscription as of now (see the top of this
 * file) and return the statement that calls its handler, with the
 * function's OID in *fn, its arity in *nargs, its argument types in
 * argtypes and whether it is a batch handler in *batch.  Errors are
 * failed attempts.
 */
static char *
checked_call(const EvbusSubscription *sub, Oid *fn, int *nargs, Oid *argtypes,
			 bool *batch)
{
	HeapTuple	tup;
	Form_pg_proc proc;
	char	   *sql;

	if (!SearchSysCacheExists1(AUTHOID, ObjectIdGetDatum(sub->run_as)))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("role with OID %u, which handler %s runs as, does not exist",
						sub->run_as, sub->signature),
				 errhint("Unsubscribe the handler (as a superuser) and subscribe it again as another role.")));
	if (superuser_arg(sub->run_as))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("handler %s would run as role %s, a superuser",
						sub->signature, evbus_role_name(sub->run_as)),
				 errhint("Remove superuser from role %s, or unsubscribe the handler.",
						 evbus_role_name(sub->run_as))));

	*fn = evbus_resolve_handler(sub->signature);
	tup = OidIsValid(*fn) ? SearchSysCache1(PROCOID, ObjectIdGetDatum(*fn)) : NULL;
	if (!HeapTupleIsValid(tup))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("handler %s does not exist", sub->signature),
				 errhint("Create it again (its messages run then), or unsubscribe it.")));
	proc = (Form_pg_proc) GETSTRUCT(tup);
	*nargs = proc->pronargs;
	*batch = evbus_batch_handler_args(proc->pronargs, proc->proargtypes.values);
	argtypes[0] = *batch ? JSONBARRAYOID : JSONBOID;
	argtypes[1] = argtypes[0];
	sql = psprintf(proc->prokind == PROKIND_PROCEDURE ? "CALL %s(%s)" : "SELECT %s(%s)",
				   quote_qualified_identifier(get_namespace_name(proc->pronamespace),
											  NameStr(proc->proname)),
				   proc->pronargs == 2 ? "$1, $2" : "$1");
	evbus_check_handler_owner(*fn, proc->proowner, sub->run_as);
	ReleaseSysCache(tup);
	return sql;
}

/* A jsonb[] of n values, in their order. */
static Datum
jsonb_array(Jsonb **elems, int n)
{
	Datum	   *datums = palloc(sizeof(Datum) * n);
	int			i;

	for (i = 0; i < n; i++)
		datums[i] = JsonbPGetDatum(elems[i]);
	return PointerGetDatum(construct_array(datums, n, JSONBOID, -1, false, TYPALIGN_INT));
}

/*
 * Run one handler as its subscriber, with the settings a connection of
 * that role would have; whatever settings it changes are undone when it
 * returns or fails.
 */
static void
run_one(const EvbusSubscription *sub, Jsonb **payloads, Jsonb **headers, int n)
{
	Datum		values[2];
	Oid			save_userid;
	int			save_sec_context;
	int			nest;
	Oid			fn;
	int			nargs;
	Oid			argtypes[2];
	bool		batch;
	char	   *sql = checked_call(sub, &fn, &nargs, argtypes, &batch);
	SPIPlanPtr	plan = handler_plan(fn, sql, nargs, argtypes);
	int			rc;

	if (batch)
	{
		/* Kafka's order; headers[i] goes with payloads[i] (test 190) */
		values[0] = jsonb_array(payloads, n);
		values[1] = jsonb_array(headers, n);
	}
	else if (n == 1)
	{
		values[0] = JsonbPGetDatum(payloads[0]);
		values[1] = JsonbPGetDatum(headers[0]);
	}
	else
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_FUNCTION_DEFINITION),
				 errmsg("handler %s is not a batch handler any more", sub->signature),
				 errhint("Its messages are handled one at a time.")));

	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(sub->run_as,
						   save_sec_context | SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
	nest = NewGUCNestLevel();
	evbus_apply_login_settings(sub->run_as);
	/*
	 * After the role's settings: the message's trace context wins.  A batch
	 * of several messages has no one message to continue (docs/consumer.md).
	 */
	evbus_handler_trace_begin(n == 1 ? headers[0] : NULL);
	enable_timeout_after(STATEMENT_TIMEOUT, evbus_handler_timeout_ms);

	rc = SPI_execute_plan(plan, values, NULL, false, 0);

	disable_timeout(STATEMENT_TIMEOUT, false);
	evbus_handler_trace_end();
	/* false: also undo the handler's session-level SETs (test 214) */
	AtEOXact_GUC(false, nest);
	SetUserIdAndSecContext(save_userid, save_sec_context);
	if (rc < 0)
		elog(ERROR, "handler %s failed: %s", sub->signature, SPI_result_code_string(rc));
}

/*
 * evbus_run_handler --- run one handler of n messages in a subtransaction:
 * one message (n 1), or for a batch handler n messages at once, in
 * arrays (a batch handler called with one message gets one-element
 * arrays).
 *
 * Returns true on success.  On failure, returns false with the SQLSTATE and
 * message of the error (palloc'd in the caller's context); the handler's
 * effects of this attempt are rolled back, the outer transaction is intact.
 * Must be called inside a transaction with SPI connected.
 */
bool
evbus_run_handler(const EvbusSubscription *sub, Jsonb **payloads, Jsonb **headers,
				  int n, char **error_code, char **error_message)
{
	EvbusSubxact sx;
	Oid			save_userid;
	int			save_sec_context;
	bool		ok = true;

	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	evbus_subxact_begin(&sx);
	PG_TRY();
	{
		run_one(sub, payloads, headers, n);
		evbus_subxact_commit(&sx);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		disable_timeout(STATEMENT_TIMEOUT, false);
		evbus_handler_trace_end();
		edata = evbus_subxact_abort(&sx);
		SetUserIdAndSecContext(save_userid, save_sec_context);

		*error_code = pstrdup(unpack_sql_state(edata->sqlerrcode));
		*error_message = pstrdup(edata->message ? edata->message : "unknown error");
		FreeErrorData(edata);
		ok = false;
	}
	PG_END_TRY();
	return ok;
}

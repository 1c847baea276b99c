/*-------------------------------------------------------------------------
 *
 * handler.c
 *	  Running one handler for one message: in its own subtransaction, as
 *	  the role that subscribed it, with that role's settings and
 *	  evbus.handler_timeout as statement timeout (handler_timeout.c).
 *
 * Each handler of a message is a unit of its own: a failure rolls back
 * that handler's effects only, and the error (SQLSTATE and message) goes
 * back to the caller, which records it for that handler in the same
 * (outer) transaction (test 210_subscription_ownership.pl).  The caller
 * may run a handler for many messages in one go (evbus_run_handler_each):
 * still one subtransaction per call, nested in one for them all, which
 * keeps a SQL function's parsed body from call to call.  Handlers
 * cannot control the transaction (SPI is atomic here: COMMIT in a
 * procedure is an error like any other) and run as a security-restricted
 * operation, like PostgreSQL's own maintenance commands running user code.
 *
 * Before each run the subscription is checked again: its role exists, is
 * not a superuser and may connect to this database, its handler exists
 * (resolved from its signature) and is owned by that role or a role it is
 * a member of, who may execute it.  A check that fails is a failed
 * attempt like any other: retried, then dead-lettered, the handler never
 * run (tests 212_handler_run_as.pl, 216_dropped_handler.pl).
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
 * What one role's handler left open in the session (dblink's connections)
 * is closed before another role's runs (handler_session.c).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/objectaccess.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "nodes/params.h"
#include "pgstat.h"
#include "storage/lock.h"
#include "tcop/dest.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/snapmgr.h"
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
 * What a handler's run needs, found by checked_call: the function, how to
 * call it and the statement that calls it.
 */
typedef struct HandlerCall
{
	Oid			fn;				/* the handler's function or procedure */
	int			nargs;			/* 1 (payload) or 2 (payload, headers) */
	Oid			argtypes[2];	/* jsonb, or jsonb[] for a batch handler */
	bool		batch;			/* (payloads jsonb[], headers jsonb[]) */
	bool		direct;			/* a plain function: called through fmgr */
	char	   *sql;			/* not direct: CALL or SELECT of it, for SPI */
	FmgrInfo	flinfo;			/* direct: its lookup */
	SPIPlanPtr	plan;			/* not direct: sql, prepared */
} HandlerCall;

/*
 * checked_call --- check the subscription as of now (see the top of this
 * file) and describe how to call its handler.  Errors are failed attempts.
 */
static void
checked_call(const EvbusSubscription *sub, HandlerCall *call)
{
	HeapTuple	tup;
	Form_pg_proc proc;

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
	evbus_check_run_as_connect(sub->run_as);

	call->fn = evbus_resolve_handler(sub->signature);
	tup = OidIsValid(call->fn) ? SearchSysCache1(PROCOID, ObjectIdGetDatum(call->fn)) : NULL;
	if (!HeapTupleIsValid(tup))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("handler %s does not exist", sub->signature),
				 errhint("Create it again (its messages run then), or unsubscribe it.")));
	proc = (Form_pg_proc) GETSTRUCT(tup);
	call->nargs = proc->pronargs;
	call->batch = evbus_batch_handler_args(proc->pronargs, proc->proargtypes.values);
	call->argtypes[0] = call->batch ? JSONBARRAYOID : JSONBOID;
	call->argtypes[1] = call->argtypes[0];
	call->direct = proc->prokind == PROKIND_FUNCTION && !proc->proretset;
	/* the statement only for SPI: a plain function is called directly */
	call->sql = call->direct ? NULL :
		psprintf(proc->prokind == PROKIND_PROCEDURE ? "CALL %s(%s)" : "SELECT %s(%s)",
				 quote_qualified_identifier(get_namespace_name(proc->pronamespace),
											NameStr(proc->proname)),
				 proc->pronargs == 2 ? "$1, $2" : "$1");
	evbus_check_handler_owner(call->fn, proc->proowner, sub->run_as);
	ReleaseSysCache(tup);
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
 * Become the handler's subscriber, with the settings a connection of that
 * role would have, inside a new GUC nest level (returned): end_as_subscriber
 * undoes all of it, and whatever settings the handler changed.  First, as
 * the consumer's own user, what another role's handler left open in the
 * session is closed (handler_session.c).
 */
static int
begin_as_subscriber(const EvbusSubscription *sub, int save_sec_context)
{
	int			nest;

	evbus_handler_session_for(sub->run_as);
	SetUserIdAndSecContext(sub->run_as,
						   save_sec_context | SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
	nest = NewGUCNestLevel();
	evbus_apply_login_settings(sub->run_as);
	return nest;
}

static void
end_as_subscriber(int nest, Oid save_userid, int save_sec_context)
{
	/* false: also undo the handler's session-level SETs (test 214) */
	AtEOXact_GUC(false, nest);
	SetUserIdAndSecContext(save_userid, save_sec_context);
}

/*
 * execute_discarding_rows --- run call's prepared statement with these
 * arguments, its rows (a procedure's OUT parameters, a set-returning
 * function's set) going nowhere: SPI would keep them all in memory, and
 * a function that replaced a handler's name can return a set of any size
 * (test 216_dropped_handler.pl).
 */
static int
execute_discarding_rows(const HandlerCall *call, Datum *values)
{
	ParamListInfo params = makeParamList(call->nargs);
	SPIExecuteOptions options;
	int			i;

	for (i = 0; i < call->nargs; i++)
	{
		params->params[i].value = values[i];
		params->params[i].isnull = false;
		params->params[i].pflags = PARAM_FLAG_CONST;
		params->params[i].ptype = call->argtypes[i];
	}
	memset(&options, 0, sizeof(options));
	options.params = params;
	options.dest = None_Receiver;
	return SPI_execute_plan_extended(call->plan, &options);
}

/*
 * Call the handler once, with these arguments, as a statement of its own
 * under evbus.handler_timeout, continuing the trace of the message whose
 * headers are trace_headers (NULL: none).  Settings it changes are undone
 * when it returns.  A plain function is called through fmgr, its lookup
 * kept by the caller across calls so that a SQL function keeps its parsed
 * body from one message to the next (prepare_call); anything else runs its
 * statement prepared through SPI.
 */
static void
call_once(const EvbusSubscription *sub, HandlerCall *call, Datum *values,
		  Jsonb *trace_headers)
{
	int			nest = NewGUCNestLevel();
	int			rc = SPI_OK_SELECT;

	/* after the role's settings: the message's trace context wins */
	evbus_handler_trace_begin(trace_headers);
	evbus_handler_timeout_arm(sub->signature);
	if (call->direct)
	{
		LOCAL_FCINFO(fcinfo, 2);
		PgStat_FunctionCallUsage fcusage;

		/* like a statement of its own: it sees what ran before it */
		CommandCounterIncrement();
		PushActiveSnapshot(GetTransactionSnapshot());
		InitFunctionCallInfoData(*fcinfo, &call->flinfo, call->nargs, InvalidOid, NULL, NULL);
		fcinfo->args[0].value = values[0];
		fcinfo->args[0].isnull = false;
		fcinfo->args[1].value = values[1];
		fcinfo->args[1].isnull = false;
		pgstat_init_function_usage(fcinfo, &fcusage);
		(void) FunctionCallInvoke(fcinfo);
		pgstat_end_function_usage(&fcusage, true);
		PopActiveSnapshot();
	}
	else
		rc = execute_discarding_rows(call, values);
	evbus_handler_timeout_disarm();
	evbus_handler_trace_end();
	AtEOXact_GUC(false, nest);
	if (rc < 0)
		elog(ERROR, "handler %s failed: %s", sub->signature, SPI_result_code_string(rc));
}

/*
 * check_direct_call --- what the executor checks before it calls a
 * function, for a handler called through fmgr: EXECUTE as the subscriber
 * (its owner may have revoked it from itself), and the object access hook.
 */
static void
check_direct_call(const EvbusSubscription *sub, const HandlerCall *call)
{
	AclResult	aclresult = pg_proc_aclcheck(call->fn, sub->run_as, ACL_EXECUTE);

	if (aclresult != ACLCHECK_OK)
		aclcheck_error(aclresult, OBJECT_FUNCTION, get_func_name(call->fn));
	InvokeFunctionExecuteHook(call->fn);
}

/*
 * prepare_call --- what calling the handler needs, before becoming its
 * subscriber: a plain function's lookup (in the current memory context,
 * where a SQL function keeps its parsed body for later calls) after the
 * executor's checks, else the prepared statement.
 */
static void
prepare_call(const EvbusSubscription *sub, HandlerCall *call)
{
	if (call->direct)
	{
		check_direct_call(sub, call);
		fmgr_info(call->fn, &call->flinfo);
	}
	else
		call->plan = handler_plan(call->fn, call->sql, call->nargs, call->argtypes);
}

/*
 * Run one handler as its subscriber: for one message, or for a batch
 * handler n messages at once.
 */
static void
run_one(const EvbusSubscription *sub, Jsonb **payloads, Jsonb **headers, int n)
{
	HandlerCall call;
	Datum		values[2];
	Oid			save_userid;
	int			save_sec_context;
	int			nest;

	checked_call(sub, &call);
	if (call.batch)
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
	prepare_call(sub, &call);

	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	nest = begin_as_subscriber(sub, save_sec_context);
	/* a batch of several messages has no one message to continue */
	call_once(sub, &call, values, n == 1 ? headers[0] : NULL);
	end_as_subscriber(nest, save_userid, save_sec_context);
}

/*
 * The longest message of a handler's error that is kept, in bytes: in the
 * inbox row, with each attempt's in its errors, in the dead letter and in
 * the WARNING that reports it.  The message is the handler's to choose: one
 * of 90 MB, kept three times over in the errors of its attempts, made the
 * dead letter's row too large to write, and the consumer exit (test
 * 140_consume_retries.pl).
 */
#define HANDLER_ERROR_MESSAGE_MAX 8192

/*
 * The SQLSTATE and message of an error, copied into the current context;
 * a longer message than HANDLER_ERROR_MESSAGE_MAX is cut there (at a
 * character boundary), saying how long it was.
 */
static void
error_of(const ErrorData *edata, char **error_code, char **error_message)
{
	const char *message = edata->message ? edata->message : "unknown error";
	size_t		len = strlen(message);

	*error_code = pstrdup(unpack_sql_state(edata->sqlerrcode));
	if (len <= HANDLER_ERROR_MESSAGE_MAX)
		*error_message = pstrdup(message);
	else
		*error_message = psprintf("%.*s... (%zu bytes in all)",
								  pg_mbcliplen(message, (int) Min(len, PG_INT32_MAX),
											   HANDLER_ERROR_MESSAGE_MAX),
								  message, len);
}

/*
 * call_in_subxact --- call_once in a subtransaction of its own, nested in
 * the one run_each runs in: false, with the error, if the call failed (its
 * effects are rolled back; those of the calls before it stay).
 */
static bool
call_in_subxact(const EvbusSubscription *sub, HandlerCall *call, Datum *values,
				Jsonb *trace_headers, ErrorData **edata)
{
	EvbusSubxact sx;
	bool		ok = true;

	evbus_subxact_begin(&sx);
	PG_TRY();
	{
		call_once(sub, call, values, trace_headers);
		evbus_subxact_commit(&sx);
	}
	PG_CATCH();
	{
		evbus_handler_timeout_disarm();
		evbus_handler_trace_end();
		*edata = evbus_subxact_abort(&sx);
		ok = false;
	}
	PG_END_TRY();
	return ok;
}

/*
 * Run a per-message handler as its subscriber for each of n messages in
 * turn, in their order, until one fails; returns how many ran through
 * (took[i] gets how long the call of message i took, the failing one's
 * too, and its error goes to *error_code and *error_message).  The
 * subscriber's settings are applied once; each call starts from them.
 *
 * The first call runs in the caller's subtransaction, so that a SQL
 * function's parsed body, which PostgreSQL keeps only while the
 * subtransaction that parsed it is active, serves every later call; each
 * later call runs in a subtransaction of its own nested in it.  So every
 * message's call is a unit of its own, as in run_one, and a failure stops
 * the run: the function's kept state is not trusted after an error.  If
 * the first call fails, the caller's subtransaction, which holds nothing
 * else, rolls back (the error propagates).
 */
static int
run_each(const EvbusSubscription *sub, Jsonb **payloads, Jsonb **headers, int n,
		 int64 *took, EvbusCallNote note, void *note_arg,
		 char **error_code, char **error_message)
{
	HandlerCall call;
	Oid			save_userid;
	int			save_sec_context;
	int			nest;
	MemoryContext outer = CurrentMemoryContext;
	MemoryContext call_cxt;
	int			i;

	checked_call(sub, &call);
	if (call.batch)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_FUNCTION_DEFINITION),
				 errmsg("handler %s is a batch handler now", sub->signature),
				 errhint("Its messages are handled one at a time until the subscriptions are read again.")));
	prepare_call(sub, &call);
	call_cxt = AllocSetContextCreate(outer, "evbus handler call", ALLOCSET_DEFAULT_SIZES);

	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	nest = begin_as_subscriber(sub, save_sec_context);
	for (i = 0; i < n; i++)
	{
		TimestampTz started = GetCurrentTimestamp();
		ErrorData  *edata = NULL;
		Datum		values[2];
		bool		ok = true;

		MemoryContextSwitchTo(call_cxt);
		values[0] = JsonbPGetDatum(payloads[i]);
		values[1] = JsonbPGetDatum(headers[i]);
		if (!note(note_arg, i))
			break;
		if (i == 0)
			call_once(sub, &call, values, headers[i]);
		else
			ok = call_in_subxact(sub, &call, values, headers[i], &edata);
		note(note_arg, -1);
		MemoryContextSwitchTo(outer);
		took[i] = GetCurrentTimestamp() - started;
		if (!ok)
		{
			error_of(edata, error_code, error_message);
			break;
		}
		MemoryContextReset(call_cxt);
	}
	end_as_subscriber(nest, save_userid, save_sec_context);
	MemoryContextDelete(call_cxt);
	return i;
}

/*
 * run_in_subxact --- run_one (took NULL) or run_each in a subtransaction;
 * returns how many of the n messages ran through (for run_one all or
 * none), with the error of the one that failed; see evbus_run_handler.
 * The session-level advisory locks the handler took are released after.
 */
static int
run_in_subxact(const EvbusSubscription *sub, Jsonb **payloads, Jsonb **headers,
			   int n, int64 *took, EvbusCallNote note, void *note_arg,
			   char **error_code, char **error_message)
{
	EvbusSubxact sx;
	Oid			save_userid;
	int			save_sec_context;
	volatile int done = n;
	TimestampTz started = GetCurrentTimestamp();

	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	evbus_subxact_begin(&sx);
	PG_TRY();
	{
		if (took == NULL)
			run_one(sub, payloads, headers, n);
		else
			done = run_each(sub, payloads, headers, n, took, note, note_arg,
							error_code, error_message);
		evbus_subxact_commit(&sx);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		if (note != NULL)
			note(note_arg, -1);
		evbus_handler_timeout_disarm();
		evbus_handler_trace_end();
		edata = evbus_subxact_abort(&sx);
		SetUserIdAndSecContext(save_userid, save_sec_context);

		error_of(edata, error_code, error_message);
		FreeErrorData(edata);
		if (took != NULL)
			took[0] = GetCurrentTimestamp() - started;
		done = 0;
	}
	PG_END_TRY();

	/*
	 * Nor does a handler keep a session-level advisory lock: it outlives the
	 * subtransaction, and one taken by a handler that then failed blocked
	 * every other session wanting it for as long as the consumer ran (test
	 * 214_handler_settings.pl).  evbus takes none of its own.
	 */
	LockReleaseSession(USER_LOCKMETHOD);
	return done;
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
	return run_in_subxact(sub, payloads, headers, n, NULL, NULL, NULL,
						  error_code, error_message) == n;
}

/*
 * evbus_run_handler_each --- run a per-message handler for n messages, in
 * their order, each call in a subtransaction of its own as
 * evbus_run_handler would, but with the subscriber's settings looked up
 * once and a SQL function's body parsed once for all of them (run_each).
 * Stops at the first call that fails: returns how many messages were
 * handled (their effects stay); if fewer than n, message [returned]
 * failed with *error_code and *error_message (its effects rolled back)
 * and the later ones were not called.  took[i] gets the time of message
 * i's call.  Each message is called once: the handler runs no more often
 * than the attempts recorded (tests 140_consume_retries.pl,
 * 192_handlers_in_one_go.pl).  note(note_arg, i) runs just before message
 * i's call, note(note_arg, -1) when it has returned (attempt_marker.c);
 * if the first returns false, the run stops there, message i not called
 * and no error given: returns i.
 */
int
evbus_run_handler_each(const EvbusSubscription *sub, Jsonb **payloads, Jsonb **headers,
					   int n, int64 *took, EvbusCallNote note, void *note_arg,
					   char **error_code, char **error_message)
{
	return run_in_subxact(sub, payloads, headers, n, took, note, note_arg,
						  error_code, error_message);
}

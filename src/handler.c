/*-------------------------------------------------------------------------
 *
 * handler.c
 *	  Running the handlers of one message: in a subtransaction, as the role
 *	  that subscribed each handler, with a pinned search_path and
 *	  evbus.handler_timeout as statement timeout.
 *
 * The handlers of one message run as one unit: if any fails, the
 * subtransaction rolls back every handler's effects of this attempt, and
 * the error (SQLSTATE and message) goes back to the caller, which records
 * it in the same (outer) transaction.  Handlers cannot control the
 * transaction (SPI is atomic here: COMMIT in a procedure is an error like
 * any other) and run as a security-restricted operation, like PostgreSQL's
 * own maintenance commands running user code.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/timeout.h"

#include "consumer.h"

/* Prepared CALL/SELECT per statement text, kept across transactions. */
typedef struct HandlerPlan
{
	char		sql[NAMEDATALEN * 2 + 64];	/* hash key */
	SPIPlanPtr	plan;
} HandlerPlan;

static HTAB *plans = NULL;

static SPIPlanPtr
handler_plan(const EvbusSubscription *sub)
{
	HandlerPlan *entry;
	bool		found;

	if (plans == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(((HandlerPlan *) 0)->sql);
		ctl.entrysize = sizeof(HandlerPlan);
		plans = hash_create("evbus handler plans", 32, &ctl, HASH_ELEM | HASH_STRINGS);
	}
	entry = hash_search(plans, sub->call_sql, HASH_ENTER, &found);
	if (!found)
	{
		Oid			argtypes[2] = {JSONBOID, JSONBOID};

		entry->plan = NULL;
		entry->plan = SPI_prepare(sub->call_sql, sub->takes_headers ? 2 : 1, argtypes);
		if (entry->plan == NULL)
		{
			hash_search(plans, sub->call_sql, HASH_REMOVE, NULL);
			elog(ERROR, "could not prepare \"%s\": %s", sub->call_sql,
				 SPI_result_code_string(SPI_result));
		}
		SPI_keepplan(entry->plan);
	}
	return entry->plan;
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
		SPI_freeplan(entry->plan);
	hash_destroy(plans);
	plans = NULL;
}

/* Run one handler as its subscriber, with the pinned settings. */
static void
run_one(const EvbusSubscription *sub, Jsonb *payload, Jsonb *headers)
{
	Datum		values[2];
	Oid			save_userid;
	int			save_sec_context;
	int			nest;
	SPIPlanPtr	plan = handler_plan(sub);
	int			rc;

	values[0] = JsonbPGetDatum(payload);
	values[1] = JsonbPGetDatum(headers);

	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(sub->run_as,
						   save_sec_context | SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
	nest = NewGUCNestLevel();
	(void) set_config_option("search_path", "pg_catalog, pg_temp",
							 PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE,
							 true, 0, false);
	enable_timeout_after(STATEMENT_TIMEOUT, evbus_handler_timeout_ms);

	rc = SPI_execute_plan(plan, values, NULL, false, 0);

	disable_timeout(STATEMENT_TIMEOUT, false);
	AtEOXact_GUC(true, nest);
	SetUserIdAndSecContext(save_userid, save_sec_context);
	if (rc < 0)
		elog(ERROR, "handler %s failed: %s", sub->call_sql, SPI_result_code_string(rc));
}

/*
 * evbus_run_handlers --- run every handler of subs for one message.
 *
 * Returns true on success.  On failure, returns false with the SQLSTATE and
 * message of the error (palloc'd in the caller's context); the handlers'
 * effects of this attempt are rolled back, the outer transaction is intact.
 * Must be called inside a transaction with SPI connected.
 */
bool
evbus_run_handlers(List *subs, Jsonb *payload, Jsonb *headers,
				   char **error_code, char **error_message)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	Oid			save_userid;
	int			save_sec_context;
	bool		ok = true;

	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		ListCell   *lc;

		foreach(lc, subs)
			run_one(lfirst(lc), payload, headers);
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		disable_timeout(STATEMENT_TIMEOUT, false);
		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
		SetUserIdAndSecContext(save_userid, save_sec_context);

		*error_code = pstrdup(unpack_sql_state(edata->sqlerrcode));
		*error_message = pstrdup(edata->message ? edata->message : "unknown error");
		FreeErrorData(edata);
		ok = false;
	}
	PG_END_TRY();
	return ok;
}

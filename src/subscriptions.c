/*-------------------------------------------------------------------------
 *
 * subscriptions.c
 *	  evbus.subscribe / evbus.unsubscribe, the rules that guard them, and
 *	  the consumer's view of the subscriptions (which groups consume which
 *	  topics with which handlers).
 *
 * A handler is a procedure or function taking (payload jsonb, headers
 * jsonb) or (payload jsonb), or a batch handler taking (payloads jsonb[],
 * headers jsonb[]), recognised by these types.  A subscription belongs to the role that
 * subscribed it (run_as): the handler runs as that role, and only a member
 * of it may change or remove the subscription.  The subscriber is never a
 * superuser, and the handler is owned by the subscriber or by a role it
 * is a member of: otherwise whoever may redefine the function would run
 * code as the subscriber.  Nor may a role that cannot connect to the
 * database subscribe (tests 210_subscription_ownership.pl and
 * 212_handler_run_as.pl; handler.c checks all three again at each run).
 *
 * A subscription also says what a dead letter does to the later events of
 * its key for its handler (on_dead_letter: skip, or park, inbox_park.c);
 * the four-argument evbus.subscribe leaves it as it is, and the consumer
 * reads it only where the schema has it (0.1 has not).
 *
 * The handler is stored as its qualified signature, resolved when it
 * runs; a subscribed handler cannot be dropped (an sql_drop event
 * trigger), nor can a role that subscriptions run as (DROP ROLE, from the
 * ProcessUtility hook, in the database that has them): test
 * 216_dropped_handler.pl.
 *
 * Any change to evbus.subscriptions fires a statement trigger that
 * invalidates the table's relcache entry, which the consumer worker
 * notices at its next transaction and reloads its subscriptions: no
 * restart needed.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/namespace.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "commands/event_trigger.h"
#include "commands/extension.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/hsearch.h"
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

/* A role's name for a message; a dropped role by its OID. */
char *
evbus_role_name(Oid roleid)
{
	char	   *name = GetUserNameFromId(roleid, true);

	return name ? name : psprintf("with OID %u", roleid);
}

/*
 * Signatures resolved since the last change to pg_proc or pg_namespace.
 * Resolving parses the signature's type names, which costs more than the
 * rest of a trivial handler's run; any change to a function or a schema
 * (a DROP, a rename, a CREATE of a function of that signature) empties the
 * cache, so that what a signature names is always as of now (test
 * 216_dropped_handler.pl).  A signature too long for the key is resolved
 * every time rather than compared on a prefix.
 */
#define SIGNATURE_KEY_SIZE 512

typedef struct ResolvedHandler
{
	char		signature[SIGNATURE_KEY_SIZE];	/* hash key */
	Oid			fn;				/* InvalidOid: names no function now */
} ResolvedHandler;

static HTAB *resolved = NULL;

static void
resolved_invalidate(Datum arg, int cacheid, uint32 hashvalue)
{
	if (resolved != NULL)
	{
		hash_destroy(resolved);
		resolved = NULL;
	}
}

static Oid
resolve_now(const char *signature)
{
	LOCAL_FCINFO(fcinfo, 1);
	Datum		result;

	InitFunctionCallInfoData(*fcinfo, NULL, 1, InvalidOid, NULL, NULL);
	fcinfo->args[0].value = CStringGetTextDatum(signature);
	fcinfo->args[0].isnull = false;
	result = to_regprocedure(fcinfo);
	return fcinfo->isnull ? InvalidOid : DatumGetObjectId(result);
}

/*
 * evbus_resolve_handler --- the function a stored signature names now, or
 * InvalidOid (dropped, renamed, moved).  The signature is qualified, so
 * search_path does not choose the function.
 */
Oid
evbus_resolve_handler(const char *signature)
{
	static bool callbacks_registered = false;
	ResolvedHandler *entry;
	bool		found;
	Oid			fn;

	if (strlen(signature) >= SIGNATURE_KEY_SIZE)
		return resolve_now(signature);
	if (!callbacks_registered)
	{
		CacheRegisterSyscacheCallback(PROCOID, resolved_invalidate, (Datum) 0);
		CacheRegisterSyscacheCallback(NAMESPACEOID, resolved_invalidate, (Datum) 0);
		callbacks_registered = true;
	}
	if (resolved == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = SIGNATURE_KEY_SIZE;
		ctl.entrysize = sizeof(ResolvedHandler);
		resolved = hash_create("evbus resolved handlers", 16, &ctl,
							   HASH_ELEM | HASH_STRINGS);
	}
	entry = hash_search(resolved, signature, HASH_FIND, NULL);
	if (entry != NULL)
		return entry->fn;

	/* resolving may process invalidations, which may empty the cache */
	fn = resolve_now(signature);
	if (resolved != NULL)
	{
		entry = hash_search(resolved, signature, HASH_ENTER, &found);
		entry->fn = fn;
	}
	return fn;
}

/*
 * evbus_check_handler_owner --- refuse a handler that run_as would run
 * but does not control: its owner must be run_as or a role run_as is a
 * member of, else that owner could redefine it to act as run_as.  Called
 * at subscribe time and before each run (a changed owner).
 */
void
evbus_check_handler_owner(Oid fn, Oid proowner, Oid run_as)
{
	if (!is_member_of_role(run_as, proowner))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("handler %s is owned by role %s, not by role %s or a role it is a member of",
						format_procedure(fn), evbus_role_name(proowner),
						evbus_role_name(run_as)),
				 errdetail("Whoever may redefine a handler may run code as the role it runs as."),
				 errhint("Make role %s (or a role it is a member of) the owner: ALTER FUNCTION %s OWNER TO %s.",
						 evbus_role_name(run_as), format_procedure(fn),
						 quote_identifier(evbus_role_name(run_as)))));
}

/*
 * evbus_check_run_as_connect --- refuse to run a handler as a role that
 * may not connect to this database: a handler runs as a connection of its
 * role would (handler.c), and PostgreSQL refuses such a connection
 * without CONNECT (a privilege PUBLIC has unless revoked), so revoking it
 * cuts the role off from its handlers too.  LOGIN is not asked for: a
 * NOLOGIN role may own and subscribe handlers.  Called at subscribe time
 * and before each run (test 212_handler_run_as.pl).
 */
void
evbus_check_run_as_connect(Oid run_as)
{
	if (pg_database_aclcheck(MyDatabaseId, run_as, ACL_CONNECT) != ACLCHECK_OK)
	{
		char	   *database = get_database_name(MyDatabaseId);

		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("role %s may not connect to database \"%s\", so its handlers do not run",
						evbus_role_name(run_as), database),
				 errdetail("A handler runs as a connection of the role that subscribed it would, and that role has no CONNECT privilege on the database."),
				 errhint("GRANT CONNECT ON DATABASE %s TO %s, or unsubscribe its handlers.",
						 quote_identifier(database),
						 quote_identifier(evbus_role_name(run_as)))));
	}
}

/*
 * evbus_batch_handler_args --- do these argument types make a batch
 * handler, (payloads jsonb[], headers jsonb[])?  A batch handler receives
 * the messages of one (group, topic, handler) of a received batch at once
 * (inbox_retry.c).
 */
bool
evbus_batch_handler_args(int nargs, const Oid *argtypes)
{
	return nargs == 2 && argtypes[0] == JSONBARRAYOID && argtypes[1] == JSONBARRAYOID;
}

/*
 * check_handler --- a procedure or function (jsonb [, jsonb]), or a batch
 * handler (jsonb[], jsonb[]), the caller may
 * execute and controls (see evbus_check_handler_owner).  Returns whether it
 * is a procedure and whether it takes headers.
 */
static void
check_handler(Oid fn, bool *is_procedure, bool *takes_headers)
{
	HeapTuple	tup;
	Form_pg_proc proc;
	AclResult	aclresult;
	Oid			proowner;
	bool		ok;

	tup = SearchSysCache1(PROCOID, ObjectIdGetDatum(fn));
	if (!HeapTupleIsValid(tup))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("function with OID %u does not exist", fn)));
	proc = (Form_pg_proc) GETSTRUCT(tup);
	ok = (proc->prokind == PROKIND_PROCEDURE || proc->prokind == PROKIND_FUNCTION) &&
		!proc->proretset &&
		((proc->pronargs == 1 && proc->proargtypes.values[0] == JSONBOID) ||
		 (proc->pronargs == 2 && proc->proargtypes.values[0] == JSONBOID &&
		  proc->proargtypes.values[1] == JSONBOID) ||
		 evbus_batch_handler_args(proc->pronargs, proc->proargtypes.values));
	*is_procedure = proc->prokind == PROKIND_PROCEDURE;
	*takes_headers = proc->pronargs == 2;
	proowner = proc->proowner;
	ReleaseSysCache(tup);
	if (!ok)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_FUNCTION_DEFINITION),
				 errmsg("handler %s has the wrong signature", format_procedure(fn)),
				 errdetail("A handler is a procedure or a function taking (payload jsonb, headers jsonb) or (payload jsonb), or a batch handler taking (payloads jsonb[], headers jsonb[])."),
				 errhint("Declare it as CREATE PROCEDURE h(payload jsonb, headers jsonb).")));

	aclresult = pg_proc_aclcheck(fn, GetUserId(), ACL_EXECUTE);
	if (aclresult != ACLCHECK_OK)
		aclcheck_error(aclresult, OBJECT_FUNCTION, format_procedure(fn));
	evbus_check_handler_owner(fn, proowner, GetUserId());
}

/* One query for select_as_owner, and the first column of its first row. */
typedef struct OwnerSelect
{
	const char *sql;
	int			nargs;
	Oid		   *argtypes;
	Datum	   *values;
	MemoryContext cxt;			/* where the result goes */
	char	   *result;
} OwnerSelect;

static void
run_owner_select(void *arg)
{
	OwnerSelect *q = (OwnerSelect *) arg;

	if (SPI_execute_with_args(q->sql, q->nargs, q->argtypes, q->values, NULL,
							  true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not execute: %s", q->sql);
	if (SPI_processed > 0)
	{
		char	   *value = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);

		if (value)
			q->result = MemoryContextStrdup(q->cxt, value);
	}
}

/*
 * select_as_owner --- run a query as the extension owner (who alone may
 * read evbus's tables) and return the first column of its first row as
 * text, or NULL when it returns no row.
 */
static char *
select_as_owner(const char *sql, int nargs, Oid *argtypes, Datum *values)
{
	OwnerSelect q = {sql, nargs, argtypes, values, CurrentMemoryContext, NULL};

	evbus_spi_as_owner(run_owner_select, &q);
	return q.result;
}

/*
 * refuse_not_member --- the subscription (event, group, signature) exists
 * and belongs to a role the caller is not a member of: say whose it is.
 */
static void
refuse_not_member(const char *what, const char *event, const char *group,
				  const char *signature)
{
	Oid			argtypes[3] = {TEXTOID, TEXTOID, TEXTOID};
	Datum		values[3];
	char	   *owner;

	values[0] = CStringGetTextDatum(event);
	values[1] = CStringGetTextDatum(group);
	values[2] = CStringGetTextDatum(signature);
	owner = select_as_owner("SELECT run_as::pg_catalog.text FROM evbus.subscriptions"
							" WHERE integration_event OPERATOR(pg_catalog.=) $1"
							" AND group_name OPERATOR(pg_catalog.=) $2"
							" AND handler OPERATOR(pg_catalog.=) $3",
							3, argtypes, values);
	if (owner == NULL)
		return;					/* gone meanwhile */
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("permission denied to %s the subscription of %s to %s in group %s",
					what, signature, event, group),
			 errdetail("The subscription belongs to role %s, the role its handler runs as.", owner),
			 errhint("Only role %s or a member of it may change or remove it.", owner)));
}

/* Insert a subscription, or change it if the caller is a member of its owner. */
#define UPSERT_SUBSCRIPTION \
	"INSERT INTO evbus.subscriptions AS s (integration_event, group_name," \
	" handler, is_procedure, takes_headers, run_as, max_retries)" \
	" VALUES ($1, $2, $3, $4, $5, $6::pg_catalog.regrole, $7)" \
	" ON CONFLICT (integration_event, group_name, handler) DO UPDATE" \
	" SET is_procedure = excluded.is_procedure," \
	" takes_headers = excluded.takes_headers, run_as = excluded.run_as," \
	" max_retries = excluded.max_retries, subscribed_at = pg_catalog.now()" \
	" WHERE pg_catalog.pg_has_role($6, s.run_as::pg_catalog.oid, 'MEMBER')"

/*
 * The same, setting on_dead_letter ($8) too; UPSERT_SUBSCRIPTION leaves an
 * existing subscription's as it is (and a 0.1 schema has no such column).
 */
#define UPSERT_SUBSCRIPTION_ON_DEAD_LETTER \
	"INSERT INTO evbus.subscriptions AS s (integration_event, group_name," \
	" handler, is_procedure, takes_headers, run_as, max_retries, on_dead_letter)" \
	" VALUES ($1, $2, $3, $4, $5, $6::pg_catalog.regrole, $7, $8)" \
	" ON CONFLICT (integration_event, group_name, handler) DO UPDATE" \
	" SET is_procedure = excluded.is_procedure," \
	" takes_headers = excluded.takes_headers, run_as = excluded.run_as," \
	" max_retries = excluded.max_retries, on_dead_letter = excluded.on_dead_letter," \
	" subscribed_at = pg_catalog.now()" \
	" WHERE pg_catalog.pg_has_role($6, s.run_as::pg_catalog.oid, 'MEMBER')"

/*
 * subscribe --- evbus.subscribe in either form: the calling role (current_user)
 * becomes the subscription's owner and the role the handler runs as.
 * Subscribing again changes an existing subscription only for a member of
 * its owner (test 210_subscription_ownership.pl).  group_args and
 * retries_arg are the argument numbers of group_name and max_retries;
 * on_dead_letter is 'skip' or 'park', or NULL to keep an existing
 * subscription's (a new one skips).
 */
static void
subscribe(FunctionCallInfo fcinfo, int group_arg, int retries_arg,
		  const char *on_dead_letter)
{
	char	   *event;
	Oid			handler;
	char	   *signature;
	char	   *group;
	bool		is_procedure;
	bool		takes_headers;
	int			attempt;
	Oid			argtypes[8] = {TEXTOID, TEXTOID, TEXTOID, BOOLOID, BOOLOID, OIDOID, INT4OID, TEXTOID};
	Datum		values[8];
	char		nulls[8] = {' ', ' ', ' ', ' ', ' ', ' ', ' ', ' '};

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("integration event and handler must not be null")));
	evbus_check_writable("subscribe a handler");
	event = text_to_cstring(PG_GETARG_TEXT_PP(0));
	handler = PG_GETARG_OID(1);
	group = PG_ARGISNULL(group_arg) ? evbus_default_group() :
		text_to_cstring(PG_GETARG_TEXT_PP(group_arg));
	evbus_check_event_name(event, "integration event");
	evbus_check_event_name(group, "consumer group");
	/* another database's group would hand it a share of that one's messages */
	if (!evbus_group_allowed(group))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("consumer group \"%s\" is not allowed in database \"%s\"",
						group, get_database_name(MyDatabaseId)),
				 errdetail("evbus.consumer_groups lists the groups its subscriptions may use: %s.",
						   evbus_clip(evbus_consumer_groups, 200)),
				 errhint("A superuser allows a group with ALTER DATABASE ... SET evbus.consumer_groups.")));
	/* another database's events are its own to read (event_lists.c) */
	if (!evbus_may_subscribe(event))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("database \"%s\" may not subscribe to integration event \"%s\"",
						get_database_name(MyDatabaseId), event),
				 errdetail("evbus.subscribe_events lists the events it may subscribe to: %s.",
						   evbus_clip(evbus_subscribe_events, 200)),
				 errhint("A superuser allows an event with ALTER DATABASE ... SET evbus.subscribe_events.")));
	if (!PG_ARGISNULL(retries_arg) && PG_GETARG_INT32(retries_arg) < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_retries must not be negative")));
	/* a superuser's handler would hand its rights to whoever redefines it */
	if (superuser())
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("a superuser cannot subscribe a handler"),
				 errdetail("A handler runs as the role that subscribes it, and never as a superuser."),
				 errhint("SET ROLE to the role the handler should run as, then subscribe it.")));
	evbus_check_run_as_connect(GetUserId());
	check_handler(handler, &is_procedure, &takes_headers);
	signature = format_procedure_qualified(handler);

	values[0] = CStringGetTextDatum(event);
	values[1] = CStringGetTextDatum(group);
	values[2] = CStringGetTextDatum(signature);
	values[3] = BoolGetDatum(is_procedure);
	values[4] = BoolGetDatum(takes_headers);
	values[5] = ObjectIdGetDatum(GetUserId());
	if (PG_ARGISNULL(retries_arg))
		nulls[6] = 'n';
	else
		values[6] = Int32GetDatum(PG_GETARG_INT32(retries_arg));
	if (on_dead_letter)
		values[7] = CStringGetTextDatum(on_dead_letter);

	/*
	 * The upsert changes an existing subscription only for a member of its
	 * owner.  When it did nothing, say whose the subscription is; if it was
	 * removed meanwhile, try once more (it inserts now).
	 */
	for (attempt = 0;; attempt++)
	{
		if (evbus_execute_as_owner(on_dead_letter ? UPSERT_SUBSCRIPTION_ON_DEAD_LETTER :
								   UPSERT_SUBSCRIPTION,
								   on_dead_letter ? 8 : 7, argtypes, values, nulls) > 0)
			break;
		refuse_not_member("change", event, group, signature);
		if (attempt > 0)
			elog(ERROR, "could not subscribe %s: the subscription changed concurrently", signature);
	}
	/* idle databases (idle.c): an idle consumer starts to subscribe */
	evbus_wake_at_commit(false, true);
}

/*
 * evbus.subscribe(integration_event, handler, group_name, max_retries):
 * a new subscription skips a dead letter; an existing one keeps its
 * on_dead_letter.
 */
PG_FUNCTION_INFO_V1(evbus_subscribe);
Datum
evbus_subscribe(PG_FUNCTION_ARGS)
{
	subscribe(fcinfo, 2, 3, NULL);
	PG_RETURN_VOID();
}

/*
 * evbus.subscribe(integration_event, handler, on_dead_letter, group_name,
 * max_retries): the same, setting on_dead_letter (test 274_park_key.pl).
 */
PG_FUNCTION_INFO_V1(evbus_subscribe_on_dead_letter);
Datum
evbus_subscribe_on_dead_letter(PG_FUNCTION_ARGS)
{
	if (PG_ARGISNULL(2))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("on_dead_letter must not be null"),
				 errhint("Pass 'skip' (the later events of a dead letter's key go on) or 'park' (they wait for it).")));
	subscribe(fcinfo, 3, 4,
			  DatumGetCString(DirectFunctionCall1(enum_out, PG_GETARG_DATUM(2))));
	PG_RETURN_VOID();
}

/*
 * evbus.unsubscribe(integration_event, handler, group_name) -> boolean
 *
 * Only a member of the subscription's owner may remove it (test
 * 210_subscription_ownership.pl).
 */
PG_FUNCTION_INFO_V1(evbus_unsubscribe);
Datum
evbus_unsubscribe(PG_FUNCTION_ARGS)
{
	Oid			argtypes[4] = {TEXTOID, TEXTOID, TEXTOID, OIDOID};
	Datum		values[4];
	char	   *event;
	char	   *signature;
	char	   *group;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("integration event and handler must not be null")));
	evbus_check_writable("unsubscribe a handler");
	event = text_to_cstring(PG_GETARG_TEXT_PP(0));
	signature = format_procedure_qualified(PG_GETARG_OID(1));
	group = PG_ARGISNULL(2) ? evbus_default_group() : text_to_cstring(PG_GETARG_TEXT_PP(2));
	values[0] = CStringGetTextDatum(event);
	values[1] = CStringGetTextDatum(signature);
	values[2] = CStringGetTextDatum(group);
	values[3] = ObjectIdGetDatum(GetUserId());
	if (evbus_execute_as_owner("DELETE FROM evbus.subscriptions"
							   " WHERE integration_event OPERATOR(pg_catalog.=) $1"
							   " AND handler OPERATOR(pg_catalog.=) $2"
							   " AND group_name OPERATOR(pg_catalog.=) $3"
							   " AND pg_catalog.pg_has_role($4, run_as::pg_catalog.oid, 'MEMBER')",
							   4, argtypes, values, NULL) > 0)
	{
		/* idle databases (idle.c): an idle consumer starts to unsubscribe */
		evbus_wake_at_commit(false, true);
		PG_RETURN_BOOL(true);
	}
	refuse_not_member("remove", event, group, signature);
	PG_RETURN_BOOL(false);
}

/*
 * evbus._refuse_handler_drop() --- sql_drop event trigger: a subscribed
 * handler cannot be dropped (its messages would have nothing to run), by
 * any command that drops functions.  Does nothing while evbus itself is
 * being dropped.
 */
PG_FUNCTION_INFO_V1(evbus_refuse_handler_drop);
Datum
evbus_refuse_handler_drop(PG_FUNCTION_ARGS)
{
	Oid			nsp;
	char	   *found;

	if (!CALLED_AS_EVENT_TRIGGER(fcinfo))
		elog(ERROR, "evbus_refuse_handler_drop: not called by the event trigger manager");
	nsp = get_namespace_oid(EVBUS_SCHEMA, true);
	if (!OidIsValid(nsp) || !OidIsValid(get_relname_relid("subscriptions", nsp)))
		PG_RETURN_VOID();
	found = select_as_owner("SELECT pg_catalog.format('%s (subscribed to %s in group %s by role %s)',"
							" s.handler, s.integration_event, s.group_name, s.run_as)"
							" FROM pg_catalog.pg_event_trigger_dropped_objects() d"
							" JOIN evbus.subscriptions s"
							" ON s.handler OPERATOR(pg_catalog.=) d.object_identity"
							" WHERE d.object_type OPERATOR(pg_catalog.=) ANY ('{function,procedure}')"
							" ORDER BY 1 LIMIT 1",
							0, NULL, NULL);
	if (found)
		ereport(ERROR,
				(errcode(ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST),
				 errmsg("cannot drop handler %s", found),
				 errdetail("Its messages would have no handler to run them."),
				 errhint("Unsubscribe it first with evbus.unsubscribe().")));
	PG_RETURN_VOID();
}

/*
 * evbus_refuse_subscriber_drop --- called from the ProcessUtility hook
 * before DROP ROLE: a role that subscriptions of this database run as
 * cannot be dropped here.  (Dropped from another database, its
 * subscriptions' messages fail and retry: handler.c.)
 */
void
evbus_refuse_subscriber_drop(DropRoleStmt *stmt)
{
	Oid			nsp;
	ListCell   *lc;

	if (!OidIsValid(get_extension_oid("evbus", true)))
		return;
	nsp = get_namespace_oid(EVBUS_SCHEMA, true);
	if (!OidIsValid(nsp) || !OidIsValid(get_relname_relid("subscriptions", nsp)))
		return;
	foreach(lc, stmt->roles)
	{
		RoleSpec   *spec = lfirst(lc);
		Oid			roleid;
		Oid			argtypes[1] = {OIDOID};
		Datum		values[1];
		char	   *found;

		if (spec->roletype != ROLESPEC_CSTRING)
			continue;			/* DROP ROLE refuses these itself */
		roleid = get_role_oid(spec->rolename, true);
		if (!OidIsValid(roleid))
			continue;
		values[0] = ObjectIdGetDatum(roleid);
		found = select_as_owner("SELECT pg_catalog.format('%s of %s in group %s', handler,"
								" integration_event, group_name)"
								" FROM evbus.subscriptions"
								" WHERE run_as::pg_catalog.oid OPERATOR(pg_catalog.=) $1"
								" ORDER BY 1 LIMIT 1",
								1, argtypes, values);
		if (found)
			ereport(ERROR,
					(errcode(ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST),
					 errmsg("role \"%s\" cannot be dropped because evbus subscriptions run as it",
							spec->rolename),
					 errdetail("It owns the subscription of handler %s.", found),
					 errhint("Unsubscribe its handlers first, as role %s, with evbus.unsubscribe().",
							 quote_identifier(spec->rolename))));
	}
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
 * handler_is_batch --- is the handler a signature names now a batch
 * handler?  A handler that does not exist now is not (handler.c fails its
 * runs until it is back, and checks the form again at each run).
 */
static bool
handler_is_batch(const char *signature)
{
	Oid			fn = evbus_resolve_handler(signature);
	HeapTuple	tup;
	bool		batch;

	if (!OidIsValid(fn))
		return false;
	tup = SearchSysCache1(PROCOID, ObjectIdGetDatum(fn));
	if (!HeapTupleIsValid(tup))
		return false;
	batch = evbus_batch_handler_args(((Form_pg_proc) GETSTRUCT(tup))->pronargs,
									 ((Form_pg_proc) GETSTRUCT(tup))->proargtypes.values);
	ReleaseSysCache(tup);
	return batch;
}

/*
 * evbus_load_subscriptions --- every subscription, ordered by group, topic
 * and handler, as a List of EvbusSubscription allocated in cxt.  Runs
 * inside a transaction with SPI connected.  A subscription whose handler
 * or role is missing is loaded all the same: its messages are received,
 * fail and retry (handler.c), and run once the handler is back.  One
 * whose event evbus.subscribe_events does not list (subscribed before it
 * was set) is refused: its topic is not read, and its rows wait as a
 * paused subscription's do (event_lists.c).
 */
List *
evbus_load_subscriptions(MemoryContext cxt)
{
	List	   *result = NIL;
	uint64		i;

	subscriptions_stale = false;
	subscriptions_relid = get_relname_relid("subscriptions", evbus_schema_oid());

	/* a 0.1 schema has neither on_dead_letter nor paused_at (both 0.2) */
	if (SPI_execute(get_attnum(subscriptions_relid, "on_dead_letter") != InvalidAttrNumber ?
					"SELECT group_name, integration_event, handler, is_procedure,"
					" takes_headers, run_as::pg_catalog.oid, COALESCE(max_retries, -1),"
					" on_dead_letter OPERATOR(pg_catalog.=) 'park', paused_at IS NOT NULL"
					" FROM evbus.subscriptions"
					" ORDER BY group_name, integration_event, handler" :
					"SELECT group_name, integration_event, handler, is_procedure,"
					" takes_headers, run_as::pg_catalog.oid, COALESCE(max_retries, -1),"
					" false, false"
					" FROM evbus.subscriptions"
					" ORDER BY group_name, integration_event, handler",
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
		sub->signature = TextDatumGetCString(SPI_getbinval(tup, desc, 3, &isnull));
		sub->is_procedure = DatumGetBool(SPI_getbinval(tup, desc, 4, &isnull));
		sub->takes_headers = DatumGetBool(SPI_getbinval(tup, desc, 5, &isnull));
		sub->run_as = DatumGetObjectId(SPI_getbinval(tup, desc, 6, &isnull));
		sub->max_retries = DatumGetInt32(SPI_getbinval(tup, desc, 7, &isnull));
		sub->park = DatumGetBool(SPI_getbinval(tup, desc, 8, &isnull));
		sub->paused = DatumGetBool(SPI_getbinval(tup, desc, 9, &isnull));
		/* made before evbus.subscribe_events was set: waits like a paused one */
		sub->refused = !evbus_may_subscribe(sub->integration_event);
		sub->paused |= sub->refused;
		sub->topic = psprintf("%s%s", evbus_topic_prefix, sub->integration_event);
		sub->batch = handler_is_batch(sub->signature);
		result = lappend(result, sub);
		MemoryContextSwitchTo(old);
	}
	return result;
}

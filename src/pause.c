/*-------------------------------------------------------------------------
 *
 * pause.c
 *	  evbus.pause_subscription / evbus.resume_subscription and
 *	  evbus.pause_publishing / evbus.resume_publishing: the SQL side of
 *	  pausing.  The workers' side is in consumer_pause.c, inbox.c (a paused
 *	  handler's rows wait as pending) and publish_pause.c.
 *
 * A subscription belongs to the role it runs as (evbus.subscriptions.run_as):
 * only a member of that role may pause or resume it (42501, the hint names
 * the role), as for evbus.unsubscribe.  Publishing has no owner: whoever
 * was granted EXECUTE on the functions may pause any integration event.
 * None of them is granted to PUBLIC.  Both kinds of pause live in tables
 * whose changes invalidate their relcache entry at commit
 * (evbus._config_changed): the workers notice within their next pass
 * (test 280_pause_subscription.pl, 282_pause_publishing.pl).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/regproc.h"

#include "consumer.h"

/* The subscriptions a pause or resume names, as seen by the owner. */
typedef struct SubscriptionCheck
{
	Datum	   *values;
	int64		count;			/* how many match */
	char	   *foreign_owner;	/* the owner of one the caller may not change */
	MemoryContext cxt;
} SubscriptionCheck;

static void
run_subscription_check(void *arg)
{
	SubscriptionCheck *c = (SubscriptionCheck *) arg;
	Oid			argtypes[4] = {TEXTOID, TEXTOID, TEXTOID, OIDOID};
	char		nulls[4] = {' ', ' ', c->values[2] ? ' ' : 'n', ' '};
	bool		isnull;
	char	   *owner;

	if (SPI_execute_with_args("SELECT pg_catalog.count(*), (pg_catalog.array_agg("
							  "run_as::pg_catalog.text ORDER BY handler) FILTER (WHERE NOT"
							  " pg_catalog.pg_has_role($4, run_as::pg_catalog.oid, 'MEMBER')))[1]"
							  " FROM evbus.subscriptions"
							  " WHERE integration_event OPERATOR(pg_catalog.=) $1"
							  " AND group_name OPERATOR(pg_catalog.=) $2"
							  " AND ($3 IS NULL OR handler OPERATOR(pg_catalog.=) $3)",
							  4, argtypes, c->values, nulls, true, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "could not read evbus.subscriptions");
	c->count = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
										   SPI_tuptable->tupdesc, 1, &isnull));
	owner = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
	if (owner)
		c->foreign_owner = MemoryContextStrdup(c->cxt, owner);
}

/*
 * evbus_check_subscriptions_owner --- may the caller verb (pause, resume,
 * replay) the subscriptions of event in group (of one handler, or all of
 * them when signature is NULL)?  None: 42704.  One that belongs to a role
 * the caller is not a member of: 42501, its hint naming that role.
 */
void
evbus_check_subscriptions_owner(const char *event, const char *group,
								const char *signature, const char *verb)
{
	Datum		values[4];
	SubscriptionCheck check;

	values[0] = CStringGetTextDatum(event);
	values[1] = CStringGetTextDatum(group);
	values[2] = signature ? CStringGetTextDatum(signature) : (Datum) 0;
	values[3] = ObjectIdGetDatum(GetUserId());
	check.values = values;
	check.count = 0;
	check.foreign_owner = NULL;
	check.cxt = CurrentMemoryContext;
	evbus_spi_as_owner(run_subscription_check, &check);
	if (check.count == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("no subscription of %s to \"%s\" in group \"%s\"",
						signature ? signature : "any handler", evbus_clip(event, 64),
						evbus_clip(group, 64)),
				 errhint("evbus.subscriptions lists the subscriptions; the group defaults to evbus.group_name, else the database name.")));
	if (check.foreign_owner)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to %s a subscription to \"%s\" in group \"%s\"",
						verb, evbus_clip(event, 64), evbus_clip(group, 64)),
				 errdetail("The subscription belongs to role %s, the role its handler runs as.",
						   check.foreign_owner),
				 errhint("Only role %s or a member of it may %s it.",
						 check.foreign_owner, verb)));
}

/*
 * set_subscriptions_paused --- pause (or resume) the subscriptions of
 * (event, handler or all when NULL, group); returns how many changed.
 * Unknown: 42704.  One the caller is not a member of the owner of: 42501,
 * and nothing changes.
 */
static Datum
set_subscriptions_paused(FunctionCallInfo fcinfo, bool pause)
{
	const char *verb = pause ? "pause" : "resume";
	char	   *event;
	char	   *group;
	char	   *signature = NULL;
	Datum		values[4];
	char		nulls[4] = {' ', ' ', ' ', ' '};
	Oid			argtypes[4] = {TEXTOID, TEXTOID, TEXTOID, OIDOID};
	uint64		changed;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("integration event must not be null"),
				 errhint("Name the integration event whose subscriptions to %s.", verb)));
	evbus_check_writable(pause ? "pause a subscription" : "resume a subscription");
	event = text_to_cstring(PG_GETARG_TEXT_PP(0));
	if (!PG_ARGISNULL(1))
		signature = format_procedure_qualified(PG_GETARG_OID(1));
	group = PG_ARGISNULL(2) ? evbus_default_group() : text_to_cstring(PG_GETARG_TEXT_PP(2));
	evbus_check_subscriptions_owner(event, group, signature, verb);

	values[0] = CStringGetTextDatum(event);
	values[1] = CStringGetTextDatum(group);
	values[2] = signature ? CStringGetTextDatum(signature) : (Datum) 0;
	values[3] = ObjectIdGetDatum(GetUserId());
	if (signature == NULL)
		nulls[2] = 'n';
	changed = evbus_execute_as_owner(pause ?
									 "UPDATE evbus.subscriptions SET paused_at = pg_catalog.now()"
									 " WHERE integration_event OPERATOR(pg_catalog.=) $1"
									 " AND group_name OPERATOR(pg_catalog.=) $2"
									 " AND ($3 IS NULL OR handler OPERATOR(pg_catalog.=) $3)"
									 " AND pg_catalog.pg_has_role($4, run_as::pg_catalog.oid, 'MEMBER')"
									 " AND paused_at IS NULL" :
									 "UPDATE evbus.subscriptions SET paused_at = NULL"
									 " WHERE integration_event OPERATOR(pg_catalog.=) $1"
									 " AND group_name OPERATOR(pg_catalog.=) $2"
									 " AND ($3 IS NULL OR handler OPERATOR(pg_catalog.=) $3)"
									 " AND pg_catalog.pg_has_role($4, run_as::pg_catalog.oid, 'MEMBER')"
									 " AND paused_at IS NOT NULL",
									 4, argtypes, values, nulls);
	/* the consumer reloads its subscriptions (and runs what waited) at once */
	evbus_wake_at_commit(false, changed > 0);
	PG_RETURN_INT32((int32) changed);
}

/*
 * evbus.pause_subscription(integration_event, handler, group_name) -> integer
 */
PG_FUNCTION_INFO_V1(evbus_pause_subscription);
Datum
evbus_pause_subscription(PG_FUNCTION_ARGS)
{
	return set_subscriptions_paused(fcinfo, true);
}

/*
 * evbus.resume_subscription(integration_event, handler, group_name) -> integer
 */
PG_FUNCTION_INFO_V1(evbus_resume_subscription);
Datum
evbus_resume_subscription(PG_FUNCTION_ARGS)
{
	return set_subscriptions_paused(fcinfo, false);
}

/*
 * set_publishing_paused --- pause or resume the publishing of an
 * integration event; true if that changed anything.  Pausing an event this
 * database has never heard of (no converter produces it, nothing of it was
 * staged or published) is a mistake: 42704.
 */
static bool
set_publishing_paused(FunctionCallInfo fcinfo, bool pause)
{
	char	   *event;
	Oid			argtypes[2] = {TEXTOID, NAMEOID};
	Datum		values[2];
	uint64		changed;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("integration event must not be null"),
				 errhint("Name the integration event whose publishing to %s.",
						 pause ? "pause" : "resume")));
	evbus_check_writable(pause ? "pause publishing" : "resume publishing");
	event = text_to_cstring(PG_GETARG_TEXT_PP(0));
	evbus_check_event_name(event, "integration event");
	values[0] = CStringGetTextDatum(event);
	values[1] = DirectFunctionCall1(namein, CStringGetDatum(GetUserNameFromId(GetUserId(), false)));
	if (!pause)
	{
		changed = evbus_execute_as_owner("DELETE FROM evbus.publishing_pauses"
										 " WHERE integration_event OPERATOR(pg_catalog.=) $1",
										 1, argtypes, values, NULL);
		/* the publisher sweeps the outbox for what waited */
		evbus_wake_at_commit(changed > 0, false);
		return changed > 0;
	}
	changed = evbus_execute_as_owner("INSERT INTO evbus.publishing_pauses (integration_event, paused_by)"
									 " SELECT $1, $2 WHERE EXISTS (SELECT FROM evbus.converters"
									 " WHERE integration_event OPERATOR(pg_catalog.=) $1)"
									 " OR EXISTS (SELECT FROM evbus.publish_counters"
									 " WHERE integration_event OPERATOR(pg_catalog.=) $1)"
									 " OR EXISTS (SELECT FROM evbus.outbox"
									 " WHERE integration_event OPERATOR(pg_catalog.=) $1)"
									 " OR EXISTS (SELECT FROM evbus.publishing_pauses"
									 " WHERE integration_event OPERATOR(pg_catalog.=) $1)"
									 " ON CONFLICT (integration_event) DO NOTHING",
									 2, argtypes, values, NULL);
	if (changed == 0 &&
		evbus_execute_as_owner("SELECT FROM evbus.publishing_pauses"
							   " WHERE integration_event OPERATOR(pg_catalog.=) $1",
							   1, argtypes, values, NULL) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("integration event \"%s\" is not known to this database", event),
				 errdetail("No converter produces it, and none of it was staged or published here."),
				 errhint("Check the name: evbus.stats lists the integration events published here.")));
	return changed > 0;
}

/* evbus.pause_publishing(integration_event) -> boolean */
PG_FUNCTION_INFO_V1(evbus_pause_publishing);
Datum
evbus_pause_publishing(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(set_publishing_paused(fcinfo, true));
}

/* evbus.resume_publishing(integration_event) -> boolean */
PG_FUNCTION_INFO_V1(evbus_resume_publishing);
Datum
evbus_resume_publishing(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(set_publishing_paused(fcinfo, false));
}

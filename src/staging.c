/*-------------------------------------------------------------------------
 *
 * staging.c
 *	  evbus.raise and evbus.publish: stage integration events in the
 *	  outbox, in the caller's transaction.
 *
 * This is the hot path of every producing transaction.  An event is one
 * row written straight into the outbox table that is current now
 * (evbus.outbox_rotation), without SPI or the executor (outbox_write.c),
 * so applications need no grant on evbus's tables; each converter runs as
 * the role that registered it (converter_call.c).  After COMMIT, once the
 * transaction's locks are released, a resource-release callback registered
 * once per backend wakes the worker (the first commit since its last claim
 * sets its latch): publishing starts within milliseconds.  Nothing is
 * staged that was not committed together with its cause: an error
 * anywhere aborts the caller's transaction.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "commands/dbcommands.h"
#include "catalog/pg_type.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/resowner.h"
#include "utils/timestamp.h"

#include "consumer.h"

/* Did this transaction stage an event?  Then wake the worker at commit. */
static bool staged_in_xact = false;

/* Did it requeue a consumed message?  Then wake the consumer at commit. */
static bool requeued_in_xact = false;


/*
 * Waking happens after the committing transaction has released its locks
 * (a resource-release callback, AFTER_LOCKS phase), not in the commit
 * callback, which runs while they are still held: the application's row
 * locks are not held a moment longer because of evbus.
 */
static bool wake_publisher = false;
static bool wake_consumer = false;

static void
staging_release_callback(ResourceReleasePhase phase, bool isCommit,
						 bool isTopLevel, void *arg)
{
	if (phase != RESOURCE_RELEASE_AFTER_LOCKS || !isTopLevel)
		return;
	/* publishing paused (no brokers): nothing to wake the worker for */
	if (isCommit && wake_publisher && evbus_brokers && evbus_brokers[0] != '\0')
		evbus_wake_worker(MyDatabaseId);
	if (isCommit && wake_consumer)
		evbus_wake_worker_role(MyDatabaseId, EVBUS_CONSUMER);
	wake_publisher = false;
	wake_consumer = false;
}

static void
staging_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			wake_publisher = staged_in_xact;
			wake_consumer = requeued_in_xact;
			evbus_metrics_at_commit();
			staged_in_xact = false;
			requeued_in_xact = false;
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			/* COMMIT PREPARED is caught by the worker's periodic poll */
			evbus_metrics_at_abort();
			staged_in_xact = false;
			requeued_in_xact = false;
			break;
		default:
			break;
	}
}

/* Register the commit callback once per process (from _PG_init). */
void		evbus_staging_init(void);
void
evbus_staging_init(void)
{
	RegisterXactCallback(staging_xact_callback, NULL);
	RegisterResourceReleaseCallback(staging_release_callback, NULL);
}

/*
 * evbus_wake_at_commit --- this transaction put work back for the
 * publisher (an event in the outbox) or the consumer (a message due
 * again): wake that worker when it commits.
 */
void
evbus_wake_at_commit(bool publisher, bool consumer)
{
	staged_in_xact |= publisher;
	requeued_in_xact |= consumer;
}

/* The outbox table staging writes to now: alternates every rotation. */
int
evbus_current_outbox_slot(void)
{
	TimestampTz now = GetCurrentTransactionStartTimestamp();

	return (int) ((now / USECS_PER_SEC / evbus_outbox_rotation_s) % 2);
}

/*
 * check_headers --- user headers are an object of strings, and may not
 * impersonate the headers evbus writes itself.  Returns the bytes they
 * take on the wire: their names and values.
 */
static int64
check_headers(Jsonb *headers)
{
	JsonbIterator *it;
	JsonbIteratorToken tok;
	JsonbValue	v;
	int			depth = 0;
	int64		bytes = 0;

	if (!JB_ROOT_IS_OBJECT(headers) || JB_ROOT_IS_SCALAR(headers))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("headers must be a JSON object of strings")));

	it = JsonbIteratorInit(&headers->root);
	while ((tok = JsonbIteratorNext(&it, &v, false)) != WJB_DONE)
	{
		if (tok == WJB_BEGIN_OBJECT || tok == WJB_BEGIN_ARRAY)
		{
			if (++depth > 1)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("headers must be a JSON object of strings"),
						 errdetail("A header value is an object or an array.")));
		}
		else if (tok == WJB_END_OBJECT || tok == WJB_END_ARRAY)
			depth--;
		else if (tok == WJB_KEY)
		{
			char	   *name = pnstrdup(v.val.string.val, v.val.string.len);

			if (pg_strncasecmp(name, "cap-", 4) == 0 ||
				pg_strncasecmp(name, "evbus-", 6) == 0 ||
				pg_strcasecmp(name, "traceparent") == 0)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("header \"%s\" is reserved", name),
						 errdetail("evbus writes the cap-*, evbus-* and traceparent headers itself."),
						 errhint("Use another header name; set evbus.traceparent to send a trace context.")));
			if (v.val.string.len == 0)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("header names must not be empty")));
			bytes += v.val.string.len;
		}
		else if (tok == WJB_VALUE && v.type != jbvString)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("headers must be a JSON object of strings"),
					 errdetail("A header value is not a string.")));
		else if (tok == WJB_VALUE)
			bytes += v.val.string.len;
	}
	return bytes;
}

/*
 * check_size --- refuse an event over evbus.max_message_bytes: its payload
 * as compact JSON, its key and its headers' names and values together
 * (the headers evbus adds itself, a few hundred bytes, are left to the
 * margin between this setting and the broker's message.max.bytes).
 * Refused here, at staging, so an oversized event fails its own
 * transaction instead of failing later at publish (sql/misuse.sql).
 */
static void
check_size(const EvbusStagedEvent *event, int64 header_bytes)
{
	int64		key_bytes = event->key ? strlen(event->key) : 0;
	int64		room = (int64) evbus_max_message_bytes - key_bytes - header_bytes;
	StringInfoData payload;

	/* the common case: the payload fits in what key and headers leave */
	if (room >= 0 && !evbus_jsonb_exceeds(event->payload, (int) room))
		return;

	if (evbus_jsonb_exceeds(event->payload, evbus_max_message_bytes))
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("payload of integration event \"%s\" is too large",
						event->integration_event),
				 errdetail("Its compact JSON text is longer than evbus.max_message_bytes (%d bytes).",
						   evbus_max_message_bytes),
				 errhint("Send a smaller payload, or raise evbus.max_message_bytes together with the broker's message.max.bytes.")));

	/* the payload alone fits: its text is small enough to measure */
	initStringInfo(&payload);
	evbus_jsonb_to_compact(&payload, &event->payload->root);
	ereport(ERROR,
			(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
			 errmsg("integration event \"%s\" is too large",
					event->integration_event),
			 errdetail("Its payload as compact JSON (%d bytes), key (" INT64_FORMAT " bytes) and headers (" INT64_FORMAT " bytes) come to more than evbus.max_message_bytes (%d bytes).",
					   payload.len, key_bytes, header_bytes, evbus_max_message_bytes),
			 errhint("Send a smaller payload, key or headers, or raise evbus.max_message_bytes together with the broker's message.max.bytes.")));
}

/*
 * evbus_stage --- insert one integration event into the outbox.
 *
 * The event must be one this database may publish (evbus.publish_events,
 * test 253_event_lists.pl), the payload a JSON object, and the event no
 * larger than evbus.max_message_bytes (check_size).  Staged by a
 * handler, the event also gets the headers evbus-causation-id,
 * evbus-correlation-id and tracestate of the message it handles
 * (handler_trace.c), after the user's headers were checked: users cannot
 * write them, evbus does (test 224_trace_causation.pl).
 */
void
evbus_stage(const EvbusStagedEvent *event, pg_uuid_t *message_id)
{
	Datum		values[EVBUS_OUTBOX_NATTS - 1];
	bool		nulls[EVBUS_OUTBOX_NATTS - 1];
	bool		traced = evbus_traceparent && evbus_traceparent[0] != '\0';
	Jsonb	   *headers;

	/* another database's events are not this one's to forge (event_lists.c) */
	if (!evbus_may_publish(event->integration_event))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("database \"%s\" may not publish integration event \"%s\"",
						get_database_name(MyDatabaseId), event->integration_event),
				 errdetail("evbus.publish_events lists the events it may publish: %s.",
						   evbus_clip(evbus_publish_events, 200)),
				 errhint("A superuser allows an event with ALTER DATABASE ... SET evbus.publish_events.")));
	if (!JB_ROOT_IS_OBJECT(event->payload) || JB_ROOT_IS_SCALAR(event->payload))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("payload of integration event \"%s\" is not a JSON object",
						event->integration_event)));
	check_size(event, event->headers ? check_headers(event->headers) : 0);
	headers = evbus_handler_headers(event->headers, traced);

	evbus_new_message_id(message_id);

	memset(nulls, false, sizeof(nulls));
	values[EVBUS_STAGED(EVBUS_OUTBOX_MESSAGE_ID)] = UUIDPGetDatum(message_id);
	values[EVBUS_STAGED(EVBUS_OUTBOX_INTEGRATION_EVENT)] = CStringGetTextDatum(event->integration_event);
	if (event->key)
		values[EVBUS_STAGED(EVBUS_OUTBOX_EVENT_KEY)] = CStringGetTextDatum(event->key);
	else
		nulls[EVBUS_STAGED(EVBUS_OUTBOX_EVENT_KEY)] = true;
	values[EVBUS_STAGED(EVBUS_OUTBOX_PAYLOAD)] = JsonbPGetDatum(event->payload);
	if (headers)
		values[EVBUS_STAGED(EVBUS_OUTBOX_HEADERS)] = JsonbPGetDatum(headers);
	else
		nulls[EVBUS_STAGED(EVBUS_OUTBOX_HEADERS)] = true;
	if (event->domain_event)
		values[EVBUS_STAGED(EVBUS_OUTBOX_DOMAIN_EVENT)] = CStringGetTextDatum(event->domain_event);
	else
		nulls[EVBUS_STAGED(EVBUS_OUTBOX_DOMAIN_EVENT)] = true;
	if (traced)
		values[EVBUS_STAGED(EVBUS_OUTBOX_TRACEPARENT)] = CStringGetTextDatum(evbus_traceparent);
	else
		nulls[EVBUS_STAGED(EVBUS_OUTBOX_TRACEPARENT)] = true;
	values[EVBUS_STAGED(EVBUS_OUTBOX_STAGED_AT)] = TimestampTzGetDatum(GetCurrentTimestamp());
	if (event->deliver_at != 0)
		values[EVBUS_STAGED(EVBUS_OUTBOX_DELIVER_AT)] = TimestampTzGetDatum(event->deliver_at);
	else
		nulls[EVBUS_STAGED(EVBUS_OUTBOX_DELIVER_AT)] = true;

	(void) evbus_outbox_write(evbus_current_outbox_slot(), values, nulls);

	staged_in_xact = true;
	evbus_metrics_staged(1);
}

/*
 * evbus_raise_internal --- run every converter of domain_event and stage
 * what they return.  Returns the number of events staged.
 */
int
evbus_raise_internal(const char *domain_event, Jsonb *payload, const char *key)
{
	List	   *converters;
	ListCell   *lc;
	int			staged = 0;

	evbus_check_writable("raise a domain event");
	converters = evbus_lookup_converters(domain_event);
	if (converters == NIL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("no converter is registered for domain event \"%s\"",
						evbus_clip(domain_event, 64)),
				 errhint("Register one with evbus.register_converter().")));

	/*
	 * The list belongs to the cache, which an invalidation during a converter
	 * call may reset: work on a copy.
	 */
	converters = evbus_copy_converters(converters);
	foreach(lc, converters)
	{
		EvbusConverter *conv = lfirst(lc);
		EvbusStagedEvent ev = {0};
		pg_uuid_t	message_id;
		Jsonb	   *out = evbus_call_converter(conv, domain_event, payload);

		if (out == NULL)
			continue;
		ev.integration_event = conv->integration_event;
		ev.key = key;
		ev.payload = out;
		ev.domain_event = domain_event;
		evbus_stage(&ev, &message_id);
		staged++;
	}
	return staged;
}

/*
 * evbus.raise(domain_event text, payload jsonb, key text) -> integer
 */
PG_FUNCTION_INFO_V1(evbus_raise);
Datum
evbus_raise(PG_FUNCTION_ARGS)
{
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("domain event name must not be null")));
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("domain event payload must not be null")));

	PG_RETURN_INT32(evbus_raise_internal(text_to_cstring(PG_GETARG_TEXT_PP(0)),
										 PG_GETARG_JSONB_P(1),
										 PG_ARGISNULL(2) ? NULL :
										 text_to_cstring(PG_GETARG_TEXT_PP(2))));
}

/*
 * evbus.publish(integration_event, payload, key, headers, deliver_at) -> uuid
 */
PG_FUNCTION_INFO_V1(evbus_publish);
Datum
evbus_publish(PG_FUNCTION_ARGS)
{
	EvbusStagedEvent ev = {0};
	pg_uuid_t  *message_id = palloc(sizeof(pg_uuid_t));
	char	   *name;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("integration event name must not be null")));
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("integration event payload must not be null")));

	evbus_check_writable("publish an integration event");
	name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	evbus_check_event_name(name, "integration event");

	ev.integration_event = name;
	ev.payload = PG_GETARG_JSONB_P(1);
	ev.key = PG_ARGISNULL(2) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(2));
	ev.headers = PG_ARGISNULL(3) ? NULL : PG_GETARG_JSONB_P(3);
	ev.deliver_at = PG_ARGISNULL(4) ? 0 : PG_GETARG_TIMESTAMPTZ(4);
	evbus_stage(&ev, message_id);
	PG_RETURN_UUID_P(message_id);
}

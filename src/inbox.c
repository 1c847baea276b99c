/*-------------------------------------------------------------------------
 *
 * inbox.c
 *	  The consumer's transactions: receive messages into the inbox, run
 *	  their handlers, retry, dead-letter, advance the stored offsets.
 *
 * A received batch is handled in one transaction: decode each message
 * (undecodable ones are dead-lettered at once with their raw bytes),
 * insert a row per message and handler into evbus.inbox unless its
 * (group, message id, handler) is there already (a redelivery), run each
 * (message, handler) that may run now -- no earlier event of its key is
 * pending for that handler -- each in its own subtransaction, record
 * failures for that handler alone (the error, and a retry scheduled with
 * exponential backoff and jitter, or after the last retry a dead letter
 * and NOTIFY evbus_dead_letter), and advance the stored offsets past the
 * batch.  Handler effects, the inbox state and the offsets commit
 * together; the rows of handlers that succeed are inserted as handled
 * straight away (a failure turns its row back to pending), so a handled
 * message costs one insert per handler.  One subscriber's failing handler
 * never rolls back, holds back or dead-letters another handler's work
 * (test 210_subscription_ownership.pl).
 *
 * A handler that crashes its backend takes that transaction with it, and
 * with it the record of the attempt.  So a batch is first noted outside
 * the database (attempt_marker.c), and after a crash the batches that
 * contain a message of the noted one go the careful way, in two
 * transactions:
 *
 *	1. record: insert the inbox rows as pending and count the attempt of
 *	   each message that may run now, and commit -- before any handler
 *	   runs, so the crash counts and a poison message cannot crash-loop
 *	   the server;
 *	2. handle: run the handlers as above, mark the successes handled, and
 *	   advance the stored offsets.
 *
 * Retries go the careful way too (evbus_inbox_dispatch_due).  A row
 * waits while an earlier row of its key, group and handler is pending, so
 * per-key order holds through retries, per handler; other keys, and other
 * handlers of the same key, flow.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <ctype.h>

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "common/jsonapi.h"
#include "common/pg_prng.h"
#include "executor/spi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/ipc.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/jsonfuncs.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/snapmgr.h"
#include "utils/timeout.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

#include "consumer.h"

/* A (message, handler) that may run in this transaction: an inbox row. */
typedef struct Dispatch
{
	int64		inbox_id;
	char	   *group_name;
	char	   *topic;
	char	   *message_id;		/* text, for NOTIFY and dead letters */
	Jsonb	   *payload;
	Jsonb	   *headers;
	int			attempts;		/* including this one */
	char	   *event_key;		/* NULL: no order to keep */
	char	   *handler;		/* the handler's signature */
	EvbusSubscription *sub;		/* NULL: no longer subscribed */
} Dispatch;

/* A key held back for one handler: (handler, event key). */
typedef struct HeldKey
{
	const char *handler;
	const char *key;
} HeldKey;

static List *
hold_key(List *held, const char *handler, const char *key)
{
	HeldKey    *h = palloc(sizeof(HeldKey));

	h->handler = handler;
	h->key = key;
	return lappend(held, h);
}

static bool
key_held(List *held, const char *handler, const char *key)
{
	ListCell   *lc;

	foreach(lc, held)
	{
		HeldKey    *h = lfirst(lc);

		if (strcmp(h->key, key) == 0 && strcmp(h->handler, handler) == 0)
			return true;
	}
	return false;
}

/* ------------------------------------------------------------------
 * Decoding: never let an undecodable message reach a handler
 * ------------------------------------------------------------------
 */

typedef struct Decoded
{
	const char *poison;			/* NULL if decodable, else the error code */
	char	   *detail;
	Jsonb	   *payload;
	Jsonb	   *headers;
	char	   *message_id;		/* valid cap-msg-id, or NULL */
	char	   *event_key;
} Decoded;

static bool
valid_utf8(const char *s, size_t len)
{
	return pg_verify_mbstr(PG_UTF8, s, (int) len, true);
}

/*
 * The longest cap-msg-id accepted.  DotNetCore.CAP sends a Snowflake
 * integer (19 digits), evbus a UUID (36 characters); any other producer's
 * id up to this length is a de-duplication key as good (test 256).
 */
#define MAX_MESSAGE_ID_BYTES 200

/*
 * looks_positional --- does an id end in "/<digits>/<digits>" after some
 * text, the form "topic/partition/offset" of the de-duplication key of a
 * message without any id?  Such an id could pass for that message.
 */
static bool
looks_positional(const char *id, size_t len)
{
	const char *p = id + len;
	int			part;

	for (part = 0; part < 2; part++)
	{
		const char *end = p;

		while (p > id && isdigit((unsigned char) p[-1]))
			p--;
		if (p == end || p == id || p[-1] != '/')
			return false;
		p--;
	}
	return p > id;
}

/*
 * message_id_problem --- why a cap-msg-id (valid UTF-8 without NUL,
 * checked with the other headers) cannot be a message's de-duplication
 * key, or NULL if it can: it must be present, non-empty, at most
 * MAX_MESSAGE_ID_BYTES, and not of the form of another message's key.
 */
static char *
message_id_problem(const char *id, size_t len)
{
	if (id == NULL || len == 0)
		return pstrdup("cap-msg-id is empty");
	if (len > MAX_MESSAGE_ID_BYTES)
		return psprintf("cap-msg-id of %zu bytes is longer than %d bytes", len,
						MAX_MESSAGE_ID_BYTES);
	if (looks_positional(id, len))
		return pstrdup("cap-msg-id has the form topic/partition/offset, kept for messages without an id");
	return NULL;
}

/* Push a string (valid UTF-8, no NUL) as an object key or value. */
static void
push_string(JsonbParseState **state, JsonbIteratorToken token, const char *s, size_t len)
{
	JsonbValue	v;

	v.type = jbvString;
	v.val.string.val = (char *) s;
	v.val.string.len = (int) len;
	(void) pushJsonbValue(state, token, &v);
}

static void
push_number(JsonbParseState **state, int64 number)
{
	JsonbValue	v;

	v.type = jbvNumeric;
	v.val.numeric = int64_to_numeric(number);
	(void) pushJsonbValue(state, WJB_VALUE, &v);
}

/*
 * decode_unchecked --- decode one message into d, or say in d->poison why
 * it cannot be.  With careful, the value's JSON is checked without
 * throwing first, to tell invalid JSON (with its detail) from a \u0000;
 * without, invalid JSON throws, and decode_batch decodes again carefully.
 */
static void
decode_unchecked(const ReceivedMessage *m, const char *group, Decoded *d, bool careful)
{
	JsonbParseState *hstate = NULL;
	JsonbValue	null_value;
	int			i;

	/* headers: valid UTF-8 strings; a cap-msg-id must be a usable key */
	null_value.type = jbvNull;
	(void) pushJsonbValue(&hstate, WJB_BEGIN_OBJECT, NULL);
	for (i = 0; i < m->nheaders; i++)
	{
		const char *name = m->header_names[i];

		if (!valid_utf8(name, strlen(name)) ||
			(m->header_values[i] && (!valid_utf8(m->header_values[i], m->header_lens[i]) ||
									 memchr(m->header_values[i], '\0', m->header_lens[i]))))
		{
			d->poison = "invalid_utf8";
			d->detail = pstrdup("a header is not valid UTF-8");
			return;
		}
		if (strncmp(name, "evbus-topic", 11) == 0 || strcmp(name, "evbus-partition") == 0 ||
			strcmp(name, "evbus-offset") == 0 || strcmp(name, "evbus-group") == 0)
			continue;			/* evbus sets these itself */
		if (strcmp(name, "cap-msg-id") == 0)
		{
			char	   *problem = message_id_problem(m->header_values[i], m->header_lens[i]);

			if (problem != NULL)
			{
				d->poison = "invalid_message_id";
				d->detail = problem;
				return;
			}
			d->message_id = pnstrdup(m->header_values[i], m->header_lens[i]);
		}
		push_string(&hstate, WJB_KEY, name, strlen(name));
		if (m->header_values[i])
			push_string(&hstate, WJB_VALUE, m->header_values[i], m->header_lens[i]);
		else
			(void) pushJsonbValue(&hstate, WJB_VALUE, &null_value);
	}
	push_string(&hstate, WJB_KEY, "evbus-topic", strlen("evbus-topic"));
	push_string(&hstate, WJB_VALUE, m->topic, strlen(m->topic));
	push_string(&hstate, WJB_KEY, "evbus-partition", strlen("evbus-partition"));
	push_number(&hstate, m->partition);
	push_string(&hstate, WJB_KEY, "evbus-offset", strlen("evbus-offset"));
	push_number(&hstate, m->offset);
	push_string(&hstate, WJB_KEY, "evbus-group", strlen("evbus-group"));
	push_string(&hstate, WJB_VALUE, group, strlen(group));

	/* the value: present, bounded, no NUL, UTF-8 */
	if (m->value == NULL)
	{
		d->poison = "no_value";
		return;
	}
	if ((int64) m->valuelen > (int64) evbus_max_message_bytes)
	{
		d->poison = "too_large";
		d->detail = psprintf("%zu bytes, over evbus.max_message_bytes (%d)", m->valuelen,
							 evbus_max_message_bytes);
		return;
	}
	if (memchr(m->value, '\0', m->valuelen) != NULL)
	{
		d->poison = "nul_byte";
		return;
	}
	if (!valid_utf8(m->value, m->valuelen))
	{
		d->poison = "invalid_utf8";
		return;
	}

	/* the value: JSON, then an object */
	if (careful)
	{
		JsonLexContext *lex = makeJsonLexContextCstringLen(m->value, (int) m->valuelen,
														   PG_UTF8, true);
		JsonParseErrorType rc = pg_parse_json(lex, &nullSemAction);

		if (rc == JSON_UNICODE_CODE_POINT_ZERO)
		{
			d->poison = "nul_byte";
			return;
		}
		if (rc != JSON_SUCCESS)
		{
			d->poison = "invalid_json";
			d->detail = pstrdup(json_errdetail(rc, lex));
			return;
		}
	}
	d->payload = DatumGetJsonbP(DirectFunctionCall1(jsonb_in,
													CStringGetDatum(pnstrdup(m->value, m->valuelen))));
	if (!JB_ROOT_IS_OBJECT(d->payload) || JB_ROOT_IS_SCALAR(d->payload))
	{
		d->poison = "not_an_object";
		return;
	}
	d->headers = JsonbValueToJsonb(pushJsonbValue(&hstate, WJB_END_OBJECT, NULL));
	if (m->key != NULL)
	{
		if (valid_utf8(m->key, m->keylen) && memchr(m->key, '\0', m->keylen) == NULL)
			d->event_key = pnstrdup(m->key, m->keylen);
		else
		{
			/* ordering only needs equality: a binary key is kept as hex */
			StringInfoData k;
			size_t		j;

			initStringInfo(&k);
			appendStringInfoString(&k, "\\x");
			for (j = 0; j < m->keylen; j++)
				appendStringInfo(&k, "%02x", (unsigned char) m->key[j]);
			d->event_key = k.data;
		}
	}
}

/*
 * decode --- decode one message; anything that throws (a pathological
 * value, say nesting too deep) makes it poison instead of stopping the
 * partition.
 */
static void
decode(const ReceivedMessage *m, const char *group, Decoded *d)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;

	memset(d, 0, sizeof(Decoded));
	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		decode_unchecked(m, group, d, true);
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
		d->poison = "invalid_json";
		d->detail = pstrdup(edata->message);
		FreeErrorData(edata);
	}
	PG_END_TRY();
}

/* ------------------------------------------------------------------
 * Dead letters and retries
 * ------------------------------------------------------------------
 */

/* A poison message: inbox row (for de-duplication) and dead letter. */
static void
dead_letter_poison(const char *group, const ReceivedMessage *m, const Decoded *d,
				   const char *integration_event)
{
	char	   *dedup = d->message_id ? d->message_id :
		psprintf("%s/%d/" INT64_FORMAT, m->topic, m->partition, m->offset);
	char	   *message_id = d->message_id;
	bytea	   *raw = NULL;
	Oid			types[9] = {TEXTOID, TEXTOID, TEXTOID, TEXTOID, INT4OID, INT8OID, TEXTOID, TEXTOID, BYTEAOID};
	Datum		values[9];
	char		nulls[9] = {' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' '};

	if (message_id == NULL)
	{
		pg_uuid_t	uuid;

		evbus_new_message_id(&uuid);
		message_id = evbus_uuid_to_cstring(&uuid);
	}
	if (m->value)
	{
		raw = palloc(VARHDRSZ + m->valuelen);
		SET_VARSIZE(raw, VARHDRSZ + m->valuelen);
		memcpy(VARDATA(raw), m->value, m->valuelen);
	}
	values[0] = CStringGetTextDatum(group);
	values[1] = CStringGetTextDatum(dedup);
	values[2] = CStringGetTextDatum(message_id);
	values[3] = CStringGetTextDatum(m->topic);
	values[4] = Int32GetDatum(m->partition);
	values[5] = Int64GetDatum(m->offset);
	values[6] = CStringGetTextDatum(d->poison);
	values[7] = CStringGetTextDatum(d->detail ? d->detail : d->poison);
	if (raw)
		values[8] = PointerGetDatum(raw);
	else
		nulls[8] = 'n';
	/* integration event: the subscription's, else the topic */
	evbus_spi_exec(psprintf("WITH i AS (INSERT INTO evbus.inbox (group_name, dedup_key, message_id,"
				  " integration_event, topic, kafka_partition, kafka_offset, payload, headers,"
				  " state, last_error_code, last_error_message)"
				  " VALUES ($1, $2, $3, %s, $4, $5, $6, NULL, '{}', 'dead', $7, $8)"
				  " ON CONFLICT (group_name, dedup_key, handler) DO NOTHING RETURNING message_id),"
				  " d AS (INSERT INTO evbus.dead_letters (message_id, direction, integration_event,"
				  " topic, group_name, kafka_partition, kafka_offset, raw_value, attempts,"
				  " error_code, error_message)"
				  " SELECT message_id, 'consume', %s, $4, $1, $5, $6, $9, 0, $7, $8 FROM i"
				  " RETURNING message_id)"
				  " SELECT pg_catalog.pg_notify('evbus_dead_letter', message_id::pg_catalog.text) FROM d",
				  quote_literal_cstr(integration_event), quote_literal_cstr(integration_event)),
		 9, types, values, nulls, SPI_OK_SELECT);
	ereport(WARNING,
			(errmsg("evbus: message at %s/%d/" INT64_FORMAT " cannot be decoded (%s); dead-lettered",
					m->topic, m->partition, m->offset, d->poison)));
}

/* Exponential backoff with +-20 % jitter, capped. */
static int64
backoff_ms(int attempts)
{
	double		ms = evbus_retry_interval_ms;
	int			i;

	for (i = 1; i < attempts && ms < evbus_retry_max_interval_ms; i++)
		ms *= 2;
	if (ms > evbus_retry_max_interval_ms)
		ms = evbus_retry_max_interval_ms;
	ms *= 0.8 + 0.4 * pg_prng_double(&pg_global_prng_state);
	return (int64) ms;
}

/* A handler's own retry budget. */
static int
max_retries_of(const EvbusSubscription *sub)
{
	return sub->max_retries >= 0 ? sub->max_retries : evbus_max_retries;
}

typedef enum Outcome
{
	HANDLED,					/* handlers succeeded; caller marks it handled */
	PENDING,					/* failed, retry scheduled */
	DEAD						/* failed for the last time, dead-lettered */
} Outcome;

/*
 * Run one dispatched (message, handler) in its own subtransaction and
 * record a failure (inside a txn): the retry, or the dead letter, is this
 * handler's alone.  Success is left to the caller to record (in one
 * statement for the batch).
 */
static Outcome
handle(Dispatch *d)
{
	char	   *code = NULL;
	char	   *message = NULL;
	Oid			types[4] = {INT8OID, TEXTOID, TEXTOID, INT8OID};
	Datum		values[4];

	values[0] = Int64GetDatum(d->inbox_id);
	if (d->sub == NULL)
	{
		code = "no_handler";
		message = psprintf("handler %s is not subscribed to this event in this group any more",
						   d->handler);
	}
	else if (d->attempts > max_retries_of(d->sub) + 1)
	{
		/* every attempt so far ended with the consumer gone: a crash? */
		code = "interrupted";
		message = psprintf("each of the %d attempts ended with the consumer stopping while it ran the handlers (a crash?)",
						   d->attempts - 1);
		evbus_spi_exec("UPDATE evbus.inbox SET attempts = attempts OPERATOR(pg_catalog.-) 1"
			 " WHERE id OPERATOR(pg_catalog.=) $1",
			 1, types, values, NULL, SPI_OK_UPDATE);
		d->attempts--;
	}
	else if (evbus_run_handler(d->sub, d->payload, d->headers, &code, &message))
		return HANDLED;

	values[1] = CStringGetTextDatum(code);
	values[2] = CStringGetTextDatum(message);
	if (d->sub != NULL && d->attempts <= max_retries_of(d->sub))
	{
		values[3] = Int64GetDatum(backoff_ms(d->attempts));
		evbus_spi_exec("UPDATE evbus.inbox SET state = 'pending', handled_at = NULL,"
			 " last_error_code = $2, last_error_message = $3,"
			 " errors = COALESCE(errors, '[]') OPERATOR(pg_catalog.||)"
			 " pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object('attempt', attempts,"
			 " 'at', pg_catalog.now(), 'sqlstate', $2, 'message', $3)),"
			 " next_attempt_at = pg_catalog.clock_timestamp() OPERATOR(pg_catalog.+)"
			 " pg_catalog.make_interval(secs => $4::pg_catalog.float8 OPERATOR(pg_catalog./) 1000)"
			 " WHERE id OPERATOR(pg_catalog.=) $1",
			 4, types, values, NULL, SPI_OK_UPDATE);
		return PENDING;
	}

	/* out of retries: dead letter, NOTIFY, and the key moves on */
	evbus_spi_exec("WITH i AS (UPDATE evbus.inbox SET state = 'dead', handled_at = NULL,"
		 " last_error_code = $2, last_error_message = $3, next_attempt_at = NULL,"
		 " errors = COALESCE(errors, '[]') OPERATOR(pg_catalog.||)"
		 " pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object('attempt', attempts,"
		 " 'at', pg_catalog.now(), 'sqlstate', $2, 'message', $3))"
		 " WHERE id OPERATOR(pg_catalog.=) $1 RETURNING *),"
		 " d AS (INSERT INTO evbus.dead_letters (message_id, direction, integration_event,"
		 " topic, event_key, payload, headers, group_name, handler, kafka_partition, kafka_offset,"
		 " attempts, errors, error_code, error_message)"
		 " SELECT COALESCE(message_id, pg_catalog.gen_random_uuid()::pg_catalog.text), 'consume', integration_event,"
		 " topic, event_key, payload, headers, group_name, handler, kafka_partition, kafka_offset,"
		 " attempts, errors, $2, $3 FROM i RETURNING message_id)"
		 " SELECT pg_catalog.pg_notify('evbus_dead_letter', message_id::pg_catalog.text) FROM d",
		 3, types, values, NULL, SPI_OK_SELECT);
	ereport(WARNING,
			(errmsg("evbus: handler %s of message %s in group \"%s\" failed %d times; dead-lettered",
					d->handler, d->message_id ? d->message_id : "(no id)", d->group_name,
					d->attempts),
			 errdetail("Last error: %s: %s", code, message)));
	return DEAD;
}

/* Subscriptions of (group, topic) among subs, in handler order. */
static List *
subs_for(List *subs, const char *group, const char *topic)
{
	List	   *result = NIL;
	ListCell   *lc;

	foreach(lc, subs)
	{
		EvbusSubscription *sub = lfirst(lc);

		if (strcmp(sub->group_name, group) == 0 && strcmp(sub->topic, topic) == 0)
			result = lappend(result, sub);
	}
	return result;
}

/* The subscription of (group, topic, handler) among subs, or NULL. */
static EvbusSubscription *
sub_named(List *subs, const char *group, const char *topic, const char *handler)
{
	ListCell   *lc;

	foreach(lc, subs)
	{
		EvbusSubscription *sub = lfirst(lc);

		if (strcmp(sub->group_name, group) == 0 && strcmp(sub->topic, topic) == 0 &&
			strcmp(sub->signature, handler) == 0)
			return sub;
	}
	return NULL;
}

/* Store the offsets of a batch (never moving one backwards); every batch. */
static void
store_offsets(const char *group, NextOffset *offsets, int n)
{
	static SPIPlanPtr plan = NULL;
	Datum	   *topics = palloc(sizeof(Datum) * n);
	Datum	   *parts = palloc(sizeof(Datum) * n);
	Datum	   *nexts = palloc(sizeof(Datum) * n);
	Oid			types[4] = {TEXTOID, TEXTARRAYOID, INT4ARRAYOID, INT8ARRAYOID};
	Datum		values[4];
	int			i;

	if (n == 0)
		return;
	for (i = 0; i < n; i++)
	{
		topics[i] = CStringGetTextDatum(offsets[i].topic);
		parts[i] = Int32GetDatum(offsets[i].partition);
		nexts[i] = Int64GetDatum(offsets[i].next_offset);
	}
	values[0] = CStringGetTextDatum(group);
	values[1] = PointerGetDatum(construct_array(topics, n, TEXTOID, -1, false, TYPALIGN_INT));
	values[2] = PointerGetDatum(construct_array(parts, n, INT4OID, 4, true, TYPALIGN_INT));
	values[3] = PointerGetDatum(construct_array(nexts, n, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	if (SPI_execute_plan(evbus_kept_plan(&plan,
										 "INSERT INTO evbus.consumer_offsets AS o"
										 " (group_name, topic, kafka_partition, next_offset)"
										 " SELECT $1, t, p, x FROM ROWS FROM (pg_catalog.unnest($2),"
										 " pg_catalog.unnest($3), pg_catalog.unnest($4)) AS u(t, p, x)"
										 " ON CONFLICT (group_name, topic, kafka_partition) DO UPDATE"
										 " SET next_offset = GREATEST(o.next_offset, excluded.next_offset),"
										 " updated_at = pg_catalog.now()",
										 4, types),
						 values, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not store the consumer offsets");
}

/* ------------------------------------------------------------------
 * Handling a batch
 * ------------------------------------------------------------------
 */

/* Mark the given inbox rows handled, in one statement. */
static void
mark_handled(int64 *ids, int n)
{
	static SPIPlanPtr plan = NULL;
	Oid			types[1] = {INT8ARRAYOID};
	Datum		values[1];
	Datum	   *elems;
	int			i;

	if (n == 0)
		return;
	elems = palloc(sizeof(Datum) * n);
	for (i = 0; i < n; i++)
		elems[i] = Int64GetDatum(ids[i]);
	values[0] = PointerGetDatum(construct_array(elems, n, INT8OID, 8, FLOAT8PASSBYVAL,
												TYPALIGN_DOUBLE));
	if (SPI_execute_plan(evbus_kept_plan(&plan,
								   "UPDATE evbus.inbox SET state = 'handled',"
								   " handled_at = pg_catalog.now(), next_attempt_at = NULL"
								   " WHERE id OPERATOR(pg_catalog.=) ANY ($1)",
								   1, types),
						 values, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not update the inbox");
}

/*
 * handle_batch --- run the dispatched messages in order and record the
 * outcomes: the successes in one statement, unless their rows were
 * inserted as handled already (inserted_handled).  Returns false if some
 * message was left pending for a retry.
 */
static bool
handle_batch(List *dispatch, MemoryContext cxt, bool inserted_handled)
{
	bool		none_pending = true;
	int64	   *handled = palloc(sizeof(int64) * Max(list_length(dispatch), 1));
	int			nhandled = 0;
	List	   *blocked = NIL;	/* (handler, key) with a row left pending here */
	ListCell   *lc;

	/*
	 * Each (message, handler) in its own subtransaction: a handler runs
	 * exactly once per recorded attempt, and a failure rolls back only its
	 * own effects for that message.  After a message of key K stays
	 * pending for handler H, the later messages of K in the batch do not
	 * run H: their attempt is taken back and they wait; other handlers of
	 * K, and other keys, go on (test 210_subscription_ownership.pl).
	 */
	foreach(lc, dispatch)
	{
		Dispatch   *d = lfirst(lc);
		Outcome		outcome;

		if (d->event_key && key_held(blocked, d->handler, d->event_key))
		{
			Oid			types[1] = {INT8OID};
			Datum		values[1];

			values[0] = Int64GetDatum(d->inbox_id);
			evbus_spi_exec("UPDATE evbus.inbox SET attempts = attempts OPERATOR(pg_catalog.-) 1,"
				 " state = 'pending', handled_at = NULL, next_attempt_at = pg_catalog.now()"
				 " WHERE id OPERATOR(pg_catalog.=) $1",
				 1, types, values, NULL, SPI_OK_UPDATE);
			MemoryContextSwitchTo(cxt);
			none_pending = false;
			continue;
		}

		outcome = handle(d);
		MemoryContextSwitchTo(cxt);
		if (outcome == HANDLED)
			handled[nhandled++] = d->inbox_id;
		else if (outcome == PENDING)
		{
			none_pending = false;
			if (d->event_key)
				blocked = hold_key(blocked, d->handler, d->event_key);
		}
	}
	if (!inserted_handled)
		mark_handled(handled, nhandled);
	MemoryContextSwitchTo(cxt);
	return none_pending;
}

/* ------------------------------------------------------------------
 * Receiving
 * ------------------------------------------------------------------
 */

/*
 * decode_batch --- decode every message; optimistically in one
 * subtransaction, and one by one if something throws.
 */
static void
decode_batch(ReceivedMessage *msgs, int n, const char *group, Decoded *dec)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	bool		ok = false;
	int			i;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		for (i = 0; i < n; i++)
		{
			memset(&dec[i], 0, sizeof(Decoded));
			decode_unchecked(&msgs[i], group, &dec[i], false);
		}
		ReleaseCurrentSubTransaction();
		ok = true;
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(cxt);
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);
	CurrentResourceOwner = owner;
	if (!ok)
		for (i = 0; i < n; i++)
			decode(&msgs[i], group, &dec[i]);
}

static ArrayType *
text_array(char **strs, int n)
{
	Datum	   *elems = palloc(sizeof(Datum) * Max(n, 1));
	bool	   *nulls = palloc(sizeof(bool) * Max(n, 1));
	int			dims[1] = {n};
	int			lbs[1] = {1};
	int			i;

	for (i = 0; i < n; i++)
	{
		nulls[i] = strs[i] == NULL;
		elems[i] = strs[i] ? CStringGetTextDatum(strs[i]) : (Datum) 0;
	}
	return construct_md_array(elems, nulls, 1, dims, lbs, TEXTOID, -1, false, TYPALIGN_INT);
}

/*
 * record_batch --- decode a received batch, dead-letter its poison, insert
 * the inbox rows of the rest, one per (message, handler) (redeliveries
 * excepted), and count the attempt of each that may run now: whose key
 * has no earlier row pending for that handler.  Those rows are inserted
 * as handled if inserted_handled (their handlers run in this transaction;
 * a failure sets the row back to pending), else as pending.  Returns the
 * rows to run, in Kafka's order (a message's handlers in subscription
 * order), in *dispatch (allocated in cxt); returns true if some row was
 * left waiting for an earlier event of its key.
 */
static bool
record_batch(const char *group, List *subs, ReceivedMessage *msgs, int n,
			 bool inserted_handled, List **dispatch, MemoryContext batch_cxt)
{
	static SPIPlanPtr keys_plan = NULL;
	static SPIPlanPtr insert_plan = NULL;
	bool		left_pending = false;
	List	   *pending_keys = NIL; /* HeldKey */
	Decoded    *dec;
	List	  **msubs;
	int			maxrows = 0;
	bool	   *runnable;
	char	  **dedup;
	char	  **mid;
	char	  **event;
	char	  **topic;
	char	  **key;
	char	  **handler;
	Datum	   *part;
	Datum	   *offs;
	Datum	   *payload;
	Datum	   *headers;
	Datum	   *attempts;
	int		   *index;			/* row of the insert -> message */
	EvbusSubscription **rowsub;
	int			nrows = 0;
	int			i;
	uint64		r;

	dec = palloc0(sizeof(Decoded) * n);
	msubs = palloc0(sizeof(List *) * n);
	decode_batch(msgs, n, group, dec);

	for (i = 0; i < n; i++)
	{
		msubs[i] = subs_for(subs, group, msgs[i].topic);
		if (dec[i].poison)
		{
			dead_letter_poison(group, &msgs[i], &dec[i],
							   msubs[i] ? ((EvbusSubscription *) linitial(msubs[i]))->integration_event :
							   msgs[i].topic);
			MemoryContextSwitchTo(batch_cxt);
		}
		else
			maxrows += list_length(msubs[i]);
	}

	/* which (handler, key) of the batch have an earlier event pending? */
	{
		char	  **keys = palloc(sizeof(char *) * n);
		int			nkeys = 0;
		Oid			types[2] = {TEXTOID, TEXTARRAYOID};
		Datum		values[2];

		for (i = 0; i < n; i++)
			if (!dec[i].poison && msubs[i] && dec[i].event_key)
				keys[nkeys++] = dec[i].event_key;
		if (nkeys > 0)
		{
			values[0] = CStringGetTextDatum(group);
			values[1] = PointerGetDatum(text_array(keys, nkeys));
			if (SPI_execute_plan(evbus_kept_plan(&keys_plan,
												 "SELECT DISTINCT handler, event_key FROM evbus.inbox"
												 " WHERE state = 'pending'"
												 " AND group_name OPERATOR(pg_catalog.=) $1"
												 " AND event_key OPERATOR(pg_catalog.=) ANY ($2)",
												 2, types),
								 values, NULL, true, 0) != SPI_OK_SELECT)
				elog(ERROR, "could not read the inbox");
			MemoryContextSwitchTo(batch_cxt);
			for (r = 0; r < SPI_processed; r++)
				pending_keys = hold_key(pending_keys,
										SPI_getvalue(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, 1),
										SPI_getvalue(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, 2));
		}
	}

	/*
	 * In Kafka's order, one row per handler: it runs now unless an earlier
	 * message of its key waits for that handler.
	 */
	maxrows = Max(maxrows, 1);
	runnable = palloc0(sizeof(bool) * maxrows);
	dedup = palloc(sizeof(char *) * maxrows);
	mid = palloc(sizeof(char *) * maxrows);
	event = palloc(sizeof(char *) * maxrows);
	topic = palloc(sizeof(char *) * maxrows);
	key = palloc(sizeof(char *) * maxrows);
	handler = palloc(sizeof(char *) * maxrows);
	part = palloc(sizeof(Datum) * maxrows);
	offs = palloc(sizeof(Datum) * maxrows);
	payload = palloc(sizeof(Datum) * maxrows);
	headers = palloc(sizeof(Datum) * maxrows);
	attempts = palloc(sizeof(Datum) * maxrows);
	index = palloc(sizeof(int) * maxrows);
	rowsub = palloc(sizeof(EvbusSubscription *) * maxrows);
	for (i = 0; i < n; i++)
	{
		ListCell   *lc;
		char	   *dedup_key;
		bool		suspect;

		if (dec[i].poison || msubs[i] == NIL)
			continue;			/* dead-lettered, or nobody subscribes any more */
		dedup_key = dec[i].message_id ? dec[i].message_id :
			psprintf("%s/%d/" INT64_FORMAT, msgs[i].topic, msgs[i].partition, msgs[i].offset);
		/* a message the consumer was handling when it stopped: that counts */
		suspect = !inserted_handled && evbus_attempt_marker_suspect(group, &msgs[i]);
		foreach(lc, msubs[i])
		{
			EvbusSubscription *sub = lfirst(lc);

			/*
			 * Blocked if an earlier message of its key waits in the inbox
			 * for this handler; a message behind another of the batch runs
			 * after it, in order, in the handling transaction (which holds
			 * it back if that one fails).
			 */
			runnable[nrows] = !(dec[i].event_key &&
								key_held(pending_keys, sub->signature, dec[i].event_key));
			dedup[nrows] = dedup_key;
			mid[nrows] = dec[i].message_id;
			event[nrows] = sub->integration_event;
			topic[nrows] = msgs[i].topic;
			key[nrows] = dec[i].event_key;
			handler[nrows] = sub->signature;
			part[nrows] = Int32GetDatum(msgs[i].partition);
			offs[nrows] = Int64GetDatum(msgs[i].offset);
			payload[nrows] = JsonbPGetDatum(dec[i].payload);
			headers[nrows] = JsonbPGetDatum(dec[i].headers);
			attempts[nrows] = Int32GetDatum((runnable[nrows] ? 1 : 0) + (suspect ? 1 : 0));
			index[nrows] = i;
			rowsub[nrows] = sub;
			nrows++;
		}
	}

	if (nrows > 0)
	{
		Oid			types[13] = {TEXTOID, TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID,
			INT4ARRAYOID, INT8ARRAYOID, TEXTARRAYOID, JSONBARRAYOID, JSONBARRAYOID, INT4ARRAYOID,
		BOOLOID, TEXTARRAYOID};
		Datum		values[13];
		int			row = 0;

		values[0] = CStringGetTextDatum(group);
		values[1] = PointerGetDatum(text_array(dedup, nrows));
		values[2] = PointerGetDatum(text_array(mid, nrows));
		values[3] = PointerGetDatum(text_array(event, nrows));
		values[4] = PointerGetDatum(text_array(topic, nrows));
		values[5] = PointerGetDatum(construct_array(part, nrows, INT4OID, 4, true, TYPALIGN_INT));
		values[6] = PointerGetDatum(construct_array(offs, nrows, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
		values[7] = PointerGetDatum(text_array(key, nrows));
		values[8] = PointerGetDatum(construct_array(payload, nrows, JSONBOID, -1, false, TYPALIGN_INT));
		values[9] = PointerGetDatum(construct_array(headers, nrows, JSONBOID, -1, false, TYPALIGN_INT));
		values[10] = PointerGetDatum(construct_array(attempts, nrows, INT4OID, 4, true, TYPALIGN_INT));
		values[11] = BoolGetDatum(inserted_handled);
		values[12] = PointerGetDatum(text_array(handler, nrows));
		if (SPI_execute_plan(evbus_kept_plan(&insert_plan,
											 "INSERT INTO evbus.inbox (group_name, dedup_key, message_id,"
											 " integration_event, topic, kafka_partition, kafka_offset, event_key,"
											 " payload, headers, state, attempts, next_attempt_at, handled_at, handler)"
											 " SELECT $1, d, m, e, t, p, o, k, pl, h,"
											 " CASE WHEN a OPERATOR(pg_catalog.>) 0 AND $12 THEN 'handled' ELSE 'pending' END, a,"
											 " CASE WHEN a OPERATOR(pg_catalog.>) 0 AND $12 THEN NULL ELSE pg_catalog.now() END,"
											 " CASE WHEN a OPERATOR(pg_catalog.>) 0 AND $12 THEN pg_catalog.now() END, hd"
											 " FROM ROWS FROM (pg_catalog.unnest($2), pg_catalog.unnest($3),"
											 " pg_catalog.unnest($4), pg_catalog.unnest($5), pg_catalog.unnest($6),"
											 " pg_catalog.unnest($7), pg_catalog.unnest($8), pg_catalog.unnest($9),"
											 " pg_catalog.unnest($10), pg_catalog.unnest($11), pg_catalog.unnest($13))"
											 " AS u(d, m, e, t, p, o, k, pl, h, a, hd)"
											 " ON CONFLICT (group_name, dedup_key, handler) DO NOTHING"
											 " RETURNING id, dedup_key, handler",
											 13, types),
							 values, NULL, false, 0) != SPI_OK_INSERT_RETURNING)
			elog(ERROR, "could not insert into the inbox");
		MemoryContextSwitchTo(batch_cxt);

		/* RETURNING follows the insert order; rows not returned were redeliveries */
		for (r = 0; r < SPI_processed; r++)
		{
			bool		isnull;
			int64		id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[r],
														 SPI_tuptable->tupdesc, 1, &isnull));
			char	   *returned = SPI_getvalue(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, 2);
			char	   *returned_handler = SPI_getvalue(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, 3);

			while (row < nrows && (strcmp(dedup[row], returned) != 0 ||
								   strcmp(handler[row], returned_handler) != 0))
				row++;
			if (row == nrows)
				elog(ERROR, "evbus: inbox insert returned an unexpected row");
			if (runnable[row])
			{
				Dispatch   *dp = palloc0(sizeof(Dispatch));

				i = index[row];
				dp->inbox_id = id;
				dp->group_name = pstrdup(group);
				dp->topic = msgs[i].topic;
				dp->message_id = dec[i].message_id;
				dp->payload = dec[i].payload;
				dp->headers = dec[i].headers;
				dp->attempts = DatumGetInt32(attempts[row]);
				dp->event_key = dec[i].event_key;
				dp->handler = handler[row];
				dp->sub = rowsub[row];
				*dispatch = lappend(*dispatch, dp);
			}
			else
				left_pending = true;
			row++;
		}
	}
	return left_pending;
}

/*
 * evbus_inbox_receive --- handle a received batch: in one transaction, or
 * the careful way in two if it holds a message that was being handled
 * when the consumer stopped (see the top of this file).
 *
 * msgs are the batch in the order Kafka delivered them; offsets are the
 * next offsets to store per partition once the batch is handled.
 * Returns true if messages were left pending (a retry, or waiting for an
 * earlier event of their key).
 */
bool
evbus_inbox_receive(const char *group, List *subs, ReceivedMessage *msgs, int n,
					NextOffset *offsets, int noffsets)
{
	static MemoryContext batch_cxt = NULL;
	bool		careful;
	bool		left_pending;
	List	   *dispatch = NIL;
	MemoryContext old;

	if (batch_cxt == NULL)
		batch_cxt = AllocSetContextCreate(TopMemoryContext, "evbus receive",
										  ALLOCSET_DEFAULT_SIZES);
	careful = !evbus_attempt_marker_write(group, msgs, n);

	evbus_worker_begin(evbus_consumers_let_go);
	old = MemoryContextSwitchTo(batch_cxt);
	left_pending = record_batch(group, subs, msgs, n, !careful, &dispatch, batch_cxt);
	if (careful)
	{
		/* the attempts are on disk before any handler runs */
		MemoryContextSwitchTo(old);
		evbus_worker_commit();
		evbus_worker_begin(evbus_consumers_let_go);
		old = MemoryContextSwitchTo(batch_cxt);
	}
	if (!handle_batch(dispatch, batch_cxt, !careful))
		left_pending = true;
	store_offsets(group, offsets, noffsets);
	MemoryContextSwitchTo(old);
	evbus_worker_commit();

	MemoryContextReset(batch_cxt);
	return left_pending;
}

/*
 * evbus_inbox_dispatch_due --- run pending messages that are due and first
 * of their key: retries, messages that waited for their key, attempts
 * interrupted by a crash.  Returns when the next pending message is due
 * (0 if none is).
 */
TimestampTz
evbus_inbox_dispatch_due(List *subs)
{
	List	   *dispatch = NIL;
	TimestampTz next_due = 0;
	uint64		i;
	MemoryContext batch_cxt = AllocSetContextCreate(TopMemoryContext, "evbus dispatch",
													ALLOCSET_DEFAULT_SIZES);
	MemoryContext old;

	/* count the attempts and commit before running anything */
	evbus_worker_begin(evbus_consumers_let_go);
	if (SPI_execute("WITH due AS ("
					" SELECT id FROM evbus.inbox i"
					" WHERE state = 'pending' AND next_attempt_at OPERATOR(pg_catalog.<=) pg_catalog.now()"
					" AND NOT EXISTS (SELECT 1 FROM evbus.inbox e WHERE e.state = 'pending'"
					" AND e.group_name OPERATOR(pg_catalog.=) i.group_name"
					" AND e.handler OPERATOR(pg_catalog.=) i.handler"
					" AND e.event_key OPERATOR(pg_catalog.=) i.event_key"
					" AND e.id OPERATOR(pg_catalog.<) i.id)"
					" ORDER BY id LIMIT 500)"
					" UPDATE evbus.inbox i SET attempts = attempts OPERATOR(pg_catalog.+) 1"
					" FROM due WHERE i.id OPERATOR(pg_catalog.=) due.id"
					" RETURNING i.id, i.group_name, i.topic, i.message_id::pg_catalog.text,"
					" i.payload, i.headers, i.attempts, i.event_key, i.handler",
					false, 0) != SPI_OK_UPDATE_RETURNING)
		elog(ERROR, "could not read the inbox");
	old = MemoryContextSwitchTo(batch_cxt);
	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		Dispatch   *dp = palloc0(sizeof(Dispatch));

		dp->inbox_id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		dp->group_name = SPI_getvalue(tup, desc, 2);
		dp->topic = SPI_getvalue(tup, desc, 3);
		dp->message_id = SPI_getvalue(tup, desc, 4);
		dp->payload = DatumGetJsonbPCopy(SPI_getbinval(tup, desc, 5, &isnull));
		dp->headers = DatumGetJsonbPCopy(SPI_getbinval(tup, desc, 6, &isnull));
		dp->attempts = DatumGetInt32(SPI_getbinval(tup, desc, 7, &isnull));
		dp->event_key = SPI_getvalue(tup, desc, 8);
		dp->handler = SPI_getvalue(tup, desc, 9);
		dp->sub = sub_named(subs, dp->group_name, dp->topic, dp->handler);
		dispatch = lappend(dispatch, dp);
	}
	MemoryContextSwitchTo(old);
	evbus_worker_commit();

	evbus_worker_begin(evbus_consumers_let_go);
	old = MemoryContextSwitchTo(batch_cxt);
	/* in id order: a message handled here lets the next of its key go */
	(void) handle_batch(dispatch, batch_cxt, false);
	MemoryContextSwitchTo(old);
	/* when is the next message due that may run (first of its key)? */
	if (SPI_execute("SELECT pg_catalog.min(next_attempt_at) FROM evbus.inbox i"
					" WHERE state = 'pending'"
					" AND NOT EXISTS (SELECT 1 FROM evbus.inbox e WHERE e.state = 'pending'"
					" AND e.group_name OPERATOR(pg_catalog.=) i.group_name"
					" AND e.handler OPERATOR(pg_catalog.=) i.handler"
					" AND e.event_key OPERATOR(pg_catalog.=) i.event_key"
					" AND e.id OPERATOR(pg_catalog.<) i.id)",
					true, 0) == SPI_OK_SELECT && SPI_processed == 1)
	{
		bool		isnull;
		Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

		if (!isnull)
			next_due = DatumGetTimestampTz(d);
	}
	evbus_worker_commit();
	MemoryContextDelete(batch_cxt);
	return next_due;
}

/* The stored next offset of a partition, or -1. */
int64
evbus_stored_offset(const char *group, const char *topic, int32 partition)
{
	Oid			types[3] = {TEXTOID, TEXTOID, INT4OID};
	Datum		values[3];
	int64		result = -1;

	values[0] = CStringGetTextDatum(group);
	values[1] = CStringGetTextDatum(topic);
	values[2] = Int32GetDatum(partition);
	if (SPI_execute_with_args("SELECT next_offset FROM evbus.consumer_offsets"
							  " WHERE group_name OPERATOR(pg_catalog.=) $1"
							  " AND topic OPERATOR(pg_catalog.=) $2"
							  " AND kafka_partition OPERATOR(pg_catalog.=) $3",
							  3, types, values, NULL, true, 1) == SPI_OK_SELECT &&
		SPI_processed == 1)
	{
		bool		isnull;

		result = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	}
	return result;
}

/* Record the high watermarks (for the lag in evbus.stats); own txn. */
void
evbus_store_high_watermarks(const char *group, NextOffset *hwm, int n)
{
	int			i;

	if (n == 0)
		return;
	evbus_worker_begin(evbus_consumers_let_go);
	for (i = 0; i < n; i++)
	{
		Oid			types[4] = {TEXTOID, TEXTOID, INT4OID, INT8OID};
		Datum		values[4];

		values[0] = CStringGetTextDatum(group);
		values[1] = CStringGetTextDatum(hwm[i].topic);
		values[2] = Int32GetDatum(hwm[i].partition);
		values[3] = Int64GetDatum(hwm[i].next_offset);
		evbus_spi_exec("INSERT INTO evbus.consumer_offsets AS o (group_name, topic, kafka_partition,"
			 " next_offset, high_watermark) VALUES ($1, $2, $3, 0, $4)"
			 " ON CONFLICT (group_name, topic, kafka_partition) DO UPDATE"
			 " SET high_watermark = excluded.high_watermark",
			 4, types, values, NULL, SPI_OK_INSERT);
	}
	evbus_worker_commit();
}

/*
 * evbus_inbox_maintain --- trim the inbox, in its own transaction, at most
 * 10000 rows of each kind per call.
 *
 * A handled message's row goes after evbus.inbox_retention (the window in
 * which a redelivery is recognised).  A dead message's row goes with its
 * dead letter: once that is gone (deleted by evbus.dead_letter_retention,
 * or by hand) or older than evbus.dead_letter_retention; as long as the
 * dead letter is kept, evbus.retry() can requeue the message and a
 * redelivery is recognised (test 236_inbox_retention.pl).  0 keeps either
 * kind for ever.  The partial index inbox_dead finds the dead rows.
 */
void
evbus_inbox_maintain(void)
{
	Oid			types[1] = {INT4OID};
	Datum		values[1];

	if (evbus_inbox_retention_s <= 0 && evbus_dead_letter_retention_s <= 0)
		return;
	evbus_worker_begin(evbus_consumers_let_go);
	if (evbus_inbox_retention_s > 0)
	{
		values[0] = Int32GetDatum(evbus_inbox_retention_s);
		evbus_spi_exec("DELETE FROM evbus.inbox WHERE id IN (SELECT id FROM evbus.inbox"
			 " WHERE handled_at OPERATOR(pg_catalog.<) (pg_catalog.now() OPERATOR(pg_catalog.-)"
			 " pg_catalog.make_interval(secs => $1)) LIMIT 10000)",
			 1, types, values, NULL, SPI_OK_DELETE);
	}
	if (evbus_dead_letter_retention_s > 0)
	{
		values[0] = Int32GetDatum(evbus_dead_letter_retention_s);
		evbus_spi_exec("DELETE FROM evbus.inbox WHERE id IN (SELECT i.id FROM evbus.inbox i"
			 " WHERE i.state OPERATOR(pg_catalog.=) 'dead' AND NOT EXISTS"
			 " (SELECT FROM evbus.dead_letters d"
			 " WHERE d.direction OPERATOR(pg_catalog.=) 'consume'"
			 " AND d.group_name OPERATOR(pg_catalog.=) i.group_name"
			 " AND d.topic OPERATOR(pg_catalog.=) i.topic"
			 " AND d.kafka_partition OPERATOR(pg_catalog.=) i.kafka_partition"
			 " AND d.kafka_offset OPERATOR(pg_catalog.=) i.kafka_offset"
			 " AND d.dead_at OPERATOR(pg_catalog.>=) (pg_catalog.now() OPERATOR(pg_catalog.-)"
			 " pg_catalog.make_interval(secs => $1)))"
			 " LIMIT 10000)",
			 1, types, values, NULL, SPI_OK_DELETE);
	}
	evbus_worker_commit();
}

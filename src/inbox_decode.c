/*-------------------------------------------------------------------------
 *
 * inbox_decode.c
 *	  Decoding a message received from Kafka into what a handler gets:
 *	  payload, headers, event key and message id -- or the reason it is
 *	  poison.
 *
 * Validation only: no SQL runs here.  An undecodable message never
 * reaches a handler; inbox.c dead-letters it with its raw bytes
 * (inbox_retry.c) and the partition moves on (test 160_consume_poison.pl).
 * A message id must be a usable de-duplication key (test
 * 256_cap_snowflake_ids.pl).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <ctype.h>

#include "access/xact.h"
#include "common/cryptohash.h"
#include "common/jsonapi.h"
#include "common/sha2.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/jsonfuncs.h"
#include "utils/memutils.h"
#include "utils/resowner.h"

#include "inbox.h"


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

/*
 * One key and value of a message's headers object, and where it came
 * among them.
 */
typedef struct HeaderField
{
	const char *name;
	int			namelen;
	int			position;
	JsonbValue	value;
} HeaderField;

/*
 * header_field_cmp --- the order of a Jsonb object's keys (the shorter
 * first, then byte by byte), then the order they came in.  Pushed in that
 * order, the keys are in place when the object is closed; pushed as they
 * came, closing it sorted its pairs with byte-wise swaps, 5 % of the
 * consumer's time per message (bench/consume.sh, batch handler).  Equal
 * keys keep the order they came in, and the last one wins as before.
 */
static int
header_field_cmp(const void *a, const void *b)
{
	const HeaderField *fa = *(HeaderField *const *) a;
	const HeaderField *fb = *(HeaderField *const *) b;
	int			c;

	if (fa->namelen != fb->namelen)
		return fa->namelen < fb->namelen ? -1 : 1;
	c = memcmp(fa->name, fb->name, fa->namelen);
	if (c != 0)
		return c;
	return fa->position < fb->position ? -1 : 1;
}

/*
 * add a field named name (namelen bytes) to fields, *n of them so far;
 * returns its value
 */
static JsonbValue *
add_field(HeaderField *fields, int *n, const char *name, size_t namelen)
{
	HeaderField *f = &fields[*n];

	f->name = name;
	f->namelen = (int) namelen;
	f->position = (*n)++;
	return &f->value;
}

static void
set_string(JsonbValue *v, const char *s, size_t len)
{
	v->type = jbvString;
	v->val.string.val = (char *) s;
	v->val.string.len = (int) len;
}

/*
 * decode_headers --- push the headers of m, and those evbus sets itself,
 * into the open object *hstate, in the order of its keys; note a valid
 * cap-msg-id in d.  Returns false, with d->poison set, if a header is not
 * valid UTF-8 or the cap-msg-id cannot be a de-duplication key.
 */
static bool
decode_headers(const ReceivedMessage *m, const char *group, Decoded *d,
			   JsonbParseState **hstate)
{
	HeaderField *fields = palloc((m->nheaders + 4) * sizeof(HeaderField));
	HeaderField **order;
	JsonbValue *v;
	int			n = 0;
	int			i;

	/* headers: valid UTF-8 strings; a cap-msg-id must be a usable key */
	for (i = 0; i < m->nheaders; i++)
	{
		const char *name = m->header_names[i];
		size_t		namelen = strlen(name);

		if (!valid_utf8(name, namelen) ||
			(m->header_values[i] && (!valid_utf8(m->header_values[i], m->header_lens[i]) ||
									 memchr(m->header_values[i], '\0', m->header_lens[i]))))
		{
			d->poison = "invalid_utf8";
			d->detail = pstrdup("a header is not valid UTF-8");
			return false;
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
				return false;
			}
			d->message_id = pnstrdup(m->header_values[i], m->header_lens[i]);
		}
		v = add_field(fields, &n, name, namelen);
		if (m->header_values[i])
			set_string(v, m->header_values[i], m->header_lens[i]);
		else
			v->type = jbvNull;
	}
	set_string(add_field(fields, &n, "evbus-topic", strlen("evbus-topic")), m->topic,
			   strlen(m->topic));
	v = add_field(fields, &n, "evbus-partition", strlen("evbus-partition"));
	v->type = jbvNumeric;
	v->val.numeric = int64_to_numeric(m->partition);
	v = add_field(fields, &n, "evbus-offset", strlen("evbus-offset"));
	v->type = jbvNumeric;
	v->val.numeric = int64_to_numeric(m->offset);
	set_string(add_field(fields, &n, "evbus-group", strlen("evbus-group")), group,
			   strlen(group));

	order = palloc(n * sizeof(HeaderField *));
	for (i = 0; i < n; i++)
		order[i] = &fields[i];
	qsort(order, n, sizeof(HeaderField *), header_field_cmp);
	for (i = 0; i < n; i++)
	{
		JsonbValue	key;

		set_string(&key, order[i]->name, order[i]->namelen);
		(void) pushJsonbValue(hstate, WJB_KEY, &key);
		(void) pushJsonbValue(hstate, WJB_VALUE, &order[i]->value);
	}
	pfree(order);
	pfree(fields);
	return true;
}

/*
 * The longest event key kept as it is.  A pending message's key goes into
 * the index of the pending rows (inbox_pending_key) with its group and
 * handler, and a B-tree entry holds at most a third of a page: a longer
 * key failed that index at the message's first failed attempt, and the
 * consumer stopped on it at every start (test 116_long_event_keys.pl).
 */
#define MAX_EVENT_KEY_BYTES 512

/* prefix, then the n bytes at data in hex */
static char *
hex_text(const char *prefix, const char *data, size_t n)
{
	size_t		plen = strlen(prefix);
	char	   *out = palloc(plen + n * 2 + 1);

	memcpy(out, prefix, plen);
	out[plen + hex_encode(data, n, out + plen)] = '\0';
	return out;
}

/* "sha256:" and the SHA-256 digest of the n bytes at data, in hex. */
static char *
sha256_text(const char *data, size_t n)
{
	pg_cryptohash_ctx *ctx = pg_cryptohash_create(PG_SHA256);
	uint8		digest[PG_SHA256_DIGEST_LENGTH];

	if (ctx == NULL || pg_cryptohash_init(ctx) < 0 ||
		pg_cryptohash_update(ctx, (const uint8 *) data, n) < 0 ||
		pg_cryptohash_final(ctx, digest, sizeof(digest)) < 0)
		elog(ERROR, "could not compute a SHA-256 digest: %s",
			 ctx ? pg_cryptohash_error(ctx) : "out of memory");
	pg_cryptohash_free(ctx);
	return hex_text("sha256:", (const char *) digest, sizeof(digest));
}

/*
 * event_key_of --- the event key of m as text, NULL if it has none.
 * Ordering only needs equality: a key that is not valid UTF-8 text is
 * kept as hex, and one longer than MAX_EVENT_KEY_BYTES (as text) as its
 * SHA-256 digest.
 */
static char *
event_key_of(const ReceivedMessage *m)
{
	if (m->key == NULL)
		return NULL;
	if (valid_utf8(m->key, m->keylen) && memchr(m->key, '\0', m->keylen) == NULL)
	{
		if (m->keylen > MAX_EVENT_KEY_BYTES)
			return sha256_text(m->key, m->keylen);
		return pnstrdup(m->key, m->keylen);
	}
	if (m->keylen * 2 + 2 > MAX_EVENT_KEY_BYTES)
		return sha256_text(m->key, m->keylen);
	return hex_text("\\x", m->key, m->keylen);
}

/*
 * decode_unchecked --- decode one message into d, or say in d->poison why
 * it cannot be.  With careful, the value's JSON is checked without
 * throwing first, to tell invalid JSON (with its detail) from a \u0000;
 * without, invalid JSON throws, and evbus_decode_batch decodes again
 * carefully.
 */
static void
decode_unchecked(const ReceivedMessage *m, const char *group, Decoded *d, bool careful)
{
	JsonbParseState *hstate = NULL;

	(void) pushJsonbValue(&hstate, WJB_BEGIN_OBJECT, NULL);
	if (!decode_headers(m, group, d, &hstate))
		return;

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
	d->event_key = event_key_of(m);
}

/*
 * decode --- decode one message; anything that throws (a pathological
 * value, say nesting too deep) makes it poison instead of stopping the
 * partition.
 */
static void
decode(const ReceivedMessage *m, const char *group, Decoded *d)
{
	EvbusSubxact sx;

	memset(d, 0, sizeof(Decoded));
	evbus_subxact_begin(&sx);
	PG_TRY();
	{
		decode_unchecked(m, group, d, true);
		evbus_subxact_commit(&sx);
	}
	PG_CATCH();
	{
		ErrorData  *edata = evbus_subxact_abort(&sx);

		d->poison = "invalid_json";
		d->detail = pstrdup(edata->message);
		FreeErrorData(edata);
	}
	PG_END_TRY();
}

/*
 * evbus_decode_batch --- decode every message of a batch into dec (n
 * entries); optimistically in one subtransaction, and one by one if
 * something throws.
 */
void
evbus_decode_batch(ReceivedMessage *msgs, int n, const char *group, Decoded *dec)
{
	EvbusSubxact sx;
	bool		ok = false;
	int			i;

	evbus_subxact_begin(&sx);
	PG_TRY();
	{
		for (i = 0; i < n; i++)
		{
			memset(&dec[i], 0, sizeof(Decoded));
			decode_unchecked(&msgs[i], group, &dec[i], false);
		}
		evbus_subxact_commit(&sx);
		ok = true;
	}
	PG_CATCH();
	{
		FreeErrorData(evbus_subxact_abort(&sx));
	}
	PG_END_TRY();
	if (!ok)
		for (i = 0; i < n; i++)
			decode(&msgs[i], group, &dec[i]);
}

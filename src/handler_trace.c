/*-------------------------------------------------------------------------
 *
 * handler_trace.c
 *	  Trace context and causation for what a handler stages.
 *
 * While a handler runs, the consumer remembers the message it handles:
 * its cap-msg-id (the causation id of whatever the handler stages), its
 * correlation id (its own evbus-correlation-id header, else its
 * cap-msg-id: the message that started the conversation) and its
 * tracestate header.  Staging (staging.c) adds them to every event the
 * handler stages as the headers evbus-causation-id, evbus-correlation-id
 * and, with a trace context, tracestate.  They live in this process's
 * memory only, set around the handler call and cleared after it, also
 * when it fails: no setting a user could change carries them, and users
 * cannot write evbus-* headers themselves (staging refuses them).
 * Outside a handler nothing is added.
 *
 * The handler also runs with evbus.traceparent set to a child of the
 * incoming traceparent (W3C Trace Context: the same trace-id and flags, a
 * new span-id, version 00), so that what it stages continues the trace.
 * No incoming traceparent, or an invalid one: evbus.traceparent is left as
 * it is, and the tracestate, which W3C ties to a valid traceparent, is not
 * carried either (test 224_trace_causation.pl).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/pg_prng.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"

#include "consumer.h"

/* The message being handled now (NULL fields: none, or not known). */
static char *handling_message_id = NULL;
static char *handling_correlation_id = NULL;
static char *handling_tracestate = NULL;

/* The length of a version 00 traceparent: 00-<32>-<16>-<2>. */
#define TRACEPARENT_LEN 55

/*
 * What is carried over is bounded, since it goes on every event a handler
 * stages, outside the payload's evbus.max_message_bytes: a correlation id
 * as long as a message id may be (inbox_decode.c), else the handled
 * message's own id; a tracestate of at most the 512 characters W3C asks
 * every participant to pass on, else none (a participant may drop one).
 */
#define MAX_CORRELATION_ID_BYTES 200
#define MAX_TRACESTATE_BYTES 512

/*
 * header_string --- the string value of header name in headers (as the
 * consumer decodes them), or NULL if it has none or it is not a
 * non-empty string.
 */
static char *
header_string(Jsonb *headers, const char *name)
{
	JsonbValue	v;

	if (headers == NULL ||
		getKeyJsonValueFromContainer(&headers->root, name, strlen(name), &v) == NULL ||
		v.type != jbvString || v.val.string.len == 0)
		return NULL;
	return pnstrdup(v.val.string.val, v.val.string.len);
}

/* Are the n characters at s lower-case hex digits (and not all zeros)? */
static bool
lower_hex(const char *s, int n, bool nonzero)
{
	bool		seen_nonzero = false;
	int			i;

	for (i = 0; i < n; i++)
	{
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return false;
		seen_nonzero |= s[i] != '0';
	}
	return seen_nonzero || !nonzero;
}

/*
 * child_traceparent --- a child of traceparent tp: the same trace-id and
 * flags, a new random span-id, version 00.  NULL if tp is not a valid W3C
 * traceparent (a version 00 one of exactly 55 characters; a later version
 * may have more fields after a '-'; version ff is invalid; the trace-id
 * and the parent-id must not be all zeros).
 */
static char *
child_traceparent(const char *tp)
{
	size_t		len = tp ? strlen(tp) : 0;
	uint64		span;

	if (len < TRACEPARENT_LEN ||
		tp[2] != '-' || tp[35] != '-' || tp[52] != '-' ||
		!lower_hex(tp, 2, false) || strncmp(tp, "ff", 2) == 0 ||
		!lower_hex(tp + 3, 32, true) ||
		!lower_hex(tp + 36, 16, true) ||
		!lower_hex(tp + 53, 2, false))
		return NULL;
	if (strncmp(tp, "00", 2) == 0 ? len != TRACEPARENT_LEN :
		(len > TRACEPARENT_LEN && tp[TRACEPARENT_LEN] != '-'))
		return NULL;

	/* W3C asks for a random span-id; all zeros is invalid */
	do
	{
		if (!pg_strong_random(&span, sizeof(span)))
			span = pg_prng_uint64(&pg_global_prng_state);
	} while (span == 0);
	return psprintf("00-%.32s-%016llx-%.2s", tp + 3, (unsigned long long) span, tp + 53);
}

/*
 * set_handling --- replace one field of the message being handled, in
 * TopMemoryContext: it must outlive the handler's subtransaction until
 * evbus_handler_trace_end clears it.
 */
static void
set_handling(char **field, const char *value)
{
	if (*field != NULL)
		pfree(*field);
	*field = value ? MemoryContextStrdup(TopMemoryContext, value) : NULL;
}

/*
 * evbus_handler_trace_begin --- remember the message a handler is about
 * to handle (its decoded headers), and set evbus.traceparent to a child
 * of its traceparent at GUC_ACTION_SAVE: call it inside the handler's GUC
 * nest level, after the role's settings, and evbus_handler_trace_end
 * when the handler returns or fails.
 */
void
evbus_handler_trace_begin(Jsonb *headers)
{
	char	   *message_id = header_string(headers, "cap-msg-id");
	char	   *correlation_id = header_string(headers, "evbus-correlation-id");
	char	   *tracestate = header_string(headers, "tracestate");
	char	   *child = child_traceparent(header_string(headers, "traceparent"));

	if (correlation_id == NULL || strlen(correlation_id) > MAX_CORRELATION_ID_BYTES)
		correlation_id = message_id;
	if (child == NULL || (tracestate != NULL && strlen(tracestate) > MAX_TRACESTATE_BYTES))
		tracestate = NULL;
	set_handling(&handling_message_id, message_id);
	set_handling(&handling_correlation_id, message_id ? correlation_id : NULL);
	set_handling(&handling_tracestate, tracestate);
	if (child != NULL)
		(void) set_config_option("evbus.traceparent", child, PGC_USERSET,
								 PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
}

/* evbus_handler_trace_end --- no message is being handled any more. */
void
evbus_handler_trace_end(void)
{
	set_handling(&handling_message_id, NULL);
	set_handling(&handling_correlation_id, NULL);
	set_handling(&handling_tracestate, NULL);
}

/* Add a string member to the object being built in *state. */
static void
push_header(JsonbParseState **state, const char *name, const char *value)
{
	JsonbValue	v;

	v.type = jbvString;
	v.val.string.val = (char *) name;
	v.val.string.len = strlen(name);
	(void) pushJsonbValue(state, WJB_KEY, &v);
	v.val.string.val = (char *) value;
	v.val.string.len = strlen(value);
	(void) pushJsonbValue(state, WJB_VALUE, &v);
}

/*
 * evbus_handler_headers --- the headers to stage with an event whose user
 * headers are user_headers (NULL: none; already checked, so without
 * evbus-* names): inside a handler, with evbus-causation-id and
 * evbus-correlation-id of the message it handles, and its tracestate when
 * the event carries a traceparent and the user gave no tracestate of
 * their own.  Outside a handler, user_headers unchanged.
 */
Jsonb *
evbus_handler_headers(Jsonb *user_headers, bool with_traceparent)
{
	JsonbParseState *state = NULL;
	bool		tracestate = with_traceparent && handling_tracestate != NULL;
	Jsonb	   *ours;

	if (handling_message_id == NULL && !tracestate)
		return user_headers;

	(void) pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
	if (handling_message_id != NULL)
	{
		push_header(&state, "evbus-causation-id", handling_message_id);
		push_header(&state, "evbus-correlation-id", handling_correlation_id);
	}
	if (tracestate)
		push_header(&state, "tracestate", handling_tracestate);
	ours = JsonbValueToJsonb(pushJsonbValue(&state, WJB_END_OBJECT, NULL));
	if (user_headers == NULL)
		return ours;
	/* the right operand wins: a tracestate of the user's own */
	return DatumGetJsonbP(DirectFunctionCall2(jsonb_concat,
											  JsonbPGetDatum(ours),
											  JsonbPGetDatum(user_headers)));
}

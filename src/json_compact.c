/*-------------------------------------------------------------------------
 *
 * json_compact.c
 *	  Compact JSON text of a jsonb value, as it goes on the wire.
 *
 * jsonb's own output puts a space after ':' and ','; the wire format
 * (README "Wire format") is compact UTF-8 JSON, so evbus writes its own.
 * Strings are escaped with PostgreSQL's escape_json, numbers printed by
 * numeric_out, so the text reads back to the same jsonb.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"

#include "evbus.h"

/*
 * append_string --- a JSON string literal.  Most strings need no escape:
 * those are copied as they are (escape_json would append them a byte at a
 * time, after a copy to NUL-terminate them); the others go through
 * escape_json.  escape_json escapes exactly '"', '\\' and the bytes below
 * 0x20, which is what the scan looks for.
 */
static void
append_string(StringInfo out, const char *val, int len)
{
	int			i;
	char	   *s;

	for (i = 0; i < len; i++)
	{
		unsigned char c = (unsigned char) val[i];

		if (c < 0x20 || c == '"' || c == '\\')
			break;
	}
	if (i == len)
	{
		appendStringInfoCharMacro(out, '"');
		appendBinaryStringInfo(out, val, len);
		appendStringInfoCharMacro(out, '"');
		return;
	}
	s = pnstrdup(val, len);
	escape_json(out, s);
	pfree(s);
}

static void
append_scalar(StringInfo out, JsonbValue *v)
{
	char	   *s;

	switch (v->type)
	{
		case jbvNull:
			appendBinaryStringInfo(out, "null", 4);
			break;
		case jbvBool:
			if (v->val.boolean)
				appendBinaryStringInfo(out, "true", 4);
			else
				appendBinaryStringInfo(out, "false", 5);
			break;
		case jbvString:
			append_string(out, v->val.string.val, v->val.string.len);
			break;
		case jbvNumeric:
			s = DatumGetCString(DirectFunctionCall1(numeric_out,
													PointerGetDatum(v->val.numeric)));
			appendStringInfoString(out, s);
			pfree(s);
			break;
		default:
			elog(ERROR, "unexpected jsonb value type %d", (int) v->type);
	}
}

/*
 * evbus_jsonb_to_compact --- append the compact JSON text of jc to out.
 */
void
evbus_jsonb_to_compact(StringInfo out, JsonbContainer *jc)
{
	JsonbIterator *it = JsonbIteratorInit(jc);
	JsonbIteratorToken tok;
	JsonbValue	v;
	bool		first = true;	/* first member/element at this level */
	bool		raw_scalar = false;

	while ((tok = JsonbIteratorNext(&it, &v, false)) != WJB_DONE)
	{
		switch (tok)
		{
			case WJB_BEGIN_ARRAY:
				if (v.val.array.rawScalar)
				{
					raw_scalar = true;
					break;
				}
				if (!first)
					appendStringInfoChar(out, ',');
				appendStringInfoChar(out, '[');
				first = true;
				break;
			case WJB_BEGIN_OBJECT:
				if (!first)
					appendStringInfoChar(out, ',');
				appendStringInfoChar(out, '{');
				first = true;
				break;
			case WJB_KEY:
				if (!first)
					appendStringInfoChar(out, ',');
				append_scalar(out, &v);
				appendStringInfoChar(out, ':');
				first = true;	/* the value follows without a comma */
				break;
			case WJB_VALUE:
			case WJB_ELEM:
				if (!first)
					appendStringInfoChar(out, ',');
				append_scalar(out, &v);
				first = false;
				break;
			case WJB_END_ARRAY:
				if (!raw_scalar)
					appendStringInfoChar(out, ']');
				first = false;
				break;
			case WJB_END_OBJECT:
				appendStringInfoChar(out, '}');
				first = false;
				break;
			default:
				elog(ERROR, "unexpected jsonb iterator token %d", (int) tok);
		}
	}
}

/*
 * evbus_jsonb_exceeds --- is the compact JSON text of jb over limit bytes?
 *
 * Called on every staged event, so it avoids printing the value when the
 * binary size proves it small enough: compact text is at most six times
 * the binary size (a one-byte character escaped as \u00XX) plus a little
 * punctuation per entry, which the second factor bounds generously.
 */
bool
evbus_jsonb_exceeds(Jsonb *jb, int limit)
{
	StringInfoData buf;
	bool		result;

	if ((int64) VARSIZE(jb) * 8 < (int64) limit)
		return false;

	initStringInfo(&buf);
	evbus_jsonb_to_compact(&buf, &jb->root);
	result = buf.len > limit;
	pfree(buf.data);
	return result;
}

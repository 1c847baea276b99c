/*-------------------------------------------------------------------------
 *
 * capture.c
 *	  evbus.capture(): a row trigger that raises a domain event per row.
 *
 *	  CREATE TRIGGER ... AFTER INSERT OR UPDATE OR DELETE ON t
 *	    FOR EACH ROW EXECUTE FUNCTION evbus.capture('OrderChanged' [, 'id']);
 *
 * The payload is the row as jsonb: NEW for INSERT, OLD for DELETE, and
 * {"old": OLD, "new": NEW} for UPDATE.  The optional second argument names
 * the column whose value becomes the event key (NEW's, or OLD's for
 * DELETE).  The event goes through evbus.raise, so converters apply.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"

#include "evbus.h"

/* The row as compact JSON text (row_to_json of the tuple). */
static char *
row_json(HeapTuple tuple, TupleDesc desc)
{
	Datum		row = heap_copy_tuple_as_datum(tuple, desc);

	return text_to_cstring(DatumGetTextPP(DirectFunctionCall1(row_to_json,
															  row)));
}

/* The value of column attname in tuple, as text, or NULL. */
static char *
key_value(Relation rel, HeapTuple tuple, const char *attname)
{
	TupleDesc	desc = RelationGetDescr(rel);
	int			attnum = SPI_fnumber(desc, attname);

	if (attnum <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_COLUMN),
				 errmsg("key column \"%s\" of evbus.capture does not exist in table \"%s\"",
						attname, RelationGetRelationName(rel))));
	return SPI_getvalue(tuple, desc, attnum);
}

PG_FUNCTION_INFO_V1(evbus_capture);
Datum
evbus_capture(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Trigger    *trigger;
	Relation	rel;
	TupleDesc	desc;
	StringInfoData json;
	HeapTuple	key_tuple;
	char	   *key = NULL;
	Jsonb	   *payload;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("evbus.capture() must be called as a trigger")));
	if (!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event) ||
		!TRIGGER_FIRED_AFTER(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("evbus.capture() must be an AFTER ... FOR EACH ROW trigger"),
				 errhint("CREATE TRIGGER ... AFTER INSERT OR UPDATE OR DELETE ON t FOR EACH ROW EXECUTE FUNCTION evbus.capture('DomainEvent').")));

	trigger = trigdata->tg_trigger;
	if (trigger->tgnargs < 1 || trigger->tgnargs > 2)
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("evbus.capture() takes a domain event name and an optional key column"),
				 errhint("EXECUTE FUNCTION evbus.capture('OrderCreatedDomainEvent', 'id').")));

	rel = trigdata->tg_relation;
	desc = RelationGetDescr(rel);
	initStringInfo(&json);
	if (TRIGGER_FIRED_BY_INSERT(trigdata->tg_event))
	{
		appendStringInfoString(&json, row_json(trigdata->tg_trigtuple, desc));
		key_tuple = trigdata->tg_trigtuple;
	}
	else if (TRIGGER_FIRED_BY_DELETE(trigdata->tg_event))
	{
		appendStringInfoString(&json, row_json(trigdata->tg_trigtuple, desc));
		key_tuple = trigdata->tg_trigtuple;
	}
	else if (TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event))
	{
		appendStringInfo(&json, "{\"old\":%s,\"new\":%s}",
						 row_json(trigdata->tg_trigtuple, desc),
						 row_json(trigdata->tg_newtuple, desc));
		key_tuple = trigdata->tg_newtuple;
	}
	else
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("evbus.capture() fires on INSERT, UPDATE or DELETE only")));

	if (trigger->tgnargs == 2)
		key = key_value(rel, key_tuple, trigger->tgargs[1]);

	payload = DatumGetJsonbP(DirectFunctionCall1(jsonb_in,
												 CStringGetDatum(json.data)));
	evbus_raise_internal(trigger->tgargs[0], payload, key);

	return PointerGetDatum(NULL);
}

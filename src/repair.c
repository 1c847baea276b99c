/*-------------------------------------------------------------------------
 *
 * repair.c
 *	  Repairing failures in bulk: evbus.retry and evbus.discard by filter,
 *	  evbus.discard of one message, and evbus.edit_dead_letter.
 *
 * A filter names a side ('publish' or 'consume'), an integration event, a
 * group, an error code and a range of dead_at [dead_since, dead_until); a
 * dead letter matches when it matches every named one.  A filter that
 * names nothing is refused unless match_all => true, so that a typo (a
 * NULL where a value was meant) cannot retry or discard everything (test
 * 270_repair_in_bulk.pl).
 *
 * A discard deletes the dead letter, marks its inbox row 'discarded' (a
 * redelivery is still recognised, and a parked key goes on) and writes
 * who, when, why and what into evbus.repair_log.  An edit replaces the
 * payload of one dead letter, and of its inbox row on the consume side,
 * so that evbus.retry runs (or publishes) the new one; the old one goes
 * into evbus.repair_log (test 272_edit_and_retry.pl).
 *
 * Privileges.  Like evbus.retry, these are granted to nobody: a role the
 * extension owner grants EXECUTE may retry or discard any dead letter, as
 * an operator may, and is recorded by name.  An edit is more: the new
 * payload runs in a handler as the role that subscribed it, or goes out to
 * Kafka under this database's name.  So a consume side edit needs the
 * privileges of the role the handler runs as (of the extension owner if
 * it is no longer subscribed), and a publish side edit needs EXECUTE on
 * evbus.publish.  The caller's arguments are checked as the caller; the
 * tables are read and written as the extension owner (spi_run.c).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/regproc.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

#include "evbus.h"

/*
 * The parameters every statement here shares: $1 side, $2 integration
 * event, $3 group, $4 error code, $5 dead_since, $6 dead_until, $7 message
 * id; a NULL one matches every dead letter dl.
 */
#define FILTER_NARGS 7
#define FILTER_SQL \
	" ($1::pg_catalog.text IS NULL OR dl.direction OPERATOR(pg_catalog.=) $1)" \
	" AND ($2::pg_catalog.text IS NULL OR dl.integration_event OPERATOR(pg_catalog.=) $2)" \
	" AND ($3::pg_catalog.text IS NULL OR dl.group_name OPERATOR(pg_catalog.=) $3)" \
	" AND ($4::pg_catalog.text IS NULL OR dl.error_code OPERATOR(pg_catalog.=) $4)" \
	" AND ($5::pg_catalog.timestamptz IS NULL OR dl.dead_at OPERATOR(pg_catalog.>=) $5)" \
	" AND ($6::pg_catalog.timestamptz IS NULL OR dl.dead_at OPERATOR(pg_catalog.<) $6)" \
	" AND ($7::pg_catalog.text IS NULL OR dl.message_id OPERATOR(pg_catalog.=) $7)"

/*
 * The evbus.repair_log rows of the discarded rows of CTE rows, in id
 * order, with the direction and error code of their columns (or values)
 * direction and error_code; $8 the reason, $9 current_user, $10
 * session_user (discard_matching).
 */
#define DISCARD_LOG_SQL(rows, direction, error_code) \
	" INSERT INTO evbus.repair_log (action, message_id, direction," \
	" integration_event, group_name, handler, event_key, error_code, payload," \
	" reason, done_by, session_role)" \
	" SELECT 'discard', message_id, " direction ", integration_event, group_name," \
	" handler, event_key, " error_code ", payload, $8, $9, $10" \
	" FROM " rows " ORDER BY id"

/* Room for the filter's parameters and a statement's own after them. */
#define MAX_NARGS 10

/* The parameters of one statement: the filter's, then its own. */
typedef struct RepairParams
{
	Oid			types[MAX_NARGS];
	Datum		values[MAX_NARGS];
	char		nulls[MAX_NARGS];
} RepairParams;

/* Copy a text argument into parameter param of st, or a NULL. */
static void
text_param(RepairParams *st, int param, FunctionCallInfo fcinfo, int arg)
{
	st->types[param] = TEXTOID;
	if (arg < 0 || PG_ARGISNULL(arg))
		st->nulls[param] = 'n';
	else
		st->values[param] = PG_GETARG_DATUM(arg);
}

/*
 * filter_from_args --- the filter's parameters from the arguments of a
 * filter form (first the argument match_all, then side, integration
 * event, group, error code, dead_since, dead_until), checked: a known
 * side, a group only on the consume side, and something named unless
 * match_all.
 */
static void
filter_from_args(RepairParams *st, FunctionCallInfo fcinfo, int first)
{
	int			p;
	bool		named = false;

	if (PG_ARGISNULL(first))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("match_all must not be null"),
				 errhint("Leave match_all out to act on what the other arguments name, or pass match_all => true to act on every dead letter they match.")));
	for (p = 0; p < 4; p++)
		text_param(st, p, fcinfo, first + 1 + p);
	for (p = 4; p < 6; p++)
	{
		st->types[p] = TIMESTAMPTZOID;
		if (PG_ARGISNULL(first + 1 + p))
			st->nulls[p] = 'n';
		else
			st->values[p] = PG_GETARG_DATUM(first + 1 + p);
	}
	text_param(st, 6, fcinfo, -1);
	for (p = 0; p < 6; p++)
		named |= st->nulls[p] != 'n';

	if (st->nulls[0] != 'n')
	{
		char	   *side = TextDatumGetCString(st->values[0]);

		if (strcmp(side, "publish") != 0 && strcmp(side, "consume") != 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("unknown side \"%s\"", evbus_clip(side, 40)),
					 errhint("Use side => 'publish' or side => 'consume', or leave side out for both.")));
		if (strcmp(side, "publish") == 0 && st->nulls[2] != 'n')
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("group_name names no dead letter of the publish side"),
					 errhint("A consumer group belongs to the consume side: leave side out or use side => 'consume'.")));
	}
	if (!named && !PG_GETARG_BOOL(first))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a filter that names nothing matches every dead letter"),
				 errhint("Name a side, integration_event, group_name, error_code, dead_since or dead_until; to act on every dead letter, pass match_all => true.")));
}

/* The filter of one message id (argument arg). */
static void
filter_of_message(RepairParams *st, FunctionCallInfo fcinfo, int arg)
{
	int			p;

	if (PG_ARGISNULL(arg))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("message_id must not be null"),
				 errhint("evbus.dead_letters lists the message ids of the dead letters.")));
	for (p = 0; p < 6; p++)
		text_param(st, p, fcinfo, -1);
	st->types[4] = st->types[5] = TIMESTAMPTZOID;
	text_param(st, 6, fcinfo, arg);
}

/* ------------------------------------------------------------------
 * Retry
 * ------------------------------------------------------------------
 */

/*
 * retry_matching --- requeue the dead letters that match st's filter:
 * publish side ones go back to the outbox with their message ids, in the
 * order they died; consume side ones go back to pending, attempts reset
 * (a dead letter whose message cannot be decoded, or whose inbox row is
 * gone, stays).  Returns how many.
 */
static int64
retry_matching(RepairParams *st)
{
	uint64		published;
	uint64		consumed;

	evbus_check_writable("retry an event");
	published = evbus_execute_as_owner(psprintf("WITH d AS (DELETE FROM evbus.dead_letters dl"
												" WHERE dl.direction OPERATOR(pg_catalog.=) 'publish' AND" FILTER_SQL
												" RETURNING dl.*),"
												" c AS (UPDATE evbus.publish_counters c"
												" SET dead = c.dead OPERATOR(pg_catalog.-) x.n"
												" FROM (SELECT integration_event, pg_catalog.count(*) AS n FROM d GROUP BY 1) x"
												" WHERE c.integration_event OPERATOR(pg_catalog.=) x.integration_event)"
												" INSERT INTO evbus.outbox_%d (id, message_id, integration_event,"
												" event_key, payload, headers, domain_event, traceparent, staged_at)"
												" SELECT pg_catalog.nextval('evbus.outbox_id_seq'::pg_catalog.regclass),"
												" message_id::pg_catalog.uuid, integration_event, event_key, payload, headers,"
												" domain_event, traceparent, staged_at"
												" FROM (SELECT * FROM d ORDER BY id) s",
												evbus_current_outbox_slot()),
									   FILTER_NARGS, st->types, st->values, st->nulls);
	consumed = evbus_execute_as_owner("WITH d AS (DELETE FROM evbus.dead_letters dl"
									  " WHERE dl.direction OPERATOR(pg_catalog.=) 'consume'"
									  " AND dl.raw_value IS NULL AND" FILTER_SQL
									  " AND EXISTS (SELECT FROM evbus.inbox i WHERE" EVBUS_INBOX_ROW_OF_SQL("dl")
									  " AND i.payload IS NOT NULL)"
									  " RETURNING dl.*)"
									  " UPDATE evbus.inbox i SET state = 'pending', attempts = 0,"
									  " handled_at = NULL, next_attempt_at = pg_catalog.now()"
									  " FROM d WHERE" EVBUS_INBOX_ROW_OF_SQL("d"),
									  FILTER_NARGS, st->types, st->values, st->nulls);
	evbus_wake_at_commit(published > 0, consumed > 0);
	return (int64) (published + consumed);
}

/*
 * evbus.retry(match_all, side, integration_event, group_name, error_code,
 * dead_since, dead_until) -> integer: requeue the dead letters that match
 * (see retry_matching); returns how many.
 */
PG_FUNCTION_INFO_V1(evbus_retry_filter);
Datum
evbus_retry_filter(PG_FUNCTION_ARGS)
{
	RepairParams st;

	memset(st.nulls, ' ', sizeof(st.nulls));
	filter_from_args(&st, fcinfo, 0);
	PG_RETURN_INT32((int32) retry_matching(&st));
}

/* ------------------------------------------------------------------
 * Discard
 * ------------------------------------------------------------------
 */

/*
 * discard_matching --- give up on the dead letters that match st's
 * filter for good: delete them, mark their inbox rows discarded (kept for
 * de-duplication, trimmed like handled ones; a parked key goes on), take
 * them off evbus.stats's dead count (publish side), and record each in
 * evbus.repair_log with reason (argument reason_arg), current_user and
 * session_user.  Returns how many.
 */
static int64
discard_matching(RepairParams *st, FunctionCallInfo fcinfo, int reason_arg)
{
	uint64		discarded;
	char	   *reason;

	if (PG_ARGISNULL(reason_arg) ||
		(reason = TextDatumGetCString(PG_GETARG_DATUM(reason_arg)))[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("a discard needs a reason"),
				 errhint("Say why, for example reason => 'orders of a deleted test tenant': evbus.repair_log keeps it.")));
	evbus_check_writable("discard an event");
	st->types[7] = TEXTOID;
	st->values[7] = CStringGetTextDatum(reason);
	st->types[8] = st->types[9] = NAMEOID;
	st->values[8] = DirectFunctionCall1(namein,
										CStringGetDatum(GetUserNameFromId(GetUserId(), false)));
	st->values[9] = DirectFunctionCall1(namein,
										CStringGetDatum(GetUserNameFromId(GetSessionUserId(), false)));
	st->nulls[7] = st->nulls[8] = st->nulls[9] = ' ';

	discarded = evbus_execute_as_owner("WITH d AS (DELETE FROM evbus.dead_letters dl WHERE" FILTER_SQL
									   " RETURNING dl.*),"
									   " i AS (UPDATE evbus.inbox i SET state = 'discarded',"
									   " handled_at = pg_catalog.now(), next_attempt_at = NULL"
									   " FROM d WHERE d.direction OPERATOR(pg_catalog.=) 'consume' AND" EVBUS_INBOX_ROW_OF_SQL("d") "),"
									   " c AS (UPDATE evbus.publish_counters c"
									   " SET dead = c.dead OPERATOR(pg_catalog.-) x.n"
									   " FROM (SELECT integration_event, pg_catalog.count(*) AS n FROM d"
									   " WHERE direction OPERATOR(pg_catalog.=) 'publish' GROUP BY 1) x"
									   " WHERE c.integration_event OPERATOR(pg_catalog.=) x.integration_event)"
									   DISCARD_LOG_SQL("d", "direction", "error_code"),
									   MAX_NARGS, st->types, st->values, st->nulls);
	/* a parked key may go on */
	evbus_wake_at_commit(false, discarded > 0);
	return (int64) discarded;
}

/*
 * discard_parked_alone --- after discard_matching of one message: give up
 * too on the rows of that message that are parked (pending with no next
 * attempt, after failed attempts) but whose dead letter is gone, deleted
 * by hand: their keys go on, and each is recorded in evbus.repair_log as
 * discard_matching records.  evbus.retry(message_id) reads the inbox, so
 * it requeues such a row; without this a discard could not release it
 * (test 275_parked_dead_letter_kept.pl).  Returns how many.
 */
static int64
discard_parked_alone(RepairParams *st)
{
	uint64		discarded;

	discarded = evbus_execute_as_owner("WITH i AS (UPDATE evbus.inbox i SET state = 'discarded',"
									   " handled_at = pg_catalog.now(), next_attempt_at = NULL"
									   " WHERE i.message_id OPERATOR(pg_catalog.=) $7"
									   " AND i.state OPERATOR(pg_catalog.=) 'pending'"
									   " AND i.next_attempt_at IS NULL"
									   " AND i.attempts OPERATOR(pg_catalog.>) 0"
									   " AND NOT EXISTS (SELECT FROM evbus.dead_letters dl"
									   " WHERE dl.direction OPERATOR(pg_catalog.=) 'consume' AND" EVBUS_INBOX_ROW_OF_SQL("dl") ")"
									   " RETURNING i.*)"
									   DISCARD_LOG_SQL("i", "'consume'", "last_error_code"),
									   MAX_NARGS, st->types, st->values, st->nulls);
	evbus_wake_at_commit(false, discarded > 0);
	return (int64) discarded;
}

/*
 * Discard the dead letters of the message id in argument 0 (text), and
 * its parked rows that lost theirs.
 */
static Datum
discard_message(FunctionCallInfo fcinfo)
{
	RepairParams st;
	int64		discarded;

	memset(st.nulls, ' ', sizeof(st.nulls));
	filter_of_message(&st, fcinfo, 0);
	discarded = discard_matching(&st, fcinfo, 1);
	discarded += discard_parked_alone(&st);
	PG_RETURN_BOOL(discarded > 0);
}

/*
 * evbus.discard(message_id text, reason text) -> boolean: discard the dead
 * letters of one message (every handler's and group's); false if it has
 * none.
 */
PG_FUNCTION_INFO_V1(evbus_discard);
Datum
evbus_discard(PG_FUNCTION_ARGS)
{
	return discard_message(fcinfo);
}

/* evbus.discard(message_id uuid, reason text): the same for a uuid. */
PG_FUNCTION_INFO_V1(evbus_discard_uuid);
Datum
evbus_discard_uuid(PG_FUNCTION_ARGS)
{
	if (!PG_ARGISNULL(0))
		fcinfo->args[0].value =
			CStringGetTextDatum(evbus_uuid_to_cstring(PG_GETARG_UUID_P(0)));
	return discard_message(fcinfo);
}

/*
 * evbus.discard(reason, match_all, side, integration_event, group_name,
 * error_code, dead_since, dead_until) -> integer: discard the dead letters
 * that match, as evbus.retry by filter picks them; returns how many.
 */
PG_FUNCTION_INFO_V1(evbus_discard_filter);
Datum
evbus_discard_filter(PG_FUNCTION_ARGS)
{
	RepairParams st;

	memset(st.nulls, ' ', sizeof(st.nulls));
	filter_from_args(&st, fcinfo, 1);
	PG_RETURN_INT32((int32) discard_matching(&st, fcinfo, 0));
}

/* ------------------------------------------------------------------
 * Edit
 * ------------------------------------------------------------------
 */

/* The dead letter an edit picked, read as the extension owner. */
typedef struct EditTarget
{
	RepairParams st;			/* $1 message id, $2 group, $3 handler, $4
								 * caller, $5 owner */
	int			found;			/* how many dead letters matched */
	int64		id;
	char	   *direction;
	bool		undecodable;
	bool		allowed;		/* may the caller edit it? */
	char	   *whose;			/* consume side: the role whose privileges it
								 * needs */
	MemoryContext cxt;			/* where the strings go */
} EditTarget;

static void
read_edit_target(void *arg)
{
	EditTarget *t = (EditTarget *) arg;
	HeapTuple	tup;
	TupleDesc	desc;
	bool		isnull;

	if (SPI_execute_with_args("SELECT dl.id, dl.direction, dl.raw_value IS NOT NULL,"
							  " CASE WHEN dl.direction OPERATOR(pg_catalog.=) 'publish'"
							  " THEN pg_catalog.has_function_privilege($4,"
							  " 'evbus.publish(pg_catalog.text, pg_catalog.jsonb, pg_catalog.text,"
							  " pg_catalog.jsonb, pg_catalog.timestamptz)', 'EXECUTE')"
							  " ELSE pg_catalog.pg_has_role($4, COALESCE(s.run_as::pg_catalog.oid, $5), 'USAGE') END,"
							  " COALESCE(s.run_as::pg_catalog.text, $5::pg_catalog.regrole::pg_catalog.text)"
							  " FROM evbus.dead_letters dl"
							  " LEFT JOIN evbus.subscriptions s"
							  " ON s.integration_event OPERATOR(pg_catalog.=) dl.integration_event"
							  " AND s.group_name OPERATOR(pg_catalog.=) dl.group_name"
							  " AND s.handler OPERATOR(pg_catalog.=) dl.handler"
							  " WHERE dl.message_id OPERATOR(pg_catalog.=) $1"
							  " AND ($2::pg_catalog.text IS NULL OR dl.group_name OPERATOR(pg_catalog.=) $2)"
							  " AND ($3::pg_catalog.text IS NULL OR dl.handler OPERATOR(pg_catalog.=) $3)",
							  5, t->st.types, t->st.values, t->st.nulls, true, 2) != SPI_OK_SELECT)
		elog(ERROR, "could not read evbus.dead_letters");
	t->found = (int) SPI_processed;
	if (SPI_processed != 1)
		return;
	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	t->id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
	t->direction = MemoryContextStrdup(t->cxt, SPI_getvalue(tup, desc, 2));
	t->undecodable = DatumGetBool(SPI_getbinval(tup, desc, 3, &isnull));
	t->allowed = DatumGetBool(SPI_getbinval(tup, desc, 4, &isnull));
	t->whose = MemoryContextStrdup(t->cxt, SPI_getvalue(tup, desc, 5));
}

/*
 * edit_target --- the one dead letter of message_id (of group and handler
 * when given) that the caller may edit; refuses none, several, an
 * undecodable one, and one the caller may not edit (see the top of this
 * file).
 */
static void
edit_target(EditTarget *t, const char *message_id, const char *group,
			const char *handler)
{
	memset(t->st.nulls, ' ', sizeof(t->st.nulls));
	t->st.types[0] = t->st.types[1] = t->st.types[2] = TEXTOID;
	t->st.types[3] = t->st.types[4] = OIDOID;
	t->st.values[0] = CStringGetTextDatum(message_id);
	if (group)
		t->st.values[1] = CStringGetTextDatum(group);
	else
		t->st.nulls[1] = 'n';
	if (handler)
		t->st.values[2] = CStringGetTextDatum(handler);
	else
		t->st.nulls[2] = 'n';
	t->st.values[3] = ObjectIdGetDatum(GetUserId());
	t->st.values[4] = ObjectIdGetDatum(evbus_extension_owner());
	t->cxt = CurrentMemoryContext;
	evbus_spi_as_owner(read_edit_target, t);

	if (t->found == 0)
		ereport(ERROR,
				(errcode(ERRCODE_NO_DATA_FOUND),
				 errmsg("message \"%s\" has no dead letter%s", evbus_clip(message_id, 64),
						group || handler ? " of that group and handler" : ""),
				 errhint("evbus.dead_letters lists the dead letters, with their group and handler.")));
	if (t->found > 1)
		ereport(ERROR,
				(errcode(ERRCODE_CARDINALITY_VIOLATION),
				 errmsg("message \"%s\" has several dead letters", evbus_clip(message_id, 64)),
				 errhint("Pick one with handler => and group_name => (evbus.dead_letters lists them).")));
	if (t->undecodable)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("message \"%s\" could not be decoded and has no handler to run an edit",
						evbus_clip(message_id, 64)),
				 errhint("Discard it with evbus.discard, and publish a corrected event with evbus.publish.")));
	if (!t->allowed && strcmp(t->direction, "publish") == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to edit the publish side dead letter of message \"%s\"",
						evbus_clip(message_id, 64)),
				 errdetail("An edited event is published as this database's, as evbus.publish would."),
				 errhint("Only a role that may execute evbus.publish may edit it; the extension owner (%s) grants that.",
						 GetUserNameFromId(evbus_extension_owner(), false))));
	if (!t->allowed)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to edit the dead letter of message \"%s\"",
						evbus_clip(message_id, 64)),
				 errdetail("An edited payload runs in the handler, as role %s.", t->whose),
				 errhint("Only role %s or a role with its privileges may edit it.", t->whose)));
}

/*
 * evbus.edit_dead_letter(message_id, payload, handler, group_name, reason)
 *
 * Replaces the payload of one dead letter, and of its inbox row on the
 * consume side (a retry hands the handler the inbox row's payload: the
 * Kafka message is not read again); evbus.retry then runs or publishes
 * it.  The old payload, the new one, who and why go into
 * evbus.repair_log.  The payload must be a JSON object, as any event's.
 */
PG_FUNCTION_INFO_V1(evbus_edit_dead_letter);
Datum
evbus_edit_dead_letter(PG_FUNCTION_ARGS)
{
	EditTarget	t;
	Jsonb	   *payload;
	Oid			types[5] = {INT8OID, JSONBOID, TEXTOID, NAMEOID, NAMEOID};
	Datum		values[5];
	char		nulls[5] = {' ', ' ', ' ', ' ', ' '};

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("message_id and payload must not be null"),
				 errhint("To give up on an event, discard it with evbus.discard.")));
	payload = PG_GETARG_JSONB_P(1);
	if (!JB_ROOT_IS_OBJECT(payload) || JB_ROOT_IS_SCALAR(payload))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a payload must be a JSON object"),
				 errhint("Pass the whole event, for example '{\"order_id\": 42}'::jsonb.")));
	evbus_check_writable("edit a dead letter");
	edit_target(&t, text_to_cstring(PG_GETARG_TEXT_PP(0)),
				PG_ARGISNULL(3) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(3)),
				PG_ARGISNULL(2) ? NULL : format_procedure_qualified(PG_GETARG_OID(2)));

	values[0] = Int64GetDatum(t.id);
	values[1] = JsonbPGetDatum(payload);
	if (PG_ARGISNULL(4))
		nulls[2] = 'n';
	else
		values[2] = PG_GETARG_DATUM(4);
	values[3] = DirectFunctionCall1(namein,
									CStringGetDatum(GetUserNameFromId(GetUserId(), false)));
	values[4] = DirectFunctionCall1(namein,
									CStringGetDatum(GetUserNameFromId(GetSessionUserId(), false)));
	if (evbus_execute_as_owner("WITH dl AS (UPDATE evbus.dead_letters d SET payload = $2"
							   " FROM (SELECT id, payload FROM evbus.dead_letters"
							   " WHERE id OPERATOR(pg_catalog.=) $1) o"
							   " WHERE d.id OPERATOR(pg_catalog.=) o.id"
							   " RETURNING d.*, o.payload AS old_payload),"
							   " i AS (UPDATE evbus.inbox i SET payload = $2 FROM dl"
							   " WHERE dl.direction OPERATOR(pg_catalog.=) 'consume' AND" EVBUS_INBOX_ROW_OF_SQL("dl") ")"
							   " INSERT INTO evbus.repair_log (action, message_id, direction,"
							   " integration_event, group_name, handler, event_key, error_code, payload,"
							   " new_payload, reason, done_by, session_role)"
							   " SELECT 'edit', message_id, direction, integration_event, group_name,"
							   " handler, event_key, error_code, old_payload, $2, $3, $4, $5 FROM dl",
							   5, types, values, nulls) != 1)
		ereport(ERROR,
				(errcode(ERRCODE_NO_DATA_FOUND),
				 errmsg("the dead letter of message %s went away meanwhile", text_to_cstring(PG_GETARG_TEXT_PP(0))),
				 errhint("It was retried or discarded by another session; evbus.repair_log says by whom if discarded.")));
	PG_RETURN_VOID();
}

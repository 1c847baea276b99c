/*-------------------------------------------------------------------------
 *
 * inbox_counts.c
 *	  Counting the messages of a batch the consumer writes into the inbox
 *	  in evbus.inbox_messages, as the inbox's counting trigger would.
 *
 * evbus.inbox_messages holds, per group and topic, the number of
 * messages in evbus.inbox, kept by the inbox's statement triggers
 * (evbus._inbox_counted, in the extension's SQL) for whoever writes it.
 * Fired at each of the consumer's transactions, the INSERT trigger (a
 * PL/pgSQL function grouping the statement's transition table, then an
 * UPDATE) took 6 % of the consumer's CPU with transactions of 48 messages
 * (BENCHMARKS.md, "Peers").  So when the consumer writes the rows itself
 * (inbox_write.c), and that trigger is the table's only INSERT trigger
 * and would fire, it counts here instead, with the same rules, and the
 * trigger is not fired (nor its transition table kept): per topic, when
 * every row of the batch has one handler and every message counted so
 * far had it too (or none is counted), one upsert adds the rows; else
 * each message of the batch whose rows are all the inbox holds of it is
 * new, looked up among the inbox's rows of its group.  Test
 * 291_metrics_counts.pl compares the counts with a full count in each of
 * these cases.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_trigger.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"

#include "inbox.h"

#define COUNTING_FUNCTION "_inbox_counted"

/* Would PostgreSQL fire trigger now (session_replication_role)? */
static bool
trigger_fires(const Trigger *trigger)
{
	if (trigger->tgenabled == TRIGGER_DISABLED)
		return false;
	if (SessionReplicationRole == SESSION_REPLICATION_ROLE_REPLICA)
		return trigger->tgenabled == TRIGGER_FIRES_ALWAYS ||
			trigger->tgenabled == TRIGGER_FIRES_ON_REPLICA;
	return trigger->tgenabled != TRIGGER_FIRES_ON_REPLICA;
}

/*
 * evbus_inbox_counts_here --- given the triggers of evbus.inbox, may the
 * consumer count the rows it inserts itself (evbus_inbox_count) and
 * leave the triggers out?  Only if the counting trigger is the table's
 * only INSERT trigger and would fire.
 */
bool
evbus_inbox_counts_here(const TriggerDesc *triggers)
{
	bool		counting = false;
	int			t;

	if (triggers == NULL)
		return false;
	for (t = 0; t < triggers->numtriggers; t++)
	{
		const Trigger *trigger = &triggers->triggers[t];
		char	   *fn;

		if (!TRIGGER_FOR_INSERT(trigger->tgtype))
			continue;
		fn = get_func_name(trigger->tgfoid);
		if (counting || fn == NULL || strcmp(fn, COUNTING_FUNCTION) != 0 ||
			get_func_namespace(trigger->tgfoid) != evbus_schema_oid() ||
			TRIGGER_FOR_ROW(trigger->tgtype) || !TRIGGER_FOR_AFTER(trigger->tgtype) ||
			!trigger_fires(trigger))
			return false;
		counting = true;
	}
	return counting;
}

/*
 * count_topic --- add to topic's count the messages of its n rows
 * (dedup keys dedup, handlers handler) just inserted for group.
 */
static void
count_topic(const char *group, const char *topic, const char **dedup,
			const char **handler, int n)
{
	static SPIPlanPtr fast_plan = NULL;
	static SPIPlanPtr slow_plan = NULL;
	Oid			fast_types[4] = {TEXTOID, TEXTOID, INT8OID, TEXTOID};
	Oid			slow_types[3] = {TEXTOID, TEXTOID, TEXTARRAYOID};
	Datum		values[4];
	Datum	   *keys;
	int			i;

	values[0] = CStringGetTextDatum(group);
	values[1] = CStringGetTextDatum(topic);
	for (i = 1; i < n; i++)
		if (strcmp(handler[i], handler[0]) != 0)
			break;
	if (i == n)
	{
		/* one handler: a row is a message, while the topic's are all its */
		values[2] = Int64GetDatum(n);
		values[3] = CStringGetTextDatum(handler[0]);
		if (SPI_execute_plan(evbus_kept_plan(&fast_plan,
											 "INSERT INTO evbus.inbox_messages AS c"
											 " (group_name, topic, messages, handler)"
											 " VALUES ($1, $2, $3, $4)"
											 " ON CONFLICT (group_name, topic) DO UPDATE"
											 " SET messages = c.messages OPERATOR(pg_catalog.+) excluded.messages,"
											 " handler = excluded.handler"
											 " WHERE c.handler OPERATOR(pg_catalog.=) excluded.handler"
											 " OR c.messages OPERATOR(pg_catalog.=) 0",
											 4, fast_types),
							 values, NULL, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "could not count the inbox's messages");
		if (SPI_processed == 1)
			return;
	}

	/* a message is new if all its rows in the inbox are this batch's */
	keys = palloc(sizeof(Datum) * n);
	for (i = 0; i < n; i++)
		keys[i] = CStringGetTextDatum(dedup[i]);
	values[2] = PointerGetDatum(construct_array(keys, n, TEXTOID, -1, false, TYPALIGN_INT));
	if (SPI_execute_plan(evbus_kept_plan(&slow_plan,
										 "INSERT INTO evbus.inbox_messages AS c (group_name, topic, messages, handler)"
										 " SELECT $1, $2, pg_catalog.count(*), NULL"
										 " FROM (SELECT d COLLATE \"C\" AS d, pg_catalog.count(*) AS nrows"
										 " FROM pg_catalog.unnest($3) d GROUP BY 1) n"
										 " WHERE n.nrows OPERATOR(pg_catalog.=)"
										 " (SELECT pg_catalog.count(*) FROM evbus.inbox i"
										 " WHERE i.group_name OPERATOR(pg_catalog.=) $1"
										 " AND i.dedup_key OPERATOR(pg_catalog.=) n.d)"
										 " ON CONFLICT (group_name, topic) DO UPDATE"
										 " SET messages = c.messages OPERATOR(pg_catalog.+) excluded.messages,"
										 " handler = NULL",
										 3, slow_types),
						 values, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not count the inbox's messages");
}

/*
 * evbus_inbox_count --- count the n rows of group just inserted into the
 * inbox (see the top of this file), topic by topic.  Inside the
 * consumer's transaction, SPI connected.
 */
void
evbus_inbox_count(const char *group, const InboxNewRow *rows, int n)
{
	const char **dedup = palloc(sizeof(char *) * Max(n, 1));
	const char **handler = palloc(sizeof(char *) * Max(n, 1));
	bool	   *done = palloc0(sizeof(bool) * Max(n, 1));
	int			first;

	for (first = 0; first < n; first++)
	{
		int			m = 0;
		int			i;

		if (done[first])
			continue;
		for (i = first; i < n; i++)
		{
			if (done[i] || strcmp(rows[i].topic, rows[first].topic) != 0)
				continue;
			done[i] = true;
			dedup[m] = rows[i].dedup_key;
			handler[m] = rows[i].handler;
			m++;
		}
		count_topic(group, rows[first].topic, dedup, handler, m);
	}
}

/*-------------------------------------------------------------------------
 *
 * publication_warning.c
 *	  Warn when a logical replication publication includes evbus's tables.
 *
 * evbus's tables are ordinary tables of the database: a publication FOR
 * ALL TABLES (or one that names them, or schema evbus) publishes the
 * outbox, the inbox, the consumer offsets and the subscriptions, and a
 * database subscribed to it would receive them as its own (an outbox to
 * publish again, offsets for its consumer).  The event trigger
 * evbus_warn_published runs this after CREATE PUBLICATION and ALTER
 * PUBLICATION, and each publication that includes an evbus table gets a
 * WARNING with what to do instead (test 246_publication_warning.pl,
 * docs/production.md "Logical replication").  Nothing is refused: a
 * publication is the operator's to define.  A publication FOR ALL TABLES
 * made before CREATE EXTENSION evbus (or under evbus 0.1) was not there
 * for the event trigger to see: the scripts that install evbus and update
 * it to this version warn of it once they have made evbus's tables
 * (evbus_warn_published_tables).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "commands/event_trigger.h"
#include "executor/spi.h"
#include "fmgr.h"

#include "evbus.h"

/*
 * warn_publications --- a WARNING for each publication that includes an
 * evbus table.  Not read-only, so that SPI sees what the command that
 * fired the trigger just wrote (the new publication).
 */
static void
warn_publications(void *arg)
{
	uint64		i;

	if (SPI_execute("SELECT pubname::pg_catalog.text, pg_catalog.count(*)"
					" FROM pg_catalog.pg_publication_tables"
					" WHERE schemaname OPERATOR(pg_catalog.=) '" EVBUS_SCHEMA "'"
					" GROUP BY pubname ORDER BY pubname",
					false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read pg_publication_tables");
	for (i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		char	   *pubname = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);
		int64		tables = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i],
														 SPI_tuptable->tupdesc, 2, &isnull));

		ereport(WARNING,
				(errcode(ERRCODE_WARNING),
				 errmsg("publication \"%s\" includes evbus's tables", pubname),
				 errdetail_plural("%lld table of schema evbus is published: a database subscribed to it would receive this database's evbus state as its own.",
								  "%lld tables of schema evbus are published: a database subscribed to it would receive this database's outbox, inbox and consumer offsets as its own.",
								  (unsigned long) tables,
								  (long long) tables),
				 errhint("Publish your own tables by name or by schema (FOR TABLE ..., FOR TABLES IN SCHEMA ...), not FOR ALL TABLES.")));
	}
}

/*
 * evbus_warn_published --- the event trigger evbus_warn_published: a
 * WARNING for each publication that includes an evbus table.
 */
PG_FUNCTION_INFO_V1(evbus_warn_published);
Datum
evbus_warn_published(PG_FUNCTION_ARGS)
{
	if (!CALLED_AS_EVENT_TRIGGER(fcinfo))
		elog(ERROR, "evbus_warn_published: not called by the event trigger manager");
	evbus_spi_as_owner(warn_publications, NULL);
	PG_RETURN_VOID();
}

/*
 * evbus_warn_published_tables --- the same WARNINGs, once: the end of the
 * scripts that install evbus and update it to this version calls this and
 * drops it again (test 246_publication_warning.pl).
 */
PG_FUNCTION_INFO_V1(evbus_warn_published_tables);
Datum
evbus_warn_published_tables(PG_FUNCTION_ARGS)
{
	evbus_spi_as_owner(warn_publications, NULL);
	PG_RETURN_VOID();
}

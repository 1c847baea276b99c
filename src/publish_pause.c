/*-------------------------------------------------------------------------
 *
 * publish_pause.c
 *	  The publisher's view of evbus.publishing_pauses: which integration
 *	  events it must leave staged.
 *
 * An event of a paused integration event is not due (outbox_scan.c), like
 * one whose deliver_at has not come: no claim, sweep or revisit takes it,
 * and the outbox rotation moves it to the current table with the other
 * rows that wait, or keeps its table (outbox.c): it is never lost (test
 * 282_pause_publishing.pl).
 *
 * The set is read again when the table's relcache entry is invalidated
 * (evbus._config_changed, at the commit of a pause or resume), inside the
 * publisher's claiming transaction.  When an event is resumed, its staged
 * events are older than anything staged since, and several of a key may
 * wait: the publisher then sweeps the whole outbox in id order before it
 * claims past its cursor again (publish_cursor.c), so per-key order holds.
 *
 * Calls nothing of the publisher or the outbox.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"

#include "evbus.h"
#include "publish.h"

static EvbusTableWatch pauses = {"publishing_pauses", InvalidOid, true};
static List *paused = NIL;		/* char *, in TopMemoryContext */

/* evbus_publish_pauses_watch --- call once in the publisher. */
void
evbus_publish_pauses_watch(void)
{
	evbus_table_watch(&pauses);
}

/*
 * evbus_publish_pauses_refresh --- read the paused events again if they
 * changed; inside a transaction with SPI connected.  Returns true when an
 * event that was paused is no longer (its events wait to be swept).
 */
bool
evbus_publish_pauses_refresh(void)
{
	List	   *now = NIL;
	ListCell   *lc;
	bool		resumed = false;
	uint64		i;

	AcceptInvalidationMessages();
	if (!pauses.stale)
		return false;
	/* at SQL version 0.1 nothing is paused */
	if (evbus_table_watch_read(&pauses))
	{
		/*
		 * Not read-only: a snapshot of its own, taken after the flag was
		 * cleared, so that no change is missed between the two.
		 */
		if (SPI_execute("SELECT integration_event FROM evbus.publishing_pauses",
						false, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not read evbus.publishing_pauses");
		for (i = 0; i < SPI_processed; i++)
		{
			bool		isnull;
			Datum		d = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull);
			char	   *event = TextDatumGetCString(d);
			MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

			now = lappend(now, pstrdup(event));
			MemoryContextSwitchTo(old);
		}
	}
	foreach(lc, paused)
	{
		ListCell   *lc2;
		bool		still = false;

		foreach(lc2, now)
			still = still || strcmp(lfirst(lc), lfirst(lc2)) == 0;
		resumed = resumed || !still;
	}
	list_free_deep(paused);
	paused = now;				/* in TopMemoryContext, cells and names */
	if (resumed)
		elog(DEBUG1, "evbus: publishing resumed; sweeping the outbox");
	return resumed;
}

/* Is any integration event paused?  (Scans skip the check when not.) */
bool
evbus_publish_any_paused(void)
{
	return paused != NIL;
}

/* Is the integration event named by (event, len) paused? */
bool
evbus_publish_paused(const char *event, int len)
{
	ListCell   *lc;

	foreach(lc, paused)
	{
		const char *p = lfirst(lc);

		if ((int) strlen(p) == len && memcmp(p, event, len) == 0)
			return true;
	}
	return false;
}

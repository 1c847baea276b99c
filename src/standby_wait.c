/*-------------------------------------------------------------------------
 *
 * standby_wait.c
 *	  evbus.wait_for_standbys: nothing leaves for Kafka before the named
 *	  standbys have flushed the WAL that stands behind it.
 *
 * With asynchronous streaming replication a primary may tell Kafka about a
 * transaction that its standby never receives: an event produced from a
 * commit that a failover then loses is a phantom (Kafka has it, the new
 * primary does not), and an offset committed to Kafka after a batch whose
 * handling is lost makes the new primary skip those messages.  Both
 * workers therefore take a WAL position that covers what they are about
 * to tell Kafka, and, when the setting names standbys, wait here, outside
 * any transaction, until every named standby has flushed it (tests
 * 300_failover_publish.pl and 302_failover_consume.pl).
 *
 * The standbys are named by their application_name, as in
 * synchronous_standby_names; their flush positions come from the
 * walsenders' shared memory (WalSndCtl), and their names from the
 * backends' status array, which is how pg_stat_replication joins them.  A
 * named standby that is not connected makes the wait last until it is
 * back: that is the point of the setting.  A WARNING says so at most once a
 * minute, and pg_stat_activity shows the wait as the worker's query.
 *
 * The setting empty (the default), nothing here runs: the workers only ask
 * evbus_standby_wait_enabled().
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "access/xlog_internal.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/interrupt.h"
#include "replication/walsender.h"
#include "replication/walsender_private.h"
#include "storage/latch.h"
#include "storage/spin.h"
#include "utils/backend_status.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"
#include "utils/varlena.h"

#include "evbus.h"

char	   *evbus_wait_for_standbys = NULL;

/* How long one check sleeps while a standby lags, and while one is gone. */
#define LAG_STEP_MS 2
#define GONE_STEP_MS 100

/* A WARNING about missing standbys at most this often. */
#define WARNING_INTERVAL_MS 60000

static TimestampTz last_warning = 0;

/*
 * evbus_check_wait_for_standbys --- the GUC's check hook: a list of
 * application names, as synchronous_standby_names' simple form.
 */
bool
evbus_check_wait_for_standbys(char **newval, void **extra, GucSource source)
{
	char	   *copy = pstrdup(*newval);
	List	   *names;
	bool		ok = SplitIdentifierString(copy, ',', &names);

	if (!ok)
		GUC_check_errdetail("List syntax is invalid.");
	list_free(names);
	pfree(copy);
	return ok;
}

/* evbus_standby_wait_enabled --- does the setting name any standby? */
bool
evbus_standby_wait_enabled(void)
{
	return evbus_wait_for_standbys != NULL && evbus_wait_for_standbys[0] != '\0';
}

/*
 * evbus_standby_wait_target --- the position to wait for: the current WAL
 * insert position, which, read after a snapshot, is past the commit record
 * of every transaction the snapshot sees.  At the very start of a page the
 * insert position points past the page header that nothing has written
 * yet; a flush can end just before it, so the header is not waited for.
 */
XLogRecPtr
evbus_standby_wait_target(void)
{
	XLogRecPtr	pos = GetXLogInsertRecPtr();

	if (XLogSegmentOffset(pos, wal_segment_size) == SizeOfXLogLongPHD)
		pos -= SizeOfXLogLongPHD;
	else if (pos % XLOG_BLCKSZ == SizeOfXLogShortPHD)
		pos -= SizeOfXLogShortPHD;
	return pos;
}

/*
 * standbys_behind --- the named standbys that have not flushed target:
 * appended to *behind (as a quoted, comma-separated list), and to *gone
 * too when they are not connected.  Returns how many are behind.  Runs
 * outside any transaction (it drops the backend status snapshot).
 */
static int
standbys_behind(XLogRecPtr target, StringInfo behind, StringInfo gone)
{
	char	   *copy = pstrdup(evbus_wait_for_standbys);
	List	   *names;
	int			nsenders = max_wal_senders;
	pid_t	   *pids = palloc0(sizeof(pid_t) * Max(nsenders, 1));
	XLogRecPtr *flushes = palloc0(sizeof(XLogRecPtr) * Max(nsenders, 1));
	const char **appnames = palloc0(sizeof(char *) * Max(nsenders, 1));
	int			nbehind = 0;
	int			nbackends;
	int			i;
	ListCell   *lc;

	if (!SplitIdentifierString(copy, ',', &names))
		names = NIL;			/* the check hook refused it already */

	/* the walsenders: pid and flush position */
	for (i = 0; i < nsenders && WalSndCtl != NULL; i++)
	{
		WalSnd	   *walsnd = &WalSndCtl->walsnds[i];

		SpinLockAcquire(&walsnd->mutex);
		pids[i] = walsnd->pid;
		flushes[i] = walsnd->flush;
		SpinLockRelease(&walsnd->mutex);
	}

	/* their application names, from a fresh snapshot of the backends */
	pgstat_clear_backend_activity_snapshot();
	nbackends = pgstat_fetch_stat_numbackends();
	for (i = 1; i <= nbackends; i++)
	{
		LocalPgBackendStatus *local = pgstat_fetch_stat_local_beentry(i);
		int			j;

		if (local == NULL || local->backendStatus.st_backendType != B_WAL_SENDER)
			continue;
		for (j = 0; j < nsenders; j++)
			if (pids[j] != 0 && pids[j] == local->backendStatus.st_procpid)
				appnames[j] = local->backendStatus.st_appname;
	}

	foreach(lc, names)
	{
		const char *name = lfirst(lc);
		bool		connected = false;
		bool		flushed = false;
		int			j;

		for (j = 0; j < nsenders; j++)
		{
			if (appnames[j] == NULL || pg_strcasecmp(appnames[j], name) != 0)
				continue;
			connected = true;
			if (flushes[j] >= target)
				flushed = true;
		}
		if (flushed)
			continue;
		nbehind++;
		appendStringInfo(behind, "%s\"%s\"", behind->len > 0 ? ", " : "", name);
		if (!connected)
			appendStringInfo(gone, "%s\"%s\"", gone->len > 0 ? ", " : "", name);
	}
	pgstat_clear_backend_activity_snapshot();
	list_free(names);
	pfree(copy);
	pfree(pids);
	pfree(flushes);
	pfree(appnames);
	return nbehind;
}

/*
 * evbus_standby_wait --- wait until every standby named in
 * evbus.wait_for_standbys has flushed target (evbus_standby_wait_target,
 * read by the caller after what it is about to tell Kafka was committed
 * or read).  what names the waiting work in messages ("publishing",
 * "committing offsets").  Never inside a transaction.
 *
 * The local WAL is flushed up to target first: a walsender sends only
 * what the primary has flushed, and the workers' own commits are
 * asynchronous.  Then the wait, on the latch in short steps: a termination
 * request, or (when timeout_ms < 0, waiting for ever) a configuration
 * reload, ends it early so that the worker's loop can act on it; the
 * caller then gives up telling Kafka this time, and tries again later.
 * timeout_ms >= 0 bounds the wait (for the consumer's rebalance, which
 * cannot be left).  Returns true when the standbys have flushed target.
 */
bool
evbus_standby_wait(XLogRecPtr target, const char *what, long timeout_ms)
{
	TimestampTz start = GetCurrentTimestamp();
	MemoryContext cxt = AllocSetContextCreate(CurrentMemoryContext,
											  "evbus standby wait",
											  ALLOCSET_SMALL_SIZES);
	MemoryContext old = MemoryContextSwitchTo(cxt);
	bool		flushed = false;
	bool		reported = false;
	bool		latch_was_set = false;

	Assert(!IsTransactionState());
	XLogFlush(target);
	for (;;)
	{
		StringInfoData behind;
		StringInfoData gone;
		TimestampTz now;

		initStringInfo(&behind);
		initStringInfo(&gone);
		if (standbys_behind(target, &behind, &gone) == 0)
		{
			flushed = true;
			break;
		}
		now = GetCurrentTimestamp();
		if (gone.len > 0 &&
			(last_warning == 0 ||
			 TimestampDifferenceExceeds(last_warning, now, WARNING_INTERVAL_MS)))
		{
			ereport(WARNING,
					(errmsg("evbus: %s waits for standbys %s", what, gone.data),
					 errdetail("evbus.wait_for_standbys names them, and they are not connected."),
					 errhint("Start the standbys, or remove them from evbus.wait_for_standbys and reload the configuration.")));
			last_warning = now;
		}
		if (!reported)
		{
			pgstat_report_activity(STATE_RUNNING,
								   psprintf("waiting for standbys %s to flush WAL %X/%X (%s)",
											behind.data, LSN_FORMAT_ARGS(target), what));
			reported = true;
		}
		if (evbus_stopping() || (timeout_ms < 0 && ConfigReloadPending))
			break;
		if (timeout_ms >= 0 && TimestampDifferenceExceeds(start, now, timeout_ms))
			break;

		if (WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
					  gone.len > 0 ? GONE_STEP_MS : LAG_STEP_MS,
					  PG_WAIT_EXTENSION) & WL_LATCH_SET)
			latch_was_set = true;
		ResetLatch(MyLatch);
		if (evbus_stopping())
			break;				/* the worker's loop leaves cleanly */
		CHECK_FOR_INTERRUPTS();
		MemoryContextReset(cxt);
	}
	MemoryContextSwitchTo(old);
	MemoryContextDelete(cxt);

	/*
	 * What set the latch meanwhile (a staging commit, a signal) is for the
	 * worker's own wait point: set it again, so that its loop does not sleep
	 * through it.
	 */
	if (latch_was_set)
		SetLatch(MyLatch);
	return flushed;
}

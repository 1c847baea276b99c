/*-------------------------------------------------------------------------
 *
 * publisher_worker.c
 *	  The evbus publisher of one database: its signals, its single wait point
 *	  and its loop.
 *
 * The worker waits on one WaitEventSet: its latch (set at COMMIT of every
 * staging transaction, by signals and by shutdown requests), postmaster
 * death, and, while the publisher needs them at once, the descriptor
 * librdkafka writes to when delivery reports are waiting (otherwise they
 * are served on a short timer, publish_pacing.c).  A timeout of
 * evbus.poll_interval is the backstop (events committed by COMMIT
 * PREPARED, events whose deliver_at has come).  After
 * waking it resets the latch, checks for interrupts, reloads its settings
 * on SIGHUP and runs one publisher step.
 *
 * SIGTERM ends it promptly, having recorded what Kafka acknowledged;
 * unacknowledged events stay in the outbox.  Waiting, the worker sees it
 * and exits cleanly.  In the middle of a step, SIGTERM cancels what the
 * worker runs, as a query cancel would (the next CHECK_FOR_INTERRUPTS
 * raises an ERROR), so that no query or lock wait delays a shutdown or
 * DROP DATABASE; the loop's handler aborts the step's transaction and the
 * worker exits as from its wait point.  (die() would end the process
 * inside the step's transaction, which may be recording deliveries: those
 * events would be produced again at the next start.  Test
 * 235_publisher_stop.pl stops the publisher while its recording waits for
 * a lock.)
 *
 * The postmaster never restarts the worker: the launcher starts it again
 * when it is missing, unless its database is being dropped or no longer
 * has evbus (launcher.c), or the worker exited for want of work: after
 * evbus.idle_timeout with nothing to publish it exits, and is started
 * again when woken (idle.c).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "evbus.h"
#include "publisher.h"

/* Set by publisher_stop_signalled; declared in evbus.h. */
volatile sig_atomic_t evbus_stop_signalled = false;

/*
 * Set once the worker leaves (worker_exit): a SIGTERM from then on asks
 * for the stop under way.  One stop may deliver two: at a shutdown the
 * postmaster signals the worker and its process group, and the second may
 * come while the worker records its deliveries, which it must not cancel
 * (test 235_publisher_stop.pl; the recording's waits are bounded).
 */
static volatile sig_atomic_t leaving = false;

/*
 * publisher_stop_signalled --- SIGTERM once the loop runs: remember the
 * request and cancel what the worker is doing, if anything (the latch
 * wakes it if it waits).
 */
static void
publisher_stop_signalled(SIGNAL_ARGS)
{
	int			save_errno = errno;

	if (!proc_exit_inprogress && !leaving)
	{
		evbus_stop_signalled = true;
		InterruptPending = true;
		QueryCancelPending = true;
	}
	SetLatch(MyLatch);
	errno = save_errno;
}

/*
 * worker_exit --- leave cleanly (from the wait point, or after a stop
 * cancelled a step).  The termination request is consumed first, and
 * later ones are ignored (leaving), so that closing down is not itself cut
 * short.  With record, the events Kafka acknowledged are recorded first
 * (evbus_publisher_leave); not when the extension's SQL may have changed
 * under the worker, nor when the recording failed (an ERROR there comes
 * back here through evbus_publisher_main's handler).
 */
static void
worker_exit(int code, bool record)
{
	static bool exiting = false;

	leaving = true;
	ProcDiePending = false;
	QueryCancelPending = false;
	evbus_stop_signalled = false;
	if (record && !exiting)
	{
		exiting = true;
		evbus_publisher_leave();
	}
	evbus_publisher_shutdown();
	proc_exit(code);
}

/* The exit code for a stop: 0 if the stop is for good (DROP DATABASE). */
static int
stop_exit_code(void)
{
	return evbus_worker_stop_requested() ? 0 : 1;
}

/* Build the wait set: latch, postmaster death, librdkafka's descriptor. */
static WaitEventSet *
build_wait_set(int kafka_fd)
{
	WaitEventSet *set = CreateWaitEventSet(TopMemoryContext, 3);

	AddWaitEventToSet(set, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
	AddWaitEventToSet(set, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET, NULL, NULL);
	if (kafka_fd >= 0)
		AddWaitEventToSet(set, WL_SOCKET_READABLE, kafka_fd, NULL, NULL);
	return set;
}

/*
 * publisher_start --- connect to the database and take its publisher's
 * slot; exit quietly if the database may not have one or has no evbus
 * (what the launcher's probe of a database learns), and with a WARNING if
 * it is a copy of another database of this server (copy_guard.c, test
 * 326_database_copy.pl).  Then start the
 * consumer, unless it runs or is idle.  Returns the database's name.
 */
static char *
publisher_start(Oid dboid)
{
	char	   *dbname;
	bool		has_extension;
	char	   *original;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	/* never into a database being dropped (test 230_drop_database_guard.pl) */
	if (!evbus_db_may_start(dboid))
		proc_exit(0);
	BackgroundWorkerInitializeConnectionByOid(dboid, InvalidOid, 0);
	evbus_worker_settings();

	/*
	 * What goes to Kafka reads the same from every database: cap-senttime is
	 * a timestamp's text (timestamptz_to_str), in ISO 8601 and UTC whatever
	 * DateStyle and TimeZone the database or the role set, so that a consumer
	 * (CAP's included) never reads a day as a month (test
	 * 247_worker_session.pl).  The publisher runs no user code.
	 */
	SetConfigOption("datestyle", "ISO", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("timezone", "UTC", PGC_SUSET, PGC_S_OVERRIDE);

	/* one worker per database */
	if (!evbus_claim_worker_slot(dboid, EVBUS_PUBLISHER, MyLatch))
		proc_exit(0);

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	has_extension = OidIsValid(get_extension_oid("evbus", true));
	dbname = MemoryContextStrdup(TopMemoryContext, get_database_name(dboid));
	CommitTransactionCommand();

	/* what the launcher's probe of this database learns */
	if (!has_extension)
	{
		evbus_db_forget(dboid);
		proc_exit(0);
	}
	original = evbus_copy_of();
	if (original != NULL)
	{
		evbus_warn_copy(dbname, original);
		proc_exit(0);
	}
	evbus_db_installed(dboid);
	evbus_db_worker_running(dboid, EVBUS_PUBLISHER);

	/* only at an evbus version this library knows (ext_version.c) */
	evbus_version_wait(true);

	pgstat_report_appname("evbus publisher");

	/*
	 * The worker's own commits (marking events published) need not wait for
	 * the WAL flush: losing one in a crash only publishes those events again,
	 * with the same message ids, which consumers de-duplicate.  The staging
	 * transactions keep the server's setting: they carry the guarantee.
	 */
	SetConfigOption("synchronous_commit", "off", PGC_SUSET, PGC_S_OVERRIDE);
	ereport(LOG, (errmsg("evbus: publisher started for database \"%s\"", dbname)));
	evbus_publisher_init(dbname);

	/*
	 * Handlers run in a process of their own, so that a slow handler never
	 * delays publishing.  If it runs already, the new one exits at once; if
	 * it is idle, it is started when woken (idle.c).
	 */
	if (!evbus_db_role_idle(dboid, EVBUS_CONSUMER))
		evbus_start_worker(dboid, dbname, EVBUS_CONSUMER, 0, NULL);
	return dbname;
}

/*
 * publish_events_changed --- true, with a LOG line, when a superuser set,
 * changed or reset the database's evbus.publish_events since the worker
 * started; asked every 5 s.  A session takes its database's settings only
 * as it starts, so the worker then starts again, and holds the events it
 * sends to the new list (test 253_event_lists.pl).
 */
static bool
publish_events_changed(const char *dbname)
{
	static TimestampTz last_asked = 0;
	TimestampTz now = GetCurrentTimestamp();
	bool		changed;

	if (!TimestampDifferenceExceeds(last_asked, now, 5000))
		return false;
	last_asked = now;
	evbus_worker_begin(evbus_publisher_shutdown);
	changed = evbus_database_setting_changed("evbus.publish_events");
	evbus_worker_commit();
	if (changed)
		ereport(LOG,
				(errmsg("evbus: publisher for database \"%s\" starts again: the database's evbus.publish_events changed",
						dbname)));
	return changed;
}

/*
 * publisher_loop --- publish steps and waits until the worker is stopped
 * or goes idle.
 */
static void
publisher_loop(const char *dbname)
{
	WaitEventSet *wait_set = NULL;
	int			wait_fd = -1;
	MemoryContext step_cxt;
	bool		claim_wanted = true;

	/* what a step allocates is gone at the end of the step */
	step_cxt = AllocSetContextCreate(TopMemoryContext, "evbus publisher step",
									 ALLOCSET_DEFAULT_SIZES);

	for (;;)
	{
		bool		more;
		bool		woken;
		TimestampTz wake_at;
		WaitEvent	events[3];
		int			nevents;
		int			fd;

		if (evbus_stopping())
			worker_exit(stop_exit_code(), true);
		/* updated to a version unknown here, then back: start afresh */
		if (evbus_version_recheck(true))
			worker_exit(1, false);

		if (publish_events_changed(dbname))
			worker_exit(1, true);

		woken = evbus_worker_wake_pending();
		MemoryContextSwitchTo(step_cxt);
		more = evbus_publisher_step(claim_wanted);

		/* nothing to do for evbus.idle_timeout: exit until woken (idle.c) */
		if (evbus_publisher_may_idle(more || woken, &wake_at) &&
			evbus_worker_go_idle(EVBUS_PUBLISHER, wake_at))
		{
			ereport(LOG,
					(evbus_idle_gave_way() ?
					 errmsg("evbus: publisher for database \"%s\" exits: nothing to publish, and another database waits for a background worker slot",
							dbname) :
					 errmsg("evbus: publisher for database \"%s\" exits: nothing to publish for %d s (evbus.idle_timeout)",
							dbname, evbus_idle_timeout_s),
					 wake_at != 0 ?
					 errdetail("It starts again at the next commit that stages events, or at %s for an event or a dead letter's expiry due then.",
							   timestamptz_to_str(wake_at)) :
					 errdetail("It starts again at the next commit that stages events.")));
			worker_exit(0, true);
		}
		MemoryContextSwitchTo(TopMemoryContext);
		MemoryContextReset(step_cxt);

		fd = evbus_publisher_wakeup_fd();
		if (wait_set == NULL || fd != wait_fd)
		{
			if (wait_set)
				FreeWaitEventSet(wait_set);
			wait_set = build_wait_set(fd);
			wait_fd = fd;
		}
		nevents = WaitEventSetWait(wait_set, more ? 0 : evbus_publisher_wait_ms(),
								   events, lengthof(events), PG_WAIT_EXTENSION);

		/*
		 * Claim after the timer (the backstop for everything a commit does
		 * not announce); a staging commit that set the latch also set the
		 * wake flag in our slot, which the step reads itself (a latch reset
		 * here cannot lose it), so delivery reports alone claim nothing.
		 */
		claim_wanted = more || nevents == 0;
		ResetLatch(MyLatch);
		if (evbus_stopping())
			worker_exit(stop_exit_code(), true);
		CHECK_FOR_INTERRUPTS();

		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
			evbus_publisher_reconfigured();
			claim_wanted = true;
		}
	}
}

/*
 * evbus_publisher_main --- the publisher worker of the database main_arg.
 *
 * Once it runs, a stop cancels what it does (publisher_stop_signalled):
 * the ERROR comes here, where the worker aborts the transaction it was in
 * and exits as from its wait point, recording what Kafka acknowledged in
 * a transaction of its own (test 235_publisher_stop.pl).  So does an
 * operator's pg_cancel_backend, which is logged, and after which the
 * launcher starts the worker again (same test).  Any other ERROR goes on
 * to PostgreSQL's handler for background workers, which logs it and ends
 * the worker; the launcher starts it again.
 */
void
evbus_publisher_main(Datum main_arg)
{
	char	   *dbname = publisher_start(DatumGetObjectId(main_arg));

	pqsignal(SIGTERM, publisher_stop_signalled);
	PG_TRY();
	{
		publisher_loop(dbname);
	}
	PG_CATCH();
	{
		bool		stopping = evbus_stop_signalled;
		bool		cancelled = geterrcode() == ERRCODE_QUERY_CANCELED;

		if (!stopping && !cancelled)
			PG_RE_THROW();
		MemoryContextSwitchTo(TopMemoryContext);
		/* a stop's own cancel says nothing; any other error is logged */
		if (!(stopping && cancelled))
			EmitErrorReport();
		FlushErrorState();
		AbortOutOfAnyTransaction();
		worker_exit(stopping ? stop_exit_code() : 1, true);
	}
	PG_END_TRY();
}

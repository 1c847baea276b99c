/*-------------------------------------------------------------------------
 *
 * consumer_worker.c
 *	  The consumer worker of one database: receives the subscribed topics
 *	  and runs the handlers, in a process of its own so that a slow handler
 *	  never delays publishing.
 *
 * Started by the database's publisher worker.  One wait point: latch,
 * postmaster death, and the pipe librdkafka's consumers write to; the
 * timeout is the next due retry or evbus.poll_interval.  Each pass:
 * reload the subscriptions if they changed, receive and handle what the
 * consumers have, run due retries, and every few seconds record the high
 * watermarks (for the lag) and expire old inbox rows (sooner again while
 * more are due).  After evbus.idle_timeout with nothing to do it exits
 * until there is work (idle.c).
 *
 * SIGTERM is die(), as in a regular backend, because a handler is user
 * code: the handler timeout is a statement timeout, which a handler can
 * catch (EXCEPTION WHEN query_canceled) and ignore, but the FATAL that
 * CHECK_FOR_INTERRUPTS raises on termination cannot be caught.  So
 * pg_terminate_backend, a fast shutdown and DROP DATABASE end the worker
 * within moments even in a handler that never returns, and so does twice
 * the handler timeout (handler_timeout.c, test 232_terminate_handler.pl).
 * The interrupted batch's transaction is rolled back, offsets included:
 * the messages are handled again by the next consumer, as an attempt cut
 * short (attempt_marker.c).  Its Kafka consumers are closed on the way
 * out (consumer_exit).  Terminated while waiting, the worker leaves
 * cleanly from its wait point instead.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "consumer.h"
#include "kafka.h"

/*
 * consumer_exit --- at exit, also after a FATAL in a handler: leave the
 * consumer groups, so that the partitions move on at once rather than
 * after the group's session timeout.  A clean exit has left them already.
 */
static void
consumer_exit(int code, Datum arg)
{
	evbus_consumers_exit();
	evbus_attempt_marker_exit();
}

/*
 * consumer_leave --- leave cleanly (from the wait point).  The termination
 * request is consumed first, so that leaving the groups, which reads the
 * stored offsets, is not itself cut short by CHECK_FOR_INTERRUPTS.
 */
static void
consumer_leave(void)
{
	ProcDiePending = false;
	evbus_consumers_shutdown(false);
	evbus_attempt_marker_clear();
	proc_exit(evbus_worker_stop_requested() ? 0 : 1);
}

/* The database's name, for the log. */
static char consumer_dbname[NAMEDATALEN];

/*
 * consumer_idle --- leave for want of work (from the wait point): the
 * consumer went idle (idle.c) and holds no slot any more; leaving its
 * groups stores nothing new, as everything received is handled.
 */
static void
consumer_idle(TimestampTz next_due)
{
	ereport(LOG,
			(evbus_idle_gave_way() ?
			 errmsg("evbus: consumer for database \"%s\" exits: nothing to handle, and another database waits for a background worker slot",
					consumer_dbname) :
			 errmsg("evbus: consumer for database \"%s\" exits: nothing to handle for %d s (evbus.idle_timeout)",
					consumer_dbname, evbus_idle_timeout_s),
			 next_due != 0 ?
			 errdetail("It starts again when messages arrive in its topics, when woken, or at %s for a retry or the inbox's trim due then.",
					   timestamptz_to_str(next_due)) :
			 errdetail("It starts again when messages arrive in its topics, or when woken.")));
	ProcDiePending = false;
	/* caught up: the lag stays known, 0, while idle (test 238) */
	evbus_consumers_report_watermarks();
	evbus_consumers_shutdown(true);
	evbus_attempt_marker_clear();
	proc_exit(0);
}

/*
 * consumer_start --- connect to the database and take its consumer's slot;
 * exit quietly if the database may not have one or has no evbus, and
 * with a WARNING in a copy of another database (copy_guard.c).  Then
 * register what leaving needs (consumer_exit, and how the inbox lets go
 * of Kafka), open the attempt marker, and take back the attempts it
 * shows were counted for messages whose call did not run when the
 * previous consumer stopped.
 */
static void
consumer_start(Oid dboid)
{
	bool		has_extension;
	char	   *original;
	int64	   *uncharged_ids;
	int			uncharged;
	int64		charged;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	if (!evbus_db_may_start(dboid))
		proc_exit(0);
	BackgroundWorkerInitializeConnectionByOid(dboid, InvalidOid, 0);
	evbus_worker_settings();

	if (!evbus_claim_worker_slot(dboid, EVBUS_CONSUMER, MyLatch))
		proc_exit(0);
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	has_extension = OidIsValid(get_extension_oid("evbus", true));
	strlcpy(consumer_dbname, get_database_name(dboid), sizeof(consumer_dbname));
	CommitTransactionCommand();
	if (!has_extension)
		proc_exit(0);
	original = evbus_copy_of();
	if (original != NULL)
	{
		evbus_warn_copy(consumer_dbname, original);
		proc_exit(0);
	}
	evbus_db_worker_running(dboid, EVBUS_CONSUMER);
	/* only at an evbus version this library knows (ext_version.c) */
	evbus_version_wait(false);
	before_shmem_exit(consumer_exit, (Datum) 0);
	/* the inbox lets go of Kafka through this, never calling consumer.c */
	evbus_inbox_init(evbus_consumers_let_go);

	pgstat_report_appname("evbus consumer");
	evbus_attempt_marker_open();
	uncharged = evbus_attempt_marker_uncharged(&uncharged_ids);
	if (uncharged > 0)
		evbus_inbox_take_back_attempts(uncharged_ids, uncharged);
	charged = evbus_attempt_marker_charged();
	if (charged != 0)
		evbus_inbox_charge_attempt(charged);
	evbus_attempt_marker_forget_counted();
	evbus_subscriptions_watch();
	evbus_replays_watch();
}

/* The wait set: latch, postmaster death, librdkafka's queue descriptor. */
static WaitEventSet *
build_wait_set(void)
{
	WaitEventSet *set = CreateWaitEventSet(TopMemoryContext, 3);

	AddWaitEventToSet(set, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
	AddWaitEventToSet(set, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET, NULL, NULL);
	AddWaitEventToSet(set, WL_SOCKET_READABLE, evbus_consumers_wakeup_fd(), NULL, NULL);
	return set;
}

/*
 * How long to wait for the next pass (ms): not at all when the last poll
 * left messages to read, else up to the next due retry or the next trim
 * of an inbox with more rows due, at most evbus.poll_interval.
 */
static long
wait_timeout(bool more, TimestampTz next_due, TimestampTz next_trim)
{
	long		timeout = evbus_poll_interval_ms;
	TimestampTz now = GetCurrentTimestamp();

	if (more)
		return 0;
	if (next_due != 0)
		timeout = Max(0, Min(timeout, (long) ((next_due - now) / 1000) + 1));
	if (next_trim != 0)
		timeout = Max(0, Min(timeout, (long) ((next_trim - now) / 1000) + 1));
	return timeout;
}

/*
 * evbus_consumer_main --- the consumer worker of the database main_arg:
 * the loop described atop this file.
 */
void
evbus_consumer_main(Datum main_arg)
{
	Oid			dboid = DatumGetObjectId(main_arg);
	MemoryContext subs_cxt;
	List	   *subs = NIL;
	WaitEventSet *wait_set;
	TimestampTz next_due = 0;
	TimestampTz last_maintain = 0;
	TimestampTz next_trim = 0;
	TimestampTz idle_wake;
	TimestampTz last_dispatch = 0;
	TimestampTz next_look = 0;	/* see "Pending messages" below */
	bool		dispatch_now = true;
	char		brokers_seen[1024] = "";
	uint64		settings_seen = 0;	/* evbus_kafka_conf_fingerprint */
	bool		reloaded = false;
	MemoryContext step_cxt;

	consumer_start(dboid);
	subs_cxt = AllocSetContextCreate(TopMemoryContext, "evbus subscriptions",
									 ALLOCSET_DEFAULT_SIZES);
	step_cxt = AllocSetContextCreate(TopMemoryContext, "evbus consumer step",
									 ALLOCSET_DEFAULT_SIZES);
	wait_set = build_wait_set();

	for (;;)
	{
		WaitEvent	events[3];
		bool		busy;
		bool		more = false;
		bool		left_pending = false;
		TimestampTz now;
		char		buf[1024];
		const char *brokers;

		if (ProcDiePending)
			consumer_leave();
		/* updated to a version unknown here, then back: start afresh */
		if (evbus_version_recheck(false))
			consumer_leave();

		/* what a pass allocates is gone at its end */
		MemoryContextSwitchTo(TopMemoryContext);
		MemoryContextReset(step_cxt);
		MemoryContextSwitchTo(step_cxt);

		/* a wake from now on keeps the worker from going idle (idle.c) */
		busy = evbus_worker_wake_pending() || dispatch_now;
		evbus_worker_wake_consumed();
		/* woken by a change of the inbox or the subscriptions (inbox_due.c) */
		if (busy)
			evbus_inbox_walk_from_start();

		/* subscriptions or brokers changed: reload, resubscribe */
		evbus_worker_begin(evbus_consumers_let_go);
		brokers = evbus_resolve_brokers(buf, sizeof(buf));
		if (evbus_subscriptions_changed_since_load() ||
			strcmp(brokers ? brokers : "", brokers_seen) != 0 ||
			(reloaded && brokers &&
			 evbus_kafka_conf_fingerprint(brokers) != settings_seen))
		{
			MemoryContextReset(subs_cxt);
			subs = evbus_load_subscriptions(subs_cxt);
			evbus_worker_commit();
			evbus_forget_handler_plans();
			strlcpy(brokers_seen, brokers ? brokers : "", sizeof(brokers_seen));
			pgstat_report_activity(STATE_RUNNING, "subscribing");
			settings_seen = evbus_consumers_sync(subs);
			dispatch_now = true;
			evbus_inbox_walk_from_start();
		}
		else
			evbus_worker_commit();

		/* evbus.replay: rewind, then handle what comes again */
		if (evbus_replays_run())
			dispatch_now = true;

		pgstat_report_activity(STATE_RUNNING, "consuming");
		more = evbus_consumers_poll(subs, &left_pending);

		/*
		 * Pending messages: due retries, messages that waited for their key,
		 * attempts cut short by a crash, and messages requeued by
		 * evbus.retry() (which also sets this worker's latch).  Looked at
		 * when something may have changed, and at least every poll interval.
		 * A look that ran some looks again at once.  Messages the poll left
		 * pending are looked at after as long as the last look took: behind a
		 * key whose earlier message waits for its retry, every message of the
		 * key comes to that, and a look walks every pending row that runs
		 * nothing (inbox_due.c), so this keeps the walks to at most about
		 * half of the worker's time (bench/inbox_backlog.sh).
		 */
		now = GetCurrentTimestamp();
		if (left_pending && (next_due == 0 || next_due > Max(next_look, now)))
			next_due = Max(next_look, now);
		if (dispatch_now || (next_due != 0 && now >= next_due) ||
			TimestampDifferenceExceeds(last_dispatch, now, evbus_poll_interval_ms))
		{
			TimestampTz done;

			last_dispatch = now;
			pgstat_report_activity(STATE_RUNNING, "retrying");
			next_due = evbus_inbox_dispatch_due(subs);
			dispatch_now = false;
			done = GetCurrentTimestamp();
			next_look = done + (done - now);
		}
		if (TimestampDifferenceExceeds(last_maintain, now, 5000))
		{
			const char *changed = NULL;

			pgstat_report_activity(STATE_RUNNING, "recording high watermarks");
			evbus_consumers_report_watermarks();
			last_maintain = now;
			next_trim = now;

			/* a session takes its database's settings as it starts */
			evbus_worker_begin(evbus_consumers_let_go);
			if (evbus_database_setting_changed("evbus.consumer_groups"))
				changed = "evbus.consumer_groups";
			else if (evbus_database_setting_changed("evbus.subscribe_events"))
				changed = "evbus.subscribe_events";
			evbus_worker_commit();
			if (changed != NULL)
			{
				ereport(LOG,
						(errmsg("evbus: consumer for database \"%s\" starts again: the database's %s changed",
								consumer_dbname, changed)));
				consumer_leave();
			}
		}

		/*
		 * A trim deletes a bounded number of rows.  While it finds more due,
		 * it runs again after as long as it took: it keeps up with any rate
		 * of messages, in at most about half of the worker's time, and keeps
		 * the worker from going idle (test 236_inbox_retention.pl).
		 */
		if (next_trim != 0 && now >= next_trim)
		{
			TimestampTz started = GetCurrentTimestamp();

			pgstat_report_activity(STATE_RUNNING, "trimming the inbox");
			if (evbus_inbox_maintain())
			{
				TimestampTz done = GetCurrentTimestamp();

				next_trim = done + (done - started);
			}
			else
				next_trim = 0;
		}
		pgstat_report_activity(STATE_IDLE, NULL);

		/*
		 * nothing to do for evbus.idle_timeout: exit until woken, or until
		 * the next retry or trim is due (idle.c)
		 */
		idle_wake = next_due;
		if (evbus_consumer_try_idle(busy || more || left_pending || next_trim != 0,
									&idle_wake, settings_seen))
			consumer_idle(idle_wake);

		(void) WaitEventSetWait(wait_set, wait_timeout(more, next_due, next_trim),
								events, lengthof(events), PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		if (ProcDiePending)
			consumer_leave();
		CHECK_FOR_INTERRUPTS();
		reloaded = false;
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
			reloaded = true;	/* compare the Kafka settings once */
		}
	}
}

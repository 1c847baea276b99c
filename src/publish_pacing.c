/*-------------------------------------------------------------------------
 *
 * publish_pacing.c
 *	  When the publisher claims, serves delivery reports and records them.
 *
 * The rule: at most one claim per linger, and the linger follows what the
 * claims themselves carry, never a host-wide reading.  It starts at
 * evbus.publish_linger (1 ms): a commit that wakes the worker within that
 * interval of the last claim waits for its end, so that a step carries
 * the commits of that interval, and the first event after a quiet spell
 * is claimed at once.  A claim that carried MANY_EVENTS_PER_MS (20)
 * events or more per millisecond of the linger, i.e. staging of 20,000
 * events/s or more, or a worker held up that long, doubles the linger, up
 * to LONGEST_LINGER_MS (40 ms, or evbus.publish_linger if longer); a claim
 * that carried fewer halves it again, down to evbus.publish_linger.  The
 * threshold grows with the linger, so the linger stays long exactly while
 * staging stays that fast: under heavy staging each step carries hundreds
 * of events, and at 1,000 events/s a claim carries about one event per
 * millisecond of the linger, so a linger doubled by a stall is halved by
 * the next claim.  During a backlog (a claim that filled its batch) the
 * worker claims again at once whatever the linger.  Changes of the linger
 * are logged at DEBUG1 (test 097_saturated_cpus.pl).
 *
 * Why 1 ms and not more: bench/latency.sh at 1,000 events/s on the 2-core
 * benchmark machine, the same sitting: p50 1.8-1.9, p99 5.8-6.2 ms with
 * 1 ms against p50 4.1-4.2, p99 8.6-9.4 ms with 5 ms, for 1.5 to 1.7
 * times the worker's CPU per event.  Why not 0 (a claim at every wake):
 * there, 1.5 times the CPU of 5 ms and three to five times the produce
 * requests, the broker's JVM being the bottleneck.  Why no longer
 * the CPU pressure of the host (/proc/pressure/cpu, the former
 * evbus.publish_linger_busy, 200 ms): a host that runs PostgreSQL, the
 * application and a broker reports pressure much of the time, so the
 * switch was on in part of nearly every run at 1,000 events/s (p99 177 ms,
 * max 214 ms): a default must not trade the tail for CPU.  The setting is
 * still accepted, does nothing and draws a WARNING.
 *
 * A step woken only by delivery reports claims nothing; delivery reports
 * are served every REPORT_POLL_MS unless the worker waits for them, and
 * recorded FINISH_DELAY_MS after the first of them was served (or before
 * a sweep reads the outbox), in the transaction of whatever step comes
 * then, so that one recording covers many reports.  While claims linger
 * longer than those intervals, both wait as long as a claim: then one
 * step, one transaction, serves the reports, records them and claims
 * (report_poll_ms, finish_delay_ms).  A claim asked for stays asked for
 * until a step claims, so a commit's wake-up is never lost (test
 * 095_trickle_exactly_once.pl).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "utils/timestamp.h"

#include "evbus.h"
#include "publish.h"

/*
 * How long delivery reports wait to be recorded together (their rows stay
 * in the outbox meanwhile; a crash then publishes them again, with the
 * same message ids, as losing the worker's asynchronous commit would).
 */
#define FINISH_DELAY_MS 20

/*
 * How often delivery reports are served while nothing needs them at once.
 * librdkafka queues a report per produce request (one per partition and
 * claim); waking for each would cost the worker a wake-up and a step
 * several times per claim, and take the CPU from staging transactions at
 * every one.  They are needed at once only when the worker waits for them
 * (publisher.c, reports_urgent).
 */
#define REPORT_POLL_MS 10

/*
 * A claim of this many events or more per millisecond of the linger
 * lengthens it (see above); it grows to at most LONGEST_LINGER_MS, or
 * evbus.publish_linger if that is longer.
 */
#define MANY_EVENTS_PER_MS 20
#define LONGEST_LINGER_MS 40

static bool backlog = true;		/* the last claim left rows to claim */
static bool claim_requested = true; /* a commit (or the timer) asked for one */
static TimestampTz last_claim_at = 0;
static TimestampTz last_served_at = 0;	/* delivery reports last served */
static int	grown_linger_ms = 0;	/* the linger grown by large claims */
static int	warned_linger_busy = 0; /* evbus.publish_linger_busy warned of */

/*
 * longest_linger_ms --- how far large claims may lengthen the linger.
 */
static int
longest_linger_ms(void)
{
	return Max(evbus_publish_linger_ms, LONGEST_LINGER_MS);
}

/*
 * linger_ms --- how long commits gather between two claims: the grown
 * linger, within evbus.publish_linger and its bound (both may change on
 * a reload).
 */
static int
linger_ms(void)
{
	return Min(Max(grown_linger_ms, evbus_publish_linger_ms),
			   longest_linger_ms());
}

/*
 * warn_deprecated --- evbus.publish_linger_busy does nothing any more;
 * say so once per value set, from the publisher only (not from every
 * backend that reads the configuration).
 */
static void
warn_deprecated(void)
{
	if (evbus_publish_linger_busy_ms == warned_linger_busy)
		return;
	warned_linger_busy = evbus_publish_linger_busy_ms;
	if (evbus_publish_linger_busy_ms != 0)
		ereport(WARNING,
				(errcode(ERRCODE_WARNING_DEPRECATED_FEATURE),
				 errmsg("evbus.publish_linger_busy is deprecated and has no effect"),
				 errdetail("The publisher lingers longer only while its own claims carry many events, whatever the CPU pressure of the host."),
				 errhint("Remove evbus.publish_linger_busy from the configuration; evbus.publish_linger sets the pacing.")));
}

/*
 * report_poll_ms, finish_delay_ms --- how often delivery reports are
 * served when nothing waits for them, and how long served reports wait to
 * be recorded: REPORT_POLL_MS and FINISH_DELAY_MS, or as long as claims
 * linger if that is longer, so that a step of its own for reports and a
 * transaction of its own for recording them do not cost the worker more
 * than the claims.
 */
static int
report_poll_ms(void)
{
	return Max(REPORT_POLL_MS, linger_ms());
}

static int
finish_delay_ms(void)
{
	return Max(FINISH_DELAY_MS, linger_ms());
}

/* A commit or the poll timer asks for a claim. */
void
evbus_pacing_request_claim(void)
{
	claim_requested = true;
}

/*
 * evbus_pacing_claim_due --- is a claim due now?  During a backlog, or
 * when one was asked for and the linger since the last one is over.
 */
bool
evbus_pacing_claim_due(TimestampTz now)
{
	warn_deprecated();
	return backlog ||
		(claim_requested &&
		 TimestampDifferenceExceeds(last_claim_at, now, linger_ms()));
}

/*
 * evbus_pacing_claimed --- the step claimed at now and produced nevents;
 * more: rows wait.  A claim of MANY_EVENTS_PER_MS or more events per
 * millisecond of the linger doubles it (up to its bound), a smaller one
 * halves it (down to evbus.publish_linger).
 */
void
evbus_pacing_claimed(TimestampTz now, bool more, int nevents)
{
	int			before = linger_ms();
	int			after;

	if (nevents >= MANY_EVENTS_PER_MS * Max(before, 1))
		grown_linger_ms = Min(2 * before, longest_linger_ms());
	else
		grown_linger_ms = before / 2;
	after = linger_ms();
	if (after > before)
		elog(DEBUG1, "evbus: a claim carried %d events: claims linger %d ms",
			 nevents, after);
	else if (after < before && after == evbus_publish_linger_ms)
		elog(DEBUG1, "evbus: a claim carried %d events: claims linger evbus.publish_linger (%d ms) again",
			 nevents, after);

	backlog = more;
	claim_requested = false;
	last_claim_at = now;
}

/* Did the last claim leave rows to claim? */
bool
evbus_pacing_backlog(void)
{
	return backlog;
}

/* Delivery reports were served at now. */
void
evbus_pacing_served(TimestampTz now)
{
	last_served_at = now;
}

/*
 * evbus_pacing_finish_due --- must the nunrecorded reports, the oldest
 * served at since, be recorded now?  When there are a batch of them, when
 * there is no producer (nothing else to wait for), or after the delay.
 */
bool
evbus_pacing_finish_due(int nunrecorded, TimestampTz since, bool producer_up,
						TimestampTz now)
{
	return nunrecorded > 0 &&
		(nunrecorded >= evbus_batch_size || !producer_up ||
		 TimestampDifferenceExceeds(since, now, finish_delay_ms()));
}

/* Milliseconds from now until deadline (rounded up), 0 if past. */
static long
ms_until(TimestampTz deadline)
{
	long		secs;
	int			usecs;

	TimestampDifference(GetCurrentTimestamp(), deadline, &secs, &usecs);
	return secs * 1000 + (usecs + 999) / 1000;
}

/*
 * evbus_pacing_wait_ms --- how long the worker may sleep: the poll
 * interval, or less while reports are expected (events in flight), a
 * claim lingers, or nunrecorded reports (the oldest served at since) wait
 * to be recorded.
 */
long
evbus_pacing_wait_ms(bool reports_expected, bool producer_up,
					 int nunrecorded, TimestampTz since)
{
	long		wait = evbus_poll_interval_ms;

	if (reports_expected && producer_up)
		wait = Min(wait, ms_until(TimestampTzPlusMilliseconds(last_served_at,
															  report_poll_ms())));

	if (claim_requested && producer_up)
		wait = Min(wait, ms_until(TimestampTzPlusMilliseconds(last_claim_at,
															  linger_ms())));
	if (nunrecorded > 0)
		wait = Min(wait, ms_until(TimestampTzPlusMilliseconds(since,
															  finish_delay_ms())));
	return wait;
}

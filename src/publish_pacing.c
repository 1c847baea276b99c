/*-------------------------------------------------------------------------
 *
 * publish_pacing.c
 *	  When the publisher claims, serves delivery reports and records them.
 *
 * At a trickle the steps are made to carry several events each: a commit
 * that wakes the worker within evbus.publish_linger of the last claim
 * waits for the end of that interval (at most one claim per interval;
 * evbus.publish_linger_busy while the CPUs are contended, see
 * cpu_pressure.c); a step woken only by delivery reports claims nothing;
 * and delivery reports are served every REPORT_POLL_MS unless the worker
 * waits for them, and recorded FINISH_DELAY_MS after the first of them was
 * served (or before a sweep reads the outbox), in the transaction of
 * whatever step comes then, so that one recording covers many reports.
 * While claims linger longer than those intervals, both wait as long as a
 * claim: then one step, one transaction, serves the reports, records them
 * and claims (report_poll_ms, finish_delay_ms).  A claim asked for stays
 * asked for until a step claims, so a commit's wake-up is never lost
 * (test 095_trickle_exactly_once.pl).
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

static bool backlog = true;		/* the last claim left rows to claim */
static bool claim_requested = true; /* a commit (or the timer) asked for one */
static TimestampTz last_claim_at = 0;
static TimestampTz last_served_at = 0;	/* delivery reports last served */

/*
 * linger_ms --- how long commits gather between two claims: longer while
 * the CPUs are contended (cpu_pressure.c), when every step the worker saves
 * is CPU time for the transactions.
 */
static int
linger_ms(TimestampTz now)
{
	if (evbus_publish_linger_busy_ms > evbus_publish_linger_ms &&
		evbus_cpu_busy(now))
		return evbus_publish_linger_busy_ms;
	return evbus_publish_linger_ms;
}

/*
 * report_poll_ms, finish_delay_ms --- how often delivery reports are
 * served when nothing waits for them, and how long served reports wait to
 * be recorded: REPORT_POLL_MS and FINISH_DELAY_MS, or as long as claims
 * linger if that is longer.  With the CPUs contended (a 200 ms linger), a
 * step of its own for reports every 10 ms and a transaction of its own
 * for recording them every 20 ms cost the worker more than the claims.
 */
static int
report_poll_ms(TimestampTz now)
{
	return Max(REPORT_POLL_MS, linger_ms(now));
}

static int
finish_delay_ms(TimestampTz now)
{
	return Max(FINISH_DELAY_MS, linger_ms(now));
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
	return backlog ||
		(claim_requested &&
		 TimestampDifferenceExceeds(last_claim_at, now, linger_ms(now)));
}

/* evbus_pacing_claimed --- the step claimed at now; more: rows wait. */
void
evbus_pacing_claimed(TimestampTz now, bool more)
{
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
		 TimestampDifferenceExceeds(since, now, finish_delay_ms(now)));
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
	TimestampTz now = GetCurrentTimestamp();

	if (reports_expected && producer_up)
		wait = Min(wait, ms_until(TimestampTzPlusMilliseconds(last_served_at,
															  report_poll_ms(now))));

	if (claim_requested && producer_up)
		wait = Min(wait, ms_until(TimestampTzPlusMilliseconds(last_claim_at,
															  linger_ms(now))));
	if (nunrecorded > 0)
		wait = Min(wait, ms_until(TimestampTzPlusMilliseconds(since,
															  finish_delay_ms(now))));
	return wait;
}

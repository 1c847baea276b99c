/*-------------------------------------------------------------------------
 *
 * cpu_wait.c
 *	  Are the server's CPUs saturated?  Then the publisher batches harder.
 *
 * Each claim of the outbox costs more than its events: a transaction,
 * wake-ups of the worker and of librdkafka's threads, and a produce
 * request the broker must serve (a JVM, often on the same host in small
 * set-ups).  With idle CPUs nobody pays for that, and the short
 * evbus.publish_linger keeps the commit -> Kafka latency near 3 ms.  When
 * every CPU is taken it comes out of the throughput of the transactions
 * that stage the events, so the publisher can then linger
 * evbus.publish_linger_busy: fewer, larger steps, the same events.  Off by
 * default (0): with the broker on the same 2 cores, its JVM's bursts made
 * the CPUs look saturated now and then at 1,000 events/s, and each such
 * spell put up to 50 ms on the latency of the events caught in it (p90 of
 * bench/latency.sh 4.2 -> 21.5 ms, p99 7.3 -> 52.4 ms; p50 unchanged).
 *
 * The measure: Linux accounts, per thread, the time spent waiting on a run
 * queue and the number of times the thread got a CPU
 * (/proc/thread-self/schedstat: "run ns, run-queue wait ns, time
 * slices").  Their ratio is the scheduling delay of one wake-up of the
 * worker: a few tens of microseconds when a CPU is free (13-21 us on the
 * 2-core benchmark machine at 1,000 events/s), hundreds when every CPU is
 * taken (87-243 us under pgbench with 8 clients of short transactions).
 * It does not depend on how often the worker wakes, so lingering longer
 * does not by itself end the state it was chosen for (the share of time
 * spent waiting would: with fewer wake-ups the worker runs longer each
 * time).  Smoothed over 250 ms windows, with hysteresis.  Where the file
 * does not exist (other systems, kernels without schedstats) nothing is
 * measured and the publisher keeps evbus.publish_linger.
 *
 * Tried and left out: also counting the server as busy when 5 or more
 * other backends write at once (PostgreSQL's commit_siblings test,
 * MinimumActiveBackends).  Under bench/commit_overhead.sh, whose
 * bottleneck is the WAL flush rather than the CPUs, that was true at only
 * 6-13 % of the worker's steps, against 62 % under a similar pgbench load
 * on another cluster: too fragile a threshold to rest a default on.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <fcntl.h>
#include <unistd.h>

#include "utils/timestamp.h"

#include "evbus.h"

/* How often the delay is measured, and how it is smoothed. */
#define WINDOW_MS 250
#define SMOOTHING 0.5

/* Hysteresis: busy from the first value on, until below the second. */
#define CPU_WAIT_BUSY_FROM_US 100.0
#define CPU_WAIT_BUSY_UNTIL_US 50.0

static TimestampTz window_start = 0;
static bool schedstat_unavailable = false;
static uint64 last_wait_ns = 0;
static uint64 last_slices = 0;
static double wait_per_wakeup_us = 0.0;
static bool busy = false;

/*
 * read_schedstat --- this thread's total run-queue wait (ns) and number of
 * time slices.  False when the kernel does not provide them.
 */
static bool
read_schedstat(uint64 *wait_ns, uint64 *slices)
{
#ifdef __linux__
	char		buf[128];
	ssize_t		len;
	int			fd;
	unsigned long long run,
				wait,
				count;

	fd = open("/proc/thread-self/schedstat", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	len = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (len <= 0)
		return false;
	buf[len] = '\0';
	if (sscanf(buf, "%llu %llu %llu", &run, &wait, &count) != 3)
		return false;
	*wait_ns = wait;
	*slices = count;
	return true;
#else
	return false;
#endif
}

/*
 * evbus_cpu_busy --- are the CPUs saturated, as seen from this thread?
 *
 * Called whenever the publisher needs its linger; reads the kernel's
 * counters at most once per window (they count every wake-up, however
 * often this is called).  A window in which the worker hardly woke keeps the
 * previous answer, unless it lasted a second: then there is no load to
 * batch.
 */
bool
evbus_cpu_busy(TimestampTz now)
{
	bool		was_busy = busy;
	uint64		wait_ns,
				slices;

	if (schedstat_unavailable ||
		!TimestampDifferenceExceeds(window_start, now, WINDOW_MS))
		return busy;
	if (!read_schedstat(&wait_ns, &slices))
	{
		schedstat_unavailable = true;
		busy = false;
		return false;
	}

	if (window_start != 0 && slices - last_slices >= 4)
	{
		double		delay_us = (double) (wait_ns - last_wait_ns) / 1000.0 /
			(double) (slices - last_slices);

		wait_per_wakeup_us = SMOOTHING * delay_us +
			(1.0 - SMOOTHING) * wait_per_wakeup_us;
		if (wait_per_wakeup_us >= CPU_WAIT_BUSY_FROM_US)
			busy = true;
		else if (wait_per_wakeup_us < CPU_WAIT_BUSY_UNTIL_US)
			busy = false;
	}
	else if (window_start != 0 &&
			 TimestampDifferenceExceeds(window_start, now, 1000))
	{
		busy = false;
		wait_per_wakeup_us = 0.0;
	}
	window_start = now;
	last_wait_ns = wait_ns;
	last_slices = slices;

	if (busy && !was_busy)
		elog(DEBUG1, "evbus: CPUs saturated (the worker waits %.0f us for a CPU at each wake-up): lingering evbus.publish_linger_busy",
			 wait_per_wakeup_us);
	else if (!busy && was_busy)
		elog(DEBUG1, "evbus: CPUs no longer saturated (%.0f us per wake-up)",
			 wait_per_wakeup_us);
	return busy;
}

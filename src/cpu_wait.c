/*-------------------------------------------------------------------------
 *
 * cpu_wait.c
 *	  Are the server's CPUs saturated?  Measured from the worker's own
 *	  thread: how long, on average, it waited for a CPU each time it woke.
 *
 * When the CPUs are saturated (more runnable processes than cores), every
 * wake-up of the worker and of librdkafka's threads, and every produce
 * request the broker serves, takes CPU time from the transactions that
 * stage the events.  The publisher then lets commits gather longer
 * (evbus.publish_linger_busy): fewer, larger steps, the same events.  On a
 * server with idle CPUs the wake-ups cost nobody, and the short
 * evbus.publish_linger keeps the latency low.
 *
 * The measure: Linux accounts, per thread, the time spent waiting on a run
 * queue and the number of times the thread got a CPU
 * (/proc/thread-self/schedstat: "run ns, run-queue wait ns, time slices").
 * Their ratio is the scheduling delay of one wake-up: a few tens of
 * microseconds when a CPU is free (measured on the 2-core benchmark
 * machine: 13-21 us at 1,000 events/s), hundreds when every CPU is taken
 * (87-243 us under pgbench with 8 clients).  Unlike the share of time
 * spent waiting, it does not depend on how often the worker wakes, so
 * lingering longer does not by itself end the state it was chosen for.
 * Where the file does not exist (other systems, kernels without
 * schedstats), nothing is measured and the publisher keeps
 * evbus.publish_linger.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <fcntl.h>
#include <unistd.h>

#include "utils/timestamp.h"

#include "evbus.h"

/* How often the delay is measured, and how it is smoothed. */
#define CPU_WAIT_WINDOW_MS 250
#define CPU_WAIT_SMOOTHING 0.5

/* Hysteresis: busy from this delay per wake-up on, until below the second. */
#define CPU_WAIT_BUSY_FROM_US 100.0
#define CPU_WAIT_BUSY_UNTIL_US 50.0

static bool unavailable = false;
static TimestampTz last_sample_at = 0;
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
 * Cheap to call at every step: it reads the kernel's counters at most once
 * per window.  A window in which the thread hardly woke keeps the previous
 * answer, unless it lasted a second: then there is no load to batch.
 */
bool
evbus_cpu_busy(TimestampTz now)
{
	uint64		wait_ns,
				slices;

	if (unavailable ||
		!TimestampDifferenceExceeds(last_sample_at, now, CPU_WAIT_WINDOW_MS))
		return busy;

	if (!read_schedstat(&wait_ns, &slices))
	{
		unavailable = true;
		busy = false;
		return false;
	}
	if (last_sample_at != 0 && slices - last_slices >= 4)
	{
		double		delay_us = (double) (wait_ns - last_wait_ns) / 1000.0 /
			(double) (slices - last_slices);

		wait_per_wakeup_us = CPU_WAIT_SMOOTHING * delay_us +
			(1.0 - CPU_WAIT_SMOOTHING) * wait_per_wakeup_us;
		if (!busy && wait_per_wakeup_us >= CPU_WAIT_BUSY_FROM_US)
		{
			busy = true;
			elog(DEBUG1, "evbus: CPUs saturated (the worker waits %.0f us for a CPU at each wake-up)",
				 wait_per_wakeup_us);
		}
		else if (busy && wait_per_wakeup_us < CPU_WAIT_BUSY_UNTIL_US)
		{
			busy = false;
			elog(DEBUG1, "evbus: CPUs no longer saturated (%.0f us per wake-up)",
				 wait_per_wakeup_us);
		}
	}
	else if (busy && TimestampDifferenceExceeds(last_sample_at, now, 1000))
	{
		/* the worker hardly woke for a second: no load to batch */
		busy = false;
		wait_per_wakeup_us = 0.0;
		elog(DEBUG1, "evbus: CPUs no longer saturated (the worker was idle)");
	}
	last_sample_at = now;
	last_wait_ns = wait_ns;
	last_slices = slices;
	return busy;
}

/*-------------------------------------------------------------------------
 *
 * server_load.c
 *	  Is the server busy?  Then the publisher batches harder.
 *
 * Each claim of the outbox costs more than its events: a transaction (a
 * snapshot, a commit, the ProcArray lock), the deletes of its events on
 * the pages staging writes to, wake-ups of the worker and of librdkafka's
 * threads, and a produce request the broker must serve (a JVM, often on
 * the same host in small set-ups).  On a quiet server nobody pays for
 * that, and the short evbus.publish_linger keeps the commit -> Kafka
 * latency near 3 ms.  On a busy one it comes out of the throughput of the
 * transactions that stage the events, so the publisher then lingers
 * evbus.publish_linger_busy: fewer, larger steps, the same events.
 *
 * "Busy" is either of two measures, each smoothed over 250 ms windows with
 * hysteresis:
 *
 * Saturated CPUs.  Linux accounts, per thread, the time spent waiting on
 * a run queue and the number of times the thread got a CPU
 * (/proc/thread-self/schedstat: "run ns, run-queue wait ns, time
 * slices").  Their ratio is the scheduling delay of one wake-up of the
 * worker: a few tens of microseconds when a CPU is free (13-21 us on the
 * 2-core benchmark machine at 1,000 events/s), hundreds when every CPU is
 * taken (87-243 us under pgbench with 8 clients of short transactions).
 * It does not depend on how often the worker wakes, so lingering longer
 * does not by itself end the state it was chosen for (the share of time
 * spent waiting would).  Not measured where the file does not exist.
 *
 * Many concurrent writers.  The share of the worker's steps at which at
 * least BUSY_WRITERS other backends had a transaction writing (an xid)
 * and were not waiting for a lock: PostgreSQL's own test of a busy server
 * for commit_delay (MinimumActiveBackends, commit_siblings = 5).  This is
 * the busy server whose bottleneck is the WAL flush rather than the CPUs
 * (8 pgbench clients of TPC-B-like transactions with synchronous commit:
 * the CPUs stay a third idle, yet every claim competes with them).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <fcntl.h>
#include <unistd.h>

#include "storage/procarray.h"
#include "utils/timestamp.h"

#include "evbus.h"

/* How often the measures are taken, and how they are smoothed. */
#define WINDOW_MS 250
#define SMOOTHING 0.5

/* Hysteresis: busy from the first value on, until below the second. */
#define CPU_WAIT_BUSY_FROM_US 100.0
#define CPU_WAIT_BUSY_UNTIL_US 50.0
#define WRITERS_BUSY_FROM 0.5
#define WRITERS_BUSY_UNTIL 0.25

/* Other backends writing at once that make a busy server (commit_siblings). */
#define BUSY_WRITERS 5

static TimestampTz window_start = 0;
static bool busy = false;

/* saturated CPUs */
static bool schedstat_unavailable = false;
static uint64 last_wait_ns = 0;
static uint64 last_slices = 0;
static double wait_per_wakeup_us = 0.0;
static bool cpus_busy = false;

/* concurrent writers: samples of this window, and the smoothed share */
static int	writer_samples = 0;
static int	writer_hits = 0;
static double writers_share = 0.0;
static bool writers_busy = false;

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

/* End of a window: the worker's scheduling delay per wake-up. */
static void
measure_cpus(bool first)
{
	uint64		wait_ns,
				slices;

	if (schedstat_unavailable)
		return;
	if (!read_schedstat(&wait_ns, &slices))
	{
		schedstat_unavailable = true;
		cpus_busy = false;
		return;
	}
	if (!first && slices - last_slices >= 4)
	{
		double		delay_us = (double) (wait_ns - last_wait_ns) / 1000.0 /
			(double) (slices - last_slices);

		wait_per_wakeup_us = SMOOTHING * delay_us +
			(1.0 - SMOOTHING) * wait_per_wakeup_us;
		if (wait_per_wakeup_us >= CPU_WAIT_BUSY_FROM_US)
			cpus_busy = true;
		else if (wait_per_wakeup_us < CPU_WAIT_BUSY_UNTIL_US)
			cpus_busy = false;
	}
	last_wait_ns = wait_ns;
	last_slices = slices;
}

/* End of a window: how often many other transactions were writing. */
static void
measure_writers(void)
{
	if (writer_samples >= 4)
	{
		double		share = (double) writer_hits / (double) writer_samples;

		writers_share = SMOOTHING * share + (1.0 - SMOOTHING) * writers_share;
		if (writers_share >= WRITERS_BUSY_FROM)
			writers_busy = true;
		else if (writers_share < WRITERS_BUSY_UNTIL)
			writers_busy = false;
	}
	writer_samples = writer_hits = 0;
}

/*
 * evbus_server_busy --- is the server busy enough to batch harder?
 *
 * Called at the worker's steps: each call samples the concurrent writers;
 * at most once per window both measures are updated.  A window in which
 * the worker hardly woke keeps the previous answer, unless it lasted a
 * second: then there is no load to batch.
 */
bool
evbus_server_busy(TimestampTz now)
{
	bool		was_busy = busy;

	writer_samples++;
	if (MinimumActiveBackends(BUSY_WRITERS))
		writer_hits++;

	if (!TimestampDifferenceExceeds(window_start, now, WINDOW_MS))
		return busy;

	if (window_start != 0 && writer_samples < 4 &&
		TimestampDifferenceExceeds(window_start, now, 1000))
	{
		cpus_busy = writers_busy = false;
		wait_per_wakeup_us = writers_share = 0.0;
		writer_samples = writer_hits = 0;
		measure_cpus(true);
	}
	else
	{
		measure_cpus(window_start == 0);
		measure_writers();
	}
	window_start = now;
	busy = cpus_busy || writers_busy;

	if (busy && !was_busy)
		elog(DEBUG1, "evbus: server busy (the worker waits %.0f us for a CPU at each wake-up; %d or more other transactions were writing at %.0f%% of its steps): lingering evbus.publish_linger_busy",
			 wait_per_wakeup_us, BUSY_WRITERS, writers_share * 100.0);
	else if (!busy && was_busy)
		elog(DEBUG1, "evbus: server no longer busy (%.0f us per wake-up, %.0f%% of steps with %d or more writers)",
			 wait_per_wakeup_us, writers_share * 100.0, BUSY_WRITERS);
	return busy;
}

/*-------------------------------------------------------------------------
 *
 * cpu_pressure.c
 *	  Are the server's CPUs contended?  Then the publisher batches harder.
 *
 * Each claim of the outbox costs more than its events: a transaction,
 * wake-ups of the worker and of librdkafka's threads, and a produce
 * request the broker must serve (a JVM, often on the same host in small
 * set-ups).  With idle CPUs nobody pays for that, and the short
 * evbus.publish_linger keeps the commit -> Kafka latency near 4 ms.  When
 * runnable tasks queue for the CPUs it comes out of the throughput of the
 * transactions that stage the events, and more than its share: on the
 * 2-core benchmark machine, under bench/commit_overhead.sh's 8 TPC-B
 * clients, a process taking 10 % of one core cut their throughput by 7 %
 * (each transaction waits for the branch row its predecessor holds, so a
 * CPU taken from that one stalls the queue behind it).  The publisher then
 * lingers evbus.publish_linger_busy: fewer, larger steps, the same events.
 *
 * The measure: Linux's pressure stall information for the CPU
 * (/proc/pressure/cpu, line "some", field total=): the time, in
 * microseconds, during which at least one runnable task waited for a CPU.
 * Its growth over a window divided by the window is the share of time
 * something waited.  On the benchmark machine, over 1-s windows: 7-19 % at
 * 1,000 events/s with the broker on the same 2 cores (bench/latency.sh),
 * 34-55 % under bench/commit_overhead.sh.  Smoothed, with hysteresis: busy
 * from CONTENDED_FROM, until below CONTENDED_UNTIL.  Unlike the worker's
 * own scheduling delay (measured here before), it does not depend on when
 * the worker happens to wake: that delay was below its threshold half the
 * time under bench/commit_overhead.sh (median 62 us per wake-up) and above
 * it in bursts at 1,000 events/s (p99 113 us over 250-ms windows), where a
 * longer linger only adds latency.
 *
 * Without the file (other systems, kernels built without PSI or booted
 * with psi=0) nothing is measured and the publisher keeps
 * evbus.publish_linger.  The file covers the whole host (or, in a
 * container, what the kernel shows it): CPUs taken by other programs count
 * too, and they slow the transactions alike.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <fcntl.h>
#include <unistd.h>

#include "utils/timestamp.h"

#include "evbus.h"

/* How often the pressure is read, and how it is smoothed. */
#define WINDOW_MS 1000
#define SMOOTHING 0.5

/* Hysteresis, in percent of the time something waited for a CPU. */
#define CONTENDED_FROM 30.0
#define CONTENDED_UNTIL 20.0

static TimestampTz window_start = 0;
static bool pressure_unavailable = false;
static uint64 last_stall_us = 0;
static double stall_pct = 0.0;
static bool busy = false;

/*
 * read_cpu_pressure --- the host's total CPU stall time ("some"), in
 * microseconds.  False when the kernel does not provide it.
 */
static bool
read_cpu_pressure(uint64 *stall_us)
{
#ifdef __linux__
	char		buf[256];
	ssize_t		len;
	int			fd;
	char	   *total;
	unsigned long long value;

	fd = open("/proc/pressure/cpu", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	len = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (len <= 0)
		return false;
	buf[len] = '\0';
	/* "some avg10=0.00 avg60=0.00 avg300=0.00 total=12345\n..." */
	if (strncmp(buf, "some ", 5) != 0 ||
		(total = strstr(buf, " total=")) == NULL ||
		sscanf(total, " total=%llu", &value) != 1)
		return false;
	*stall_us = value;
	return true;
#else
	return false;
#endif
}

/*
 * evbus_cpu_busy --- are the CPUs contended?
 *
 * Called whenever the publisher needs its linger; reads the kernel's
 * counter at most once per window.
 */
bool
evbus_cpu_busy(TimestampTz now)
{
	bool		was_busy = busy;
	uint64		stall_us;

	if (pressure_unavailable ||
		!TimestampDifferenceExceeds(window_start, now, WINDOW_MS))
		return busy;
	if (!read_cpu_pressure(&stall_us))
	{
		pressure_unavailable = true;
		busy = false;
		return false;
	}

	if (window_start != 0)
	{
		double		window_us = (double) (now - window_start);
		double		pct = 100.0 * (double) (stall_us - last_stall_us) / window_us;

		stall_pct = SMOOTHING * pct + (1.0 - SMOOTHING) * stall_pct;
		if (stall_pct >= CONTENDED_FROM)
			busy = true;
		else if (stall_pct < CONTENDED_UNTIL)
			busy = false;
	}
	window_start = now;
	last_stall_us = stall_us;

	if (busy && !was_busy)
		elog(DEBUG1, "evbus: CPUs contended (something waited for a CPU %.0f%% of the time): lingering evbus.publish_linger_busy",
			 stall_pct);
	else if (!busy && was_busy)
		elog(DEBUG1, "evbus: CPUs no longer contended (%.0f%%)", stall_pct);
	return busy;
}

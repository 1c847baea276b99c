/*-------------------------------------------------------------------------
 *
 * idle.c
 *	  When a database's worker exits for want of work, so that an idle
 *	  database costs no process and no broker connection.
 *
 * A worker that has had nothing to do for evbus.idle_timeout looks once
 * more, with a fresh snapshot, and if there is still nothing it marks its
 * role of the database idle in shared memory and exits (shmem.c,
 * evbus_worker_go_idle).  While another worker waits for a background
 * worker slot, one second of nothing to do is enough, and one quiet worker
 * leaves for each waiting one.  The launcher does
 * not start an idle worker again until it is woken: by a COMMIT that
 * staged events or put work back (the wake that would have set its latch,
 * evbus_wake_worker_role), by the time remembered when it went idle (the
 * earliest deliver_at still to come, the next retry), by CREATE
 * EXTENSION, or by a reload that changes the Kafka settings (launcher.c).
 *
 * The consumer has nothing to do when no retry is due within
 * evbus.idle_timeout, no message waits in the inbox, and it has read every
 * partition it was assigned up to its high watermark, the same ones twice
 * in a row an idle timeout apart (so a consumer that receives nothing for
 * one idle timeout goes idle after two); a subscribed topic that Kafka
 * said does not exist is watched until it does.  It leaves those
 * partitions and their high watermarks in shared memory: the launcher
 * watches them with a Kafka client of its own and wakes the consumer at
 * the first message there, or when the topic is created (wake_watch.c).
 * Its group rebalances meanwhile.  A spare member of a group, which has no
 * partition of a topic that exists because other members (other
 * databases) hold them all, does not go idle: the next message there
 * would wake it, and each return would rebalance the group.  It stays, as
 * Kafka's spare consumers do, to take the partitions over when a member
 * leaves -- unless another database waits for its slot; then the topic's
 * first partition is watched from the start.
 *
 * The publisher has nothing to do when no outbox row is left to publish
 * whose deliver_at has come or comes within evbus.idle_timeout.  A
 * prepared transaction does not keep it: COMMIT PREPARED, which runs no
 * commit callback of the session that staged the events, wakes the
 * publisher itself (evbus.c).
 *
 * What ages out is deleted by the workers: handled messages of the inbox
 * (the consumer) and dead letters (the publisher).  An idle worker is
 * started again when the oldest of them falls due, but not sooner than an
 * hour from then (or the retention, if shorter), so that a database that
 * handles a message now and then is not woken for each
 * (evbus_idle_cleanup_wake, test 237_idle_trim.pl).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/array.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "consumer.h"
#include "outbox.h"
#include "publisher.h"

/*
 * An idle consumer with a subscribed topic of which it had no partition
 * (a spare member that gave its slot to another database, or a topic that
 * did not exist) wakes this many idle timeouts later to look
 * again: the launcher watches only the first partition of such a topic,
 * and a message in another one would otherwise wait for some other wake
 * (test 238_idle_databases.pl).  A topic Kafka said does not exist wakes
 * the consumer when it is created (test 240_idle_new_topic.pl).
 */
#define UNASSIGNED_RECHECK 5

/* Rows of a table listed when looking for pending ones: more is busy. */
#define IDLE_PENDING_MAX 1000

/*
 * While a worker of another database waits for a background worker slot,
 * a worker leaves after this much quiet instead of evbus.idle_timeout:
 * with more databases than slots, databases take turns at the pace of
 * their work, not of the idle timeout (with 16 slots, a burst in 100
 * databases waited for slots to free up one idle timeout after another;
 * test 239_slots_take_turns.pl).
 */
#define QUIET_WHILE_SLOT_WANTED_MS 1000

/*
 * Since when the worker has had nothing to do (0: busy just now), and
 * when it last looked whether it may leave in this quiet spell.
 */
static TimestampTz quiet_since = 0;
static TimestampTz looked_at = 0;

/* The quiet of the last look was the short one: a slot was wanted. */
static bool gave_way = false;

/* The consumer said in the log that it stays as a spare member. */
static bool spare_logged = false;

/* The worker had work: the idle timeout starts again. */
void
evbus_idle_reset(void)
{
	quiet_since = 0;
	looked_at = 0;
}

/*
 * quiet_long_enough --- is it time to look whether the worker may leave:
 * has it had nothing to do (busy false) for evbus.idle_timeout since its
 * quiet spell began or since its last look, or for
 * QUIET_WHILE_SLOT_WANTED_MS while another worker waits for a slot?
 * Never with evbus.idle_timeout = 0.
 */
static bool
quiet_long_enough(bool busy)
{
	TimestampTz now = GetCurrentTimestamp();
	int			quiet_ms = evbus_idle_timeout_s * 1000;

	if (evbus_idle_timeout_s <= 0 || busy)
	{
		quiet_since = looked_at = 0;
		return false;
	}
	if (quiet_since == 0)
		quiet_since = looked_at = now;
	gave_way = quiet_ms > QUIET_WHILE_SLOT_WANTED_MS && evbus_slot_wanted();
	if (gave_way)
		quiet_ms = QUIET_WHILE_SLOT_WANTED_MS;
	return TimestampDifferenceExceeds(looked_at, now, quiet_ms);
}

/*
 * leaving_for_slot --- the worker has decided to leave: when it leaves
 * early, for a worker that waits for a slot, it takes that one's turn
 * (evbus_slot_give_way), so that the other quiet workers stay.  False if
 * another worker left for it first: then it does not leave, and looks
 * again later.
 */
static bool
leaving_for_slot(void)
{
	if (!gave_way || evbus_slot_give_way())
		return true;
	gave_way = false;
	looked_at = GetCurrentTimestamp();
	return false;
}

/*
 * evbus_idle_gave_way --- did the worker that goes idle now leave early,
 * for a worker that waits for a slot?  (For its log line.)
 */
bool
evbus_idle_gave_way(void)
{
	return gave_way;
}

/*
 * earliest_deliver_at --- the earliest deliver_at of the pending rows
 * ids of evbus.outbox_<table> (-infinity for a row due now), or 0 if
 * none.  Inside evbus_worker_begin/commit.
 */
static TimestampTz
earliest_deliver_at(int table, int64 *ids, int n)
{
	char		sql[256];
	Oid			argtypes[1] = {INT8ARRAYOID};
	Datum		values[1];
	bool		isnull;
	Datum		d;

	values[0] = evbus_int8_array(ids, n);
	snprintf(sql, sizeof(sql),
			 "SELECT pg_catalog.min(coalesce(deliver_at, '-infinity')) "
			 "FROM evbus.outbox_%d WHERE id OPERATOR(pg_catalog.=) ANY ($1)", table);
	if (SPI_execute_with_args(sql, 1, argtypes, values, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "evbus: could not read the outbox's deliver_at");
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	return isnull ? 0 : DatumGetTimestampTz(d);
}

/*
 * evbus_idle_cleanup_wake --- when an idle worker must start again to
 * delete what falls due at due (0: nothing), kept for retention_s: see the
 * top of this file.  Merged into wake_at (0: none), the earlier wins.
 */
#define CLEANUP_WAKE_MIN_MS (3600 * 1000L)

TimestampTz
evbus_idle_cleanup_wake(TimestampTz wake_at, TimestampTz due, int retention_s)
{
	TimestampTz earliest;

	if (due == 0)
		return wake_at;
	earliest = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
										   Min(CLEANUP_WAKE_MIN_MS, retention_s * 1000L));
	due = Max(due, earliest);
	return wake_at == 0 ? due : Min(wake_at, due);
}

/*
 * publisher_has_no_work --- no outbox row due before now +
 * evbus.idle_timeout; *wake_at is the earliest deliver_at of the rows left,
 * or when the oldest dead letter expires if that is earlier
 * (evbus_idle_cleanup_wake; 0: neither).
 */
static bool
publisher_has_no_work(TimestampTz *wake_at)
{
	TimestampTz soon = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
												   evbus_idle_timeout_s * 1000);
	int64	   *ids = palloc(sizeof(int64) * (IDLE_PENDING_MAX + 1));
	bool		none = true;
	int			table;

	*wake_at = 0;
	evbus_worker_begin(evbus_publisher_shutdown);
	for (table = 0; none && table < 2; table++)
	{
		int			n = evbus_outbox_pending_ids(table, IDLE_PENDING_MAX, ids);
		TimestampTz first;

		if (n > IDLE_PENDING_MAX)
			none = false;
		else if (n > 0)
		{
			first = earliest_deliver_at(table, ids, n);
			if (first != 0 && first <= soon)
				none = false;
			else if (first != 0 && (*wake_at == 0 || first < *wake_at))
				*wake_at = first;
		}
	}
	if (none)
		*wake_at = evbus_idle_cleanup_wake(*wake_at, evbus_dead_letters_next_expiry(),
										   evbus_dead_letter_retention_s);
	evbus_worker_commit();
	pfree(ids);
	return none;
}

/*
 * evbus_publisher_may_idle --- called by the publisher after each step
 * (busy: the step had work, or a commit woke it): true when it has had
 * nothing to do for evbus.idle_timeout and still has none; then *wake_at
 * is when it must run again (0: only when woken).
 */
bool
evbus_publisher_may_idle(bool busy, TimestampTz *wake_at)
{
	if (!quiet_long_enough(busy))
		return false;
	if (!publisher_has_no_work(wake_at))
	{
		looked_at = GetCurrentTimestamp();	/* look again a timeout later */
		return false;
	}
	return leaving_for_slot();
}

/* The consumer's partitions at its last look (-1: none yet). */
static EvbusWatch *watched = NULL;
static int	nwatched = -1;

/* Are a and b the same partitions at the same offsets? */
static bool
same_watches(const EvbusWatch *a, int na, const EvbusWatch *b, int nb)
{
	int			i;

	if (na != nb)
		return false;
	for (i = 0; i < na; i++)
		if (a[i].partition != b[i].partition || a[i].offset != b[i].offset ||
			a[i].created != b[i].created || strcmp(a[i].topic, b[i].topic) != 0)
			return false;
	return true;
}

/*
 * evbus_consumer_try_idle --- called by the consumer after each pass
 * (busy: it had messages, pending ones, or was woken; *wake_at: the next
 * retry, 0 if none; settings: the Kafka settings its consumers were built
 * from).  True when the consumer had nothing to do for the idle timeout,
 * has read everything it was assigned, and went idle: it then holds no
 * slot and must leave, and *wake_at is when it starts again by itself (a
 * retry, or the inbox's trim: evbus_inbox_cleanup_wake; 0: only when
 * woken).
 */
bool
evbus_consumer_try_idle(bool busy, TimestampTz *wake_at, uint64 settings)
{
	TimestampTz next_due = *wake_at;
	TimestampTz now = GetCurrentTimestamp();
	EvbusWatch *w = NULL;
	int			n;
	bool		unassigned;
	char	   *spare;

	if (next_due != 0 &&
		next_due <= TimestampTzPlusMilliseconds(now, evbus_idle_timeout_s * 1000))
		busy = true;
	if (!quiet_long_enough(busy))
	{
		if (busy)
			nwatched = -1;
		return false;
	}
	looked_at = now;			/* look again a timeout later */
	n = evbus_consumers_watch_list(&w, &unassigned, &spare);
	if (n < 0 || !same_watches(w, n, watched, nwatched))
	{
		if (watched)
			pfree(watched);
		watched = NULL;
		nwatched = n;
		if (n >= 0)
		{
			watched = MemoryContextAlloc(TopMemoryContext, sizeof(EvbusWatch) * Max(n, 1));
			memcpy(watched, w, sizeof(EvbusWatch) * n);
		}
		return false;
	}

	/*
	 * A spare member of a group stays (see the top of this file; test
	 * 241_spare_member.pl), unless another database waits for its slot.
	 */
	if (spare == NULL)
		spare_logged = false;
	else if (!gave_way)
	{
		if (!spare_logged)
			ereport(LOG,
					(errmsg("evbus: consumer stays while idle: another member holds every partition of %s",
							spare),
					 errdetail("Gone idle, it would be woken by the next message there, and each return would rebalance the group; "
							   "it takes the partitions over when a member leaves.")));
		spare_logged = true;
		return false;
	}

	/*
	 * A topic that exists and has no partition here: the consumer may still
	 * be joining its group.  Leaving early for another database would leave
	 * it no time to join, and its first partition, watched from the start,
	 * would bring it back at once; it stays until it has been quiet for
	 * evbus.idle_timeout, which a look made without giving way has always
	 * seen.  A topic Kafka said does not exist keeps no consumer: it is
	 * watched until it is created, and with every slot held by consumers
	 * waiting for their topics, the publishers that would create them could
	 * not start for evbus.idle_timeout (test 239_slots_take_turns.pl).
	 */
	if (spare != NULL &&
		!TimestampDifferenceExceeds(quiet_since, now, evbus_idle_timeout_s * 1000))
		return false;
	if (unassigned)
	{
		TimestampTz recheck = TimestampTzPlusMilliseconds(now, (int64) evbus_idle_timeout_s *
														  1000 * UNASSIGNED_RECHECK);

		if (next_due == 0 || recheck < next_due)
			next_due = recheck;
	}
	*wake_at = evbus_inbox_cleanup_wake(next_due);
	if (!leaving_for_slot())
		return false;
	return evbus_consumer_go_idle(*wake_at, w, n, settings);
}

/*-------------------------------------------------------------------------
 *
 * wake_watch.c
 *	  The launcher's watch over the topics of idle consumers: one Kafka
 *	  client for the whole server wakes a database's consumer when a
 *	  message arrives in a partition it left.
 *
 * An idle consumer leaves in shared memory each partition it had and its
 * high watermark then (idle.c, shmem.c).  The launcher assigns those
 * partitions to a client of its own, without joining any group (assign,
 * never subscribe; it commits nothing), each from the lowest offset any
 * idle database left for it, and wakes every database whose offset the
 * first message there reaches (every one, when the partition's log began
 * again: wake_watchers): the launcher then starts its consumer, which
 * joins its group and reads from its stored offsets as always.
 * Errors (a topic that does not exist yet, a broker down) wake no one:
 * librdkafka keeps trying.  A subscribed topic that the consumer was told
 * does not exist is watched at its first partition, and its creation
 * wakes the consumer, wherever the first message goes: that partition's
 * high watermark becomes known (wake_created, test
 * 240_idle_new_topic.pl).
 *
 * librdkafka's threads never call PostgreSQL code: they only write a byte
 * into a pipe that the launcher waits on along with its latch, and the
 * launcher serves the client's queue without blocking (a zero timeout).
 * The client is built when the first consumer goes idle, from the
 * launcher's Kafka settings, which it publishes in shared memory: a
 * consumer whose settings differ (a database that sets evbus.brokers for
 * itself, for instance) does not go idle.  If the client cannot be built,
 * the launcher publishes no settings for a while, so that no consumer
 * goes idle, and wakes the idle ones.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <fcntl.h>
#include <unistd.h>

#include "miscadmin.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "evbus.h"
#include "kafka.h"

/* After a client could not be built, how long until the next try. */
#define WATCH_RETRY_MS 60000

/* Most messages served in one call: the launcher has other work too. */
#define WATCH_POLL_MAX 1000

static rd_kafka_t *rk = NULL;
static rd_kafka_queue_t *queue = NULL;
static uint64 client_settings = 0;	/* what rk was built from */
static uint64 published = 0;	/* evbus_set_watch_settings's last */
static bool published_once = false;
static TimestampTz retry_after = 0;
static uint32 version_seen = 0;
static bool seen_once = false;
static EvbusWatch *watches = NULL;	/* the watches, as last copied */
static int	nwatches = 0;
static int	wake_pipe[2] = {-1, -1};

/* What the watch relies on: it reads, never commits, from given offsets. */
static const char *const watch_defaults[] = {
	"allow.auto.create.topics", "false",
	"queued.max.messages.kbytes", "1024",
	"topic.metadata.refresh.interval.ms", "60000",
	NULL
};

static const char *const watch_forced[] = {
	"enable.auto.commit", "false",
	"enable.auto.offset.store", "false",
	"auto.offset.reset", "earliest",
	"enable.partition.eof", "false",
	NULL
};

/* In a librdkafka thread: wake the launcher through the pipe. */
static void
queue_nonempty_cb(rd_kafka_t *k, void *opaque)
{
	char		byte = 1;

	if (write(wake_pipe[1], &byte, 1) < 0)
	{
		/* pipe full: the launcher is awake already */
	}
}

/* The descriptor the launcher waits on besides its latch (-1: none). */
int
evbus_watch_fd(void)
{
	return rk ? wake_pipe[0] : -1;
}

/* Close the client (settings changed, or the launcher exits). */
void
evbus_watch_stop(void)
{
	if (rk == NULL)
		return;
	rd_kafka_queue_cb_event_enable(queue, NULL, NULL);
	rd_kafka_queue_destroy(queue);
	rd_kafka_consumer_close(rk);
	rd_kafka_destroy(rk);
	rk = NULL;
	queue = NULL;
	client_settings = 0;
	seen_once = false;			/* assign again with a new client */
}

/*
 * watch_create --- build the client from the launcher's Kafka settings.
 * Errors (a bad evbus.kafka_config_file) are logged, not raised: the
 * launcher goes on.
 */
static bool
watch_create(uint64 settings)
{
	char		buf[1024];
	const char *brokers = evbus_resolve_brokers(buf, sizeof(buf));
	MemoryContext cxt = CurrentMemoryContext;
	rd_kafka_conf_t *conf = NULL;
	char		errstr[512];

	if (brokers == NULL)
		return false;
	if (wake_pipe[0] < 0 &&
		(pipe(wake_pipe) != 0 ||
		 fcntl(wake_pipe[0], F_SETFL, O_NONBLOCK) != 0 ||
		 fcntl(wake_pipe[1], F_SETFL, O_NONBLOCK) != 0))
	{
		ereport(LOG, (errmsg("evbus: could not create a pipe: %m")));
		return false;
	}
	PG_TRY();
	{
		conf = evbus_kafka_conf_new(brokers, "evbus-launcher-watch",
									watch_defaults, watch_forced);
		evbus_kafka_conf_set(conf, "group.id", "evbus-launcher-watch");
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		if (conf)
			rd_kafka_conf_destroy(conf);
		ereport(LOG,
				(errmsg("evbus: could not configure the launcher's Kafka client: %s",
						edata->message),
				 errdetail("Idle databases' consumers are kept running until it can be built.")));
		FreeErrorData(edata);
		return false;
	}
	PG_END_TRY();

	rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr));
	if (rk == NULL)
	{
		ereport(LOG,
				(errmsg("evbus: could not create the launcher's Kafka client: %s", errstr),
				 errdetail("Idle databases' consumers are kept running until it can be built.")));
		return false;
	}
	rd_kafka_set_log_queue(rk, NULL);
	rd_kafka_poll_set_consumer(rk);
	queue = rd_kafka_queue_get_consumer(rk);
	rd_kafka_queue_cb_event_enable(queue, queue_nonempty_cb, NULL);
	client_settings = settings;
	return true;
}

/*
 * wake_watchers --- a message at offset in (topic, partition): wake the
 * idle consumers watching it up to offset.  A message before the lowest
 * offset watched there, where the client started, means that the
 * partition no longer had that offset and the client went back to its
 * beginning: its log began again (a topic deleted and created again), and
 * every consumer watching it wakes, to read the new log
 * (consumer_positions.c; test 308_new_partition_log.pl).
 */
static void
wake_watchers(const char *topic, int32 partition, int64 offset)
{
	int64		lowest = PG_INT64_MAX;
	int			i;

	for (i = 0; i < nwatches; i++)
		if (watches[i].partition == partition && strcmp(watches[i].topic, topic) == 0)
			lowest = Min(lowest, watches[i].offset);
	for (i = 0; i < nwatches; i++)
	{
		EvbusWatch *w = &watches[i];

		if (w->dboid != InvalidOid && w->partition == partition &&
			(w->offset <= offset || offset < lowest) && strcmp(w->topic, topic) == 0)
		{
			elog(DEBUG1, "evbus: a message in %s[%d] at offset " INT64_FORMAT " wakes the consumer of database %u",
				 topic, partition, offset, w->dboid);
			evbus_db_wake(w->dboid, EVBUS_CONSUMER);
			w->dboid = InvalidOid;
		}
	}
}

/*
 * wake_created --- wake the idle consumers whose topic did not exist and
 * does now: the client knows the high watermark of the partition it
 * watches there, from a fetch answered (no network wait here).
 */
static void
wake_created(void)
{
	int			i;

	for (i = 0; i < nwatches; i++)
	{
		EvbusWatch *w = &watches[i];
		int64_t		lo;
		int64_t		hi;

		if (w->dboid != InvalidOid && w->created &&
			rd_kafka_get_watermark_offsets(rk, w->topic, w->partition, &lo, &hi) ==
			RD_KAFKA_RESP_ERR_NO_ERROR && hi >= 0)
		{
			elog(DEBUG1, "evbus: topic %s was created: it wakes the consumer of database %u",
				 w->topic, w->dboid);
			evbus_db_wake(w->dboid, EVBUS_CONSUMER);
			w->dboid = InvalidOid;
		}
	}
}

/*
 * watch_assign --- copy the watches again and assign their partitions,
 * each from the lowest offset left for it.  False if there are watches
 * but no client for them.
 */
static bool
watch_assign(uint64 settings)
{
	uint64		left_for;
	rd_kafka_topic_partition_list_t *list;
	int			i;

	if (watches == NULL)
		watches = MemoryContextAlloc(TopMemoryContext,
									 sizeof(EvbusWatch) * EVBUS_MAX_WATCHES);
	nwatches = evbus_watches_copy(watches, EVBUS_MAX_WATCHES, &left_for);
	if (nwatches == 0 && rk == NULL)
		return true;

	/*
	 * A new client for each new set of partitions: librdkafka 2.0.2 aborts
	 * the process (assertion rktp_started in
	 * rd_kafka_assignment_partition_stopped) when an assignment replaces one
	 * whose partitions are still starting, which took the launcher and the
	 * whole server down in test 238_idle_databases.pl.
	 */
	if (rk != NULL)
	{
		bool		seen = seen_once;

		evbus_watch_stop();
		seen_once = seen;
	}
	if (!watch_create(settings))
		return false;
	list = rd_kafka_topic_partition_list_new(Max(nwatches, 1));
	for (i = 0; i < nwatches; i++)
	{
		rd_kafka_topic_partition_t *p =
			rd_kafka_topic_partition_list_find(list, watches[i].topic,
											   watches[i].partition);

		if (p == NULL)
			rd_kafka_topic_partition_list_add(list, watches[i].topic,
											  watches[i].partition)->offset = watches[i].offset;
		else if (watches[i].offset < p->offset)
			p->offset = watches[i].offset;
	}
	rd_kafka_assign(rk, list);
	rd_kafka_topic_partition_list_destroy(list);
	return true;
}

/*
 * evbus_watch_serve --- in the launcher's loop: publish its Kafka
 * settings, follow the idle consumers' watches as they change, and wake
 * the databases whose partitions got messages or whose topics were
 * created.  Never waits.
 */
void
evbus_watch_serve(uint64 settings)
{
	uint64		offer = settings;
	uint32		version;
	char		drain[64];
	int			i;

	if (wake_pipe[0] >= 0)
		while (read(wake_pipe[0], drain, sizeof(drain)) > 0)
			;
	if (rk != NULL && client_settings != settings)
		evbus_watch_stop();
	if (retry_after != 0 && GetCurrentTimestamp() < retry_after)
		offer = 0;
	else
		retry_after = 0;

	version = evbus_watches_version();
	if (!seen_once || version != version_seen)
	{
		seen_once = true;
		version_seen = version;
		if (offer != 0 && !watch_assign(settings))
		{
			/* no client: no consumer may stay idle */
			retry_after = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													  WATCH_RETRY_MS);
			offer = 0;
			for (i = 0; i < nwatches; i++)
				evbus_db_wake(watches[i].dboid, EVBUS_CONSUMER);
			nwatches = 0;
		}
	}
	if (!published_once || offer != published)
	{
		evbus_set_watch_settings(offer);
		published = offer;
		published_once = true;
	}

	for (i = 0; rk != NULL && i < WATCH_POLL_MAX; i++)
	{
		rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 0);

		if (m == NULL)
			break;
		if (m->err)
			elog(DEBUG1, "evbus: the launcher's Kafka client: %s",
				 rd_kafka_message_errstr(m));
		else if (m->rkt != NULL)
			wake_watchers(rd_kafka_topic_name(m->rkt), m->partition, m->offset);
		rd_kafka_message_destroy(m);
	}
	if (rk != NULL)
		wake_created();
}

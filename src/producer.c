/*-------------------------------------------------------------------------
 *
 * producer.c
 *	  The worker's librdkafka producer handle.
 *
 * An idempotent producer (acks=all, no duplicates or reordering from
 * librdkafka's own retries) with no message timeout: while a broker is
 * unreachable, librdkafka keeps retrying, in order, without limit, and
 * evbus never counts that against an event.  With the gap-less guarantee:
 * when the broker refuses a record batch for good (too large for its
 * topic, say), librdkafka would otherwise renumber and send the batches
 * queued behind it, and a key's later events would reach Kafka before the
 * refused batch's innocent neighbours are produced again (test 052).
 * Instead the producer stops with a fatal error and is rebuilt; every
 * event it had not confirmed is produced again, in order
 * (publish_producer.c, publish_reports.c).
 *
 * Delivery reports, errors and log lines are forwarded to the main queue;
 * a callback writes a byte to a pipe when that queue becomes non-empty,
 * and the pipe is part of the worker's WaitEventSet, so the worker sleeps
 * until there is something to do and serves every callback in its own
 * thread (evbus_producer_serve).
 *
 * Messages name their topic by a handle that the producer keeps per topic
 * (producer_topic), not by name.  librdkafka 2.0.2 asks the brokers for the
 * metadata of a topic at once when the application creates its handle
 * (rd_kafka_topic_new), but a topic first named in rd_kafka_producev waits
 * for the scan of unknown topics that runs once a second: the first event
 * to every topic, after each start or reload of the producer, took 0.2-1 s
 * longer than the next (bench/new_topic.sh; BENCHMARKS.md F6).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <fcntl.h>
#include <unistd.h>

#include "miscadmin.h"
#include "storage/pmsignal.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "evbus.h"
#include "kafka.h"

/* A topic the producer has written to, and its handle. */
#define TOPIC_NAME_MAX 249		/* Kafka's limit on a topic name's length */

/* evbus_producer_flush looks for a termination request this often */
#define FLUSH_SLICE_MS 50

typedef struct ProducerTopic
{
	char		name[TOPIC_NAME_MAX + 1];	/* hash key */
	rd_kafka_topic_t *rkt;
} ProducerTopic;

struct EvbusProducer
{
	rd_kafka_t *rk;
	rd_kafka_queue_t *main_queue;
	int			pipe_fds[2];	/* [0] in the WaitEventSet, [1] librdkafka's */
	EvbusDeliveryCb on_delivery;
	bool		fatal;			/* the handle must be rebuilt */
	HTAB	   *topics;			/* ProducerTopic by name */
};

/*
 * Wake-up: librdkafka calls this from one of its own threads when the main
 * queue becomes non-empty.  It only writes a byte to the worker's pipe (no
 * PostgreSQL code runs here).  librdkafka 2.0.2's own fd wake-up
 * (rd_kafka_queue_io_event_enable) fires once and then stays silent when
 * the queue is served with rd_kafka_poll, so it is not used.
 */
static void
queue_nonempty_cb(rd_kafka_t *rk, void *opaque)
{
	EvbusProducer *producer = (EvbusProducer *) opaque;
	char		byte = 1;

	if (write(producer->pipe_fds[1], &byte, 1) < 0)
	{
		/* pipe full: the worker is awake already */
	}
}

/* Delivery report: runs from rd_kafka_poll() in the worker's thread. */
static void
dr_msg_cb(rd_kafka_t *rk, const rd_kafka_message_t *msg, void *opaque)
{
	EvbusProducer *producer = (EvbusProducer *) opaque;

	producer->on_delivery(msg->_private, msg->err,
						  rd_kafka_message_status(msg),
						  msg->partition, msg->offset);
}

/* Error callback: also served from rd_kafka_poll(). */
static void
error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
	EvbusProducer *producer = (EvbusProducer *) opaque;

	if (err == RD_KAFKA_RESP_ERR__FATAL)
	{
		char		fatal_reason[512];
		rd_kafka_resp_err_t fatal_err;

		fatal_err = rd_kafka_fatal_error(rk, fatal_reason, sizeof(fatal_reason));
		producer->fatal = true;
		if (fatal_err == RD_KAFKA_RESP_ERR__GAPLESS_GUARANTEE)
			ereport(LOG,
					(errmsg("evbus: the broker refused a record batch, so the Kafka producer stops: %s",
							fatal_reason),
					 errdetail("The producer is rebuilt; unacknowledged events are produced again, in order, and the refused ones one by one.")));
		else
			ereport(WARNING,
					(errmsg("evbus: fatal Kafka producer error: %s: %s",
							rd_kafka_err2name(fatal_err), fatal_reason),
					 errdetail("The producer is rebuilt; unacknowledged events are produced again.")));
	}
	else if (err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN ||
			 err == RD_KAFKA_RESP_ERR__TRANSPORT)
	{
		ereport(LOG,
				(errmsg("evbus: Kafka: %s", reason)));
		if (err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN)
			evbus_metrics_broker(EVBUS_PUBLISHER, false);
	}
	else
	{
		const char *hint = evbus_kafka_error_hint(reason);

		ereport(LOG,
				(errmsg("evbus: Kafka error %s: %s",
						rd_kafka_err2name((rd_kafka_resp_err_t) err), reason),
				 hint ? errhint("%s", hint) : 0));
	}
	evbus_metrics_broker_error(EVBUS_PUBLISHER, reason);
}

/*
 * Statistics: librdkafka's JSON every statistics.interval.ms, served from
 * rd_kafka_poll(); tells evbus.metrics() whether a broker is up.  Returns
 * 0: librdkafka frees the JSON.
 */
static int
stats_cb(rd_kafka_t *rk, char *json, size_t json_len, void *opaque)
{
	evbus_metrics_broker_stats(EVBUS_PUBLISHER, json);
	return 0;
}

/*
 * Tuning defaults, which evbus.kafka_config_file may override.  A 1-ms
 * linger in librdkafka: the publisher batches already (a claim produces
 * its events in one go, at most one claim per evbus.publish_linger), but
 * with no linger at all librdkafka's broker thread wakes at the first
 * event of a claim to each partition and sends what is queued so far,
 * while the claim is still being produced: many small produce requests
 * per claim instead of one per partition, which costs that thread and
 * the broker several times the CPU per event.  The cost is up to 1 ms
 * more latency per event (bench/latency.sh).  Also: compress batches
 * (more events per request), bound the memory librdkafka may take inside
 * a backend, and partition like Java clients so keys land where they
 * would from a Java producer.
 */
static const char *const producer_defaults[] = {
	"linger.ms", "1",
	"compression.type", "lz4",
	"queue.buffering.max.kbytes", "262144",
	"queue.buffering.max.messages", "500000",
	"socket.nagle.disable", "true",
	"partitioner", "murmur2_random",
	"statistics.interval.ms", "5000",
	NULL
};

/*
 * What evbus's guarantees rest on: no duplicates or reordering from
 * librdkafka's own retries (idempotence, acks=all), no message given up on
 * while a broker is unreachable (no message timeout), and no batch sent
 * past one the broker refused (the gap-less guarantee, see above).
 */
static const char *const producer_forced[] = {
	"enable.idempotence", "true",
	"enable.gapless.guarantee", "true",
	"acks", "all",
	"message.timeout.ms", "0",
	NULL
};

/*
 * evbus_producer_create --- a producer connected to brokers.
 *
 * on_delivery is called once per produced message, from
 * evbus_producer_serve, with the opaque given to evbus_producer_send.
 */
EvbusProducer *
evbus_producer_create(const char *brokers, EvbusDeliveryCb on_delivery)
{
	EvbusProducer *producer;
	rd_kafka_conf_t *conf;
	char		errstr[512];
	char		client_id[NAMEDATALEN + 32];
	HASHCTL		ctl;

	producer = MemoryContextAllocZero(TopMemoryContext, sizeof(EvbusProducer));
	producer->on_delivery = on_delivery;
	producer->pipe_fds[0] = producer->pipe_fds[1] = -1;

	snprintf(client_id, sizeof(client_id), "evbus-%u", MyDatabaseId);
	conf = evbus_kafka_conf_new(brokers, client_id, producer_defaults,
								producer_forced);

	rd_kafka_conf_set_opaque(conf, producer);
	rd_kafka_conf_set_dr_msg_cb(conf, dr_msg_cb);
	rd_kafka_conf_set_error_cb(conf, error_cb);
	rd_kafka_conf_set_stats_cb(conf, stats_cb);

	producer->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
	if (producer->rk == NULL)
	{
		const char *hint = evbus_kafka_error_hint(errstr);

		pfree(producer);
		ereport(ERROR,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("could not create the Kafka producer: %s", errstr),
				 hint ? errhint("%s", hint) : 0));
	}
	rd_kafka_set_log_queue(producer->rk, NULL);

	if (pipe(producer->pipe_fds) != 0 ||
		fcntl(producer->pipe_fds[0], F_SETFL, O_NONBLOCK) != 0 ||
		fcntl(producer->pipe_fds[1], F_SETFL, O_NONBLOCK) != 0)
	{
		rd_kafka_destroy(producer->rk);
		pfree(producer);
		ereport(ERROR,
				(errcode_for_socket_access(),
				 errmsg("could not create a pipe: %m")));
	}
	producer->main_queue = rd_kafka_queue_get_main(producer->rk);
	rd_kafka_queue_cb_event_enable(producer->main_queue, queue_nonempty_cb,
								   producer);
	ctl.keysize = TOPIC_NAME_MAX + 1;
	ctl.entrysize = sizeof(ProducerTopic);
	producer->topics = hash_create("evbus producer topics", 64, &ctl,
								   HASH_ELEM | HASH_STRINGS);
	return producer;
}

/*
 * producer_topic --- the producer's handle for topic, created (and the
 * topic's metadata asked for) the first time.  The handles live as long as
 * the producer, like the topics librdkafka would keep for names anyway.  A
 * name longer than Kafka allows is refused as the broker would refuse it.
 */
static rd_kafka_resp_err_t
producer_topic(EvbusProducer *producer, const char *topic,
			   rd_kafka_topic_t **rkt)
{
	ProducerTopic *entry;
	bool		found;

	if (strlen(topic) > TOPIC_NAME_MAX)
		return RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION;
	entry = hash_search(producer->topics, topic, HASH_ENTER, &found);
	if (!found)
	{
		entry->rkt = rd_kafka_topic_new(producer->rk, topic, NULL);
		if (entry->rkt == NULL)
		{
			hash_search(producer->topics, topic, HASH_REMOVE, NULL);
			return rd_kafka_last_error();
		}
	}
	*rkt = entry->rkt;
	return RD_KAFKA_RESP_ERR_NO_ERROR;
}

/* Give back every topic handle (before the producer itself). */
static void
producer_topics_destroy(EvbusProducer *producer)
{
	HASH_SEQ_STATUS status;
	ProducerTopic *entry;

	hash_seq_init(&status, producer->topics);
	while ((entry = hash_seq_search(&status)) != NULL)
		rd_kafka_topic_destroy(entry->rkt);
	hash_destroy(producer->topics);
}

/*
 * serve_callbacks --- rd_kafka_poll or rd_kafka_flush (flush_ms >= 0)
 * with interrupts held.  The callbacks they run ereport, and ereport checks
 * for interrupts: the cancel with which a stop ends the publisher's step
 * (publisher_worker.c) must not jump out of librdkafka's own frames.  It
 * comes at the caller's next CHECK_FOR_INTERRUPTS instead.
 */
static void
serve_callbacks(EvbusProducer *producer, int flush_ms)
{
	HOLD_INTERRUPTS();
	if (flush_ms >= 0)
		(void) rd_kafka_flush(producer->rk, flush_ms);
	else
		rd_kafka_poll(producer->rk, 0);
	RESUME_INTERRUPTS();
}

/*
 * evbus_producer_destroy --- drop the handle without waiting for the
 * brokers: unacknowledged messages are purged (their events are still in
 * the outbox and will be produced again by the next producer).
 */
void
evbus_producer_destroy(EvbusProducer *producer)
{
	if (producer == NULL)
		return;
	rd_kafka_queue_cb_event_enable(producer->main_queue, NULL, NULL);
	rd_kafka_purge(producer->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT |
				   RD_KAFKA_PURGE_F_NON_BLOCKING);
	/* serve the purge reports so that the caller can forget its messages */
	serve_callbacks(producer, -1);
	producer_topics_destroy(producer);
	rd_kafka_queue_destroy(producer->main_queue);
	rd_kafka_destroy(producer->rk);
	close(producer->pipe_fds[0]);
	close(producer->pipe_fds[1]);
	pfree(producer);
}

int
evbus_producer_wakeup_fd(EvbusProducer *producer)
{
	return producer->pipe_fds[0];
}

/* Drain the wake-up pipe, then serve every pending callback. */
void
evbus_producer_serve(EvbusProducer *producer)
{
	char		buf[256];

	while (read(producer->pipe_fds[0], buf, sizeof(buf)) > 0)
		;
	serve_callbacks(producer, -1);
}

/*
 * evbus_producer_flush --- send what librdkafka holds without waiting for
 * its linger, and serve delivery reports until none is outstanding or
 * timeout_ms have passed; a termination request or the postmaster's death
 * ends the wait sooner.  Returns whether none is outstanding.
 */
bool
evbus_producer_flush(EvbusProducer *producer, int timeout_ms)
{
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													   timeout_ms);

	while (rd_kafka_outq_len(producer->rk) > 0)
	{
		if (evbus_stopping() || !PostmasterIsAlive() ||
			GetCurrentTimestamp() >= deadline)
			return false;
		serve_callbacks(producer, FLUSH_SLICE_MS);
	}
	return true;
}

/*
 * evbus_producer_send --- enqueue one message; the result of the delivery
 * comes later through on_delivery, unless this returns an error, in which
 * case nothing was enqueued and headers are still the caller's.
 */
rd_kafka_resp_err_t
evbus_producer_send(EvbusProducer *producer, const char *topic,
					const char *key, size_t keylen,
					const char *value, size_t valuelen,
					rd_kafka_headers_t *headers, void *opaque)
{
	rd_kafka_topic_t *rkt = NULL;
	rd_kafka_resp_err_t err = producer_topic(producer, topic, &rkt);

	if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
		return err;
	return rd_kafka_producev(producer->rk,
							 RD_KAFKA_V_RKT(rkt),
							 RD_KAFKA_V_KEY(key, keylen),
							 RD_KAFKA_V_VALUE((void *) value, valuelen),
							 RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
							 RD_KAFKA_V_HEADERS(headers),
							 RD_KAFKA_V_OPAQUE(opaque),
							 RD_KAFKA_V_END);
}

bool
evbus_producer_failed(EvbusProducer *producer)
{
	return producer->fatal;
}

int
evbus_producer_queue_length(EvbusProducer *producer)
{
	return rd_kafka_outq_len(producer->rk);
}

/*-------------------------------------------------------------------------
 *
 * kafka.h
 *	  evbus's use of librdkafka: configuration, error classes, producer.
 *
 * Only the worker and the launcher include this.  librdkafka's own threads
 * never call into PostgreSQL: logs, errors and delivery reports are
 * forwarded to the main queue and served by the worker's loop.
 *
 *-------------------------------------------------------------------------
 */
#ifndef EVBUS_KAFKA_H
#define EVBUS_KAFKA_H

#include <librdkafka/rdkafka.h>

#include "access/xlogdefs.h"

/*
 * librdkafka 2.0 or later: the idempotent producer's gapless guarantee and
 * rd_kafka_queue_io_event_enable as evbus uses them (README, "Requirements").
 */
#if RD_KAFKA_VERSION < 0x02000000
#error "evbus needs librdkafka 2.0 or later"
#endif

/* kafka_conf.c */
extern rd_kafka_conf_t *evbus_kafka_conf_new(const char *brokers,
											 const char *client_id,
											 const char *const *defaults,
											 const char *const *forced);
extern void evbus_kafka_conf_set(rd_kafka_conf_t *conf, const char *name,
								 const char *value);
extern uint64 evbus_kafka_conf_fingerprint(const char *brokers);

/* The hint after a Kafka client (producer, consumer) could not be built. */
#define EVBUS_KAFKA_CLIENT_HINT \
	"Fix what the error above names (evbus.brokers, or evbus.kafka_config_file or a file its properties name) and reload the configuration."

/* kafka_errors.c */
extern bool evbus_kafka_error_is_permanent(rd_kafka_resp_err_t err);
extern const char *evbus_kafka_error_hint(const char *text);
extern const char *evbus_kafka_read_refused_hint(rd_kafka_resp_err_t err);
extern void evbus_kafka_log_cb(const rd_kafka_t *rk, int level,
							   const char *fac, const char *buf);

/* kafka_offsets.c (the consumer's offsets on Kafka's side) */
extern void evbus_kafka_offsets_name_database(void);
extern rd_kafka_resp_err_t evbus_kafka_offsets_committed(rd_kafka_t *rk,
														 rd_kafka_topic_partition_list_t *list,
														 int timeout_ms);
extern bool evbus_kafka_offsets_commit(rd_kafka_t *rk,
									   rd_kafka_topic_partition_list_t *list,
									   XLogRecPtr lsn, long wait_ms, long answer_ms);
extern void evbus_kafka_offsets_mark_starts(rd_kafka_t *rk,
											const rd_kafka_topic_partition_list_t *parts);
extern int64 evbus_partition_start_offset(const char *group,
										  const rd_kafka_topic_partition_t *p,
										  const rd_kafka_topic_partition_t *committed);

/* producer.c */
typedef struct EvbusProducer EvbusProducer;
typedef void (*EvbusDeliveryCb) (void *opaque, rd_kafka_resp_err_t err,
								 rd_kafka_msg_status_t status,
								 int32 partition, int64 offset);

extern EvbusProducer *evbus_producer_create(const char *brokers,
											EvbusDeliveryCb on_delivery);
extern void evbus_producer_destroy(EvbusProducer *producer);
extern int	evbus_producer_wakeup_fd(EvbusProducer *producer);
extern void evbus_producer_serve(EvbusProducer *producer);
extern bool evbus_producer_flush(EvbusProducer *producer, int timeout_ms);
extern rd_kafka_resp_err_t evbus_producer_send(EvbusProducer *producer,
											   const char *topic,
											   const char *key, size_t keylen,
											   const char *value, size_t valuelen,
											   rd_kafka_headers_t *headers,
											   void *opaque);
extern bool evbus_producer_failed(EvbusProducer *producer);
extern int	evbus_producer_queue_length(EvbusProducer *producer);

/* consumer_pause.c: partitions of paused subscriptions (List: consumer.h) */
extern char *evbus_group_topics(List *subs, const char *group, bool paused_only);
extern bool evbus_topic_listed(const char *list, const char *topic);
extern void evbus_partitions_pause(rd_kafka_t *rk,
								   const rd_kafka_topic_partition_list_t *parts,
								   const char *pause_list, const char *resume_list);
extern void evbus_consumer_pauses_changed(rd_kafka_t *rk, const char *was,
										  const char *now);

/* group_copies.c: copies of this database in its consumer groups */
typedef struct GroupCopies GroupCopies;
extern void evbus_group_copies_client_id(char *buf, size_t len);
extern GroupCopies *evbus_group_copies_new(const char *group, const char *brokers,
										   rd_kafka_t *rk);
extern void evbus_group_copies_check(GroupCopies *gcp);
extern void evbus_group_copies_free(GroupCopies *gcp);

/* received_message.c (ReceivedMessage: consumer.h) */
struct ReceivedMessage;
extern void evbus_copy_message(const rd_kafka_message_t *km,
							   struct ReceivedMessage *m);

/* consumer.c: for replay.c */
extern rd_kafka_t *evbus_consumer_for_replay(const char *group);

extern bool evbus_ask_high_watermarks(rd_kafka_t *rk,
									  rd_kafka_topic_partition_list_t *parts);

#endif							/* EVBUS_KAFKA_H */

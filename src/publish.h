/*-------------------------------------------------------------------------
 *
 * publish.h
 *	  The parts of the publisher, each owning its state (publisher.c runs
 *	  them): per-key ordering, where to read, delivery reports, the
 *	  producer's life cycle and pacing.
 *
 * Calls go one way only: publisher.c calls every part; the life cycle
 * calls the reports; the reports call the keys and the cursor; the keys
 * call the cursor; the cursor and the reports call the outbox; pacing
 * calls none of them.  No part calls publisher.c, and the outbox calls
 * none of them (the publisher passes what it needs as arguments).
 *
 *-------------------------------------------------------------------------
 */
#ifndef EVBUS_PUBLISH_H
#define EVBUS_PUBLISH_H

#include "kafka.h"
#include "outbox.h"

/* publish_cursor.c: where to read (cursor, holes, revisits, sweep) */
extern void evbus_cursor_init(MemoryContext cxt);
extern void evbus_revisit_add(int64 id, bool failed, uint64 keyhash);
extern void evbus_revisit_remove(int64 id);
extern bool evbus_revisit_take_failed(int64 id, uint64 *keyhash);
extern int64 evbus_revisit_lowest_failed(uint64 keyhash);
extern int	evbus_revisit_due_ids(MemoryContext cxt, int64 **ids);
extern int	evbus_cursor_claim_forward(int limit, int64 max_bytes,
									   OutboxRow **rows, MemoryContext cxt,
									   bool *full);
extern void evbus_cursor_start_sweep(TimestampTz now);
extern bool evbus_cursor_sweeping(void);
extern void evbus_cursor_sweep_first(void);

/* publish_pause.c */
extern void evbus_publish_pauses_watch(void);
extern bool evbus_publish_pauses_refresh(void);
extern int	evbus_cursor_sweep_page(int limit, int64 max_bytes,
									OutboxRow **rows, MemoryContext cxt,
									bool *full);
extern void evbus_cursor_sweep_advance(const OutboxRow *rows, int n,
									   bool produced, bool full);

/* publish_keys.c: per-key ordering (key state, the solo list) */
extern void evbus_keys_init(MemoryContext cxt);
extern uint64 evbus_key_hash(const OutboxRow *row);
extern uint32 evbus_key_topic(const OutboxRow *row, const char *topic);
extern bool evbus_key_may_produce(uint64 keyhash, int64 id, uint32 topic);
extern void evbus_key_sent(uint64 keyhash);
extern void evbus_key_done(uint64 keyhash, int64 id, bool reported);
extern void evbus_key_persisted(uint64 keyhash, int64 id, uint32 topic);
extern void evbus_key_failed(uint64 keyhash, int64 id, bool reported);
extern void evbus_key_forget_gone(uint64 keyhash, int64 id);
extern void evbus_keys_forget_vanished(int64 *ids, int nids,
									   OutboxRow *rows, int n,
									   int64 last_examined);
extern void evbus_keys_new_producer(void);
extern void evbus_keys_prune(TimestampTz now);
extern bool evbus_keys_take_opened(void);
extern void evbus_solo_add(int64 id, uint64 keyhash);
extern int	evbus_solo_count(void);
extern bool evbus_solo_take_next(int64 *id, uint64 *keyhash);

/* publish_reports.c: events in flight and delivery-report bookkeeping */
typedef struct InflightMsg InflightMsg;

extern void evbus_reports_init(MemoryContext cxt);
extern InflightMsg *evbus_inflight_new(const OutboxRow *row, uint64 keyhash,
									   uint32 topic, bool alone);
extern void evbus_inflight_discard(InflightMsg *msg);
extern void evbus_inflight_add(InflightMsg *msg);
extern int	evbus_inflight_count(void);
extern int	evbus_inflight_max(void);
extern bool evbus_inflight_room(void);
extern void evbus_inflight_step_begin(void);
extern int64 evbus_claim_budget(void);
extern void evbus_reports_on_delivery(void *opaque, rd_kafka_resp_err_t err,
									  rd_kafka_msg_status_t status,
									  int32 partition, int64 offset);
extern void evbus_reports_dead(int64 id, int table,
							   const char *integration_event,
							   rd_kafka_resp_err_t err, const char *why);
extern bool evbus_reports_holds(int64 id);
extern void evbus_reports_forget_unreported(void);
extern int	evbus_reports_unrecorded(TimestampTz *since);
extern void evbus_reports_finish(void);

/* publish_producer.c: the producer's life cycle */
extern void evbus_pubproducer_sync(void);
extern EvbusProducer *evbus_pubproducer(void);

/* publish_pacing.c: when to claim, serve reports and record them */
extern void evbus_pacing_request_claim(void);
extern bool evbus_pacing_claim_due(TimestampTz now);
extern void evbus_pacing_claimed(TimestampTz now, bool more, int nevents);
extern bool evbus_pacing_backlog(void);
extern void evbus_pacing_served(TimestampTz now);
extern bool evbus_pacing_finish_due(int nunrecorded, TimestampTz since,
									bool producer_up, TimestampTz now);
extern long evbus_pacing_wait_ms(bool reports_expected, bool producer_up,
								 int nunrecorded, TimestampTz since);

#endif							/* EVBUS_PUBLISH_H */

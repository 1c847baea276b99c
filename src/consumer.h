/*-------------------------------------------------------------------------
 *
 * consumer.h
 *	  The consuming side: subscriptions, Kafka consumers per group, the
 *	  inbox and handler execution.
 *
 *-------------------------------------------------------------------------
 */
#ifndef EVBUS_CONSUMER_H
#define EVBUS_CONSUMER_H

#include "nodes/parsenodes.h"
#include "utils/hsearch.h"

#include "evbus.h"

/* One handler of one integration event in one group (subscriptions.c). */
typedef struct EvbusSubscription
{
	char	   *group_name;
	char	   *integration_event;
	char	   *topic;			/* evbus.topic_prefix || integration_event */
	char	   *signature;		/* qualified, as evbus.subscriptions.handler */
	bool		is_procedure;
	bool		takes_headers;
	bool		batch;			/* (payloads jsonb[], headers jsonb[]) */
	Oid			run_as;
	int			max_retries;	/* -1: evbus.max_retries */
	bool		park;			/* on_dead_letter 'park': a dead letter holds
								 * its key */
	bool		paused;			/* evbus.pause_subscription, or refused: its
								 * rows wait */
	bool		refused;		/* evbus.subscribe_events does not list its
								 * event: its topic is not read */
} EvbusSubscription;

/*
 * Most calls of per-message handlers in one transaction of the consumer
 * (consumer.c, and the retries of inbox.c).  Each call runs in a
 * subtransaction (handler.c), and one that writes takes a
 * subtransaction id.  PostgreSQL keeps 64 of them per transaction in
 * shared memory (PGPROC_MAX_CACHED_SUBXIDS); past that the transaction is
 * "overflowed", and while it runs every snapshot taken on the server, and
 * on its hot standbys until their snapshots' xmin passes it, checks the
 * visibility of each recent transaction id in pg_subtrans: with a long
 * transaction open elsewhere, tens of thousands of page reads a second
 * for a pgbench beside a consumer draining batches of 500 messages, none
 * with this limit (bench/subtransactions.sh, BENCHMARKS.md).  The inbox
 * insert takes one more.  Handlers with subtransactions of their own (an
 * EXCEPTION block) take more per call: the consumer then makes fewer
 * calls, as measured (inbox.c, evbus_inbox_calls_budget).  Test
 * 248_handler_subtransactions.pl.
 */
#define EVBUS_CALLS_PER_TRANSACTION 48

/* A message as received from Kafka, copied out of librdkafka. */
typedef struct ReceivedMessage
{
	char	   *topic;
	int32		partition;
	int64		offset;
	char	   *key;			/* NULL: no key */
	size_t		keylen;
	char	   *value;			/* NULL: a null value (tombstone) */
	size_t		valuelen;
	int			nheaders;
	char	  **header_names;
	char	  **header_values;	/* NULL: a null header value */
	size_t	   *header_lens;
} ReceivedMessage;

/* An offset to store: the next one to read in a partition. */
typedef struct NextOffset
{
	char	   *topic;
	int32		partition;
	int64		next_offset;
	int64		high_watermark; /* as the batch was read; -1: not known */
} NextOffset;

/* subscriptions.c */
extern char *evbus_default_group(void);
extern void evbus_subscriptions_watch(void);
extern bool evbus_subscriptions_changed_since_load(void);
extern List *evbus_load_subscriptions(MemoryContext cxt);
extern char *evbus_role_name(Oid roleid);
extern Oid	evbus_resolve_handler(const char *signature);
extern bool evbus_batch_handler_args(int nargs, const Oid *argtypes);
extern void evbus_check_handler_owner(Oid fn, Oid proowner, Oid run_as);
extern void evbus_check_run_as_connect(Oid run_as);
extern void evbus_refuse_subscriber_drop(DropRoleStmt *stmt);

/* pause.c */
extern void evbus_check_subscriptions_owner(const char *event, const char *group,
											const char *signature, const char *verb);

/* handler.c */
extern bool evbus_run_handler(const EvbusSubscription *sub, Jsonb **payloads,
							  Jsonb **headers, int n, char **error_code,
							  char **error_message);
typedef bool (*EvbusCallNote) (void *arg, int i);
extern int	evbus_run_handler_each(const EvbusSubscription *sub, Jsonb **payloads,
								   Jsonb **headers, int n, int64 *took,
								   EvbusCallNote note, void *note_arg,
								   char **error_code, char **error_message);
extern void evbus_forget_handler_plans(void);

/* handler_trace.c */
extern void evbus_handler_trace_begin(Jsonb *headers);
extern void evbus_handler_trace_end(void);
extern Jsonb *evbus_handler_headers(Jsonb *user_headers, bool with_traceparent);

/* handler_timeout.c */
extern void evbus_handler_timeout_arm(const char *signature);
extern void evbus_handler_timeout_disarm(void);

/* handler_session.c */
extern void evbus_handler_session_for(Oid run_as);

/* role_settings.c */
extern void evbus_apply_login_settings(Oid role);

/* inbox.c (its parts: inbox.h) */
extern void evbus_inbox_init(void (*let_go) (void));
extern int	evbus_inbox_calls_budget(void);
extern int	evbus_inbox_handler_calls(List *subs, const char *group,
									  const char *topic);
extern bool evbus_inbox_receive(const char *group, List *subs,
								ReceivedMessage *msgs, int n,
								NextOffset *offsets, int noffsets,
								bool commit_async);
extern TimestampTz evbus_inbox_dispatch_due(List *subs);
extern void evbus_inbox_walk_from_start(void);
extern void evbus_inbox_take_back_attempts(const int64 *ids, int n);
extern void evbus_inbox_charge_attempt(int64 id);
extern bool evbus_inbox_maintain(void);
extern TimestampTz evbus_inbox_cleanup_wake(TimestampTz wake_at);

/* consumer_offsets.c (inside the caller's transaction) */
extern int64 evbus_stored_offset(const char *group, const char *topic, int32 partition);
extern uint64 evbus_forget_partition_log(const char *group, const char *topic,
										 int32 partition, int64 from);
extern void evbus_store_high_watermarks(const char *group, NextOffset *hwm, int n);
extern void evbus_forget_high_watermarks(const char *group, const char **keep_topics,
										 const int32 *keep_partitions, int nkeep);

/* consumer_positions.c */
extern HTAB *evbus_positions_create(void);
extern void evbus_positions_forget(HTAB *positions);
extern void evbus_position_advance(HTAB *positions, const char *topic,
								   int32 partition, int64 next);
extern bool evbus_position_went_back(HTAB *positions, const char *topic,
									 int32 partition, int64 offset, int64 *expected);

/* attempt_marker.c */
extern void evbus_attempt_marker_open(void);
extern bool evbus_attempt_marker_suspect(const char *group, const ReceivedMessage *m);
extern bool evbus_attempt_marker_crashed(const char *group, const ReceivedMessage *m,
										 const char *handler);
extern int	evbus_attempt_marker_uncharged(int64 **ids);
extern void evbus_attempt_marker_forget_counted(void);
extern int64 evbus_attempt_marker_charged(void);
extern bool evbus_attempt_marker_retries(void);
extern bool evbus_attempt_marker_write(const char *group, ReceivedMessage *msgs, int n);
extern void evbus_attempt_marker_counted(const int64 *ids, int n);
extern void evbus_attempt_marker_call(const char *group, const char *topic, int32 partition,
									  int64 offset, const char *handler, int64 inbox_id);
extern void evbus_attempt_marker_call_done(void);
extern void evbus_attempt_marker_clear(void);
extern void evbus_attempt_marker_exit(void);

/* replay.c */
extern void evbus_replays_watch(void);
extern bool evbus_replays_run(void);

/* consumer.c */
extern uint64 evbus_consumers_sync(List *subs);
extern bool evbus_consumers_poll(List *subs, bool *left_pending);
extern int	evbus_consumers_wakeup_fd(void);
extern void evbus_consumers_report_watermarks(void);
extern void evbus_consumers_shutdown(bool idle);
extern void evbus_consumers_let_go(void);
extern void evbus_consumers_exit(void);
extern int	evbus_consumers_watch_list(EvbusWatch **out, bool *unassigned,
									   char **spare);	/* idle.c */

#endif							/* EVBUS_CONSUMER_H */

/*-------------------------------------------------------------------------
 *
 * inbox.h
 *	  What the files of the inbox share: a decoded message, a dispatched
 *	  (message, handler), and the functions one file of the inbox offers
 *	  another.
 *
 * The calls go one way: inbox.c (the batch protocol) calls
 * inbox_decode.c (decoding), inbox_write.c (inserting the rows),
 * inbox_due.c (the pending rows that may run now), inbox_counts.c
 * (counting a batch's messages for evbus.stats),
 * inbox_retry.c (running dispatched rows,
 * retries and dead letters), which calls inbox_park.c (a handler's dead
 * letter, skipped or parked), and consumer_offsets.c (stored offsets);
 * none of these calls back into its caller.
 *
 *-------------------------------------------------------------------------
 */
#ifndef EVBUS_INBOX_H
#define EVBUS_INBOX_H

#include "storage/proc.h"
#include "utils/reltrigger.h"
#include "utils/jsonb.h"

#include "consumer.h"

/*
 * A transaction of the consumer holds fewer subtransaction ids than
 * PostgreSQL caches per transaction (PGPROC_MAX_CACHED_SUBXIDS, 64):
 * before each handler call it stops at SUBXIDS_WANTED, and the rows left
 * wait for the next transaction (test 248_handler_subtransactions.pl).
 */
#define SUBXIDS_WANTED (PGPROC_MAX_CACHED_SUBXIDS - 8)

/* A received message, decoded (inbox_decode.c). */
typedef struct Decoded
{
	const char *poison;			/* NULL if decodable, else the error code */
	char	   *detail;
	Jsonb	   *payload;
	Jsonb	   *headers;
	char	   *message_id;		/* valid cap-msg-id, or NULL */
	char	   *event_key;
} Decoded;

/* A (message, handler) that may run in this transaction: an inbox row. */
typedef struct Dispatch
{
	int64		inbox_id;
	char	   *group_name;
	char	   *topic;
	int32		partition;		/* where Kafka had it */
	int64		offset;
	char	   *message_id;		/* text, for NOTIFY and dead letters */
	Jsonb	   *payload;
	Jsonb	   *headers;
	int			attempts;		/* including this one */
	char	   *event_key;		/* NULL: no order to keep */
	char	   *handler;		/* the handler's signature */
	EvbusSubscription *sub;		/* NULL: no longer subscribed */
} Dispatch;

/* A new row of evbus.inbox: a received message for one handler. */
typedef struct InboxNewRow
{
	const char *dedup_key;		/* message id, else topic/partition/offset */
	const char *message_id;		/* NULL: none */
	const char *integration_event;
	const char *topic;
	int32		partition;
	int64		offset;
	const char *event_key;		/* NULL: none */
	Jsonb	   *payload;
	Jsonb	   *headers;
	int32		attempts;
	bool		handled;		/* inserted handled; else pending, due now */
	const char *handler;		/* the handler's signature */
} InboxNewRow;

/* inbox_decode.c */
extern void evbus_decode_batch(ReceivedMessage *msgs, int n, const char *group,
							   Decoded *dec);

/* inbox_due.c */
extern int	evbus_inbox_due_rows(int budget, int64 **ids, TimestampTz *next_due);

/* inbox_counts.c */
extern bool evbus_inbox_counts_here(const TriggerDesc *triggers);
extern void evbus_inbox_count(const char *group, const InboxNewRow *rows, int n);

/* inbox_write.c */
extern bool evbus_inbox_write(Oid relid, const char *group, const InboxNewRow *rows,
							  int n, int64 *ids);

/* inbox_retry.c */
extern List *evbus_hold_key(List *held, const char *handler, const char *key);
extern bool evbus_key_held(List *held, const char *handler, const char *key);
extern bool evbus_inbox_handle_batch(List *dispatch, MemoryContext cxt,
									 bool inserted_handled, int *calls,
									 int *handled_out);
extern void evbus_dead_letter_poison(const char *group, const ReceivedMessage *m,
									 const Decoded *d,
									 const char *integration_event);

/* inbox_park.c */
extern bool evbus_inbox_dead_letter(const Dispatch *d, const char *code,
									const char *message);

/* consumer_offsets.c */
extern void evbus_store_offsets(const char *group, NextOffset *offsets, int n);

#endif							/* EVBUS_INBOX_H */

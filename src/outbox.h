/*-------------------------------------------------------------------------
 *
 * outbox.h
 *	  The worker's view of the outbox: claim rows, record published ones,
 *	  dead-letter failed ones, keep the tables small.
 *
 *-------------------------------------------------------------------------
 */
#ifndef EVBUS_OUTBOX_H
#define EVBUS_OUTBOX_H

#include "evbus.h"

/* One staged event, copied out of the claiming transaction. */
typedef struct OutboxRow
{
	int64		id;
	int			table;			/* evbus.outbox_<table> holds it */
	pg_uuid_t	message_id;
	char	   *integration_event;
	char	   *key;			/* NULL: use the message id */
	char	   *payload;		/* compact JSON; freed once produced */
	int			payload_len;
	int			nheaders;		/* user headers */
	char	  **header_names;
	char	  **header_values;
	char	   *domain_event;	/* or NULL */
	char	   *traceparent;	/* or NULL */
	TimestampTz staged_at;
} OutboxRow;

/* An event that cannot be published, with the reason. */
typedef struct DeadEvent
{
	int64		id;
	int			table;
	const char *error_code;
	char	   *error_message;
} DeadEvent;

extern void evbus_outbox_claims_begin(void);
extern void evbus_outbox_claims_end(void);
extern int	evbus_outbox_claim_range(int64 from_id, int limit, int64 max_bytes,
									 OutboxRow **rows, MemoryContext cxt);
extern int	evbus_outbox_claim_ids(int64 *ids, int nids, int64 max_bytes,
								   OutboxRow **rows, MemoryContext cxt,
								   int64 *last_examined);
extern int	evbus_outbox_pending_ids(int table, int max, int64 *ids);
extern void evbus_outbox_depth(int64 *depth, TimestampTz *oldest);
extern void evbus_outbox_finish(int64 *done_ids, int *done_tables,
								char **done_events, int ndone,
								DeadEvent *dead, int ndead);

/* Is the event of this id held by the publisher (its row must stay)? */
typedef bool (*EvbusOutboxHeldFn) (int64 id);

extern void evbus_outbox_maintain(EvbusOutboxHeldFn held,
								  void (*let_go) (void));

/* outbox_truncate.c: truncating in a worker of its own */
extern bool evbus_outbox_truncate_start(int slot);

/* outbox_published.c: the ids the worker is done with, per table */
/* publish_pause.c: is an integration event's publishing paused? */
extern bool evbus_publish_any_paused(void);
extern bool evbus_publish_paused(const char *event, int len);

extern bool evbus_outbox_published_covers(int table, int64 id, int64 *last);
extern void evbus_outbox_published_load(void);
extern void evbus_outbox_published_add(int table, int64 *ids, int nids);
extern void evbus_outbox_published_forget(int table);

#endif							/* EVBUS_OUTBOX_H */

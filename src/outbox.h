/*-------------------------------------------------------------------------
 *
 * outbox.h
 *	  The worker's view of the outbox: claim rows, release published ones,
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
	pg_uuid_t	message_id;
	char	   *integration_event;
	char	   *key;			/* NULL: use the message id */
	char	   *payload;		/* compact JSON */
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
	const char *error_code;
	char	   *error_message;
} DeadEvent;

extern int	evbus_outbox_claim_range(int64 from_id, int limit, OutboxRow **rows,
									 MemoryContext cxt);
extern int	evbus_outbox_claim_ids(int64 *ids, int nids, OutboxRow **rows,
								   MemoryContext cxt);
extern void evbus_outbox_delete_ids(int64 *ids, int nids);
extern bool evbus_outbox_is_empty(int table);
extern void evbus_outbox_finish(int64 *done_ids, char **done_events, int ndone,
								DeadEvent *dead, int ndead);
extern void evbus_outbox_maintain(void);

#endif							/* EVBUS_OUTBOX_H */

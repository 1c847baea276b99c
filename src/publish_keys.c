/*-------------------------------------------------------------------------
 *
 * publish_keys.c
 *	  Per-key ordering of the publisher: how many events of each key are
 *	  in flight, which event holds a key back, and the events to produce
 *	  alone.
 *
 * An event that is not confirmed blocks its key until it is produced
 * again and PERSISTED, so later events of the key never overtake it
 * (tests 020_broker_outage.pl, 052_refused_batch_order.pl).  The broker
 * refuses whole record batches ("message too large" for a compressed
 * batch), so an event refused with a permanent error while it shared a
 * batch may be paying for a neighbour: it goes to the solo list, to be
 * produced again alone, and only an event refused alone is dead-lettered
 * (test 050_dead_letters.pl).
 *
 * A key's events are also kept from overtaking one another on the wire.
 * Invariant: while an event of a key is in flight, a later event of the
 * key is produced only if the key is proven on the topic: an event of it
 * was PERSISTED there by the current producer (test
 * 260_inflight_refusal_order.pl).  librdkafka sends up to five produce
 * requests per partition before the first is answered, and the gap-less
 * guarantee stops only what was not sent yet.  A broker that knows the
 * producer id on the partition refuses a request that follows a refused
 * one (out of order sequence); one that does not know it (a new producer,
 * and every rebuild makes one; or the broker forgot the id) appends it,
 * whatever its sequence number, so a later event of the key would land
 * before the refused batch's events are produced again.  A persisted event
 * of the key on the topic proves that the broker knows the producer on
 * its partition.  So a key's first event on a producer goes alone (for its
 * key), and the rest follow once it is confirmed; a proven key keeps its
 * proof while it is busy and for PROVEN_KEEP_MS after.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/hashfn.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "evbus.h"
#include "publish.h"

/*
 * How long an idle key keeps its proof (that the broker knows the producer
 * on the key's partition), and past how many keys every idle one is
 * forgotten (a bound on the memory).  A broker forgets a producer id only
 * after producer.id.expiration.ms (a day by default) without a write from
 * it, or when retention deletes every batch it wrote to the partition.
 */
#define PROVEN_KEEP_MS 10000
#define MAX_IDLE_KEYS 100000

/* Per-key state: how many in flight, and whether the key is blocked. */
typedef struct KeyState
{
	uint64		keyhash;		/* hash key */
	int			inflight;
	int			failed;			/* events of this key awaiting re-produce */
	int64		blocking_id;	/* lowest failed id; 0 if not blocked */
	uint32		proven_gen;		/* producer that PERSISTED an event; 0: none */
	uint32		proven_topic;	/* ... to this topic (evbus_key_topic) */
	TimestampTz proven_at;		/* ... last */
	bool		gated;			/* an event of the key was held back */
} KeyState;

/* An event refused in a batch, to be produced again alone. */
typedef struct SoloEvent
{
	int64		id;
	uint64		keyhash;
} SoloEvent;

static MemoryContext keys_cxt = NULL;	/* the publisher's */
static HTAB *keys = NULL;
static SoloEvent *solo = NULL;	/* sorted by id */
static int	nsolo = 0;
static int	solo_cap = 0;
static uint32 producer_gen = 1; /* the current producer, for proofs */
static bool gate_opened = false;	/* a gated key may now go on */

/* evbus_keys_init --- set up the key states, in the publisher's context. */
void
evbus_keys_init(MemoryContext cxt)
{
	HASHCTL		ctl;

	keys_cxt = cxt;
	memset(&ctl, 0, sizeof(ctl));
	ctl.hcxt = cxt;
	ctl.keysize = sizeof(uint64);
	ctl.entrysize = sizeof(KeyState);
	keys = hash_create("evbus keys", 1024, &ctl,
					   HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
}

/* The hash of a row's key (of its message id if it has none). */
uint64
evbus_key_hash(const OutboxRow *row)
{
	if (row->key == NULL)
		return hash_bytes_extended((const unsigned char *) &row->message_id,
								   sizeof(pg_uuid_t), 1);
	return hash_bytes_extended((const unsigned char *) row->key,
							   strlen(row->key), 0);
}

/*
 * evbus_key_topic --- what a key's proof is for: the topic row goes to
 * (its name, topic), by which the key's partition is known to the broker.
 * 0 for a row without a key: its key (its message id) has no other event
 * to keep in order, and needs no proof.
 */
uint32
evbus_key_topic(const OutboxRow *row, const char *topic)
{
	if (row->key == NULL)
		return 0;
	return hash_bytes((const unsigned char *) topic, strlen(topic)) | 1;
}

static KeyState *
key_state(uint64 keyhash, bool create)
{
	bool		found;
	KeyState   *ks = hash_search(keys, &keyhash, create ? HASH_ENTER : HASH_FIND,
								 &found);

	if (create && !found)
	{
		ks->inflight = 0;
		ks->failed = 0;
		ks->blocking_id = 0;
		ks->proven_gen = 0;
		ks->proven_topic = 0;
		ks->proven_at = 0;
		ks->gated = false;
	}
	return ks;
}

/* Is the key proven on topic by the current producer? */
static bool
key_proven(KeyState *ks, uint32 topic)
{
	return ks->proven_gen == producer_gen && ks->proven_topic == topic &&
		topic != 0;
}

/*
 * Forget a key with nothing in flight and nothing to produce again, unless
 * it is proven by the current producer: evbus_keys_prune forgets those.
 */
static void
key_state_release(KeyState *ks)
{
	if (ks->inflight == 0 && ks->failed == 0 &&
		!key_proven(ks, ks->proven_topic))
		hash_search(keys, &ks->keyhash, HASH_REMOVE, NULL);
}

/*
 * evbus_keys_new_producer --- the producer was destroyed: a new one is a
 * producer id the brokers do not know, so no key is proven any more.
 */
void
evbus_keys_new_producer(void)
{
	producer_gen++;
}

/*
 * evbus_keys_prune --- forget idle keys whose proof is older than
 * PROVEN_KEEP_MS, or void (every idle key past MAX_IDLE_KEYS keys); called
 * about once a second.
 */
void
evbus_keys_prune(TimestampTz now)
{
	HASH_SEQ_STATUS status;
	KeyState   *ks;
	bool		all = hash_get_num_entries(keys) > MAX_IDLE_KEYS;

	hash_seq_init(&status, keys);
	while ((ks = hash_seq_search(&status)) != NULL)
	{
		if (ks->inflight == 0 && ks->failed == 0 &&
			(all || ks->proven_gen != producer_gen ||
			 TimestampDifferenceExceeds(ks->proven_at, now, PROVEN_KEEP_MS)))
			hash_search(keys, &ks->keyhash, HASH_REMOVE, NULL);
	}
}

/*
 * evbus_keys_take_opened --- did a key with events held back
 * (evbus_key_may_produce) become free to go on since the last call (proven,
 * or nothing of it in flight any more)?  Then the publisher claims again
 * soon: a step woken by delivery reports alone claims nothing.
 */
bool
evbus_keys_take_opened(void)
{
	bool		opened = gate_opened;

	gate_opened = false;
	return opened;
}

/* The lowest failed id of a key still to be produced again, or 0. */
static int64
next_failed_id(uint64 keyhash)
{
	int64		lowest = evbus_revisit_lowest_failed(keyhash);

	for (int i = 0; i < nsolo; i++)
		if (solo[i].keyhash == keyhash && (lowest == 0 || solo[i].id < lowest))
			lowest = solo[i].id;
	return lowest;
}

/*
 * key_block --- event id of the key failed and must be produced again:
 * the key's later events wait until it is confirmed (per-key order).
 */
static void
key_block(KeyState *ks, int64 id)
{
	if (ks->blocking_id != id)
		ks->failed++;
	if (ks->blocking_id == 0 || id < ks->blocking_id)
		ks->blocking_id = id;
}

/*
 * key_unblock --- event id of the key is done with (published, or dead):
 * if it held the key back, the key's next failed event, if any, does now.
 * The event must no longer be among the revisits or the solo events.
 */
static void
key_unblock(KeyState *ks, int64 id)
{
	if (ks->blocking_id == id)
	{
		ks->failed--;
		ks->blocking_id = ks->failed > 0 ? next_failed_id(ks->keyhash) : 0;
	}
}

/*
 * evbus_key_may_produce --- may event id of the key, to topic
 * (evbus_key_topic), go now?  Not while an earlier event of the key waits
 * to be produced again, nor, for that event itself, while others of its
 * key are still in flight; nor while an event of the key is in flight and
 * the key is not proven on topic by the current producer (the gate, see
 * the top of the file; test 260_inflight_refusal_order.pl).
 */
bool
evbus_key_may_produce(uint64 keyhash, int64 id, uint32 topic)
{
	KeyState   *ks = key_state(keyhash, false);

	if (ks == NULL)
		return true;
	if (ks->blocking_id != 0 ?
		ks->blocking_id != id || ks->inflight > 0 :
		ks->inflight > 0 && !key_proven(ks, topic))
	{
		ks->gated = true;		/* a claim once nothing is in flight */
		return false;
	}
	return true;
}

/* evbus_key_sent --- an event of the key is in flight. */
void
evbus_key_sent(uint64 keyhash)
{
	key_state(keyhash, true)->inflight++;
}

/*
 * key_settle --- an event of the key was reported on (reported: it was in
 * flight) or refused before it was queued: done with (failed false) or to
 * be produced again (failed true).
 */
static void
key_settle(uint64 keyhash, int64 id, bool reported, bool failed)
{
	KeyState   *ks = key_state(keyhash, true);

	if (reported)
		ks->inflight--;
	if (failed)
		key_block(ks, id);
	else
		key_unblock(ks, id);
	if (ks->gated && ks->inflight == 0)
	{
		ks->gated = false;
		gate_opened = true;
	}
	key_state_release(ks);
}

/*
 * evbus_key_persisted --- event id of the key, in flight to topic
 * (evbus_key_topic), is PERSISTED: done with, and the key is proven on the
 * topic, so that its later events need not wait for one another.
 */
void
evbus_key_persisted(uint64 keyhash, int64 id, uint32 topic)
{
	KeyState   *ks = key_state(keyhash, true);

	if (topic != 0)
	{
		if (ks->gated && !key_proven(ks, topic))
		{
			ks->gated = false;
			gate_opened = true;
		}
		ks->proven_gen = producer_gen;
		ks->proven_topic = topic;
		ks->proven_at = GetCurrentTimestamp();
	}
	key_settle(keyhash, id, true, false);
}

/*
 * evbus_key_done --- event id of the key is done with (published, or
 * dead); reported: it was in flight.  Remove it from the revisits and the
 * solo list first.
 */
void
evbus_key_done(uint64 keyhash, int64 id, bool reported)
{
	key_settle(keyhash, id, reported, false);
}

/*
 * evbus_key_failed --- event id of the key must be produced again, and
 * holds the key back till then; reported: it was in flight.  The caller
 * remembers it among the revisits or the solo events.
 */
void
evbus_key_failed(uint64 keyhash, int64 id, bool reported)
{
	key_settle(keyhash, id, reported, true);
}

/*
 * evbus_key_forget_gone --- event id of a key failed, and its row is gone
 * from the outbox (deleted by hand): it holds the key back no longer.  The
 * event must no longer be among the revisits or the solo events.
 */
void
evbus_key_forget_gone(uint64 keyhash, int64 id)
{
	KeyState   *ks = key_state(keyhash, false);

	elog(LOG, "evbus: event %lld is no longer in the outbox; it holds its key back no longer",
		 (long long) id);
	if (ks == NULL)
		return;
	if (ks->blocking_id == id)
		key_unblock(ks, id);
	else if (ks->failed > 0)
		ks->failed--;
	key_state_release(ks);
}

/* Is id among rows (in id order)? */
static bool
rows_have(const OutboxRow *rows, int n, int64 id)
{
	int			low = 0;
	int			high = n - 1;

	while (low <= high)
	{
		int			mid = low + (high - low) / 2;

		if (rows[mid].id == id)
			return true;
		if (rows[mid].id < id)
			low = mid + 1;
		else
			high = mid - 1;
	}
	return false;
}

/*
 * evbus_keys_forget_vanished --- events that failed (they were due rows
 * then) and that a claim of their ids did not find (rows, in id order)
 * were deleted by hand: they hold their keys back no longer.  Ids above
 * last_examined were not looked up (the claim was full) and are left
 * alone.
 */
void
evbus_keys_forget_vanished(int64 *ids, int nids, OutboxRow *rows, int n,
						   int64 last_examined)
{
	int			i;

	for (i = 0; i < nids; i++)
	{
		uint64		keyhash;

		if (ids[i] > last_examined || rows_have(rows, n, ids[i]) ||
			!evbus_revisit_take_failed(ids[i], &keyhash))
			continue;
		evbus_key_forget_gone(keyhash, ids[i]);
	}
}

/* evbus_solo_add --- event id was refused in a batch: produce it alone. */
void
evbus_solo_add(int64 id, uint64 keyhash)
{
	int			i;

	for (i = 0; i < nsolo; i++)
		if (solo[i].id == id)
			return;
	if (nsolo == solo_cap)
	{
		solo_cap = Max(solo_cap * 2, 16);
		solo = solo ? repalloc(solo, sizeof(SoloEvent) * solo_cap) :
			MemoryContextAlloc(keys_cxt, sizeof(SoloEvent) * solo_cap);
	}
	for (i = nsolo; i > 0 && solo[i - 1].id > id; i--)
		solo[i] = solo[i - 1];
	solo[i].id = id;
	solo[i].keyhash = keyhash;
	nsolo++;
}

/* How many events wait to be produced alone. */
int
evbus_solo_count(void)
{
	return nsolo;
}

/*
 * evbus_solo_take_next --- the lowest solo event whose key it may go for
 * (its key is not held back by an earlier event) leaves the list; false
 * if none may go yet.
 */
bool
evbus_solo_take_next(int64 *id, uint64 *keyhash)
{
	int			i;

	for (i = 0; i < nsolo; i++)
	{
		KeyState   *ks = key_state(solo[i].keyhash, false);

		if (ks == NULL || ks->blocking_id == 0 || ks->blocking_id == solo[i].id)
		{
			*id = solo[i].id;
			*keyhash = solo[i].keyhash;
			memmove(&solo[i], &solo[i + 1], sizeof(SoloEvent) * (nsolo - i - 1));
			nsolo--;
			return true;
		}
	}
	return false;
}

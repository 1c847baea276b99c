/*-------------------------------------------------------------------------
 *
 * consumer_positions.c
 *	  Where a group's consumer expects the next message of each partition,
 *	  so that it can tell a partition whose log began again.
 *
 * librdkafka hands a partition's messages in offset order from where the
 * consumer put it: the assignment's start offset (kafka_offsets.c) or a
 * replay's seek.  It goes back on its own only when the broker no longer
 * has that offset: the consumer's auto.offset.reset ("earliest") then
 * starts the partition again at its beginning.  Where the offset is past
 * the end of the log, the log is not the one the offset was of: the topic
 * was deleted and created again, or its log was truncated.  Its messages
 * are new ones at offsets the inbox may know already, and a message
 * without an id is de-duplicated by its offset: the consumer (consumer.c)
 * finds such a step back here and has the database forget the old log
 * (evbus_forget_partition_log) before the batch is handled (test
 * 308_new_partition_log.pl).
 *
 * An assignment sets the positions of the partitions it starts at a
 * stored offset and forgets the others; a replay forgets them all; each
 * batch read sets those of its partitions.  When the assignment changed
 * during a batch's poll, only the messages polled after the change count:
 * librdkafka reads a partition assigned again from its start offset, which
 * may come before messages of it polled earlier in the same batch.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "utils/hsearch.h"

#include "consumer.h"

typedef struct PositionKey
{
	char		topic[EVBUS_MAX_TOPIC_LEN + 1];
	int32		partition;
} PositionKey;

typedef struct Position
{
	PositionKey key;
	int64		next;			/* the offset of the next message expected */
} Position;

/* The key of (topic, partition), false if the topic is too long for one. */
static bool
position_key(PositionKey *key, const char *topic, int32 partition)
{
	if (strlen(topic) > EVBUS_MAX_TOPIC_LEN)
		return false;
	memset(key, 0, sizeof(*key));
	strcpy(key->topic, topic);
	key->partition = partition;
	return true;
}

/* evbus_positions_create --- an empty set of positions, for one group. */
HTAB *
evbus_positions_create(void)
{
	HASHCTL		ctl;

	ctl.keysize = sizeof(PositionKey);
	ctl.entrysize = sizeof(Position);
	return hash_create("evbus consumer positions", 16, &ctl, HASH_ELEM | HASH_BLOBS);
}

/* evbus_positions_forget --- forget every position of positions. */
void
evbus_positions_forget(HTAB *positions)
{
	HASH_SEQ_STATUS seq;
	Position   *p;

	hash_seq_init(&seq, positions);
	while ((p = hash_seq_search(&seq)) != NULL)
		hash_search(positions, &p->key, HASH_REMOVE, NULL);
}

/*
 * evbus_position_advance --- the consumer read topic[partition] up to
 * next - 1: next is the offset it expects there.
 */
void
evbus_position_advance(HTAB *positions, const char *topic, int32 partition, int64 next)
{
	PositionKey key;
	Position   *p;

	if (!position_key(&key, topic, partition))
		return;
	p = hash_search(positions, &key, HASH_ENTER, NULL);
	p->next = next;
}

/*
 * evbus_position_went_back --- is offset, that of a message of
 * topic[partition], before the offset the consumer expects there?  Then
 * *expected is that offset.
 */
bool
evbus_position_went_back(HTAB *positions, const char *topic, int32 partition,
						 int64 offset, int64 *expected)
{
	PositionKey key;
	Position   *p;

	if (!position_key(&key, topic, partition))
		return false;
	p = hash_search(positions, &key, HASH_FIND, NULL);
	if (p == NULL || offset >= p->next)
		return false;
	*expected = p->next;
	return true;
}

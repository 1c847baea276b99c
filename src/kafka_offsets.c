/*-------------------------------------------------------------------------
 *
 * kafka_offsets.c
 *	  The consumer's offsets on Kafka's side: what this database commits
 *	  to Kafka, and where an assigned partition starts.
 *
 * The database owns the offsets (consumer_offsets.c).  Offsets are also
 * committed to Kafka, for lag tools and for other members of the group,
 * after the database transaction that stored them, and with
 * evbus.wait_for_standbys only once the named standbys have flushed that
 * transaction (standby_wait.c).  Each carries metadata naming this
 * database, so that at the next assignment evbus can tell whose offset
 * Kafka holds:
 *
 *	- normally a partition starts at the later of the stored offset and
 *	  Kafka's (another database of the same group may have advanced it),
 *	  or at its beginning when neither exists -- never at librdkafka's
 *	  auto.offset.reset default;
 *	- but when Kafka's offset was committed by this very database and is
 *	  ahead of the stored one, this database has lost transactions it had
 *	  committed (a failover to an asynchronous standby that lagged, a
 *	  restore of a physical backup): the stored offset wins, and the
 *	  messages in between are handled again, once, since their inbox rows
 *	  are lost too (test 302_failover_consume.pl).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xlog.h"
#include "commands/extension.h"
#include "miscadmin.h"
#include "storage/pmsignal.h"
#include "utils/timestamp.h"

#include "inbox.h"
#include "kafka.h"

/*
 * The metadata of the offsets this database commits to Kafka: "evbus
 * <system identifier> <database oid> <extension oid>".  A physical
 * standby, and a physical backup restored, share all three; a logical
 * copy, another member of the group, and the same database after DROP
 * and CREATE EXTENSION (whose offsets and inbox started afresh) do not.
 * Set again by every assignment, inside its transaction: no offset is
 * committed before one, and the worker may outlive a DROP and CREATE
 * EXTENSION that its consumers are built again after (test
 * 302_failover_consume.pl).
 */
static char commit_metadata[80];

/*
 * evbus_kafka_offsets_name_database --- (re)read what names this database
 * in offset metadata; inside the assignment's transaction.
 */
void
evbus_kafka_offsets_name_database(void)
{
	snprintf(commit_metadata, sizeof(commit_metadata),
			 "evbus " UINT64_FORMAT " %u %u",
			 GetSystemIdentifier(), MyDatabaseId,
			 get_extension_oid("evbus", false));
}

/* Name this database in every offset of list (librdkafka frees it). */
static void
tag_offsets(rd_kafka_topic_partition_list_t *list)
{
	const char *metadata = commit_metadata;
	int			i;

	if (metadata[0] == '\0')
		return;					/* untagged: the larger offset wins */
	for (i = 0; i < list->cnt; i++)
	{
		rd_kafka_topic_partition_t *tp = &list->elems[i];

		if (tp->metadata)
			free(tp->metadata);
		tp->metadata = strdup(metadata);
		tp->metadata_size = tp->metadata ? strlen(metadata) : 0;
	}
}

/* Was a committed offset committed by this very database? */
static bool
committed_by_us(const rd_kafka_topic_partition_t *tp)
{
	const char *metadata = commit_metadata;

	return metadata[0] != '\0' && tp->metadata != NULL && tp->metadata_size == strlen(metadata) &&
		memcmp(tp->metadata, metadata, tp->metadata_size) == 0;
}

/*
 * commit_and_wait --- commit list and wait for Kafka's answer, at most
 * answer_ms, and not at all once the postmaster has died.
 * librdkafka's synchronous commit waits for as long as the group's
 * coordinator does not answer (a broker that hangs without closing its
 * connections), and its callers here cannot be interrupted: a rebalance,
 * and the consumer's leaving on its way out, so that neither a
 * termination nor a fast shutdown could end the worker (test
 * 137_consume_frozen_broker.pl).  A commit given up on may still land;
 * the database's stored offsets are where this database starts again
 * either way.
 */
#define COMMIT_WAIT_STEP_MS 100
#define COMMITTED_STEP_MS 1000

static void
commit_and_wait(rd_kafka_t *rk, rd_kafka_topic_partition_list_t *list, long answer_ms)
{
	rd_kafka_queue_t *answers = rd_kafka_queue_new(rk);
	rd_kafka_event_t *answer = NULL;
	TimestampTz start = GetCurrentTimestamp();

	if (rd_kafka_commit_queue(rk, list, answers, NULL, NULL) == RD_KAFKA_RESP_ERR_NO_ERROR)
	{
		do
			answer = rd_kafka_queue_poll(answers, Min(COMMIT_WAIT_STEP_MS, answer_ms));
		while (answer == NULL && PostmasterIsAlive() &&
			   !TimestampDifferenceExceeds(start, GetCurrentTimestamp(), answer_ms));
	}
	if (answer == NULL)
		ereport(LOG,
				(errmsg("evbus: Kafka did not confirm the group's offsets within %ld ms",
						answer_ms),
				 errdetail("The offsets stored in the database are where this database starts again.")));
	else
		rd_kafka_event_destroy(answer);
	/* an answer still to come is dropped with the queue */
	rd_kafka_queue_destroy(answers);
}

/*
 * evbus_kafka_offsets_committed --- read the group's committed offsets of
 * list from Kafka, as rd_kafka_committed does, but in steps, so that a
 * termination pending or the postmaster's death ends the wait (it runs
 * inside a rebalance, where interrupts are held); at most timeout_ms.
 * Returns the error of the last try (RD_KAFKA_RESP_ERR__TIMED_OUT when it
 * gave up).
 */
rd_kafka_resp_err_t
evbus_kafka_offsets_committed(rd_kafka_t *rk, rd_kafka_topic_partition_list_t *list,
							  int timeout_ms)
{
	int			waited_ms = 0;
	rd_kafka_resp_err_t err;

	for (;;)
	{
		err = rd_kafka_committed(rk, list, COMMITTED_STEP_MS);
		waited_ms += COMMITTED_STEP_MS;
		if (err != RD_KAFKA_RESP_ERR__TIMED_OUT || waited_ms >= timeout_ms ||
			ProcDiePending || !PostmasterIsAlive())
			return err;
	}
}

/*
 * evbus_kafka_offsets_commit --- tell Kafka the offsets of list, naming
 * this database, once lsn (past the commit that stored them) is on disk
 * here, and with evbus.wait_for_standbys once its standbys have flushed
 * it too; wait_ms as evbus_standby_wait.  Returns false, having told
 * Kafka nothing, if they have not.  answer_ms >= 0: waits for Kafka's
 * answer that long at most (commit_and_wait); < 0: does not wait.
 * Outside any transaction.
 *
 * The consumer commits asynchronously while messages wait (consumer.c),
 * and so does any commit with synchronous_commit = off: a crash can lose
 * such a commit, and another database of the group that took the
 * partition over would start from Kafka's offset, past messages nobody
 * has handled then (test 306_async_commit_phantom.pl).
 */
bool
evbus_kafka_offsets_commit(rd_kafka_t *rk, rd_kafka_topic_partition_list_t *list,
						   XLogRecPtr lsn, long wait_ms, long answer_ms)
{
	if (!XLogRecPtrIsInvalid(lsn))
		XLogFlush(lsn);
	if (evbus_standby_wait_enabled() &&
		!evbus_standby_wait(lsn, "committing offsets", wait_ms))
		return false;
	tag_offsets(list);
	if (answer_ms < 0)
		rd_kafka_commit(rk, list, true);
	else
		commit_and_wait(rk, list, answer_ms);
	return true;
}

/*
 * How long an assignment waits for the embedded broker to take its start
 * offsets (evbus_kafka_offsets_mark_starts).
 */
#define MARK_ANSWER_MS 5000

/*
 * evbus_kafka_offsets_mark_starts --- with the embedded broker, commit the
 * start offset of each partition of parts (the beginning as 0) and wait
 * for the answer, at most MARK_ANSWER_MS; outside any transaction, before
 * the partitions are assigned.  From then on, for as long as that broker
 * runs, it holds an offset of the group for every partition this database
 * consumed there, also when the consumer stopped before it committed one
 * of its own: a partition it holds no offset for is of a broker started
 * since (evbus_partition_start_offset).
 */
void
evbus_kafka_offsets_mark_starts(rd_kafka_t *rk, const rd_kafka_topic_partition_list_t *parts)
{
	rd_kafka_topic_partition_list_t *list;
	int			i;

	if (parts->cnt == 0 || strcmp(evbus_brokers, EVBUS_EMBEDDED) != 0)
		return;
	list = rd_kafka_topic_partition_list_new(parts->cnt);
	for (i = 0; i < parts->cnt; i++)
		rd_kafka_topic_partition_list_add(list, parts->elems[i].topic,
										  parts->elems[i].partition)->offset =
			Max(parts->elems[i].offset, 0);
	tag_offsets(list);
	commit_and_wait(rk, list, MARK_ANSWER_MS);
	rd_kafka_topic_partition_list_destroy(list);
}

/*
 * evbus_partition_start_offset --- where an assigned partition p of group
 * starts, given Kafka's committed offset (NULL when it could not be read);
 * inside the assignment's transaction, after
 * evbus_kafka_offsets_name_database.
 *
 * The embedded broker's logs and offsets begin again with each server
 * start: a stored offset it holds none beside is of an earlier log
 * (evbus_kafka_offsets_mark_starts), which the new one may have grown past
 * before this assignment.  Starting there would skip the new log's
 * messages below it: p starts at its beginning instead, and the database
 * forgets the old log (evbus_forget_partition_log; test
 * 308_new_partition_log.pl).  With a real Kafka no offset there tells
 * nothing: Kafka also forgets the offsets of a group idle longer than
 * offsets.retention.minutes.  A stored offset past the end of a new log
 * is found when librdkafka goes back to the log's beginning
 * (consumer_positions.c); one that the new log has grown past cannot be
 * told from the old log's (librdkafka 2.0 gives no topic ids).
 */
int64
evbus_partition_start_offset(const char *group, const rd_kafka_topic_partition_t *p,
							 const rd_kafka_topic_partition_t *committed)
{
	int64		stored = evbus_stored_offset(group, p->topic, p->partition);
	int64		kafka = committed ? committed->offset : -1;
	int64		start;

	if (committed && committed->err == RD_KAFKA_RESP_ERR_NO_ERROR && kafka < 0 &&
		stored > 0 && strcmp(evbus_brokers, EVBUS_EMBEDDED) == 0)
	{
		elog(DEBUG1, "evbus: group \"%s\": %s[%d] of the embedded broker starts at its beginning, not at the stored offset " INT64_FORMAT,
			 group, p->topic, p->partition, stored);
		(void) evbus_forget_partition_log(group, p->topic, p->partition, 0);
		stored = -1;
	}
	if (committed && kafka > stored && committed_by_us(committed))
	{
		ereport(LOG,
				(errmsg("evbus: group \"%s\": %s[%d] starts at offset " INT64_FORMAT ", rewound from " INT64_FORMAT,
						group, p->topic, p->partition, Max(stored, 0), kafka),
				 errdetail("This database committed offset " INT64_FORMAT " to Kafka and has since lost the transactions behind it (a failover or a restore); the " INT64_FORMAT " messages in between are handled again.",
						   kafka, kafka - Max(stored, 0))));
		kafka = -1;
	}
	start = Max(stored, kafka);
	return start < 0 ? RD_KAFKA_OFFSET_BEGINNING : start;
}

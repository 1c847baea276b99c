/*-------------------------------------------------------------------------
 *
 * consumer_pause.c
 *	  Which topics a group's consumer reads, and the consumer's side of
 *	  paused subscriptions: which of those topics to stop fetching,
 *	  pausing and resuming their partitions, and their high watermarks
 *	  while no fetch brings them.
 *
 * A paused subscription's messages wait in the inbox (inbox.c inserts
 * their rows as pending, and dispatches none while it is paused).  When
 * every subscription of a topic in a group is paused, nothing of the
 * topic could run: the consumer pauses the topic's partitions
 * (rd_kafka_pause_partitions), so that their offsets stay where they are
 * and the lag in evbus.stats grows, rather than filling the inbox.  A
 * partition is paused again on every assignment (librdkafka forgets it),
 * so a consumer restarted while the topic is paused fetches nothing of it
 * (test 280_pause_subscription.pl).  Messages that librdkafka had fetched
 * before the pause may still come: they go to the inbox and wait there,
 * which loses nothing.
 *
 * Called by consumer.c; calls nothing of it.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "lib/stringinfo.h"
#include "utils/timestamp.h"

#include "consumer.h"
#include "kafka.h"

/*
 * How long the high watermark of a partition that no fetch brings (a
 * paused one) is waited for, and for how long none is asked again once the
 * broker did not answer: with the broker down, many paused partitions must
 * not hold the worker up.
 */
#define ASKED_WATERMARK_TIMEOUT_MS 1000
#define ASKED_WATERMARK_BACKOFF_MS 30000

static TimestampTz watermark_backoff_until = 0;

/*
 * evbus_group_topics --- the comma-separated topics (sorted) of group's
 * subscriptions in subs, or with paused_only those whose every
 * subscription in the group is paused; "" when there is none.  A refused
 * subscription's topic is not read at all (event_lists.c).
 */
char *
evbus_group_topics(List *subs, const char *group, bool paused_only)
{
	StringInfoData buf;
	ListCell   *lc;
	const char *topic = NULL;
	bool		all_paused = false;

	initStringInfo(&buf);
	/* subs are ordered by group, then integration event (one topic each) */
	foreach(lc, subs)
	{
		EvbusSubscription *sub = lfirst(lc);

		if (strcmp(sub->group_name, group) != 0 || sub->refused)
			continue;
		if (topic == NULL || strcmp(topic, sub->topic) != 0)
		{
			if (topic && (all_paused || !paused_only))
				appendStringInfo(&buf, "%s%s", buf.len > 0 ? "," : "", topic);
			topic = sub->topic;
			all_paused = true;
		}
		all_paused = all_paused && sub->paused;
	}
	if (topic && (all_paused || !paused_only))
		appendStringInfo(&buf, "%s%s", buf.len > 0 ? "," : "", topic);
	return buf.data;
}

/* Is topic one of the comma-separated list? */
bool
evbus_topic_listed(const char *list, const char *topic)
{
	size_t		len = strlen(topic);
	const char *p = list;

	while (p && *p)
	{
		const char *end = strchr(p, ',');
		size_t		n = end ? (size_t) (end - p) : strlen(p);

		if (n == len && strncmp(p, topic, len) == 0)
			return true;
		p = end ? end + 1 : NULL;
	}
	return false;
}

/*
 * evbus_partitions_pause --- of the partitions parts, pause those of the
 * topics in pause_list and resume those of the topics in resume_list.
 */
void
evbus_partitions_pause(rd_kafka_t *rk, const rd_kafka_topic_partition_list_t *parts,
					   const char *pause_list, const char *resume_list)
{
	rd_kafka_topic_partition_list_t *pause = rd_kafka_topic_partition_list_new(Max(parts->cnt, 1));
	rd_kafka_topic_partition_list_t *resume = rd_kafka_topic_partition_list_new(Max(parts->cnt, 1));
	int			i;

	for (i = 0; i < parts->cnt; i++)
	{
		const rd_kafka_topic_partition_t *p = &parts->elems[i];

		if (pause_list && evbus_topic_listed(pause_list, p->topic))
			rd_kafka_topic_partition_list_add(pause, p->topic, p->partition);
		else if (resume_list && evbus_topic_listed(resume_list, p->topic))
			rd_kafka_topic_partition_list_add(resume, p->topic, p->partition);
	}
	if (pause->cnt > 0)
	{
		rd_kafka_pause_partitions(rk, pause);
		elog(DEBUG1, "evbus: paused %d partitions of %s", pause->cnt, pause_list);
	}
	if (resume->cnt > 0)
	{
		rd_kafka_resume_partitions(rk, resume);
		elog(DEBUG1, "evbus: resumed %d partitions of %s", resume->cnt, resume_list);
	}
	rd_kafka_topic_partition_list_destroy(pause);
	rd_kafka_topic_partition_list_destroy(resume);
}

/*
 * evbus_consumer_pauses_changed --- the group's paused topics went from
 * was to now: pause and resume the assigned partitions accordingly.
 */
void
evbus_consumer_pauses_changed(rd_kafka_t *rk, const char *was, const char *now)
{
	rd_kafka_topic_partition_list_t *assignment = NULL;
	StringInfoData resumed;
	char	   *copy = pstrdup(was);
	char	   *tok;
	char	   *save;

	initStringInfo(&resumed);
	for (tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save))
		if (!evbus_topic_listed(now, tok))
			appendStringInfo(&resumed, "%s%s", resumed.len > 0 ? "," : "", tok);
	if (rd_kafka_assignment(rk, &assignment) == RD_KAFKA_RESP_ERR_NO_ERROR && assignment)
	{
		evbus_partitions_pause(rk, assignment, now, resumed.data);
		rd_kafka_topic_partition_list_destroy(assignment);
	}
	pfree(copy);
	pfree(resumed.data);
}

/*
 * evbus_ask_high_watermarks --- the high watermarks of the partitions in
 * parts, asked of the broker because no fetch brings them: those of paused
 * topics, so that the lag keeps growing in evbus.stats (test
 * 280_pause_subscription.pl), and those of topics the consumer may not
 * read (test 175_consume_read_refused.pl).  Each element's offset becomes
 * its high watermark, or stays negative when none came.  One call for all of
 * parts, a request per partition leader, so the time it takes grows with
 * the leaders and not with the paused partitions.  Outside any
 * transaction; false if the broker did not answer within
 * ASKED_WATERMARK_TIMEOUT_MS, and then nothing is asked for
 * ASKED_WATERMARK_BACKOFF_MS.
 *
 * Asked as the offset of the latest timestamp (rd_kafka_offsets_for_times
 * with RD_KAFKA_OFFSET_END), which is the high watermark, because that call
 * keeps to its timeout while a partition's leader is down, where
 * librdkafka's rd_kafka_query_watermark_offsets before 2.3.0 does not
 * (confluentinc/librdkafka#2588): a worker with a paused subscription
 * stops within its shutdown bound with the broker down (test
 * 020_broker_outage.pl).
 */
bool
evbus_ask_high_watermarks(rd_kafka_t *rk, rd_kafka_topic_partition_list_t *parts)
{
	TimestampTz now = GetCurrentTimestamp();
	int			i;

	for (i = 0; i < parts->cnt; i++)
		parts->elems[i].offset = RD_KAFKA_OFFSET_END;
	if (parts->cnt == 0 || now < watermark_backoff_until)
		return false;
	if (rd_kafka_offsets_for_times(rk, parts, ASKED_WATERMARK_TIMEOUT_MS) == RD_KAFKA_RESP_ERR_NO_ERROR)
		return true;
	watermark_backoff_until = TimestampTzPlusMilliseconds(now, ASKED_WATERMARK_BACKOFF_MS);
	return false;
}

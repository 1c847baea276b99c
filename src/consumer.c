/*-------------------------------------------------------------------------
 *
 * consumer.c
 *	  One librdkafka consumer per consumer group, in the consumer worker.
 *
 * The database, not Kafka, owns the offsets: on partition assignment the
 * rebalance callback starts each partition where kafka_offsets.c says
 * (the stored offset, or Kafka's when another database of the group has
 * advanced it).  Offsets are committed to Kafka too, for lag tools and for
 * other members of the group, but only after the database transaction
 * that handled the messages (and, with evbus.wait_for_standbys, once the
 * named standbys have flushed it), and synchronously when partitions are
 * revoked.
 *
 * A callback writes to a pipe when a consumer's queue becomes non-empty;
 * the pipe is in the worker's wait set.  librdkafka's threads run no
 * PostgreSQL code.  The rebalance callback runs in the worker's thread,
 * inside rd_kafka_consumer_poll, with no transaction open.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include "access/xlog.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/pmsignal.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "consumer.h"
#include "kafka.h"

/*
 * Most messages handled per group per poll, in one transaction: what a
 * batch costs once (its commit, the inbox's key lookup and its counting
 * trigger's plan, the offsets, the attempt marker) is shared by this many
 * messages, and a batch handler receives up to this many at once.
 */
#define POLL_BATCH 500

typedef struct GroupConsumer
{
	char	   *group;
	char	   *topics;			/* comma-separated, sorted: detects changes */
	char	   *paused;			/* the topics paused (consumer_pause.c) */
	List	   *missing;		/* topics Kafka said do not exist, not
								 * assigned since (evbus_consumers_watch_list) */
	uint64		settings;		/* evbus_kafka_conf_fingerprint when built */
	rd_kafka_t *rk;
	rd_kafka_queue_t *queue;
	rd_kafka_topic_partition_list_t *to_commit; /* not yet told to Kafka */
	XLogRecPtr	to_commit_lsn;	/* past the commit that stored them */
	TimestampTz last_commit;
	HTAB	   *positions;		/* the offsets expected (consumer_positions.c) */
	GroupCopies *copies;		/* copies of this database in the group */
	bool		rebalanced;		/* the assignment changed (rebalance_cb) */
} GroupConsumer;

/* A partition whose log began again: its first message came before expected. */
typedef struct WentBack
{
	char	   *topic;
	int32		partition;
	int64		expected;
	int64		offset;
} WentBack;

/*
 * Offsets are told to Kafka at most this often: one OffsetCommit per
 * batch would, at a steady trickle, queue so many requests at the group
 * coordinator that heartbeats wait behind them and the session times out.
 */
#define KAFKA_COMMIT_INTERVAL_MS 1000

/*
 * How long the rebalance callback waits for evbus.wait_for_standbys before
 * it hands partitions over without telling Kafka their offsets (Kafka's
 * then lag behind, which never loses a message).
 */
#define REVOKE_STANDBY_WAIT_MS 2000

/*
 * How long the rebalance callback waits for Kafka to confirm the offsets
 * of the partitions it hands over (kafka_offsets.c).
 */
#define REVOKE_ANSWER_MS 5000

static List *consumers = NIL;
static bool extension_gone = false; /* dropped: close without the database */
static bool in_rebalance = false;	/* inside rebalance_cb (set on the way in) */

/*
 * While groups are being left (close_all), when leaving ends: a
 * revocation waits for Kafka's answer at most until then.
 */
static TimestampTz leave_deadline = 0;

/*
 * The Kafka consumers created and not destroyed yet, wherever they are:
 * subscribed, leaving their group, or still closing.  One that lives when
 * the process exits keeps librdkafka's threads running through the exit
 * (evbus_consumers_exit).
 */
static int	live_clients = 0;

static int	wake_pipe[2] = {-1, -1};

static void
queue_nonempty_cb(rd_kafka_t *rk, void *opaque)
{
	char		byte = 1;

	if (write(wake_pipe[1], &byte, 1) < 0)
	{
		/* pipe full: the worker is awake already */
	}
}

int
evbus_consumers_wakeup_fd(void)
{
	if (wake_pipe[0] < 0)
	{
		if (pipe(wake_pipe) != 0 ||
			fcntl(wake_pipe[0], F_SETFL, O_NONBLOCK) != 0 ||
			fcntl(wake_pipe[1], F_SETFL, O_NONBLOCK) != 0)
			ereport(ERROR,
					(errcode_for_socket_access(),
					 errmsg("could not create a pipe: %m")));
	}
	return wake_pipe[0];
}

/* Did Kafka say that topic does not exist, since it was last assigned? */
static bool
topic_missing(const GroupConsumer *gc, const char *topic)
{
	ListCell   *lc;

	foreach(lc, gc->missing)
		if (strcmp(lfirst(lc), topic) == 0)
			return true;
	return false;
}

/*
 * note_missing --- Kafka said that topic, which the group subscribes to,
 * does not exist: remember it until a partition of it is assigned.
 */
static void
note_missing(GroupConsumer *gc, const char *topic)
{
	MemoryContext old;

	if (topic_missing(gc, topic))
		return;
	old = MemoryContextSwitchTo(TopMemoryContext);
	gc->missing = lappend(gc->missing, pstrdup(topic));
	MemoryContextSwitchTo(old);
}

/* forget_missing --- the topics of parts exist: forget they did not. */
static void
forget_missing(GroupConsumer *gc, const rd_kafka_topic_partition_list_t *parts)
{
	ListCell   *lc;
	int			i;

	foreach(lc, gc->missing)
	{
		char	   *topic = lfirst(lc);

		for (i = 0; i < parts->cnt; i++)
			if (strcmp(parts->elems[i].topic, topic) == 0)
				break;
		if (i < parts->cnt)
		{
			gc->missing = foreach_delete_current(gc->missing, lc);
			pfree(topic);
		}
	}
}

/*
 * on_assign --- start each assigned partition where this group left off
 * (kafka_offsets.c says where: the stored offset, or Kafka's); the high
 * watermarks of the group's other partitions are not known here any more.
 */
static void
on_assign(rd_kafka_t *rk, GroupConsumer *gc, rd_kafka_topic_partition_list_t *parts)
{
	rd_kafka_topic_partition_list_t *committed = rd_kafka_topic_partition_list_copy(parts);
	const char **topics = palloc(sizeof(char *) * Max(parts->cnt, 1));
	int32	   *partitions = palloc(sizeof(int32) * Max(parts->cnt, 1));
	rd_kafka_resp_err_t err;
	int			i;

	/* the group's offsets in Kafka (another database may have moved them) */
	err = evbus_kafka_offsets_committed(rk, committed, 10000);
	if (err)
		ereport(LOG,
				(errmsg("evbus: group \"%s\": could not read committed offsets: %s",
						gc->group, rd_kafka_err2str(err))));

	evbus_worker_begin(evbus_consumers_let_go);
	evbus_kafka_offsets_name_database();
	for (i = 0; i < parts->cnt; i++)
	{
		rd_kafka_topic_partition_t *p = &parts->elems[i];

		p->offset = evbus_partition_start_offset(gc->group, p,
												 err ? NULL : &committed->elems[i]);
		topics[i] = p->topic;
		partitions[i] = p->partition;
		elog(DEBUG1, "evbus: group \"%s\" assigned %s/%d at " INT64_FORMAT,
			 gc->group, p->topic, p->partition, p->offset);
	}
	evbus_positions_forget(gc->positions);
	for (i = 0; i < parts->cnt; i++)
		if (parts->elems[i].offset >= 0)
			evbus_position_advance(gc->positions, parts->elems[i].topic,
								   parts->elems[i].partition, parts->elems[i].offset);
	/* the lags of those it keeps stay known: no gap at each rebalance */
	evbus_forget_high_watermarks(gc->group, topics, partitions, parts->cnt);
	evbus_worker_commit();
	rd_kafka_topic_partition_list_destroy(committed);
	evbus_kafka_offsets_mark_starts(rk, parts);
	rd_kafka_assign(rk, parts);
	/* librdkafka forgets pauses: paused topics stay so (consumer_pause.c) */
	evbus_partitions_pause(rk, parts, gc->paused, NULL);
	forget_missing(gc, parts);
}

/*
 * How long a revocation waits for Kafka to confirm the offsets: at most
 * REVOKE_ANSWER_MS, and while the groups are being left, not past the
 * end of leaving (close_all); -1, not at all, once that has passed.
 */
static long
revoke_answer_ms(void)
{
	long		secs;
	int			usecs;
	long		left_ms;

	if (leave_deadline == 0)
		return REVOKE_ANSWER_MS;
	TimestampDifference(GetCurrentTimestamp(), leave_deadline, &secs, &usecs);
	left_ms = secs * 1000 + usecs / 1000;
	return left_ms > 0 ? Min(REVOKE_ANSWER_MS, left_ms) : -1;
}

/*
 * on_revoke --- hand the partitions over at the offsets stored in the
 * database (everything before them is handled and committed there).  A
 * rebalance assigns them again, or not (on_assign, which forgets the
 * lags of those it does not).  A stored offset behind where this
 * assignment started is not committed: it is of an earlier assignment,
 * and another database of the group has handled the messages since and
 * moved Kafka's offset past it.  Committing it moved the group back: a
 * spare member that took a partition over and went idle before it
 * fetched anything gave back its old offset, and the next member
 * handled again, in its database, every message the other database had
 * handled meanwhile (test 245_revoke_behind.pl).
 */
static void
on_revoke(rd_kafka_t *rk, GroupConsumer *gc, rd_kafka_topic_partition_list_t *parts)
{
	rd_kafka_topic_partition_list_t *commit = rd_kafka_topic_partition_list_new(parts->cnt);
	int			i;

	evbus_worker_begin(evbus_consumers_let_go);
	for (i = 0; i < parts->cnt; i++)
	{
		int64		stored = evbus_stored_offset(gc->group, parts->elems[i].topic,
												 parts->elems[i].partition);
		int64		started;

		if (stored >= 0 &&
			!evbus_position_went_back(gc->positions, parts->elems[i].topic,
									  parts->elems[i].partition, stored, &started))
			rd_kafka_topic_partition_list_add(commit, parts->elems[i].topic,
											  parts->elems[i].partition)->offset = stored;
	}
	evbus_worker_commit();
	if (gc->to_commit)
	{
		rd_kafka_topic_partition_list_destroy(gc->to_commit);
		gc->to_commit = NULL;
	}
	if (commit->cnt > 0)
		(void) evbus_kafka_offsets_commit(rk, commit, evbus_standby_wait_target(),
										  REVOKE_STANDBY_WAIT_MS, revoke_answer_ms());
	rd_kafka_topic_partition_list_destroy(commit);
	rd_kafka_assign(rk, NULL);
}

static void
rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
			 rd_kafka_topic_partition_list_t *parts, void *opaque)
{
	GroupConsumer *gc = (GroupConsumer *) opaque;

	/* the extension is gone, and its offsets with it: just let go */
	if (extension_gone)
	{
		rd_kafka_assign(rk, NULL);
		return;
	}
	/* left set if an error ends the process in here */
	in_rebalance = true;
	gc->rebalanced = true;

	/*
	 * A termination waits until the rebalance is done (its queries are
	 * short): ended in here, the consumer could not leave its group, and the
	 * group would keep a dead member until its session times out (test
	 * 120_consume_redelivery.pl resets the group's offsets right after a fast
	 * shutdown).
	 */
	HOLD_INTERRUPTS();

	/*
	 * evbus_worker_begin/commit return to the current memory context (the
	 * poll's).
	 */
	if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS)
		on_assign(rk, gc, parts);
	else if (err == RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS)
		on_revoke(rk, gc, parts);
	else
		rd_kafka_assign(rk, NULL);
	RESUME_INTERRUPTS();
	in_rebalance = false;
}

static const char *const consumer_defaults[] = {
	"session.timeout.ms", "10000",
	"heartbeat.interval.ms", "1000",
	"max.poll.interval.ms", "600000",
	"isolation.level", "read_committed",
	"allow.auto.create.topics", "true",
	"topic.metadata.refresh.interval.ms", "10000",
	"statistics.interval.ms", "5000",
	NULL
};

/* What exactly-once in effect rests on: offsets are ours. */
static const char *const consumer_forced[] = {
	"enable.auto.commit", "false",
	"enable.auto.offset.store", "false",
	"auto.offset.reset", "earliest",
	"enable.partition.eof", "false",
	NULL
};

/*
 * Statistics of a group's consumer, served from its poll: whether a broker
 * is up, for evbus.metrics() (metrics.c).  librdkafka frees the JSON.
 */
static int
stats_cb(rd_kafka_t *rk, char *json, size_t json_len, void *opaque)
{
	evbus_metrics_broker_stats(EVBUS_CONSUMER, json);
	return 0;
}

static GroupConsumer *
consumer_create(const char *brokers, uint64 settings, const char *group,
				const char *topics)
{
	GroupConsumer *gc = MemoryContextAllocZero(TopMemoryContext, sizeof(GroupConsumer));
	rd_kafka_conf_t *conf;
	char		errstr[512];
	char		client_id[128];
	rd_kafka_topic_partition_list_t *list;
	char	   *copy;
	char	   *tok;
	char	   *save;

	gc->group = MemoryContextStrdup(TopMemoryContext, group);
	gc->topics = MemoryContextStrdup(TopMemoryContext, topics);
	gc->paused = MemoryContextStrdup(TopMemoryContext, "");
	gc->positions = evbus_positions_create();
	gc->settings = settings;
	evbus_group_copies_client_id(client_id, sizeof(client_id));
	conf = evbus_kafka_conf_new(brokers, client_id, consumer_defaults, consumer_forced);
	PG_TRY();
	{
		evbus_kafka_conf_set(conf, "group.id", group);
	}
	PG_CATCH();
	{
		rd_kafka_conf_destroy(conf);
		PG_RE_THROW();
	}
	PG_END_TRY();
	rd_kafka_conf_set_opaque(conf, gc);
	rd_kafka_conf_set_rebalance_cb(conf, rebalance_cb);
	rd_kafka_conf_set_stats_cb(conf, stats_cb);

	gc->rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr));
	if (gc->rk != NULL)
		live_clients++;
	else
	{
		const char *hint = evbus_kafka_error_hint(errstr);

		ereport(ERROR,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("could not create the Kafka consumer of group \"%s\": %s", group, errstr),
				 hint ? errhint("%s", hint) : 0));
	}
	rd_kafka_set_log_queue(gc->rk, NULL);
	rd_kafka_poll_set_consumer(gc->rk);
	gc->copies = evbus_group_copies_new(group, brokers, gc->rk);
	gc->queue = rd_kafka_queue_get_consumer(gc->rk);
	(void) evbus_consumers_wakeup_fd();
	rd_kafka_queue_cb_event_enable(gc->queue, queue_nonempty_cb, NULL);

	list = rd_kafka_topic_partition_list_new(8);
	copy = pstrdup(topics);
	for (tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save))
		rd_kafka_topic_partition_list_add(list, tok, RD_KAFKA_PARTITION_UA);
	rd_kafka_subscribe(gc->rk, list);
	rd_kafka_topic_partition_list_destroy(list);
	ereport(LOG,
			(errmsg("evbus: consumer group \"%s\" subscribed to %s", group, topics)));
	return gc;
}

/*
 * Leaving groups (close_all) waits at most CLOSE_WAIT_MS for their
 * coordinators, serving the closes' events in steps.
 */
#define CLOSE_WAIT_MS 10000
#define CLOSE_WAIT_STEP_MS 100

/*
 * A Kafka consumer that left its group without the coordinator's answer
 * while the worker goes on: its handle, still closing, and the queue its
 * close reports to, served at each poll until it has closed.
 */
typedef struct ClosingConsumer
{
	rd_kafka_t *rk;
	rd_kafka_queue_t *events;
} ClosingConsumer;

static List *closing = NIL;

/*
 * serve_close --- serve the events of rk's close, waiting at most
 * timeout_ms for one; true once rk has closed.  As events, not callbacks:
 * the group's queue, forwarded to events, may still hold messages, and
 * only the revocation is wanted of it (gc's, through rebalance_cb; without
 * gc, the partitions are just let go).
 */
static bool
serve_close(rd_kafka_t *rk, rd_kafka_queue_t *events, GroupConsumer *gc, int timeout_ms)
{
	rd_kafka_event_t *ev;

	if (rd_kafka_consumer_closed(rk))
		return true;
	ev = rd_kafka_queue_poll(events, timeout_ms);
	if (ev != NULL)
	{
		if (rd_kafka_event_type(ev) == RD_KAFKA_EVENT_REBALANCE)
		{
			if (gc != NULL)
				rebalance_cb(rk, rd_kafka_event_error(ev),
							 rd_kafka_event_topic_partition_list(ev), gc);
			else
				rd_kafka_assign(rk, NULL);
		}
		rd_kafka_event_destroy(ev);
	}
	return rd_kafka_consumer_closed(rk);
}

/*
 * A consumer left alive on the way out (evbus_consumers_exit) keeps
 * librdkafka's threads running while the process exits, and exit() runs
 * the libraries' exit handlers, OpenSSL's cleanup among them, under a
 * thread that may be sending over TLS at that moment.  Such a process
 * ends with _exit() once PostgreSQL's own exit callbacks (proc_exit's)
 * have run: the handlers registered with atexit() before, the libraries',
 * are skipped, as in PostgreSQL's own quick exits.  The status is the one
 * proc_exit was given.
 */
static int	exit_status = 1;

static void
remember_exit_status(int code, Datum arg)
{
	exit_status = code;
}

static void
exit_under_kafka_threads(void)
{
	_exit(exit_status);
}

/* From evbus_consumers_exit, which runs once, at the process's exit. */
static void
exit_without_library_cleanup(void)
{
	on_proc_exit(remember_exit_status, (Datum) 0);
	if (atexit(exit_under_kafka_threads) != 0)
		ereport(LOG,
				(errmsg("evbus: could not register the consumer's exit handler")));
}

/*
 * Leaving groups: close_begin starts leaving gc's group so that its
 * partitions move on at once; serve_close serves the close's events
 * (revoking the partitions: on_revoke tells Kafka their offsets, waiting
 * a bounded time, kafka_offsets.c) until the group is left; close_end
 * destroys the handle.  librdkafka's rd_kafka_consumer_close and
 * rd_kafka_destroy wait for the group's coordinator for as long as a
 * broker that hangs without closing its connections does not answer (its
 * requests time out and are sent again), which kept a termination or a
 * fast shutdown from ending the worker.  Here leaving waits CLOSE_WAIT_MS
 * at most, not at all once the postmaster has died, and on the way out
 * every group leaves at once, within one CLOSE_WAIT_MS (close_all): one
 * after the other, a worker of many groups took that long per group
 * (test 070_embedded.pl).  A handle that has not closed by then is
 * left to the process's exit when exiting (which then skips the
 * libraries' exit handlers), else served at each poll until it has
 * (consumers_serve_closing).  The group drops a member that did not leave
 * at its session timeout (test 137_consume_frozen_broker.pl).
 */

/* Start leaving gc's group; NULL if it cannot be left (then it is closed). */
static rd_kafka_queue_t *
close_begin(GroupConsumer *gc)
{
	rd_kafka_queue_t *events = rd_kafka_queue_new(gc->rk);
	rd_kafka_error_t *error = rd_kafka_consumer_close_queue(gc->rk, events);

	if (error == NULL)
		return events;
	/* a fatal error: destroying the handle closes it without Kafka */
	ereport(LOG,
			(errmsg("evbus: consumer group \"%s\" could not be left: %s",
					gc->group, rd_kafka_error_string(error))));
	rd_kafka_error_destroy(error);
	rd_kafka_queue_destroy(events);
	return NULL;
}

/*
 * close_end --- destroy gc's handle if its close is done (closed);
 * otherwise say so and, unless exiting, keep serving it at each poll.
 */
static void
close_end(GroupConsumer *gc, rd_kafka_queue_t *events, bool closed, bool exiting)
{
	ClosingConsumer *c;
	MemoryContext old;

	if (closed)
	{
		if (events != NULL)
			rd_kafka_queue_destroy(events);
		rd_kafka_destroy(gc->rk);
		live_clients--;
		return;
	}
	ereport(LOG,
			(errmsg("evbus: consumer group \"%s\" left without its coordinator's answer",
					gc->group),
			 errdetail("The group reassigns this member's partitions after its session timeout.")));
	if (exiting)
		return;
	old = MemoryContextSwitchTo(TopMemoryContext);
	c = palloc(sizeof(ClosingConsumer));
	c->rk = gc->rk;
	c->events = events;
	closing = lappend(closing, c);
	MemoryContextSwitchTo(old);
}

/*
 * close_all --- leave the groups of the n consumers gcs at once: serve
 * every close until all are done, CLOSE_WAIT_MS have passed or the
 * postmaster has died; then destroy the handles (close_end).
 */
static void
close_all(GroupConsumer **gcs, int n, bool exiting)
{
	rd_kafka_queue_t **events = palloc(sizeof(rd_kafka_queue_t *) * n);
	bool	   *closed = palloc(sizeof(bool) * n);
	int			open = 0;
	int			i;

	leave_deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), CLOSE_WAIT_MS);
	for (i = 0; i < n; i++)
	{
		events[i] = close_begin(gcs[i]);
		closed[i] = events[i] == NULL;
		open += closed[i] ? 0 : 1;
	}
	while (open > 0 && PostmasterIsAlive() &&
		   GetCurrentTimestamp() < leave_deadline)
	{
		for (i = 0; i < n; i++)
		{
			if (closed[i])
				continue;
			/* one at a time, the others' librdkafka threads go on meanwhile */
			closed[i] = serve_close(gcs[i]->rk, events[i], gcs[i],
									open > 1 ? CLOSE_WAIT_STEP_MS / 10 : CLOSE_WAIT_STEP_MS);
			open -= closed[i] ? 1 : 0;
		}
	}
	leave_deadline = 0;
	for (i = 0; i < n; i++)
		close_end(gcs[i], events[i], closed[i], exiting);
	pfree(events);
	pfree(closed);
}

/*
 * consumers_serve_closing --- destroy the consumers that have closed since
 * they left their groups without an answer (close_end).
 */
static void
consumers_serve_closing(void)
{
	ListCell   *lc;

	foreach(lc, closing)
	{
		ClosingConsumer *c = lfirst(lc);

		if (!serve_close(c->rk, c->events, NULL, 0))
			continue;
		rd_kafka_queue_destroy(c->events);
		rd_kafka_destroy(c->rk);
		live_clients--;
		pfree(c);
		closing = foreach_delete_current(closing, lc);
	}
}

/*
 * consumer_let_go --- before gc's group is left: the offsets it still has
 * to tell Kafka go now (the close waits for them), and its queue no longer
 * wakes the worker.
 */
static void
consumer_let_go(GroupConsumer *gc)
{
	if (gc->to_commit)
	{
		/*
		 * close waits for it.  With evbus.wait_for_standbys, not on the way
		 * out after an error or a DROP EXTENSION (extension_gone): the
		 * offsets then stay behind in Kafka, which loses nothing.
		 */
		if (!evbus_standby_wait_enabled() || !extension_gone)
			(void) evbus_kafka_offsets_commit(gc->rk, gc->to_commit, gc->to_commit_lsn, 0, -1);
		rd_kafka_topic_partition_list_destroy(gc->to_commit);
		gc->to_commit = NULL;
	}
	rd_kafka_queue_cb_event_enable(gc->queue, NULL, NULL);
	rd_kafka_queue_destroy(gc->queue);
	evbus_group_copies_free(gc->copies);
	gc->copies = NULL;
}

/*
 * consumer_free --- free gc, its group left.  Its lags are not known here
 * any more, unless keep_lags: the consumer goes idle, caught up, and the
 * launcher watches its partitions (idle.c; tests 296, 238).
 */
static void
consumer_free(GroupConsumer *gc, bool keep_lags)
{
	if (!keep_lags && !extension_gone)
	{
		evbus_worker_begin(evbus_consumers_let_go);
		evbus_forget_high_watermarks(gc->group, NULL, NULL, 0);
		evbus_worker_commit();
	}
	hash_destroy(gc->positions);
	pfree(gc->group);
	pfree(gc->topics);
	pfree(gc->paused);
	list_free_deep(gc->missing);
	pfree(gc);
}

/*
 * consumers_destroy --- leave the groups of the consumers in list, all at
 * once, and free them (keep_lags: consumer_free).  exiting: the process
 * exits next (close_end).
 */
static void
consumers_destroy(List *list, bool keep_lags, bool exiting)
{
	int			n = list_length(list);
	GroupConsumer **gcs;
	ListCell   *lc;

	if (n == 0)
		return;
	gcs = palloc(sizeof(GroupConsumer *) * n);
	foreach(lc, list)
	{
		gcs[foreach_current_index(lc)] = lfirst(lc);
		consumer_let_go(lfirst(lc));
	}
	close_all(gcs, n, exiting);
	foreach(lc, list)
		consumer_free(lfirst(lc), keep_lags);
	pfree(gcs);
}

/*
 * try_consumer_create --- add a consumer of topics for group.  A bad
 * evbus.kafka_config_file must not crash-loop the consumer worker: the
 * error is logged, messages wait in Kafka, and the group's consumer is
 * built again at the next sync (after the file is fixed and the
 * configuration reloaded).
 */
static void
try_consumer_create(const char *brokers, uint64 settings, const char *group,
					const char *topics)
{
	MemoryContext cxt = CurrentMemoryContext;

	/* a new member holds no partition until its group assigns some */
	evbus_worker_begin(evbus_consumers_let_go);
	evbus_forget_high_watermarks(group, NULL, NULL, 0);
	evbus_worker_commit();

	PG_TRY();
	{
		consumers = lappend(consumers, consumer_create(brokers, settings, group, topics));
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(cxt);
		EmitErrorReport();
		FlushErrorState();
		ereport(WARNING,
				(errmsg("evbus: not consuming for group \"%s\": the Kafka consumer could not be created",
						group),
				 errhint(EVBUS_KAFKA_CLIENT_HINT)));
	}
	PG_END_TRY();
}

/*
 * group_refused --- true for a group of subs that evbus.consumer_groups
 * (this database's setting, as the consumer started with it) does not
 * list: subscribed before the setting was made, or by a role it was set
 * for.  The consumer joins no such group (test 251_consumer_groups.pl),
 * and says so once.
 */
static bool
group_refused(const char *group)
{
	static List *warned = NIL;
	MemoryContext old;

	if (evbus_group_allowed(group))
		return false;
	if (list_member(warned, makeString((char *) group)))
		return true;
	ereport(WARNING,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("evbus: consumer does not join group \"%s\": evbus.consumer_groups does not list it",
					group),
			 errdetail("Its subscriptions here receive nothing; their messages go to the group's other members."),
			 errhint("Unsubscribe them, or have a superuser allow the group with ALTER DATABASE ... SET evbus.consumer_groups, then restart the consumer.")));
	old = MemoryContextSwitchTo(TopMemoryContext);
	warned = lappend(warned, makeString(pstrdup(group)));
	MemoryContextSwitchTo(old);
	return true;
}

/*
 * event_refused --- true for a subscription of subs whose integration
 * event evbus.subscribe_events (this database's setting, as the consumer
 * started with it) does not list: subscribed before the setting was
 * made.  The consumer reads no topic of it, and its rows wait (test
 * 253_event_lists.pl); it says so once per event.
 */
static bool
event_refused(const EvbusSubscription *sub)
{
	static List *warned = NIL;
	MemoryContext old;

	if (!sub->refused)
		return false;
	if (list_member(warned, makeString(sub->integration_event)))
		return true;
	ereport(WARNING,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("evbus: consumer does not read integration event \"%s\": evbus.subscribe_events does not list it",
					sub->integration_event),
			 errdetail("Its subscriptions here receive nothing, and their messages received before wait."),
			 errhint("Unsubscribe them, or have a superuser allow the event with ALTER DATABASE ... SET evbus.subscribe_events.")));
	old = MemoryContextSwitchTo(TopMemoryContext);
	warned = lappend(warned, makeString(pstrdup(sub->integration_event)));
	MemoryContextSwitchTo(old);
	return true;
}

/*
 * evbus_consumers_sync --- one consumer per group of subs, subscribed to
 * exactly that group's topics, built from the current brokers and
 * settings; consumers of vanished groups leave, and so do those built from
 * other brokers or settings (a new one takes over from the committed
 * offsets; the inbox drops what both receive).  A group that
 * evbus.consumer_groups does not allow gets no consumer, and neither does
 * one whose every subscription is refused (event_refused).  Returns the
 * evbus_kafka_conf_fingerprint the consumers were built from (0: no
 * brokers).
 */
uint64
evbus_consumers_sync(List *subs)
{
	char		buf[1024];
	const char *brokers = evbus_resolve_brokers(buf, sizeof(buf));
	uint64		settings = brokers ? evbus_kafka_conf_fingerprint(brokers) : 0;
	List	   *keep = NIL;
	List	   *leave = NIL;
	ListCell   *lc;
	ListCell   *lc2;
	List	   *groups = NIL;
	MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);	/* the consumers list */

	foreach(lc, subs)
	{
		EvbusSubscription *sub = lfirst(lc);

		if (!event_refused(sub) && !list_member(groups, makeString(sub->group_name)) &&
			!group_refused(sub->group_name))
			groups = lappend(groups, makeString(sub->group_name));
	}

	foreach(lc, consumers)
	{
		GroupConsumer *gc = lfirst(lc);
		char	   *topics = evbus_group_topics(subs, gc->group, false);

		if (brokers != NULL && topics[0] != '\0' && strcmp(topics, gc->topics) == 0 &&
			gc->settings == settings && evbus_group_allowed(gc->group))
			keep = lappend(keep, gc);
		else
			leave = lappend(leave, gc);
	}

	/*
	 * Detached before they leave: leaving reads and writes the database, and
	 * a termination there exits through consumer_exit, which must not close a
	 * consumer that is half gone (test 233_terminate_while_leaving.pl).
	 */
	list_free(consumers);
	consumers = keep;
	consumers_destroy(leave, false, false);
	list_free(leave);

	if (brokers == NULL)
	{
		MemoryContextSwitchTo(old);
		return 0;
	}
	foreach(lc, groups)
	{
		char	   *group = strVal(lfirst(lc));
		bool		found = false;

		foreach(lc2, consumers)
		{
			if (strcmp(((GroupConsumer *) lfirst(lc2))->group, group) == 0)
				found = true;
		}
		if (!found)
			try_consumer_create(brokers, settings, group, evbus_group_topics(subs, group, false));
	}
	list_free_deep(groups);
	foreach(lc, consumers)
	{
		GroupConsumer *gc = lfirst(lc);
		char	   *paused = evbus_group_topics(subs, gc->group, true);

		if (strcmp(paused, gc->paused) != 0)
		{
			evbus_consumer_pauses_changed(gc->rk, gc->paused, paused);
			pfree(gc->paused);
			gc->paused = paused;	/* in TopMemoryContext */
		}
	}
	MemoryContextSwitchTo(old);
	return settings;
}

/* Is (topic, partition) still assigned to this consumer? */
static bool
still_assigned(rd_kafka_topic_partition_list_t *assignment, const char *topic, int32 partition)
{
	return assignment && rd_kafka_topic_partition_list_find(assignment, topic, partition) != NULL;
}

/*
 * forget_old_logs --- the partitions of went_back (WentBack) had their
 * first message of a poll before the offset expected there: their logs
 * began again (consumer_positions.c).  In a transaction of its own,
 * before the poll's messages are handled, the database forgets their old
 * logs from those messages on, and the server log says so.
 */
static void
forget_old_logs(GroupConsumer *gc, List *went_back)
{
	ListCell   *lc;

	evbus_worker_begin(evbus_consumers_let_go);
	foreach(lc, went_back)
	{
		WentBack   *w = lfirst(lc);
		uint64		forgotten = evbus_forget_partition_log(gc->group, w->topic,
														   w->partition, w->offset);

		ereport(WARNING,
				(errmsg("evbus: group \"%s\": %s[%d] went back from offset " INT64_FORMAT " to " INT64_FORMAT ": its log began again",
						gc->group, w->topic, w->partition, w->expected, w->offset),
				 errdetail("Kafka no longer had offset " INT64_FORMAT " and gave its messages from offset " INT64_FORMAT " on: the topic was deleted and created again, or the partition's log was truncated. They are handled as new messages; the inbox forgot the " UINT64_FORMAT " messages without a cap-msg-id it had handled at those offsets.",
						   w->expected, w->offset, forgotten)));
	}
	evbus_worker_commit();
}

/*
 * evbus_consumers_poll --- receive and handle, per group, up to POLL_BATCH
 * messages, or as many as the calls of per-message handlers that a
 * transaction may make allow (evbus_inbox_calls_budget).  Returns true if
 * a group may have more waiting.  Sets *left_pending when messages were
 * left pending (retry, or waiting for their key).
 *
 * A batch that filled (more messages may wait) commits without waiting
 * for the disk, as PostgreSQL's logical replication workers do: the next
 * one follows at once, and a crash that loses it loses its stored offsets
 * too, so its messages come again (Kafka is told no offset whose commit
 * is not on disk, kafka_offsets.c).  So a per-message handler's smaller
 * batches do not each wait for a WAL flush (what they cost against
 * batches of POLL_BATCH: BENCHMARKS.md, bench/peers.sh); a batch that did
 * not fill, the last of a burst, commits as synchronous_commit says.
 */
bool
evbus_consumers_poll(List *subs, bool *left_pending)
{
	ListCell   *lc;
	bool		more = false;
	char		drain[256];

	while (wake_pipe[0] >= 0 && read(wake_pipe[0], drain, sizeof(drain)) > 0)
		;
	if (closing != NIL)
		consumers_serve_closing();

	foreach(lc, consumers)
	{
		GroupConsumer *gc = lfirst(lc);
		MemoryContext cxt = AllocSetContextCreate(CurrentMemoryContext, "evbus poll",
												  ALLOCSET_DEFAULT_SIZES);
		MemoryContext old = MemoryContextSwitchTo(cxt);
		ReceivedMessage *msgs = palloc(sizeof(ReceivedMessage) * POLL_BATCH);
		NextOffset *offsets = palloc(sizeof(NextOffset) * POLL_BATCH);
		int			n = 0;
		int			calls = 0;
		int			calls_budget = evbus_inbox_calls_budget();
		bool		stopped_short;
		int			noffsets = 0;
		int			kept = 0;
		int			i;
		rd_kafka_topic_partition_list_t *assignment = NULL;
		rd_kafka_topic_partition_list_t *commit;

		/* msgs[i >= since_assigned]: after the last rebalance of this poll */
		int			since_assigned = 0;

		/* per offsets[j]: past its last message since then (-1: none yet) */
		int64	   *position = palloc(sizeof(int64) * POLL_BATCH);
		List	   *went_back = NIL;

		gc->rebalanced = false;
		evbus_group_copies_check(gc->copies);
		while (n < POLL_BATCH && calls < calls_budget)
		{
			rd_kafka_message_t *km = rd_kafka_consumer_poll(gc->rk, 0);

			/* the assignment changed in there: on_assign set the positions */
			if (gc->rebalanced)
			{
				since_assigned = n;
				gc->rebalanced = false;
			}
			if (km == NULL)
				break;
			if (km->err)
			{
				if (km->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
				{
					const char *hint = evbus_kafka_read_refused_hint(km->err);

					ereport(hint ? WARNING : LOG,
							(hint ? errcode(ERRCODE_INSUFFICIENT_PRIVILEGE) : 0,
							 errmsg("evbus: group \"%s\": %s", gc->group,
									rd_kafka_message_errstr(km)),
							 hint ? errhint("%s", hint) : 0));
					evbus_metrics_broker_error(EVBUS_CONSUMER,
											   rd_kafka_message_errstr(km));
					if (km->err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN)
						evbus_metrics_broker(EVBUS_CONSUMER, false);
					if ((km->err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART ||
						 km->err == RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC) && km->rkt)
						note_missing(gc, rd_kafka_topic_name(km->rkt));
				}
				rd_kafka_message_destroy(km);
				continue;
			}
			evbus_copy_message(km, &msgs[n]);
			calls += evbus_inbox_handler_calls(subs, gc->group, msgs[n].topic);
			n++;
			rd_kafka_message_destroy(km);
		}
		stopped_short = (n == POLL_BATCH || calls >= calls_budget);
		if (stopped_short)
			more = true;

		/* a rebalance during the poll: drop what is no longer ours */
		if (n > 0)
			rd_kafka_assignment(gc->rk, &assignment);
		for (i = 0; i < n; i++)
		{
			int			j;

			if (!still_assigned(assignment, msgs[i].topic, msgs[i].partition))
				continue;
			msgs[kept++] = msgs[i];
			for (j = 0; j < noffsets; j++)
				if (offsets[j].partition == msgs[i].partition &&
					strcmp(offsets[j].topic, msgs[i].topic) == 0)
					break;
			if (j == noffsets)
			{
				int64_t		lo;
				int64_t		hi;

				offsets[j].topic = msgs[i].topic;
				offsets[j].partition = msgs[i].partition;
				/* cached from the fetch responses: no network wait */
				offsets[j].high_watermark =
					rd_kafka_get_watermark_offsets(gc->rk, msgs[i].topic, msgs[i].partition,
												   &lo, &hi) == RD_KAFKA_RESP_ERR_NO_ERROR &&
					hi >= 0 ? hi : -1;
				position[j] = -1;
				noffsets++;
			}
			offsets[j].next_offset = msgs[i].offset + 1;

			/*
			 * The positions follow the messages polled since the assignment
			 * last changed, the first of each partition checked against them;
			 * those polled before it, read again from the start offsets,
			 * count for neither.
			 */
			if (i < since_assigned)
				continue;
			if (position[j] < 0)
			{
				int64		expected;

				if (evbus_position_went_back(gc->positions, msgs[i].topic, msgs[i].partition,
											 msgs[i].offset, &expected))
				{
					WentBack   *w = palloc(sizeof(WentBack));

					w->topic = msgs[i].topic;
					w->partition = msgs[i].partition;
					w->expected = expected;
					w->offset = msgs[i].offset;
					went_back = lappend(went_back, w);
				}
			}
			position[j] = msgs[i].offset + 1;
		}
		if (assignment)
			rd_kafka_topic_partition_list_destroy(assignment);
		if (went_back != NIL)
			forget_old_logs(gc, went_back);
		for (i = 0; i < noffsets; i++)
			if (position[i] >= 0)
				evbus_position_advance(gc->positions, offsets[i].topic, offsets[i].partition,
									   position[i]);

		if (kept > 0)
		{
			if (evbus_inbox_receive(gc->group, subs, msgs, kept, offsets, noffsets,
									stopped_short))
				*left_pending = true;
			if (evbus_standby_wait_enabled())
				gc->to_commit_lsn = evbus_standby_wait_target();
			else
				gc->to_commit_lsn = XactLastCommitEnd;

			/* the database has it: tell Kafka too (advisory, never ahead) */
			if (gc->to_commit == NULL)
				gc->to_commit = rd_kafka_topic_partition_list_new(noffsets);
			for (i = 0; i < noffsets; i++)
			{
				rd_kafka_topic_partition_t *tp =
					rd_kafka_topic_partition_list_find(gc->to_commit, offsets[i].topic,
													   offsets[i].partition);

				if (tp == NULL)
					tp = rd_kafka_topic_partition_list_add(gc->to_commit, offsets[i].topic,
														   offsets[i].partition);
				tp->offset = offsets[i].next_offset;
			}
		}
		if (gc->to_commit != NULL &&
			TimestampDifferenceExceeds(gc->last_commit, GetCurrentTimestamp(),
									   KAFKA_COMMIT_INTERVAL_MS))
		{
			commit = gc->to_commit;
			if (evbus_kafka_offsets_commit(gc->rk, commit, gc->to_commit_lsn, -1, -1))
			{
				gc->to_commit = NULL;
				rd_kafka_topic_partition_list_destroy(commit);
				gc->last_commit = GetCurrentTimestamp();
			}
		}
		MemoryContextSwitchTo(old);
		MemoryContextDelete(cxt);
	}
	return more;
}

/*
 * evbus_consumers_report_watermarks --- store the high watermarks of the
 * assigned partitions (for the lag), in a transaction per group, and give
 * evbus.metrics() each group's lag per topic: the high watermark less the
 * consumer's position, summed over the assigned partitions.  Those that
 * no fetch response brought take a round trip to the broker (a second at
 * most): the paused partitions, and those the consumer may not read or
 * has not fetched yet (test 175_consume_read_refused.pl); one group's at
 * each report, in turn, so that a worker of many groups with paused
 * subscriptions does not spend its time asking.
 */
void
evbus_consumers_report_watermarks(void)
{
	static int	paused_turn = 0;
	ListCell   *lc;

	paused_turn = list_length(consumers) > 0 ? (paused_turn + 1) % list_length(consumers) : 0;
	foreach(lc, consumers)
	{
		GroupConsumer *gc = lfirst(lc);
		bool		paused_now = foreach_current_index(lc) == paused_turn;
		rd_kafka_topic_partition_list_t *assignment = NULL;
		rd_kafka_topic_partition_list_t *to_ask;
		NextOffset *hwm;
		int			n = 0;
		int			i;

		if (rd_kafka_assignment(gc->rk, &assignment) || assignment == NULL)
			continue;
		hwm = palloc(sizeof(NextOffset) * Max(assignment->cnt, 1));
		to_ask = rd_kafka_topic_partition_list_new(Max(assignment->cnt, 1));
		for (i = 0; i < assignment->cnt; i++)
		{
			rd_kafka_topic_partition_t *p = &assignment->elems[i];
			int64_t		lo;
			int64_t		hi;

			/* cached from fetch responses: no network wait; else asked */
			if (!evbus_topic_listed(gc->paused, p->topic) &&
				rd_kafka_get_watermark_offsets(gc->rk, p->topic, p->partition,
											   &lo, &hi) == RD_KAFKA_RESP_ERR_NO_ERROR &&
				hi >= 0)
			{
				hwm[n].topic = pstrdup(p->topic);
				hwm[n].partition = p->partition;
				hwm[n].next_offset = -1;	/* not known here */
				hwm[n].high_watermark = hi;
				n++;
			}
			else if (paused_now)
				rd_kafka_topic_partition_list_add(to_ask, p->topic, p->partition);
		}
		rd_kafka_topic_partition_list_destroy(assignment);
		if (evbus_ask_high_watermarks(gc->rk, to_ask))
		{
			for (i = 0; i < to_ask->cnt; i++)
			{
				rd_kafka_topic_partition_t *p = &to_ask->elems[i];

				if (p->err != RD_KAFKA_RESP_ERR_NO_ERROR || p->offset < 0)
					continue;
				hwm[n].topic = pstrdup(p->topic);
				hwm[n].partition = p->partition;
				hwm[n].next_offset = -1;
				hwm[n].high_watermark = p->offset;
				n++;
			}
		}
		rd_kafka_topic_partition_list_destroy(to_ask);
		if (n > 0)
		{
			evbus_worker_begin(evbus_consumers_let_go);
			evbus_store_high_watermarks(gc->group, hwm, n);
			evbus_worker_commit();
		}
	}
}

/*
 * evbus_consumer_for_replay --- the Kafka consumer of group, or NULL.  A
 * replay (replay.c) is about to rewind the group's stored offsets and seek
 * its consumer back: the offsets not yet told to Kafka, ahead of those,
 * and the positions the consumer expected are forgotten.
 */
rd_kafka_t *
evbus_consumer_for_replay(const char *group)
{
	ListCell   *lc;

	foreach(lc, consumers)
	{
		GroupConsumer *gc = lfirst(lc);

		if (strcmp(gc->group, group) != 0)
			continue;
		evbus_positions_forget(gc->positions);
		if (gc->to_commit)
		{
			rd_kafka_topic_partition_list_destroy(gc->to_commit);
			gc->to_commit = NULL;
		}
		return gc->rk;
	}
	return NULL;
}

/*
 * Leave every group, all at once (at exit); idle: for want of work, the
 * lags known so far stay (see consumer_free).
 */
void
evbus_consumers_shutdown(bool idle)
{
	List	   *all = consumers;

	consumers = NIL;			/* detached first: closing runs callbacks */
	consumers_destroy(all, idle, true);
	list_free(all);
}

/*
 * evbus_consumers_exit --- at process exit, when an error or a termination
 * (a FATAL in a handler) cut a pass short: leave every group without the
 * database, whose transaction is being aborted; the offsets told to Kafka
 * are those already committed in the database.  Not from inside the
 * rebalance callback, where librdkafka cannot close the consumer: the
 * group then notices the member's departure by its session timeout.
 * Clients left alive (there, in a group being left when a termination
 * ended the leaving, or still closing: consumers_serve_closing) keep
 * their threads through the exit, which then skips the libraries' exit
 * handlers.
 */
void
evbus_consumers_exit(void)
{
	if (consumers != NIL && !in_rebalance)
	{
		extension_gone = true;	/* close without the database */
		evbus_consumers_shutdown(false);
	}
	/* inside the rebalance, leaving a group or still closing */
	if (live_clients > 0)
		exit_without_library_cleanup();
}

/*
 * evbus_consumers_let_go --- leave every group when the extension has been
 * dropped: the stored offsets are gone, so nothing is read on the way out.
 */
void
evbus_consumers_let_go(void)
{
	extension_gone = true;
	evbus_consumers_shutdown(false);
}

/* Append (topic, partition, offset) to w, of *n entries in *cap. */
static EvbusWatch *
watch_add(EvbusWatch *w, int *n, int *cap, const char *topic, int32 partition,
		  int64 offset)
{
	if (*n == *cap)
	{
		*cap *= 2;
		w = repalloc(w, sizeof(EvbusWatch) * *cap);
	}
	memset(&w[*n], 0, sizeof(EvbusWatch));
	strlcpy(w[*n].topic, topic, sizeof(w[*n].topic));
	w[*n].partition = partition;
	w[*n].offset = offset;
	(*n)++;
	return w;
}

/*
 * evbus_consumers_watch_list --- (for idle databases, idle.c) the
 * partitions assigned to every group's consumer, each with its high
 * watermark: the offset from which a message there is new to this
 * database.  Paused topics are left out: their messages wait for
 * evbus.resume_subscription, which wakes the consumer.  Returns the
 * number of entries in *out (palloc'd), or -1 when the consumer has not
 * settled: a high watermark not known yet, or a partition not read up to
 * it.  *unassigned says whether a topic of a group had no partition here
 * (watched at its first partition only, see below); *spare names, in
 * "topic \"t\" of group \"g\"", the first such topic that Kafka did not
 * say is missing (another member holds all of its partitions), or is NULL.
 */
int
evbus_consumers_watch_list(EvbusWatch **out, bool *unassigned, char **spare)
{
	ListCell   *lc;
	int			cap = 16;
	int			n = 0;
	EvbusWatch *w = palloc0(sizeof(EvbusWatch) * cap);

	*unassigned = false;
	*spare = NULL;
	foreach(lc, consumers)
	{
		GroupConsumer *gc = lfirst(lc);
		rd_kafka_topic_partition_list_t *assignment = NULL;
		char	   *copy = pstrdup(gc->topics);
		char	   *tok;
		char	   *save;
		bool		settled = true;
		int			i;

		if (rd_kafka_assignment(gc->rk, &assignment) || assignment == NULL)
			return -1;
		rd_kafka_position(gc->rk, assignment);
		for (i = 0; settled && i < assignment->cnt; i++)
		{
			rd_kafka_topic_partition_t *p = &assignment->elems[i];
			int64_t		lo;
			int64_t		hi;

			if (evbus_topic_listed(gc->paused, p->topic))
				continue;
			if (strlen(p->topic) > EVBUS_MAX_TOPIC_LEN ||
				rd_kafka_get_watermark_offsets(gc->rk, p->topic, p->partition,
											   &lo, &hi) != RD_KAFKA_RESP_ERR_NO_ERROR ||
				hi < 0 || (p->offset >= 0 && p->offset < hi))
			{
				settled = false;
				break;
			}
			w = watch_add(w, &n, &cap, p->topic, p->partition, hi);
		}

		/*
		 * A topic of the group (not paused) with no partition here: it may
		 * not exist yet, or its partitions are another member's.  Its first
		 * partition is watched from the start, so that a first message there
		 * wakes the consumer, which then joins the group again.  A topic that
		 * Kafka said does not exist wakes it as soon as it does, wherever its
		 * first message goes (test 240_idle_new_topic.pl); a message in
		 * another partition of a topic that exists is found when the consumer
		 * wakes to look again (idle.c, UNASSIGNED_RECHECK).
		 */
		for (tok = strtok_r(copy, ",", &save); settled && tok;
			 tok = strtok_r(NULL, ",", &save))
		{
			bool		found = evbus_topic_listed(gc->paused, tok);

			for (i = 0; !found && i < assignment->cnt; i++)
				found = strcmp(assignment->elems[i].topic, tok) == 0;
			if (found)
				continue;
			if (strlen(tok) > EVBUS_MAX_TOPIC_LEN)
			{
				settled = false;
				break;
			}
			w = watch_add(w, &n, &cap, tok, 0, 0);
			w[n - 1].created = topic_missing(gc, tok);
			*unassigned = true;
			if (*spare == NULL && !w[n - 1].created)
				*spare = psprintf("topic \"%s\" of group \"%s\"", tok, gc->group);
		}
		rd_kafka_topic_partition_list_destroy(assignment);
		if (!settled)
			return -1;
	}
	*out = w;
	return n;
}

/*-------------------------------------------------------------------------
 *
 * metrics.c
 *	  Counters, gauges and histograms of evbus in shared memory, and
 *	  evbus.metrics(), which returns them as Prometheus series.
 *
 * Each database has an entry, written by its workers and by the backends
 * that stage events there, and read by evbus.metrics() without a table
 * scan and with a spinlock held only to copy the entry.  What a process
 * counts inside a transaction (events staged, published, dead-lettered,
 * handled, retried; acknowledgement latencies, handler durations) waits in
 * process memory and is added to the entry when the transaction commits:
 * an aborted transaction counts nothing, and the latency histogram's
 * count always equals the published counter's increase (test
 * 291_metrics_counts.pl).  Gauges (broker state, outbox depth and age,
 * consumer lag) are set by the worker that knows them.
 *
 * Entries are kept for MAX_DBS databases, as many as the launcher keeps
 * running; the numbers of a database beyond them are not kept.  The
 * consumer lags, one per (group, topic) a database's consumer reads, are
 * in a pool all databases share (MAX_LAGS), under an LWLock: a database
 * takes as many as it reads topics.  The numbers live as long as the
 * server: a restart starts the counters from zero, which Prometheus's
 * rate() and increase() take as a reset.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "commands/dbcommands.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "evbus.h"

/* Upper bounds of the histograms' buckets, in milliseconds; then +Inf */
static const double bucket_bounds_ms[] = {1, 2, 5, 10, 20, 50, 100, 200, 500, 1000};

#define NBOUNDS		lengthof(bucket_bounds_ms)
#define NBUCKETS	(NBOUNDS + 1)
/*
 * Databases whose numbers are kept: as many as the launcher keeps track
 * of, under 1 kB each in shared memory (test 294_metrics_many_databases.pl).
 */
#define MAX_DBS		EVBUS_MAX_TRACKED_DBS
/*
 * Consumer lags kept, for all databases together: four (group, topic)
 * pairs per database on average, 520 bytes each; one database may take
 * any number of them (test 297_metrics_many_lags.pl).
 */
#define MAX_LAGS	(EVBUS_MAX_TRACKED_DBS * 4)
/* group and topic names are at most Kafka's 249 bytes: none is cut short */
#define NAME_LEN	(EVBUS_MAX_TOPIC_LEN + 1)
#define ERROR_LEN	256

typedef struct MetricsHistogram
{
	uint64		buckets[NBUCKETS];	/* not cumulative; the last is +Inf */
	double		sum_ms;
	uint64		count;
} MetricsHistogram;

typedef struct MetricsLag
{
	Oid			dboid;			/* InvalidOid: free */
	char		group_name[NAME_LEN];
	char		topic[NAME_LEN];
	int64		lag;
} MetricsLag;

/* What a process adds to its database's entry when it commits */
typedef struct MetricsCounts
{
	uint64		staged;
	uint64		published;
	uint64		publish_dead;
	uint64		handled;
	uint64		retried;
	uint64		consume_dead;
	MetricsHistogram ack;		/* staging to acknowledgement */
	MetricsHistogram handler;	/* one handler run */
} MetricsCounts;

typedef struct MetricsDb
{
	Oid			dboid;			/* InvalidOid: free */
	slock_t		mutex;			/* the fields below, from counts on */
	MetricsCounts counts;		/* first of the fields reset for a new
								 * database */
	int			broker_up[2];	/* per role: -1 unknown, 0 down, 1 up */
	char		last_error[2][ERROR_LEN];	/* per role: "" none */
	bool		outbox_known;
	int64		outbox_depth;
	TimestampTz oldest_staged_at;	/* 0: the outbox is empty */
	uint64		offset_resets;	/* the consumer's offset gone: librdkafka's
								 * offset resets */
	uint64		copy_warnings;	/* a copy elsewhere in a consumer group */
} MetricsDb;

typedef struct MetricsShared
{
	slock_t		mutex;			/* taking and freeing entries of dbs */
	LWLock	   *lags_lock;		/* lags */
	MetricsDb	dbs[MAX_DBS];
	MetricsLag	lags[MAX_LAGS];
} MetricsShared;

static MetricsShared *metrics = NULL;
static MetricsDb *my_entry = NULL;	/* this database's, once found */
static MetricsCounts pending;	/* this transaction's, until it commits */
static bool pending_any = false;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static void
metrics_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(sizeof(MetricsShared));
	RequestNamedLWLockTranche("evbus metrics", 1);
}

static void
metrics_shmem_startup(void)
{
	bool		found;
	int			i;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	metrics = ShmemInitStruct("evbus metrics", sizeof(MetricsShared), &found);
	if (!found)
	{
		memset(metrics, 0, sizeof(MetricsShared));
		SpinLockInit(&metrics->mutex);
		for (i = 0; i < MAX_DBS; i++)
			SpinLockInit(&metrics->dbs[i].mutex);
		metrics->lags_lock = &(GetNamedLWLockTranche("evbus metrics"))->lock;
	}
	LWLockRelease(AddinShmemInitLock);
}

/* Install the shared memory hooks of the metrics; called from _PG_init. */
void
evbus_metrics_init(void)
{
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = metrics_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = metrics_shmem_startup;
}

/*
 * entry_for --- the entry of this process's database, taken if it has
 * none.  NULL when every entry is taken (its numbers are then not kept).
 * Never errors: it runs in commit callbacks.
 */
static MetricsDb *
entry_for(void)
{
	int			i;
	MetricsDb  *free_entry = NULL;

	if (metrics == NULL || !OidIsValid(MyDatabaseId))
		return NULL;
	if (my_entry != NULL && my_entry->dboid == MyDatabaseId)
		return my_entry;
	my_entry = NULL;
	SpinLockAcquire(&metrics->mutex);
	for (i = 0; i < MAX_DBS; i++)
	{
		if (metrics->dbs[i].dboid == MyDatabaseId)
		{
			my_entry = &metrics->dbs[i];
			break;
		}
		if (metrics->dbs[i].dboid == InvalidOid && free_entry == NULL)
			free_entry = &metrics->dbs[i];
	}
	if (my_entry == NULL && free_entry != NULL)
	{
		/*
		 * Under the entry's own lock too: evbus.metrics() may be copying the
		 * entry of the database that had it.  Everything after the lock is
		 * reset.
		 */
		SpinLockAcquire(&free_entry->mutex);
		memset(&free_entry->counts, 0,
			   sizeof(MetricsDb) - offsetof(MetricsDb, counts));
		free_entry->broker_up[0] = free_entry->broker_up[1] = -1;
		free_entry->dboid = MyDatabaseId;
		SpinLockRelease(&free_entry->mutex);
		my_entry = free_entry;
	}
	SpinLockRelease(&metrics->mutex);
	return my_entry;
}

/*
 * evbus_metrics_forget_database --- dboid is gone (DROP DATABASE
 * succeeded): free its entry for another database.
 */
void
evbus_metrics_forget_database(Oid dboid)
{
	int			i;

	if (metrics == NULL)
		return;
	SpinLockAcquire(&metrics->mutex);
	for (i = 0; i < MAX_DBS; i++)
		if (metrics->dbs[i].dboid == dboid)
			metrics->dbs[i].dboid = InvalidOid;
	SpinLockRelease(&metrics->mutex);
	LWLockAcquire(metrics->lags_lock, LW_EXCLUSIVE);
	for (i = 0; i < MAX_LAGS; i++)
		if (metrics->lags[i].dboid == dboid)
			metrics->lags[i].dboid = InvalidOid;
	LWLockRelease(metrics->lags_lock);
}

static void
histogram_observe(MetricsHistogram *h, double ms)
{
	int			b;

	if (ms < 0)
		ms = 0;
	for (b = 0; b < NBOUNDS && ms > bucket_bounds_ms[b]; b++)
		;
	h->buckets[b]++;
	h->sum_ms += ms;
	h->count++;
}

static void
histogram_add(MetricsHistogram *to, const MetricsHistogram *from)
{
	int			b;

	for (b = 0; b < NBUCKETS; b++)
		to->buckets[b] += from->buckets[b];
	to->sum_ms += from->sum_ms;
	to->count += from->count;
}

/* ------------------------------------------------------------------
 * Counting, in the transaction that does the work
 * ------------------------------------------------------------------
 */

/*
 * Events staged by this transaction when each open subtransaction began
 * (by nesting level), so that a rolled back subtransaction's events are
 * not counted; levels beyond MAX_NEST are counted with their parent.
 */
#define MAX_NEST 32
static uint64 staged_at_level[MAX_NEST];
static bool subxact_callback_set = false;

static void
metrics_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
						 SubTransactionId parentSubid, void *arg)
{
	int			level = GetCurrentTransactionNestLevel();

	if (level >= MAX_NEST)
		return;
	if (event == SUBXACT_EVENT_START_SUB)
		staged_at_level[level] = pending.staged;
	else if (event == SUBXACT_EVENT_ABORT_SUB)
		pending.staged = staged_at_level[level];
}

/* n events staged by this transaction */
void
evbus_metrics_staged(int n)
{
	if (!subxact_callback_set)
	{
		RegisterSubXactCallback(metrics_subxact_callback, NULL);
		subxact_callback_set = true;
	}
	if (pending.staged == 0)
	{
		int			level = Min(GetCurrentTransactionNestLevel() + 1, MAX_NEST);
		int			l;

		/* the subtransactions open now began with nothing staged */
		for (l = 0; l < level; l++)
			staged_at_level[l] = 0;
	}
	pending.staged += n;
	pending_any = true;
}

/*
 * evbus_metrics_published --- events acknowledged by Kafka, recorded in
 * the outbox by this transaction, with when each was staged: the
 * acknowledgement latency histogram observes each (ack_at - staged_at).
 */
void
evbus_metrics_published(const TimestampTz *staged_at,
						const TimestampTz *acked_at, int n)
{
	int			i;

	for (i = 0; i < n; i++)
		histogram_observe(&pending.ack,
						  (double) (acked_at[i] - staged_at[i]) / 1000.0);
	pending.published += n;
	pending_any = true;
}

/* n events moved to the dead letters by the publisher */
void
evbus_metrics_publish_dead(int n)
{
	pending.publish_dead += n;
	pending_any = true;
}

/* evbus_metrics_handler_ran --- a handler ran for duration_us. */
void
evbus_metrics_handler_ran(int64 duration_us)
{
	histogram_observe(&pending.handler, (double) duration_us / 1000.0);
	pending_any = true;
}

/*
 * evbus_metrics_outcome --- a (message, handler) is handled, left for a
 * retry, or dead-lettered (outcome 'h', 'r' or 'd').
 */
void
evbus_metrics_outcome(char outcome)
{
	if (outcome == 'h')
		pending.handled++;
	else if (outcome == 'r')
		pending.retried++;
	else
		pending.consume_dead++;
	pending_any = true;
}

/*
 * evbus_metrics_at_commit / evbus_metrics_at_abort --- from the commit
 * callback of every process: add what this transaction counted to the
 * database's entry, or forget it.
 */
void
evbus_metrics_at_commit(void)
{
	MetricsDb  *e;

	if (!pending_any)
		return;
	e = entry_for();
	if (e != NULL)
	{
		SpinLockAcquire(&e->mutex);
		e->counts.staged += pending.staged;
		e->counts.published += pending.published;
		e->counts.publish_dead += pending.publish_dead;
		e->counts.handled += pending.handled;
		e->counts.retried += pending.retried;
		e->counts.consume_dead += pending.consume_dead;
		histogram_add(&e->counts.ack, &pending.ack);
		histogram_add(&e->counts.handler, &pending.handler);
		SpinLockRelease(&e->mutex);
	}
	evbus_metrics_at_abort();
}

void
evbus_metrics_at_abort(void)
{
	if (!pending_any)
		return;
	memset(&pending, 0, sizeof(pending));
	pending_any = false;
}

/* ------------------------------------------------------------------
 * Gauges, set by the workers
 * ------------------------------------------------------------------
 */

/* evbus_metrics_broker --- the worker of role sees a broker up, or none. */
void
evbus_metrics_broker(int role, bool up)
{
	MetricsDb  *e = entry_for();

	if (e == NULL)
		return;
	SpinLockAcquire(&e->mutex);
	e->broker_up[role] = up ? 1 : 0;
	SpinLockRelease(&e->mutex);
}

/*
 * evbus_metrics_broker_error --- the last error librdkafka reported to the
 * worker of role.  librdkafka's error texts name brokers and causes, never
 * a password (evbus passes none to it but in the sasl.* properties, which
 * its errors do not quote).
 */
void
evbus_metrics_broker_error(int role, const char *error)
{
	MetricsDb  *e = entry_for();

	if (e == NULL)
		return;
	SpinLockAcquire(&e->mutex);
	strlcpy(e->last_error[role], error, ERROR_LEN);
	SpinLockRelease(&e->mutex);
}

/*
 * evbus_metrics_broker_stats --- librdkafka's statistics (JSON, every
 * statistics.interval.ms) of a client of the worker of role: a broker is
 * up when one of the "brokers" says "state":"UP".  Only broker states are
 * upper case in these statistics (a consumer group's state is "up").
 */
void
evbus_metrics_broker_stats(int role, const char *json)
{
	evbus_metrics_broker(role, strstr(json, "\"state\":\"UP\"") != NULL);
}

/*
 * evbus_metrics_offset_reset --- a partition no longer had the offset this
 * database's consumer was at, and librdkafka moved it to the log's
 * beginning: Kafka deleted messages before the consumer read them, or the
 * log began again (kafka_errors.c; test 308_new_partition_log.pl).
 * Counted at once: there is no transaction to wait for.
 */
void
evbus_metrics_offset_reset(void)
{
	MetricsDb  *e = entry_for();

	if (e == NULL)
		return;
	SpinLockAcquire(&e->mutex);
	e->offset_resets++;
	SpinLockRelease(&e->mutex);
}

/*
 * evbus_metrics_copy_warning --- a WARNING said that a copy of this
 * database on another server is a member of one of its consumer groups
 * (group_copies.c; test 332_copy_elsewhere.pl).
 */
void
evbus_metrics_copy_warning(void)
{
	MetricsDb  *e = entry_for();

	if (e == NULL)
		return;
	SpinLockAcquire(&e->mutex);
	e->copy_warnings++;
	SpinLockRelease(&e->mutex);
}

/* The worker of role has no Kafka client (no brokers set, or it left). */
void
evbus_metrics_broker_unknown(int role)
{
	MetricsDb  *e = entry_for();

	if (e == NULL)
		return;
	SpinLockAcquire(&e->mutex);
	e->broker_up[role] = -1;
	SpinLockRelease(&e->mutex);
}

/*
 * evbus_metrics_set_outbox --- the outbox's depth (events staged and not
 * yet acknowledged) and its oldest event's staging time (0: none), as the
 * publisher counted them (outbox_scan.c, evbus_outbox_depth) every few
 * seconds, so that evbus.metrics() need not read the table.
 */
void
evbus_metrics_set_outbox(int64 depth, TimestampTz oldest)
{
	MetricsDb  *e = entry_for();

	if (e == NULL)
		return;
	SpinLockAcquire(&e->mutex);
	e->outbox_known = true;
	e->outbox_depth = depth;
	e->oldest_staged_at = oldest;
	SpinLockRelease(&e->mutex);
}

/* Is lag the one of this database's group on topic? */
static bool
lag_is(const MetricsLag *lag, const char *group, const char *topic)
{
	return lag->dboid == MyDatabaseId &&
		strncmp(lag->group_name, group, NAME_LEN - 1) == 0 &&
		strncmp(lag->topic, topic, NAME_LEN - 1) == 0;
}

/*
 * evbus_metrics_set_lag --- the consumer's lag of group on topic: the
 * messages between its position and the high watermark, summed over the
 * partitions assigned to it.  Replaces the pair's value.  A new pair
 * takes a free entry of the pool; when none is left its lag is not kept,
 * and the process says so once.
 */
void
evbus_metrics_set_lag(const char *group, const char *topic, int64 lag)
{
	static bool warned = false;
	MetricsLag *entry = NULL;
	MetricsLag *free_entry = NULL;
	int			i;

	if (metrics == NULL || !OidIsValid(MyDatabaseId))
		return;
	LWLockAcquire(metrics->lags_lock, LW_EXCLUSIVE);
	for (i = 0; i < MAX_LAGS && entry == NULL; i++)
	{
		if (lag_is(&metrics->lags[i], group, topic))
			entry = &metrics->lags[i];
		else if (metrics->lags[i].dboid == InvalidOid && free_entry == NULL)
			free_entry = &metrics->lags[i];
	}
	if (entry == NULL && free_entry != NULL)
	{
		entry = free_entry;
		strlcpy(entry->group_name, group, NAME_LEN);
		strlcpy(entry->topic, topic, NAME_LEN);
		entry->dboid = MyDatabaseId;
	}
	if (entry != NULL)
		entry->lag = lag;
	LWLockRelease(metrics->lags_lock);

	if (entry == NULL && !warned)
	{
		warned = true;
		ereport(WARNING,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("evbus.metrics() has no room for the lag of group \"%s\" on topic \"%s\"",
						group, topic),
				 errdetail("The server's databases read %d (group, topic) pairs already.",
						   MAX_LAGS),
				 errhint("evbus.stats shows the lag of every subscription.")));
	}
}

/*
 * evbus_metrics_forget_lags --- the consumer holds no partition of group
 * any more (or not yet) but those of the nkeep keep_topics: the lags of
 * the group's other topics are not known (evbus_forget_high_watermarks),
 * and their entries go back to the pool.
 */
void
evbus_metrics_forget_lags(const char *group, const char **keep_topics, int nkeep)
{
	int			i;

	if (metrics == NULL || !OidIsValid(MyDatabaseId))
		return;
	LWLockAcquire(metrics->lags_lock, LW_EXCLUSIVE);
	for (i = 0; i < MAX_LAGS; i++)
	{
		MetricsLag *entry = &metrics->lags[i];
		bool		keep;
		int			k;

		if (entry->dboid != MyDatabaseId ||
			strncmp(entry->group_name, group, NAME_LEN - 1) != 0)
			continue;
		keep = false;
		for (k = 0; !keep && k < nkeep; k++)
			keep = strncmp(entry->topic, keep_topics[k], NAME_LEN - 1) == 0;
		if (!keep)
			entry->dboid = InvalidOid;
	}
	LWLockRelease(metrics->lags_lock);
}

/* ------------------------------------------------------------------
 * evbus.metrics()
 * ------------------------------------------------------------------
 */

#define METRICS_NATTS 9

typedef struct MetricsOut
{
	Tuplestorestate *store;
	TupleDesc	desc;
	const char *database;
} MetricsOut;

static void
emit(MetricsOut *out, const char *metric, const char *kind,
	 const char *worker, const char *topic, const char *group,
	 const char *le, const char *error, double value)
{
	Datum		values[METRICS_NATTS];
	bool		nulls[METRICS_NATTS];
	const char *texts[7] = {metric, kind, out->database, worker, topic, group, le};
	int			i;

	for (i = 0; i < 7; i++)
	{
		nulls[i] = texts[i] == NULL;
		values[i] = nulls[i] ? (Datum) 0 : CStringGetTextDatum(texts[i]);
	}
	nulls[7] = error == NULL;
	values[7] = nulls[7] ? (Datum) 0 : CStringGetTextDatum(error);
	nulls[8] = false;
	values[8] = Float8GetDatum(value);
	tuplestore_putvalues(out->store, out->desc, values, nulls);
}

/* A histogram as Prometheus exposes one: cumulative buckets, sum, count */
static void
emit_histogram(MetricsOut *out, const char *name, const char *worker,
			   const MetricsHistogram *h)
{
	char		metric[NAMEDATALEN];
	char		le[32];
	uint64		cumulative = 0;
	int			b;

	snprintf(metric, sizeof(metric), "%s_bucket", name);
	for (b = 0; b < NBUCKETS; b++)
	{
		cumulative += h->buckets[b];
		if (b < NBOUNDS)
			snprintf(le, sizeof(le), "%g", bucket_bounds_ms[b]);
		else
			strlcpy(le, "+Inf", sizeof(le));
		emit(out, metric, "histogram", worker, NULL, NULL, le, NULL,
			 (double) cumulative);
	}
	snprintf(metric, sizeof(metric), "%s_sum", name);
	emit(out, metric, "histogram", worker, NULL, NULL, NULL, NULL, h->sum_ms);
	snprintf(metric, sizeof(metric), "%s_count", name);
	emit(out, metric, "histogram", worker, NULL, NULL, NULL, NULL,
		 (double) h->count);
}

/*
 * evbus.metrics() --- every database's numbers, one row per series:
 * metric name, kind (counter, gauge, histogram), labels, value.  Reads
 * shared memory only: a copy of each entry, taken under its spinlock.
 * Readable by pg_monitor, like evbus.stats.
 */
PG_FUNCTION_INFO_V1(evbus_metrics);
Datum
evbus_metrics(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	MetricsOut	out;
	TimestampTz now = GetCurrentTimestamp();
	MetricsLag *lags;
	int			nlags = 0;
	int			i;

	InitMaterializedSRF(fcinfo, 0);
	out.store = rsinfo->setResult;
	out.desc = rsinfo->setDesc;
	if (metrics == NULL)
		PG_RETURN_VOID();

	/* the lags in use, copied at once under the pool's lock */
	lags = palloc(sizeof(MetricsLag) * MAX_LAGS);
	LWLockAcquire(metrics->lags_lock, LW_SHARED);
	for (i = 0; i < MAX_LAGS; i++)
		if (metrics->lags[i].dboid != InvalidOid)
			lags[nlags++] = metrics->lags[i];
	LWLockRelease(metrics->lags_lock);

	for (i = 0; i < MAX_DBS; i++)
	{
		MetricsDb	copy;
		int			role;
		int			l;
		char	   *dbname;

		if (metrics->dbs[i].dboid == InvalidOid)
			continue;
		SpinLockAcquire(&metrics->dbs[i].mutex);
		memcpy(&copy, &metrics->dbs[i], sizeof(MetricsDb));
		SpinLockRelease(&metrics->dbs[i].mutex);
		if (copy.dboid == InvalidOid ||
			(dbname = get_database_name(copy.dboid)) == NULL)
			continue;
		out.database = dbname;

		for (role = 0; role < 2; role++)
		{
			const char *worker = evbus_worker_role_name(role);

			/* idle databases (idle.c): an idle worker is not down */
			emit(&out, "evbus_worker_up", "gauge", worker, NULL, NULL, NULL, NULL,
				 evbus_worker_pid_for(copy.dboid, role) != 0 ||
				 evbus_db_role_idle(copy.dboid, role) ? 1 : 0);
			if (copy.broker_up[role] >= 0)
				emit(&out, "evbus_broker_up", "gauge", worker, NULL, NULL, NULL,
					 NULL, copy.broker_up[role]);
			/* 1 with the error's text, 0 with "" while there was none */
			emit(&out, "evbus_broker_last_error_info", "gauge", worker, NULL,
				 NULL, NULL, copy.last_error[role],
				 copy.last_error[role][0] != '\0' ? 1 : 0);
		}

		emit(&out, "evbus_staged_total", "counter", NULL, NULL, NULL, NULL, NULL,
			 (double) copy.counts.staged);
		emit(&out, "evbus_published_total", "counter", "publisher", NULL, NULL,
			 NULL, NULL, (double) copy.counts.published);
		emit(&out, "evbus_publish_dead_total", "counter", "publisher", NULL, NULL,
			 NULL, NULL, (double) copy.counts.publish_dead);
		if (copy.outbox_known)
		{
			emit(&out, "evbus_outbox_depth", "gauge", "publisher", NULL, NULL,
				 NULL, NULL, (double) copy.outbox_depth);
			emit(&out, "evbus_outbox_oldest_age_seconds", "gauge", "publisher",
				 NULL, NULL, NULL, NULL,
				 copy.oldest_staged_at == 0 ? 0 :
				 Max(0, (double) (now - copy.oldest_staged_at) / USECS_PER_SEC));
		}
		emit_histogram(&out, "evbus_publish_ack_milliseconds", "publisher",
					   &copy.counts.ack);

		emit(&out, "evbus_handled_total", "counter", "consumer", NULL, NULL,
			 NULL, NULL, (double) copy.counts.handled);
		emit(&out, "evbus_retries_total", "counter", "consumer", NULL, NULL,
			 NULL, NULL, (double) copy.counts.retried);
		emit(&out, "evbus_consume_dead_total", "counter", "consumer", NULL, NULL,
			 NULL, NULL, (double) copy.counts.consume_dead);
		emit(&out, "evbus_consume_offset_resets_total", "counter", "consumer", NULL, NULL,
			 NULL, NULL, (double) copy.offset_resets);
		emit(&out, "evbus_consume_copy_warnings_total", "counter", "consumer", NULL, NULL,
			 NULL, NULL, (double) copy.copy_warnings);
		for (l = 0; l < nlags; l++)
			if (lags[l].dboid == copy.dboid)
				emit(&out, "evbus_consumer_lag", "gauge", "consumer",
					 lags[l].topic, lags[l].group_name, NULL, NULL,
					 (double) lags[l].lag);
		emit_histogram(&out, "evbus_handler_milliseconds", "consumer",
					   &copy.counts.handler);
	}
	PG_RETURN_VOID();
}

/*-------------------------------------------------------------------------
 *
 * evbus.h
 *	  Declarations shared by the files of the evbus extension.
 *
 * Each .c file owns one concern; this header lists what each exports, in
 * the order an event flows through them: settings, shared memory, staging
 * (converters, capture, outbox insert), the worker (launcher, worker loop,
 * publisher, producer, outbox storage) and small utilities.
 *
 *-------------------------------------------------------------------------
 */
#ifndef EVBUS_H
#define EVBUS_H

#include "postgres.h"

#include "access/xlogdefs.h"
#include "datatype/timestamp.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "nodes/pg_list.h"
#include "port/atomics.h"
#include "postmaster/bgworker.h"
#include "storage/latch.h"
#include "storage/lockdefs.h"
#include "utils/guc.h"
#include "utils/jsonb.h"
#include "utils/relcache.h"
#include "utils/resowner.h"
#include "utils/uuid.h"

/* evbus is built for PostgreSQL 15 (README, "Requirements") */
#if PG_VERSION_NUM < 150000 || PG_VERSION_NUM >= 160000
#error "evbus supports PostgreSQL 15 only"
#endif

#define EVBUS_SCHEMA "evbus"
#define EVBUS_EMBEDDED "embedded"

/* under $PGDATA: the consumers' attempt markers, the identity claims and ids */
#define EVBUS_STATE_DIR "pg_evbus"

/* Longest legal Kafka topic name (Kafka's Topic.MAX_NAME_LENGTH). */
#define EVBUS_MAX_TOPIC_LEN 249

/* ---------- guc.c: settings (README "Configuration") ---------- */
extern char *evbus_brokers;
extern char *evbus_kafka_config_file;
extern char *evbus_topic_prefix;
extern char *evbus_group_name;
extern char *evbus_consumer_groups;
extern char *evbus_publish_events;
extern char *evbus_subscribe_events;
extern int	evbus_max_retries;
extern int	evbus_retry_interval_ms;
extern int	evbus_retry_max_interval_ms;
extern int	evbus_handler_timeout_ms;
extern int	evbus_copy_check_interval_ms;
extern int	evbus_max_message_bytes;
extern int	evbus_batch_size;
extern int	evbus_batch_max_bytes;
extern int	evbus_poll_interval_ms;
extern int	evbus_publish_linger_ms;
extern int	evbus_publish_linger_busy_ms;
extern int	evbus_outbox_rotation_s;
extern int	evbus_dead_letter_retention_s;
extern int	evbus_inbox_retention_s;
extern char *evbus_traceparent;
extern int	evbus_idle_timeout_s;

extern void evbus_define_gucs(void);

/* ---------- standby_wait.c: evbus.wait_for_standbys ---------- */
extern char *evbus_wait_for_standbys;
extern bool evbus_check_wait_for_standbys(char **newval, void **extra,
										  GucSource source);
extern bool evbus_standby_wait_enabled(void);
extern XLogRecPtr evbus_standby_wait_target(void);
extern bool evbus_standby_wait(XLogRecPtr target, const char *what,
							   long timeout_ms);

/* ---------- shmem.c: one slot per database worker ---------- */
/* The two workers of a database. */
#define EVBUS_PUBLISHER 0		/* publishes the outbox; woken at COMMIT */
#define EVBUS_CONSUMER 1		/* consumes subscribed topics, runs handlers */

typedef struct EvbusWorkerSlot
{
	Oid			dboid;			/* InvalidOid when free */
	int			role;			/* EVBUS_PUBLISHER or EVBUS_CONSUMER */
	pid_t		pid;
	Latch	   *latch;			/* the worker's process latch */
	bool		stop_requested; /* exit for good (DROP DATABASE) */
	pg_atomic_uint32 wake_pending;	/* publisher: woken since its last claim */
} EvbusWorkerSlot;

extern void evbus_shmem_request(void);
extern void evbus_shmem_startup(void);
extern bool evbus_claim_worker_slot(Oid dboid, int role, Latch *latch);
extern void evbus_release_worker_slot(void);
extern void evbus_wake_worker(Oid dboid);
extern bool evbus_worker_wake_pending(void);
extern void evbus_worker_wake_consumed(void);
extern void evbus_wake_worker_role(Oid dboid, int role);
extern pid_t evbus_worker_pid_for(Oid dboid, int role);
extern int	evbus_request_worker_stop(Oid dboid, pid_t *pids, int maxpids);
extern bool evbus_worker_stop_requested(void);
extern void evbus_set_embedded_bootstrap(const char *bootstrap);
extern bool evbus_get_embedded_bootstrap(char *buf, size_t len);
extern int	evbus_max_databases(void);

/*
 * shmem.c: the databases known to have evbus, so that the launcher starts
 * workers there only, and starts them again when they are missing.
 */
/*
 * Databases the server keeps track of.  Beyond this many, a database
 * still works once its workers run; only the launcher's restarts of a
 * missing worker are lost for it (a WARNING says so).
 */
#define EVBUS_MAX_TRACKED_DBS 1024

#define EVBUS_DB_UNPROBED 0		/* a start to look for evbus failed */
#define EVBUS_DB_INSTALLED 1	/* evbus is installed: keep its workers */
#define EVBUS_DB_DROPPING 2		/* DROP DATABASE in progress: start nothing */
#define EVBUS_DB_DROPPED 3		/* dropped: until the launcher sees it gone */
#define EVBUS_DB_COPY 4			/* a copy of another database: start nothing */

typedef struct EvbusDatabase
{
	Oid			dboid;			/* InvalidOid: free entry */
	int			state;			/* EVBUS_DB_* */
	int			state_before_drop;	/* EVBUS_DB_DROPPING: state to restore */
	pid_t		dropper;		/* EVBUS_DB_DROPPING: the dropping backend */
	TimestampTz started_at[2];	/* per role: last start registered */
	TimestampTz failed_since[2];	/* per role: no slot since (0: none) */
	TimestampTz failed_at[2];	/* per role: last start that found no slot */
	bool		warned[2];		/* per role: failure logged since */
	TimestampTz given_way_at[2];	/* per role: a worker left for it then */
	bool		idle[2];		/* per role: exited for want of work (idle.c) */
	TimestampTz wake_at[2];		/* per role, while idle: due then (0: never) */
} EvbusDatabase;

extern void evbus_db_installed(Oid dboid);
extern void evbus_db_forget(Oid dboid);
extern bool evbus_db_lookup(Oid dboid, EvbusDatabase *copy);
extern int	evbus_db_snapshot(EvbusDatabase *copy, int max);
extern bool evbus_db_may_start(Oid dboid);
extern void evbus_db_start_registered(Oid dboid, int role);
extern bool evbus_db_start_failed(Oid dboid, int role);
extern void evbus_db_worker_running(Oid dboid, int role);
extern bool evbus_db_begin_drop(Oid dboid);
extern void evbus_db_end_drop(Oid dboid, bool dropped);
extern void evbus_db_copy(Oid dboid);
extern void evbus_set_launcher_latch(Latch *latch);
extern void evbus_wake_launcher(void);
extern bool evbus_worker_go_idle(int role, TimestampTz wake_at);
extern bool evbus_db_wake(Oid dboid, int role);
extern int	evbus_db_wake_all(void);
extern bool evbus_db_role_idle(Oid dboid, int role);
extern bool evbus_slot_wanted(void);
extern bool evbus_slot_give_way(void);

/*
 * shmem.c: a partition an idle consumer left, with the offset from which a
 * message there is new to it (wake_watch.c watches them); or the first
 * partition of a subscribed topic that Kafka said did not exist, whose
 * creation wakes the consumer (created).
 */
#define EVBUS_MAX_WATCHES 4096

typedef struct EvbusWatch
{
	Oid			dboid;			/* InvalidOid: free entry */
	int32		partition;
	int64		offset;
	bool		created;		/* wake once the topic exists */
	char		topic[EVBUS_MAX_TOPIC_LEN + 1];
} EvbusWatch;

extern bool evbus_consumer_go_idle(TimestampTz wake_at, const EvbusWatch *watches,
								   int n, uint64 settings);
extern int	evbus_watches_copy(EvbusWatch *copy, int max, uint64 *settings);
extern uint32 evbus_watches_version(void);
extern void evbus_set_watch_settings(uint64 settings);

/* ---------- idle.c: when a worker exits for want of work ---------- */
extern void evbus_idle_reset(void);
extern bool evbus_idle_gave_way(void);
extern bool evbus_publisher_may_idle(bool busy, TimestampTz *wake_at);
extern TimestampTz evbus_idle_cleanup_wake(TimestampTz wake_at, TimestampTz due,
										   int retention_s);
extern bool evbus_consumer_try_idle(bool busy, TimestampTz *wake_at,
									uint64 settings);

/* ---------- wake_watch.c: the launcher watches idle consumers' topics ---------- */
extern void evbus_watch_serve(uint64 settings);
extern int	evbus_watch_fd(void);
extern void evbus_watch_stop(void);

/* ---------- metrics.c: counters in shared memory, evbus.metrics() ---------- */
extern void evbus_metrics_init(void);
extern void evbus_metrics_forget_database(Oid dboid);
extern void evbus_metrics_staged(int n);
extern void evbus_metrics_published(const TimestampTz *staged_at,
									const TimestampTz *acked_at, int n);
extern void evbus_metrics_publish_dead(int n);
extern void evbus_metrics_handler_ran(int64 duration_us);
extern void evbus_metrics_outcome(char outcome);
extern void evbus_metrics_at_commit(void);
extern void evbus_metrics_at_abort(void);
extern void evbus_metrics_broker(int role, bool up);
extern void evbus_metrics_broker_error(int role, const char *error);
extern void evbus_metrics_broker_stats(int role, const char *json);
extern void evbus_metrics_broker_unknown(int role);
extern void evbus_metrics_offset_reset(void);
extern void evbus_metrics_copy_warning(void);
extern void evbus_metrics_set_outbox(int64 depth, TimestampTz oldest);
extern void evbus_metrics_set_lag(const char *group, const char *topic, int64 lag);
extern void evbus_metrics_forget_lags(const char *group, const char **keep_topics,
									  int nkeep);

/* ---------- launcher.c ---------- */
extern void evbus_register_launcher(void);
extern bool evbus_start_worker(Oid dboid, const char *dbname, int role,
							   pid_t notify_pid, BackgroundWorkerHandle **handle);
extern void evbus_stop_worker(Oid dboid);
extern void evbus_forget_database_at_commit(void);
extern void evbus_stop_workers_for_extension_drop(void);
extern void evbus_start_workers_at_commit(void);
extern const char *evbus_worker_role_name(int role);
extern PGDLLEXPORT void evbus_launcher_main(Datum main_arg);

/* ---------- ext_version.c: does this library know the SQL version? ---------- */
extern void evbus_version_wait(bool report);
extern bool evbus_version_recheck(bool report);

/* ---------- database_guard.c: workers out of the way of DROP DATABASE etc. ---------- */
extern Oid	evbus_database_guard(Node *stmt, bool is_top_level);
extern void evbus_database_guard_done(Oid guarded, bool succeeded);

/* ---------- copy_guard.c: no worker in a copy of another database ---------- */
extern char *evbus_copy_of(void);
extern const char *evbus_database_id(void);
extern void evbus_warn_copy(const char *dbname, const char *original);

/* ---------- identity_claims.c: who took a dropped database's rows over, who holds an id ---------- */
extern void evbus_identity_lock(void);
extern Oid	evbus_identity_claimant(uint64 system, Oid original);
extern void evbus_identity_claim(uint64 system, Oid original);
extern Oid	evbus_identity_id_holder(const char *id);
extern void evbus_identity_hold_id(const char *id);
extern void evbus_identity_release_ids(void);

/* ---------- restore.c: no worker while a restore writes evbus's tables ---------- */
extern void evbus_restore_init(void);
extern bool evbus_restore_mark_copy(CopyStmt *stmt);
extern void evbus_restore_clear_mark(void);
extern bool evbus_restore_in_progress(Oid dboid, pid_t *pid);

/* ---------- publisher_worker.c, consumer_worker.c ---------- */
extern PGDLLEXPORT void evbus_publisher_main(Datum main_arg);
extern PGDLLEXPORT void evbus_consumer_main(Datum main_arg);

/*
 * Has this worker been asked to stop (SIGTERM)?  die() says so in
 * ProcDiePending; the publisher's loop takes SIGTERM as a cancel instead,
 * and says so in evbus_stop_signalled (publisher_worker.c).  A wait that a
 * stop must end asks evbus_stopping().
 */
extern PGDLLIMPORT volatile sig_atomic_t evbus_stop_signalled;

static inline bool
evbus_stopping(void)
{
	return ProcDiePending || evbus_stop_signalled;
}

/* ---------- embedded.c: librdkafka's mock cluster as a broker ---------- */
extern void evbus_embedded_start(void);
extern void evbus_embedded_stop(void);
extern const char *evbus_resolve_brokers(char *buf, size_t len);

/* ---------- converters.c: registry and per-backend cache ---------- */
typedef struct EvbusConverter
{
	char	   *integration_event;
	char	   *signature;		/* the function, schema-qualified */
	Oid			converter;		/* it, looked up; InvalidOid: none now */
	char	   *registered_by;	/* the role that registered the pair */
	Oid			run_as;			/* it, looked up; InvalidOid: none now */
} EvbusConverter;

extern List *evbus_lookup_converters(const char *domain_event);
extern List *evbus_copy_converters(List *converters);
extern void evbus_check_converter(const EvbusConverter *conv,
								  const char *domain_event);

/* ---------- converter_call.c: run one, compiled once per backend ---------- */
extern Jsonb *evbus_call_converter(const EvbusConverter *conv,
								   const char *domain_event, Jsonb *payload);

/* ---------- staging.c: the outbox insert, in the caller's transaction ---------- */
typedef struct EvbusStagedEvent
{
	const char *integration_event;
	const char *key;			/* NULL: the message id is the key */
	Jsonb	   *payload;
	Jsonb	   *headers;		/* NULL or an object of strings */
	const char *domain_event;	/* NULL for evbus.publish */
	TimestampTz deliver_at;		/* 0: now */
} EvbusStagedEvent;

extern void evbus_stage(const EvbusStagedEvent *event, pg_uuid_t *message_id);
extern int	evbus_raise_internal(const char *domain_event, Jsonb *payload,
								 const char *key);

extern int	evbus_current_outbox_slot(void);
extern void evbus_wake_at_commit(bool publisher, bool consumer);

/* ---------- dead_letters.c ---------- */
extern void evbus_dead_letter_unpublishable(int table, int64 id,
											const char *error_code,
											const char *error_message);
extern void evbus_dead_letters_expire(void);
extern TimestampTz evbus_dead_letters_next_expiry(void);

/* SQL: the inbox row i of consume side dead letter d (pending or dead). */
#define EVBUS_INBOX_ROW_OF_SQL(d) \
	" i.group_name OPERATOR(pg_catalog.=) " d ".group_name" \
	" AND i.topic OPERATOR(pg_catalog.=) " d ".topic" \
	" AND i.kafka_partition OPERATOR(pg_catalog.=) " d ".kafka_partition" \
	" AND i.kafka_offset OPERATOR(pg_catalog.=) " d ".kafka_offset" \
	" AND i.handler OPERATOR(pg_catalog.=) COALESCE(" d ".handler, '')" \
	" AND (i.state OPERATOR(pg_catalog.=) 'pending'" \
	" OR i.state OPERATOR(pg_catalog.=) 'dead')"

/*
 * SQL: the message of dead letter d (a consume side one) holds its key
 * for its handler: its inbox row is still pending (on_dead_letter =>
 * 'park', inbox_park.c), read through the inbox's partial index on
 * pending rows (hence the key).  Such a dead letter is not expired: it is
 * what evbus.failures shows of the parked key and what evbus.discard and
 * the filters of evbus.retry act on (test 275_parked_dead_letter_kept.pl).
 */
#define EVBUS_DEAD_LETTER_PARKS_SQL(d) \
	" EXISTS (SELECT FROM evbus.inbox i WHERE" EVBUS_INBOX_ROW_OF_SQL(d) \
	" AND i.state OPERATOR(pg_catalog.=) 'pending'" \
	" AND i.event_key OPERATOR(pg_catalog.=) " d ".event_key COLLATE \"C\")"

/* ---------- event_lists.c: the events a database may publish, subscribe to ---------- */
extern bool evbus_name_list_valid(const char *value, bool prefixes);
extern bool evbus_check_event_list(char **newval, void **extra, GucSource source);
extern bool evbus_may_publish(const char *event);
extern bool evbus_may_subscribe(const char *event);

/* ---------- json_compact.c ---------- */
extern void evbus_jsonb_to_compact(StringInfo out, JsonbContainer *jc);
extern bool evbus_jsonb_exceeds(Jsonb *jb, int limit);

/* ---------- util.c: ids, checks, the extension's schema and owner ---------- */
extern void evbus_new_message_id(pg_uuid_t *uuid);
extern char *evbus_uuid_to_cstring(const pg_uuid_t *uuid);
extern const char *evbus_clip(const char *s, int max);
extern bool evbus_name_chars_valid(const char *name);
extern void evbus_check_event_name(const char *name, const char *what);
extern bool evbus_group_allowed(const char *group);
extern bool evbus_database_setting_changed(const char *name);
extern void evbus_check_writable(const char *what);
extern Oid	evbus_schema_oid(void);
extern bool evbus_database_is_template(Oid dboid, bool *exists);
extern bool evbus_pauses_present(void);

/* A table of schema evbus a worker reads again when it changed (util.c). */
typedef struct EvbusTableWatch
{
	const char *relname;
	Oid			relid;			/* InvalidOid until first read */
	bool		stale;			/* changed since the last read */
} EvbusTableWatch;
extern void evbus_table_watch(EvbusTableWatch *w);
extern bool evbus_table_watch_read(EvbusTableWatch *w);
extern Oid	evbus_extension_owner(void);
extern bool evbus_extension_present(void);
extern bool evbus_extension_attribute(const char *extname, AttrNumber attnum,
									  Datum *value, bool *isnull);
extern int	evbus_int64_cmp(const void *a, const void *b);

/* ---------- outbox_write.c ---------- */

/*
 * The columns of evbus.outbox_0 and outbox_1 (attribute numbers), in the
 * order evbus--0.2.sql creates them; staging writes them and the
 * publisher's scans read them through these names only.
 */
#define EVBUS_OUTBOX_ID					1
#define EVBUS_OUTBOX_MESSAGE_ID			2
#define EVBUS_OUTBOX_INTEGRATION_EVENT	3
#define EVBUS_OUTBOX_EVENT_KEY			4
#define EVBUS_OUTBOX_PAYLOAD			5
#define EVBUS_OUTBOX_HEADERS			6
#define EVBUS_OUTBOX_DOMAIN_EVENT		7
#define EVBUS_OUTBOX_TRACEPARENT		8
#define EVBUS_OUTBOX_STAGED_AT			9
#define EVBUS_OUTBOX_DELIVER_AT			10
#define EVBUS_OUTBOX_NATTS				10

/* evbus_outbox_write's values[] hold the columns after the id */
#define EVBUS_STAGED(col)	((col) - 2)

extern int64 evbus_outbox_write(int slot, Datum *values, bool *isnull);
extern Relation evbus_outbox_open(int slot, LOCKMODE lockmode);

/* ---------- spi_run.c: SQL that evbus runs itself ---------- */

/* The search_path of converters, handlers and the workers' own SQL */
#define EVBUS_PINNED_SEARCH_PATH "pg_catalog, pg_temp"

extern void evbus_spi_as_owner(void (*work) (void *arg), void *arg);
extern uint64 evbus_execute_as_owner(const char *sql, int nargs, Oid *argtypes,
									 Datum *values, const char *nulls);
extern void evbus_worker_settings(void);
extern void evbus_reread_config_at_start(void);
extern void evbus_worker_begin(void (*let_go) (void));
extern void evbus_worker_commit(void);
extern void evbus_worker_commit_durable(void);
extern void evbus_worker_commit_async(void);
extern SPIPlanPtr evbus_kept_plan(SPIPlanPtr *plan, const char *sql, int nargs,
								  Oid *argtypes);
extern Datum evbus_int8_array(const int64 *values, int n);
extern void evbus_spi_exec(const char *sql, int nargs, Oid *argtypes, Datum *values,
						   const char *nulls, int expected);
extern TimestampTz evbus_spi_oldest_due(const char *sql, int retention_s);

/*
 * A subtransaction around code that may throw, whose error the caller
 * handles: begin, then commit or (in PG_CATCH) abort, which returns the
 * error; both come back to the caller's memory context and resource owner.
 */
typedef struct EvbusSubxact
{
	MemoryContext cxt;
	ResourceOwner owner;
} EvbusSubxact;

extern void evbus_subxact_begin(EvbusSubxact *sx);
extern void evbus_subxact_commit(EvbusSubxact *sx);
extern ErrorData *evbus_subxact_abort(EvbusSubxact *sx);

#endif							/* EVBUS_H */

/*-------------------------------------------------------------------------
 *
 * spi_run.c
 *	  SQL that evbus runs itself: as the extension owner for the SQL API's
 *	  writes, in the workers' short transactions, and with plans kept for
 *	  the backend's life.
 *
 * evbus's tables belong to the extension owner and are granted to nobody:
 * the functions of the SQL API check their arguments as the caller and
 * switch to the owner for the write only (evbus_spi_as_owner), so no user
 * code runs with the owner's rights.  The workers run each step in a
 * short transaction of its own (evbus_worker_begin / evbus_worker_commit),
 * never open across a network wait.  Code whose errors evbus handles
 * itself (a handler, the decoding of a message) runs in a subtransaction
 * through evbus_subxact_begin / _commit / _abort.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "utils/array.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "evbus.h"

/*
 * evbus_spi_as_owner --- run work(arg) connected to SPI, as the extension
 * owner, who owns evbus's tables, with search_path = pg_catalog, pg_temp.
 * The caller's user id and security context come back whether work
 * returns or fails; work copies what it keeps out of SPI's memory, which
 * goes when it returns.
 *
 * The pinned search_path keeps the caller's schemas out of the names in
 * evbus's SQL: an operator of the caller's, in a schema named before
 * pg_catalog, would otherwise run with the owner's rights (test
 * 244_hostile_search_path.pl).
 */
void
evbus_spi_as_owner(void (*work) (void *arg), void *arg)
{
	Oid			save_userid;
	int			save_sec_context;
	int			save_nestlevel;

	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(evbus_extension_owner(),
						   save_sec_context | SECURITY_LOCAL_USERID_CHANGE);
	save_nestlevel = NewGUCNestLevel();
	PG_TRY();
	{
		(void) set_config_option("search_path", EVBUS_PINNED_SEARCH_PATH,
								 PGC_USERSET, PGC_S_SESSION,
								 GUC_ACTION_SAVE, true, 0, false);
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		work(arg);
		SPI_finish();
		AtEOXact_GUC(true, save_nestlevel);
	}
	PG_FINALLY();
	{
		SetUserIdAndSecContext(save_userid, save_sec_context);
	}
	PG_END_TRY();
}

/* One statement for evbus_execute_as_owner, and the rows it processed. */
typedef struct OwnerStatement
{
	const char *sql;
	int			nargs;
	Oid		   *argtypes;
	Datum	   *values;
	const char *nulls;
	uint64		processed;
} OwnerStatement;

static void
execute_statement(void *arg)
{
	OwnerStatement *st = (OwnerStatement *) arg;

	if (SPI_execute_with_args(st->sql, st->nargs, st->argtypes, st->values,
							  st->nulls, false, 0) < 0)
		elog(ERROR, "could not execute: %s", st->sql);
	st->processed = SPI_processed;
}

/*
 * evbus_execute_as_owner --- run one SQL statement with parameters as the
 * extension owner, who owns evbus's tables; returns the rows processed.
 *
 * The functions of the SQL API validate their arguments as the caller and
 * use this for the write only, so no table needs a grant and no user code
 * runs with the owner's rights.
 */
uint64
evbus_execute_as_owner(const char *sql, int nargs, Oid *argtypes,
					   Datum *values, const char *nulls)
{
	OwnerStatement st = {sql, nargs, argtypes, values, nulls, 0};

	evbus_spi_as_owner(execute_statement, &st);
	return st.processed;
}

/*
 * evbus_worker_settings --- what a worker's session needs, whatever the
 * server, the database or the role the workers connect as (a superuser)
 * set.  Called once a worker is connected to its database.
 *
 * Its own SQL runs with search_path = pg_catalog, pg_temp: the owner of a
 * database may set that database's search_path, and an operator of a
 * schema named there before pg_catalog would run in the worker, as a
 * superuser (test 244_hostile_search_path.pl).  A consumer's handler gets
 * the search_path of a connection of its role instead, for its run only
 * (role_settings.c); so the pin is the session's, not the default.
 *
 * Its transactions write, whatever default_transaction_read_only says:
 * set on for a database so that its sessions do not write by mistake, it
 * made every transaction of its publisher and consumer fail, and nothing
 * was published or handled (test 242_read_only_default.pl).  Sessions
 * that stage events have turned it off for themselves; the workers, like
 * autovacuum, are no such session.
 *
 * Its transactions are READ COMMITTED, which evbus's own statements are
 * written for: under a SERIALIZABLE default, the publisher's claims and
 * the consumer's inbox counts failed with serialization errors while
 * sessions staged events, and each failure ended the worker, which
 * started over (test 247_worker_session.pl).  A consumer's handlers run
 * in its transactions, so at READ COMMITTED too.
 *
 * Its own lock waits have no lock_timeout, as autovacuum's have none: set
 * for a database (a common guard for migrations), a session holding a
 * lock on the inbox made the consumer fail with "canceling statement due
 * to lock timeout" and exit, and it started over, leaving and joining its
 * consumer groups, for as long as the lock was held (test
 * 249_worker_lock_timeout.pl).  Handlers get the database's and their
 * role's lock_timeout back (role_settings.c).
 *
 * And it reads the configuration file once more first
 * (evbus_reread_config_at_start).
 */
void
evbus_worker_settings(void)
{
	evbus_reread_config_at_start();
	SetConfigOption("search_path", EVBUS_PINNED_SEARCH_PATH, PGC_SUSET, PGC_S_SESSION);
	SetConfigOption("lock_timeout", "0", PGC_SUSET, PGC_S_SESSION);
	SetConfigOption("default_transaction_read_only", "off", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("default_transaction_isolation", "read committed",
					PGC_SUSET, PGC_S_OVERRIDE);
}

/*
 * evbus_reread_config_at_start --- for a background worker of evbus (the
 * launcher, a publisher, a consumer) once its SIGHUP handler is set: read
 * the configuration file.  A reload signalled between the postmaster's
 * fork of the worker and that handler is lost (PostgreSQL's
 * StartBackgroundWorker ignores SIGHUP until then, and ignoring a pending
 * signal discards it), and the worker ran with the settings of before the
 * reload until the next one: a publisher started as evbus.brokers was
 * emptied went on publishing (test 260_inflight_refusal_order.pl failed
 * so, once).
 */
void
evbus_reread_config_at_start(void)
{
	ProcessConfigFile(PGC_SIGHUP);
}

/*
 * Short transactions of the workers (publisher and consumer).
 *
 * evbus_worker_begin --- start a short transaction with SPI connected.  If
 * the extension has been dropped meanwhile, the worker has nothing left to
 * do: it lets go of Kafka (let_go), and exits with 0 so that it is not
 * restarted.
 *
 * evbus_worker_commit --- commit, and return to the memory context the
 * caller began in.
 */
static MemoryContext worker_caller_cxt = NULL;

void
evbus_worker_begin(void (*let_go) (void))
{
	worker_caller_cxt = CurrentMemoryContext;
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (!evbus_extension_present())
	{
		PopActiveSnapshot();
		CommitTransactionCommand();
		ereport(LOG,
				(errmsg("evbus: extension dropped, %s exiting",
						MyBgworkerEntry ? MyBgworkerEntry->bgw_type : "worker")));
		let_go();
		proc_exit(0);
	}
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
}

void
evbus_worker_commit(void)
{
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	MemoryContextSwitchTo(worker_caller_cxt);
	pgstat_report_stat(false);
}

/*
 * evbus_worker_commit_async --- evbus_worker_commit without waiting for the
 * disk, whatever synchronous_commit says (SET LOCAL, undone by the
 * commit).  For work that a crash may lose because it comes again: a
 * consumer's batch, whose stored offsets go with it (consumer.c).
 */
void
evbus_worker_commit_async(void)
{
	(void) set_config_option("synchronous_commit", "off", PGC_SUSET, PGC_S_SESSION,
							 GUC_ACTION_LOCAL, true, 0, false);
	evbus_worker_commit();
}

/*
 * evbus_worker_commit_durable --- evbus_worker_commit, then wait until the
 * commit is on disk, whatever synchronous_commit says.  For a record that
 * must survive what comes next: the consumer counts an attempt this way
 * before a handler that may crash the server runs.  An asynchronous commit
 * waits in PostgreSQL's WAL buffers, which a crash restart loses, until
 * the WAL writer writes it (test 136_consume_kill_async_commit.pl).  A
 * transaction that wrote nothing has no commit record to wait for (and
 * XactLastCommitEnd still names an earlier transaction's, which may be
 * asynchronous on purpose: test 306_async_commit_phantom.pl).
 */
void
evbus_worker_commit_durable(void)
{
	bool		wrote = TransactionIdIsValid(GetTopTransactionIdIfAny());

	evbus_worker_commit();
	if (wrote)
		XLogFlush(XactLastCommitEnd);
}

/*
 * evbus_kept_plan --- the plan of sql, prepared on first use and kept for
 * the backend's life in *plan.  Generic from the start: the custom plans
 * the plan cache would otherwise build for the first executions (and keep
 * building when the generic estimate looks worse) cost more than the
 * workers' short statements do.
 */
SPIPlanPtr
evbus_kept_plan(SPIPlanPtr *plan, const char *sql, int nargs, Oid *argtypes)
{
	if (*plan == NULL)
	{
		SPIPlanPtr	p = SPI_prepare_cursor(sql, nargs, argtypes, CURSOR_OPT_GENERIC_PLAN);

		if (p == NULL)
			elog(ERROR, "SPI_prepare failed for \"%s\": %s", sql,
				 SPI_result_code_string(SPI_result));
		SPI_keepplan(p);
		*plan = p;
	}
	return *plan;
}

/*
 * evbus_spi_exec --- run one statement with arguments (planned for this
 * call: for statements that run rarely); any result but expected is an
 * error.
 */
void
evbus_spi_exec(const char *sql, int nargs, Oid *argtypes, Datum *values,
			   const char *nulls, int expected)
{
	int			rc = SPI_execute_with_args(sql, nargs, argtypes, values, nulls, false, 0);

	if (rc != expected)
		elog(ERROR, "evbus: \"%s\" failed: %s", sql, SPI_result_code_string(rc));
}

/*
 * evbus_spi_oldest_due --- when the oldest row that sql finds (a min() of
 * a timestamp, read through its index) falls due, kept retention_s; 0: no
 * row.  For the idle workers' wakes (idle.c).  Inside a transaction.
 */
TimestampTz
evbus_spi_oldest_due(const char *sql, int retention_s)
{
	bool		isnull;
	Datum		oldest;

	evbus_spi_exec(sql, 0, NULL, NULL, NULL, SPI_OK_SELECT);
	oldest = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (isnull)
		return 0;
	return TimestampTzPlusMilliseconds(DatumGetTimestampTz(oldest), retention_s * 1000L);
}

/* evbus_subxact_begin --- start a subtransaction, remembering where we were. */
void
evbus_subxact_begin(EvbusSubxact *sx)
{
	sx->cxt = CurrentMemoryContext;
	sx->owner = CurrentResourceOwner;
	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(sx->cxt);
}

/* evbus_subxact_commit --- the code ran through: keep its effects. */
void
evbus_subxact_commit(EvbusSubxact *sx)
{
	ReleaseCurrentSubTransaction();
	MemoryContextSwitchTo(sx->cxt);
	CurrentResourceOwner = sx->owner;
}

/*
 * evbus_subxact_abort --- in PG_CATCH: roll the subtransaction back and
 * return a copy of the error (the caller frees it), in the caller's
 * memory context; the outer transaction goes on.
 */
ErrorData *
evbus_subxact_abort(EvbusSubxact *sx)
{
	ErrorData  *edata;

	MemoryContextSwitchTo(sx->cxt);
	edata = CopyErrorData();
	FlushErrorState();
	RollbackAndReleaseCurrentSubTransaction();
	MemoryContextSwitchTo(sx->cxt);
	CurrentResourceOwner = sx->owner;
	return edata;
}

/*
 * evbus_int8_array --- an int8[] Datum of the n values (ids to pass as one
 * SPI parameter, "= ANY ($1)").
 */
Datum
evbus_int8_array(const int64 *values, int n)
{
	Datum	   *elems = palloc(sizeof(Datum) * Max(n, 1));
	int			i;

	for (i = 0; i < n; i++)
		elems[i] = Int64GetDatum(values[i]);
	return PointerGetDatum(construct_array(elems, n, INT8OID, 8,
										   FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
}

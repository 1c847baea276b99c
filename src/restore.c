/*-------------------------------------------------------------------------
 *
 * restore.c
 *	  Keep a database's workers away while a restore writes evbus's tables.
 *
 * A dump carries the rows of evbus's tables (pg_extension_config_dump in
 * the install script).  pg_restore creates the extension first, and the
 * launcher starts the database's workers as soon as that commits; the rows
 * come later, one COPY per table, each in its own transaction, and the
 * application's own tables after them.  Workers running meanwhile would
 * publish an outbox restored in part, and run handlers against a database
 * restored in part: into tables whose rows are about to be COPYed (a
 * duplicate key fails the restore), or with an inbox that does not yet
 * know what was handled before the dump.
 *
 * So the first COPY FROM into a table of schema evbus, by a role allowed
 * to insert into it (a superuser, as pg_restore runs: nobody else may
 * write evbus's tables), marks its backend as restoring into its database;
 * the ProcessUtility hook (evbus.c) then stops the database's workers,
 * waiting until they have exited.  This file keeps only the marks, so that
 * the launcher and the workers can ask about them.  No worker starts in
 * that database while such a backend is alive: the launcher does not start
 * one, and a worker that was starting already exits when it finds the mark
 * (evbus_claim_worker_slot).  When the restoring connection ends --
 * pg_restore's, or each of pg_restore -j's -- the mark is cleared, the
 * launcher woken, and it starts the workers, which then see everything the
 * restore wrote (test 320_dump_restore.pl).
 *
 * A role that may not write evbus's tables pauses nothing: its COPY is
 * refused by PostgreSQL, and the mark is never made.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/namespace.h"
#include "commands/dbcommands.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/proc.h"
#include "storage/procarray.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "utils/acl.h"
#include "utils/lsyscache.h"

#include "evbus.h"

/* One entry per backend (indexed by MyBackendId - 1). */
typedef struct RestoreMark
{
	pid_t		pid;			/* 0: not restoring */
	Oid			dboid;
} RestoreMark;

typedef struct RestoreShared
{
	slock_t		mutex;
	RestoreMark marks[FLEXIBLE_ARRAY_MEMBER];
} RestoreShared;

static RestoreShared *restore_shared = NULL;
static bool restoring = false;	/* this backend made its mark */

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static Size
restore_shmem_size(void)
{
	return add_size(offsetof(RestoreShared, marks),
					mul_size(sizeof(RestoreMark), MaxBackends));
}

static void
restore_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(restore_shmem_size());
}

static void
restore_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	restore_shared = ShmemInitStruct("evbus restore", restore_shmem_size(), &found);
	if (!found)
	{
		memset(restore_shared, 0, restore_shmem_size());
		SpinLockInit(&restore_shared->mutex);
	}
	LWLockRelease(AddinShmemInitLock);
}

/* Install the shared memory hooks; called from _PG_init. */
void
evbus_restore_init(void)
{
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = restore_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = restore_shmem_startup;
}

/*
 * evbus_restore_clear_mark --- at the exit of a restoring backend: take
 * its mark away (the caller then wakes the launcher, which starts the
 * database's workers).
 */
void
evbus_restore_clear_mark(void)
{
	RestoreMark *mark;

	if (!restoring)
		return;
	mark = &restore_shared->marks[MyBackendId - 1];
	SpinLockAcquire(&restore_shared->mutex);
	mark->pid = 0;
	mark->dboid = InvalidOid;
	SpinLockRelease(&restore_shared->mutex);
	restoring = false;
}

/*
 * evbus_restore_mark_copy --- called from the ProcessUtility hook before
 * a COPY runs.  A COPY FROM into a table of schema evbus by a role that
 * may insert into it marks this backend as a restorer of its database
 * (once per connection), and returns true: the caller then stops the
 * database's workers and clears the mark when the connection ends.
 */
bool
evbus_restore_mark_copy(CopyStmt *stmt)
{
	Oid			nsp;
	Oid			relid;

	if (restoring || !stmt->is_from || stmt->relation == NULL ||
		restore_shared == NULL || MyBackendId == InvalidBackendId ||
		MyBackendId > MaxBackends)
		return false;
	nsp = get_namespace_oid(EVBUS_SCHEMA, true);
	if (!OidIsValid(nsp))
		return false;
	relid = RangeVarGetRelid(stmt->relation, NoLock, true);
	if (!OidIsValid(relid) || get_rel_namespace(relid) != nsp)
		return false;
	/* COPY refuses anyone else itself: they pause nothing */
	if (pg_class_aclcheck(relid, GetUserId(), ACL_INSERT) != ACLCHECK_OK)
		return false;

	/*
	 * The mark is made before the caller looks for the workers, and a
	 * starting worker looks for marks after it took its slot: either the
	 * caller finds and stops it, or it finds the mark and exits.
	 */
	SpinLockAcquire(&restore_shared->mutex);
	restore_shared->marks[MyBackendId - 1].pid = MyProcPid;
	restore_shared->marks[MyBackendId - 1].dboid = MyDatabaseId;
	SpinLockRelease(&restore_shared->mutex);
	pg_memory_barrier();
	restoring = true;
	return true;
}

/*
 * evbus_restore_in_progress --- is a restore writing evbus's tables in
 * dboid?  *pid (when not NULL) gets the process id of one restoring
 * connection.  A mark whose backend is gone (it cannot clear it if the
 * server crashed, but shared memory is made anew then) counts for
 * nothing.
 */
bool
evbus_restore_in_progress(Oid dboid, pid_t *pid)
{
	int			i;

	if (restore_shared == NULL)
		return false;
	pg_memory_barrier();
	for (i = 0; i < MaxBackends; i++)
	{
		pid_t		p;
		Oid			db;

		SpinLockAcquire(&restore_shared->mutex);
		p = restore_shared->marks[i].pid;
		db = restore_shared->marks[i].dboid;
		SpinLockRelease(&restore_shared->mutex);
		if (p != 0 && db == dboid && BackendPidGetProc(p) != NULL)
		{
			if (pid)
				*pid = p;
			return true;
		}
	}
	return false;
}

/*-------------------------------------------------------------------------
 *
 * shmem.c
 *	  Shared memory of evbus: one slot per database worker, the databases
 *	  that have evbus, the launcher's latch and the address of the
 *	  embedded broker.  This file holds the segment, the slots, the
 *	  launcher's latch and the lookup of a database's entry; what the
 *	  entries say is kept by shmem_databases.c, waking workers, idle or
 *	  not, and the watches of idle consumers by shmem_idle.c.
 *
 * A slot lets any backend wake its database's worker at COMMIT (SetLatch
 * on the worker's latch), lets the launcher and DROP DATABASE find the
 * worker, and guarantees one worker per database: a second one finds the
 * slot taken and exits.  Slots are freed by the worker's exit callback.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/guc.h"
#include "utils/timestamp.h"

#include "evbus.h"
#include "shmem_internal.h"

EvbusShared *evbus_shared = NULL;
int			evbus_my_slot = -1;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

/*
 * evbus_find_db --- the entry of dboid, or with create a new one (NULL when
 * every entry is taken).  Caller holds the lock, exclusively to create.
 */
EvbusDatabase *
evbus_find_db(Oid dboid, bool create)
{
	EvbusDatabase *free_entry = NULL;
	int			i;

	for (i = 0; i < EVBUS_MAX_TRACKED_DBS; i++)
	{
		EvbusDatabase *db = &evbus_shared->dbs[i];

		if (db->dboid == dboid)
			return db;
		if (db->dboid == InvalidOid && free_entry == NULL)
			free_entry = db;
	}
	if (!create)
		return NULL;
	if (free_entry == NULL)
	{
		ereport(WARNING,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("evbus keeps track of at most %d databases", EVBUS_MAX_TRACKED_DBS),
				 errhint("A database beyond them is not restarted when its worker is missing.")));
		return NULL;
	}
	memset(free_entry, 0, sizeof(EvbusDatabase));
	free_entry->dboid = dboid;
	free_entry->state = EVBUS_DB_UNPROBED;
	return free_entry;
}

/*
 * set_found_state --- what a worker found in dboid, or what a commit made
 * of it: state, entered.  A database being dropped gets it back if the
 * drop fails; a dropped one stays so.
 */
static void
set_found_state(Oid dboid, int state)
{
	EvbusDatabase *db;

	LWLockAcquire(evbus_shared->lock, LW_EXCLUSIVE);
	db = evbus_find_db(dboid, true);
	if (db != NULL)
	{
		if (db->state == EVBUS_DB_DROPPING)
			db->state_before_drop = state;
		else if (db->state != EVBUS_DB_DROPPED)
			db->state = state;
	}
	LWLockRelease(evbus_shared->lock);
}

/*
 * evbus_db_installed --- evbus is installed in dboid (a worker found it,
 * CREATE EXTENSION or evbus.adopt_copy() committed): the launcher keeps
 * its workers running.
 */
void
evbus_db_installed(Oid dboid)
{
	set_found_state(dboid, EVBUS_DB_INSTALLED);
}

/*
 * evbus_db_copy --- dboid is a copy of another database of this server
 * (copy_guard.c): the launcher starts no worker there, until
 * evbus_db_installed, or the server starts again and looks.
 */
void
evbus_db_copy(Oid dboid)
{
	set_found_state(dboid, EVBUS_DB_COPY);
}

/* One slot per possible worker: max_worker_processes bounds them. */
int
evbus_max_databases(void)
{
	return max_worker_processes;
}

static Size
evbus_shmem_size(void)
{
	return add_size(offsetof(EvbusShared, slots),
					mul_size(sizeof(EvbusWorkerSlot), evbus_max_databases()));
}

static void
evbus_shmem_request_hook(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(evbus_shmem_size());
	RequestNamedLWLockTranche("evbus", 1);
}

static void
evbus_shmem_startup_hook(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	evbus_shared = ShmemInitStruct("evbus", evbus_shmem_size(), &found);
	if (!found)
	{
		memset(evbus_shared, 0, evbus_shmem_size());
		evbus_shared->lock = &(GetNamedLWLockTranche("evbus"))->lock;
	}
	LWLockRelease(AddinShmemInitLock);
}

/* Install the hooks; called from _PG_init in the postmaster. */
void
evbus_shmem_request(void)
{
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = evbus_shmem_request_hook;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = evbus_shmem_startup_hook;
}

void
evbus_shmem_startup(void)
{
	/* attached by the startup hook; nothing else to do */
}

static void
release_slot_at_exit(int code, Datum arg)
{
	evbus_release_worker_slot();
}

/*
 * evbus_claim_worker_slot --- register this process as the worker of dboid.
 *
 * Returns false when another live worker already serves the database, or
 * a restore is writing evbus's tables there.
 */
bool
evbus_claim_worker_slot(Oid dboid, int role, Latch *latch)
{
	int			i;
	int			free_slot = -1;

	LWLockAcquire(evbus_shared->lock, LW_EXCLUSIVE);
	for (i = 0; i < evbus_max_databases(); i++)
	{
		EvbusWorkerSlot *slot = &evbus_shared->slots[i];

		if (slot->dboid == dboid && slot->role == role)
		{
			LWLockRelease(evbus_shared->lock);
			return false;
		}
		if (slot->dboid == InvalidOid && free_slot < 0)
			free_slot = i;
	}
	if (free_slot < 0)
	{
		LWLockRelease(evbus_shared->lock);
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("no free evbus worker slot"),
				 errhint("Increase max_worker_processes.")));
	}
	evbus_shared->slots[free_slot].dboid = dboid;
	evbus_shared->slots[free_slot].role = role;
	evbus_shared->slots[free_slot].pid = MyProcPid;
	evbus_shared->slots[free_slot].latch = latch;
	evbus_shared->slots[free_slot].stop_requested = false;
	pg_atomic_init_u32(&evbus_shared->slots[free_slot].wake_pending, 0);
	evbus_my_slot = free_slot;
	LWLockRelease(evbus_shared->lock);

	before_shmem_exit(release_slot_at_exit, (Datum) 0);

	/*
	 * A restore that began before the slot was taken did not see this worker
	 * to stop it: leave (the launcher starts the worker once the restore is
	 * over; restore.c, test 320_dump_restore.pl).  The restore writes evbus's
	 * tables, so evbus is installed there, even if this worker is the
	 * launcher's probe.
	 */
	pg_memory_barrier();
	if (evbus_restore_in_progress(dboid, NULL))
	{
		evbus_release_worker_slot();
		evbus_db_installed(dboid);
		return false;
	}
	return true;
}

void
evbus_release_worker_slot(void)
{
	if (evbus_my_slot < 0 || evbus_shared == NULL)
		return;
	LWLockAcquire(evbus_shared->lock, LW_EXCLUSIVE);
	evbus_shared->slots[evbus_my_slot].dboid = InvalidOid;
	evbus_shared->slots[evbus_my_slot].pid = 0;
	evbus_shared->slots[evbus_my_slot].latch = NULL;
	LWLockRelease(evbus_shared->lock);
	evbus_my_slot = -1;
}

/*
 * evbus_worker_wake_pending --- has a commit asked the publisher for a claim
 * since its last one?  The latch alone can be reset after a commit set it
 * (the worker resets it after waking for another reason); this flag stays
 * set until the next claim, so such a wake is never lost.
 *
 * evbus_worker_wake_consumed --- the publisher is about to claim: the next
 * commit must wake it again.  Called before the claim's snapshot is taken,
 * so a commit that found the wake pending is seen by this claim.
 */
bool
evbus_worker_wake_pending(void)
{
	if (evbus_my_slot < 0)
		return false;
	pg_memory_barrier();
	return pg_atomic_read_u32(&evbus_shared->slots[evbus_my_slot].wake_pending) != 0;
}

void
evbus_worker_wake_consumed(void)
{
	if (evbus_my_slot < 0)
		return;
	pg_atomic_write_u32(&evbus_shared->slots[evbus_my_slot].wake_pending, 0);
	pg_memory_barrier();
}

/* "publisher" or "consumer", as in messages. */
const char *
evbus_worker_role_name(int role)
{
	return role == EVBUS_PUBLISHER ? "publisher" : "consumer";
}

/* Process id of dboid's worker of the given role, or 0. */
pid_t
evbus_worker_pid_for(Oid dboid, int role)
{
	int			i;
	pid_t		pid = 0;

	if (evbus_shared == NULL)
		return 0;
	LWLockAcquire(evbus_shared->lock, LW_SHARED);
	for (i = 0; i < evbus_max_databases(); i++)
	{
		if (evbus_shared->slots[i].dboid == dboid &&
			(role < 0 || evbus_shared->slots[i].role == role))
		{
			pid = evbus_shared->slots[i].pid;
			break;
		}
	}
	LWLockRelease(evbus_shared->lock);
	return pid;
}

/*
 * evbus_request_worker_stop --- ask dboid's workers to exit for good.
 *
 * Stores their pids in pids (at most maxpids) so the caller can signal
 * them; returns how many there are.
 */
int
evbus_request_worker_stop(Oid dboid, pid_t *pids, int maxpids)
{
	int			i;
	int			n = 0;

	LWLockAcquire(evbus_shared->lock, LW_EXCLUSIVE);
	for (i = 0; i < evbus_max_databases(); i++)
	{
		if (evbus_shared->slots[i].dboid == dboid)
		{
			evbus_shared->slots[i].stop_requested = true;
			if (n < maxpids)
				pids[n++] = evbus_shared->slots[i].pid;
		}
	}
	LWLockRelease(evbus_shared->lock);
	return n;
}

/* In the worker: has someone asked this worker to exit for good? */
bool
evbus_worker_stop_requested(void)
{
	bool		result;

	if (evbus_my_slot < 0)
		return false;
	LWLockAcquire(evbus_shared->lock, LW_SHARED);
	result = evbus_shared->slots[evbus_my_slot].stop_requested;
	LWLockRelease(evbus_shared->lock);
	return result;
}

void
evbus_set_embedded_bootstrap(const char *bootstrap)
{
	LWLockAcquire(evbus_shared->lock, LW_EXCLUSIVE);
	strlcpy(evbus_shared->embedded_bootstrap, bootstrap ? bootstrap : "",
			sizeof(evbus_shared->embedded_bootstrap));
	LWLockRelease(evbus_shared->lock);
}

/* Copy the embedded broker's address into buf; false if none runs. */
bool
evbus_get_embedded_bootstrap(char *buf, size_t len)
{
	LWLockAcquire(evbus_shared->lock, LW_SHARED);
	strlcpy(buf, evbus_shared->embedded_bootstrap, len);
	LWLockRelease(evbus_shared->lock);
	return buf[0] != '\0';
}

/* The launcher's latch, so that backends can wake it (NULL at its exit). */
void
evbus_set_launcher_latch(Latch *latch)
{
	LWLockAcquire(evbus_shared->lock, LW_EXCLUSIVE);
	evbus_shared->launcher_latch = latch;
	LWLockRelease(evbus_shared->lock);
}

/* Wake the launcher: a database's workers should be looked at now. */
void
evbus_wake_launcher(void)
{
	if (evbus_shared == NULL)
		return;
	LWLockAcquire(evbus_shared->lock, LW_SHARED);
	if (evbus_shared->launcher_latch)
		SetLatch(evbus_shared->launcher_latch);
	LWLockRelease(evbus_shared->lock);
}

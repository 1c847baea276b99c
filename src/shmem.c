/*-------------------------------------------------------------------------
 *
 * shmem.c
 *	  Shared memory of evbus: one slot per database worker, and the
 *	  address of the embedded broker.
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

#include "evbus.h"

typedef struct EvbusShared
{
	LWLock	   *lock;
	char		embedded_bootstrap[256];	/* "" until the launcher set it */
	EvbusWorkerSlot slots[FLEXIBLE_ARRAY_MEMBER];
} EvbusShared;

static EvbusShared *evbus_shared = NULL;
static int	my_slot = -1;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

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
 * Returns false when another live worker already serves the database.
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
	my_slot = free_slot;
	LWLockRelease(evbus_shared->lock);

	before_shmem_exit(release_slot_at_exit, (Datum) 0);
	return true;
}

void
evbus_release_worker_slot(void)
{
	if (my_slot < 0 || evbus_shared == NULL)
		return;
	LWLockAcquire(evbus_shared->lock, LW_EXCLUSIVE);
	evbus_shared->slots[my_slot].dboid = InvalidOid;
	evbus_shared->slots[my_slot].pid = 0;
	evbus_shared->slots[my_slot].latch = NULL;
	LWLockRelease(evbus_shared->lock);
	my_slot = -1;
}

/*
 * evbus_wake_worker --- set the latch of dboid's publisher, if one runs.
 *
 * Called at COMMIT of every staging transaction: a shared lock and a scan
 * of a few slots.  Only the first commit since the worker's last claim
 * sets the latch (and maybe sends a signal): the worker claims everything
 * committed up to its next claim anyway.
 */
void
evbus_wake_worker(Oid dboid)
{
	evbus_wake_worker_role(dboid, EVBUS_PUBLISHER);
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
	if (my_slot < 0)
		return false;
	pg_memory_barrier();
	return pg_atomic_read_u32(&evbus_shared->slots[my_slot].wake_pending) != 0;
}

void
evbus_worker_wake_consumed(void)
{
	if (my_slot < 0)
		return;
	pg_atomic_write_u32(&evbus_shared->slots[my_slot].wake_pending, 0);
	pg_memory_barrier();
}

/* Set the latch of dboid's worker of the given role, if it runs. */
void
evbus_wake_worker_role(Oid dboid, int role)
{
	int			i;

	if (evbus_shared == NULL)
		return;
	LWLockAcquire(evbus_shared->lock, LW_SHARED);
	for (i = 0; i < evbus_max_databases(); i++)
	{
		EvbusWorkerSlot *slot = &evbus_shared->slots[i];

		if (slot->dboid == dboid && slot->role == role)
		{
			if (slot->latch &&
				(role != EVBUS_PUBLISHER ||
				 pg_atomic_exchange_u32(&slot->wake_pending, 1) == 0))
				SetLatch(slot->latch);
			break;
		}
	}
	LWLockRelease(evbus_shared->lock);
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

	if (my_slot < 0)
		return false;
	LWLockAcquire(evbus_shared->lock, LW_SHARED);
	result = evbus_shared->slots[my_slot].stop_requested;
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

/*-------------------------------------------------------------------------
 *
 * shmem.c
 *	  Shared memory of evbus: one slot per database worker, the databases
 *	  that have evbus, the launcher's latch and the address of the
 *	  embedded broker.
 *
 * A slot lets any backend wake its database's worker at COMMIT (SetLatch
 * on the worker's latch), lets the launcher and DROP DATABASE find the
 * worker, and guarantees one worker per database: a second one finds the
 * slot taken and exits.  Slots are freed by the worker's exit callback.
 *
 * The database entries are what the launcher keeps running: a database
 * is entered when a worker finds evbus installed in it or CREATE
 * EXTENSION commits there, and leaves when DROP EXTENSION commits, when a
 * worker finds evbus gone, or when DROP DATABASE succeeded and the
 * launcher no longer sees the database.  While DROP DATABASE runs, and
 * after it succeeded, the entry says so and nothing starts a worker
 * there (test 230_drop_database_guard.pl).  An
 * entry also remembers a worker that could not be started for want of a
 * background worker slot, so that the failure is logged once and
 * evbus.worker_status() can say why the worker is missing.
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

typedef struct EvbusShared
{
	LWLock	   *lock;
	char		embedded_bootstrap[256];	/* "" until the launcher set it */
	Latch	   *launcher_latch; /* NULL while no launcher runs */
	EvbusDatabase dbs[EVBUS_MAX_TRACKED_DBS];
	uint64		watch_settings; /* the launcher's Kafka settings (0: none) */
	uint32		watches_version;	/* bumped when the watches change */
	EvbusWatch	watches[EVBUS_MAX_WATCHES];
	EvbusWorkerSlot slots[FLEXIBLE_ARRAY_MEMBER];
} EvbusShared;

static EvbusShared *evbus_shared = NULL;
static int	my_slot = -1;

static EvbusDatabase *find_db(Oid dboid, bool create);

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
	my_slot = free_slot;
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

/*
 * evbus_wake_worker_role --- set the latch of dboid's worker of the given
 * role, if it runs; if it went idle, have the launcher start it (idle.c).
 *
 * The wake flag of the slot is set for both roles: a worker goes idle only
 * if no wake came since its last look at its work, checked under the
 * exclusive lock by evbus_worker_go_idle, which also frees the slot.  So
 * a wake either finds the slot and stops the worker from going idle, or
 * finds the database idle and wakes it: never lost (test
 * 238_idle_databases.pl).
 */
void
evbus_wake_worker_role(Oid dboid, int role)
{
	int			i;
	bool		found = false;
	bool		idle = false;
	EvbusDatabase *db;

	if (evbus_shared == NULL)
		return;
	LWLockAcquire(evbus_shared->lock, LW_SHARED);
	for (i = 0; i < evbus_max_databases(); i++)
	{
		EvbusWorkerSlot *slot = &evbus_shared->slots[i];

		if (slot->dboid == dboid && slot->role == role)
		{
			found = true;
			if (role == EVBUS_PUBLISHER)
			{
				if (slot->latch &&
					pg_atomic_exchange_u32(&slot->wake_pending, 1) == 0)
					SetLatch(slot->latch);
			}
			else
			{
				pg_atomic_write_u32(&slot->wake_pending, 1);
				if (slot->latch)
					SetLatch(slot->latch);
			}
			break;
		}
	}
	if (!found)
	{
		db = find_db(dboid, false);
		idle = db != NULL && db->idle[role];
	}
	LWLockRelease(evbus_shared->lock);
	if (idle)
		evbus_db_wake(dboid, role);
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

/*
 * find_db --- the entry of dboid, or with create a new one (NULL when
 * every entry is taken).  Caller holds the lock, exclusively to create.
 */
static EvbusDatabase *
find_db(Oid dboid, bool create)
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
 * evbus_db_installed --- evbus is installed in dboid (a worker found it, or
 * CREATE EXTENSION committed): the launcher keeps its workers running.
 * A database being dropped, or dropped, stays so.
 */
void
evbus_db_installed(Oid dboid)
{
	EvbusDatabase *db;

	LWLockAcquire(evbus_shared->lock, LW_EXCLUSIVE);
	db = find_db(dboid, true);
	if (db != NULL)
	{
		if (db->state == EVBUS_DB_DROPPING)
			db->state_before_drop = EVBUS_DB_INSTALLED;
		else if (db->state != EVBUS_DB_DROPPED)
			db->state = EVBUS_DB_INSTALLED;
	}
	LWLockRelease(evbus_shared->lock);
}

/*
 * evbus_db_forget --- evbus is not (or no longer) installed in dboid: no
 * worker is started there again.  A database being dropped stays so.
 */
void
evbus_db_forget(Oid dboid)
{
	EvbusDatabase *db;

	LWLockAcquire(evbus_shared->lock, LW_EXCLUSIVE);
	db = find_db(dboid, false);
	if (db != NULL && db->state != EVBUS_DB_DROPPING)
		db->dboid = InvalidOid;
	LWLockRelease(evbus_shared->lock);
}

/* Copy dboid's entry into *copy; false if it has none. */
bool
evbus_db_lookup(Oid dboid, EvbusDatabase *copy)
{
	EvbusDatabase *db;

	LWLockAcquire(evbus_shared->lock, LW_SHARED);
	db = find_db(dboid, false);
	if (db != NULL)
		*copy = *db;
	LWLockRelease(evbus_shared->lock);
	return db != NULL;
}

/* Copy up to max entries in use into copy; returns how many. */
int
evbus_db_snapshot(EvbusDatabase *copy, int max)
{
	int			i;
	int			n = 0;

	LWLockAcquire(evbus_shared->lock, LW_SHARED);
	for (i = 0; i < EVBUS_MAX_TRACKED_DBS && n < max; i++)
	{
		if (evbus_shared->dbs[i].dboid != InvalidOid)
			copy[n++] = evbus_shared->dbs[i];
	}
	LWLockRelease(evbus_shared->lock);
	return n;
}

/* May a worker start in dboid?  Not while or after DROP DATABASE. */
bool
evbus_db_may_start(Oid dboid)
{
	EvbusDatabase *db;
	bool		result;

	LWLockAcquire(evbus_shared->lock, LW_SHARED);
	db = find_db(dboid, false);
	result = (db == NULL ||
			  (db->state != EVBUS_DB_DROPPING && db->state != EVBUS_DB_DROPPED));
	LWLockRelease(evbus_shared->lock);
	return result;
}

/* A worker of role was registered for dboid just now. */
void
evbus_db_start_registered(Oid dboid, int role)
{
	EvbusDatabase *db;

	LWLockAcquire(evbus_shared->lock, LW_EXCLUSIVE);
	db = find_db(dboid, false);
	if (db != NULL)
		db->started_at[role] = GetCurrentTimestamp();
	LWLockRelease(evbus_shared->lock);
}

/*
 * evbus_db_start_failed --- no background worker slot was free for a
 * worker of role in dboid.  Returns true the first time since the worker
 * last ran: the caller logs it then, not at every retry.
 */
bool
evbus_db_start_failed(Oid dboid, int role)
{
	EvbusDatabase *db;
	bool		first = false;

	LWLockAcquire(evbus_shared->lock, LW_EXCLUSIVE);
	db = find_db(dboid, true);
	if (db != NULL)
	{
		if (db->failed_since[role] == 0)
			db->failed_since[role] = GetCurrentTimestamp();
		first = !db->warned[role];
		db->warned[role] = true;
	}
	LWLockRelease(evbus_shared->lock);
	return first;
}

/* The worker of role runs in dboid: forget its failed starts. */
void
evbus_db_worker_running(Oid dboid, int role)
{
	EvbusDatabase *db;

	LWLockAcquire(evbus_shared->lock, LW_EXCLUSIVE);
	db = find_db(dboid, false);
	if (db != NULL)
	{
		db->failed_since[role] = 0;
		db->warned[role] = false;
		db->idle[role] = false;
		db->wake_at[role] = 0;
	}
	LWLockRelease(evbus_shared->lock);
}

/*
 * evbus_db_begin_drop --- DROP DATABASE of dboid is about to proceed: start
 * no worker there until evbus_db_end_drop.  The entry names this backend,
 * so that the launcher can restore it should the backend die meanwhile.
 * Returns false when no entry can be made (too many databases).
 */
bool
evbus_db_begin_drop(Oid dboid)
{
	EvbusDatabase *db;

	LWLockAcquire(evbus_shared->lock, LW_EXCLUSIVE);
	db = find_db(dboid, true);
	if (db != NULL)
	{
		if (db->state != EVBUS_DB_DROPPING)
			db->state_before_drop = db->state;
		db->state = EVBUS_DB_DROPPING;
		db->dropper = MyProcPid;
	}
	LWLockRelease(evbus_shared->lock);
	return db != NULL;
}

/*
 * evbus_db_end_drop --- the DROP DATABASE of dboid is over: if the
 * database is gone, the entry stays as a tombstone until the launcher
 * sees it gone from pg_database too (so that it does not look for evbus
 * there); else the entry gets its state back.
 */
void
evbus_db_end_drop(Oid dboid, bool dropped)
{
	EvbusDatabase *db;

	LWLockAcquire(evbus_shared->lock, LW_EXCLUSIVE);
	db = find_db(dboid, false);
	if (db != NULL && db->state == EVBUS_DB_DROPPING)
	{
		if (dropped)
			db->state = EVBUS_DB_DROPPED;
		else
		{
			db->state = db->state_before_drop;
			db->dropper = 0;
		}
	}
	LWLockRelease(evbus_shared->lock);
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

/*
 * evbus_worker_go_idle --- in a worker that found nothing to do for
 * evbus.idle_timeout: mark its role of the database idle (the launcher
 * starts it again when woken, or at wake_at if not 0) and free its slot,
 * in one step under the lock.  False, and nothing changed, when a wake
 * came since the worker last looked at its work (see
 * evbus_wake_worker_role) or the database is not tracked: the worker goes
 * on.
 */
bool
evbus_worker_go_idle(int role, TimestampTz wake_at)
{
	EvbusDatabase *db;
	EvbusWorkerSlot *slot;
	bool		idle = false;

	if (my_slot < 0)
		return false;
	LWLockAcquire(evbus_shared->lock, LW_EXCLUSIVE);
	slot = &evbus_shared->slots[my_slot];
	db = find_db(slot->dboid, false);
	if (db != NULL && db->state == EVBUS_DB_INSTALLED &&
		pg_atomic_read_u32(&slot->wake_pending) == 0)
	{
		db->idle[role] = true;
		db->wake_at[role] = wake_at;
		db->started_at[role] = 0;	/* woken, it starts at once */
		slot->dboid = InvalidOid;
		slot->pid = 0;
		slot->latch = NULL;
		my_slot = -1;
		idle = true;
	}
	LWLockRelease(evbus_shared->lock);
	return idle;
}

/*
 * evbus_db_wake --- the idle worker of role (-1: both) in dboid has work:
 * clear its idle mark and wake the launcher, which starts it.  Returns
 * whether it was idle.
 */
bool
evbus_db_wake(Oid dboid, int role)
{
	EvbusDatabase *db;
	bool		woken = false;
	int			r;

	if (evbus_shared == NULL)
		return false;
	LWLockAcquire(evbus_shared->lock, LW_EXCLUSIVE);
	db = find_db(dboid, false);
	for (r = EVBUS_PUBLISHER; db != NULL && r <= EVBUS_CONSUMER; r++)
	{
		if ((role < 0 || role == r) && db->idle[r])
		{
			db->idle[r] = false;
			db->wake_at[r] = 0;
			woken = true;
			if (r == EVBUS_CONSUMER)
				evbus_shared->watches_version++;
		}
	}
	if (woken && evbus_shared->launcher_latch)
		SetLatch(evbus_shared->launcher_latch);
	LWLockRelease(evbus_shared->lock);
	return woken;
}

/* Wake every idle worker of every database; returns how many databases. */
int
evbus_db_wake_all(void)
{
	EvbusDatabase *copy = palloc(sizeof(EvbusDatabase) * EVBUS_MAX_TRACKED_DBS);
	int			n = evbus_db_snapshot(copy, EVBUS_MAX_TRACKED_DBS);
	int			woken = 0;
	int			i;

	for (i = 0; i < n; i++)
		if (evbus_db_wake(copy[i].dboid, -1))
			woken++;
	pfree(copy);
	return woken;
}

/* Is the worker of role in dboid idle (exited for want of work)? */
bool
evbus_db_role_idle(Oid dboid, int role)
{
	EvbusDatabase *db;
	bool		idle;

	LWLockAcquire(evbus_shared->lock, LW_SHARED);
	db = find_db(dboid, false);
	idle = db != NULL && db->idle[role];
	LWLockRelease(evbus_shared->lock);
	return idle;
}

/*
 * evbus_consumer_go_idle --- evbus_worker_go_idle for the consumer, which
 * also leaves the partitions it had, each with the offset from which a
 * message is new (its high watermark), for the launcher to watch
 * (wake_watch.c).  False, besides, when the launcher's Kafka settings
 * differ from the consumer's (settings: the launcher would watch another
 * cluster, or cannot watch at all), or the watches do not fit: the
 * consumer stays.
 */
bool
evbus_consumer_go_idle(TimestampTz wake_at, const EvbusWatch *watches, int n,
					   uint64 settings)
{
	EvbusDatabase *db;
	EvbusWorkerSlot *slot;
	bool		idle = false;
	int			free_entries = 0;
	int			i;
	int			j;

	if (my_slot < 0)
		return false;
	LWLockAcquire(evbus_shared->lock, LW_EXCLUSIVE);
	slot = &evbus_shared->slots[my_slot];
	db = find_db(slot->dboid, false);
	/* the entries of databases no longer idle are free */
	for (i = 0; i < EVBUS_MAX_WATCHES; i++)
	{
		EvbusWatch *w = &evbus_shared->watches[i];
		EvbusDatabase *owner;

		if (w->dboid != InvalidOid &&
			(w->dboid == slot->dboid ||
			 (owner = find_db(w->dboid, false)) == NULL ||
			 !owner->idle[EVBUS_CONSUMER]))
			w->dboid = InvalidOid;
		if (w->dboid == InvalidOid)
			free_entries++;
	}
	if (db != NULL && db->state == EVBUS_DB_INSTALLED &&
		pg_atomic_read_u32(&slot->wake_pending) == 0 &&
		settings == evbus_shared->watch_settings && (settings != 0 || n == 0) &&
		n <= free_entries)
	{
		for (i = 0, j = 0; i < n; i++)
		{
			while (evbus_shared->watches[j].dboid != InvalidOid)
				j++;
			evbus_shared->watches[j] = watches[i];
			evbus_shared->watches[j].dboid = slot->dboid;
		}
		evbus_shared->watches_version++;
		db->idle[EVBUS_CONSUMER] = true;
		db->wake_at[EVBUS_CONSUMER] = wake_at;
		db->started_at[EVBUS_CONSUMER] = 0;
		slot->dboid = InvalidOid;
		slot->pid = 0;
		slot->latch = NULL;
		my_slot = -1;
		idle = true;
		if (evbus_shared->launcher_latch)
			SetLatch(evbus_shared->launcher_latch);
	}
	LWLockRelease(evbus_shared->lock);
	return idle;
}

/*
 * evbus_watches_copy --- the watches of the consumers idle now (at most
 * max), and the settings they were left for.  Returns how many.
 */
int
evbus_watches_copy(EvbusWatch *copy, int max, uint64 *settings)
{
	int			i;
	int			n = 0;

	LWLockAcquire(evbus_shared->lock, LW_SHARED);
	for (i = 0; i < EVBUS_MAX_WATCHES && n < max; i++)
	{
		EvbusWatch *w = &evbus_shared->watches[i];
		EvbusDatabase *owner;

		if (w->dboid != InvalidOid &&
			(owner = find_db(w->dboid, false)) != NULL &&
			owner->idle[EVBUS_CONSUMER])
			copy[n++] = *w;
	}
	*settings = evbus_shared->watch_settings;
	LWLockRelease(evbus_shared->lock);
	return n;
}

/* Bumped whenever a consumer goes idle or is woken. */
uint32
evbus_watches_version(void)
{
	uint32		v;

	LWLockAcquire(evbus_shared->lock, LW_SHARED);
	v = evbus_shared->watches_version;
	LWLockRelease(evbus_shared->lock);
	return v;
}

/*
 * evbus_set_watch_settings --- the Kafka settings the launcher watches
 * with (evbus_kafka_conf_fingerprint; 0: it cannot watch, no consumer
 * goes idle).
 */
void
evbus_set_watch_settings(uint64 settings)
{
	LWLockAcquire(evbus_shared->lock, LW_EXCLUSIVE);
	evbus_shared->watch_settings = settings;
	LWLockRelease(evbus_shared->lock);
}

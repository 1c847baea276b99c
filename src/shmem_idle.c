/*-------------------------------------------------------------------------
 *
 * shmem_idle.c
 *	  Waking workers, and idle workers, in shared memory: a commit wakes
 *	  its database's worker; a worker marks its role of its database idle
 *	  and frees its slot (idle.c decides when), and a wake brings it back
 *	  through the launcher; an idle consumer leaves the partitions the
 *	  launcher watches for it (wake_watch.c).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "storage/lwlock.h"
#include "utils/timestamp.h"

#include "evbus.h"
#include "shmem_internal.h"

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
		db = evbus_find_db(dboid, false);
		idle = db != NULL && db->idle[role];
	}
	LWLockRelease(evbus_shared->lock);
	if (idle)
		evbus_db_wake(dboid, role);
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

	if (evbus_my_slot < 0)
		return false;
	LWLockAcquire(evbus_shared->lock, LW_EXCLUSIVE);
	slot = &evbus_shared->slots[evbus_my_slot];
	db = evbus_find_db(slot->dboid, false);
	if (db != NULL && db->state == EVBUS_DB_INSTALLED &&
		pg_atomic_read_u32(&slot->wake_pending) == 0)
	{
		db->idle[role] = true;
		db->wake_at[role] = wake_at;
		db->started_at[role] = 0;	/* woken, it starts at once */
		slot->dboid = InvalidOid;
		slot->pid = 0;
		slot->latch = NULL;
		evbus_my_slot = -1;
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
	db = evbus_find_db(dboid, false);
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

/*
 * A start that found no free slot within this long means a worker still
 * waits for one: the launcher tries again every second.
 */
#define SLOT_WANTED_FRESH_MS 3000

/*
 * waiting_for_slot --- a worker of some database that waits for a
 * background worker slot: its start found none lately
 * (evbus_db_start_failed), it has not run since (evbus_db_worker_running),
 * and no quiet worker has left for it lately (evbus_slot_give_way).  A
 * worker that has its slot waits no more, so the quiet workers never leave
 * for a start that already happened; and one waiting worker has one quiet
 * worker leave for it, not every quiet worker at once, which left slots
 * empty (test 239_slots_take_turns.pl, "four workers take every slot").
 * slot_wanted_at, the last failed start of any database, only spares the
 * scan when there was none lately.  Returns whether one was found, and
 * where in *found_db and *found_role.  The caller holds the lock.
 */
static bool
waiting_for_slot(TimestampTz now, EvbusDatabase **found_db, int *found_role)
{
	int			i;
	int			role;

	if (evbus_shared->slot_wanted_at == 0 ||
		TimestampDifferenceExceeds(evbus_shared->slot_wanted_at, now, SLOT_WANTED_FRESH_MS))
		return false;
	for (i = 0; i < EVBUS_MAX_TRACKED_DBS; i++)
	{
		EvbusDatabase *db = &evbus_shared->dbs[i];

		if (db->dboid == InvalidOid)
			continue;
		for (role = 0; role < lengthof(db->failed_at); role++)
		{
			if (db->failed_since[role] != 0 &&
				!TimestampDifferenceExceeds(db->failed_at[role], now, SLOT_WANTED_FRESH_MS) &&
				(db->given_way_at[role] == 0 ||
				 TimestampDifferenceExceeds(db->given_way_at[role], now, SLOT_WANTED_FRESH_MS)))
			{
				*found_db = db;
				*found_role = role;
				return true;
			}
		}
	}
	return false;
}

/*
 * evbus_slot_wanted --- does a worker of some database wait for a
 * background worker slot that no quiet worker has left for yet?
 */
bool
evbus_slot_wanted(void)
{
	EvbusDatabase *db;
	int			role;
	bool		wanted;

	LWLockAcquire(evbus_shared->lock, LW_SHARED);
	wanted = waiting_for_slot(GetCurrentTimestamp(), &db, &role);
	LWLockRelease(evbus_shared->lock);
	return wanted;
}

/*
 * evbus_slot_give_way --- a quiet worker is about to leave for a worker
 * that waits for a slot: note that one has (for as long as a start's
 * retry takes), so that the other quiet workers stay.  False if no worker
 * waits for one any more.
 */
bool
evbus_slot_give_way(void)
{
	EvbusDatabase *db;
	int			role;
	bool		wanted;
	TimestampTz now = GetCurrentTimestamp();

	LWLockAcquire(evbus_shared->lock, LW_EXCLUSIVE);
	wanted = waiting_for_slot(now, &db, &role);
	if (wanted)
		db->given_way_at[role] = now;
	LWLockRelease(evbus_shared->lock);
	return wanted;
}

/* Is the worker of role in dboid idle (exited for want of work)? */
bool
evbus_db_role_idle(Oid dboid, int role)
{
	EvbusDatabase *db;
	bool		idle;

	LWLockAcquire(evbus_shared->lock, LW_SHARED);
	db = evbus_find_db(dboid, false);
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

	if (evbus_my_slot < 0)
		return false;
	LWLockAcquire(evbus_shared->lock, LW_EXCLUSIVE);
	slot = &evbus_shared->slots[evbus_my_slot];
	db = evbus_find_db(slot->dboid, false);
	/* the entries of databases no longer idle are free */
	for (i = 0; i < EVBUS_MAX_WATCHES; i++)
	{
		EvbusWatch *w = &evbus_shared->watches[i];
		EvbusDatabase *owner;

		if (w->dboid != InvalidOid &&
			(w->dboid == slot->dboid ||
			 (owner = evbus_find_db(w->dboid, false)) == NULL ||
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
		evbus_my_slot = -1;
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
			(owner = evbus_find_db(w->dboid, false)) != NULL &&
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

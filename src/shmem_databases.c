/*-------------------------------------------------------------------------
 *
 * shmem_databases.c
 *	  The databases that have evbus, in shared memory: what the launcher
 *	  keeps running, what DROP DATABASE holds back, which worker could not
 *	  start (see shmem.c for the segment).
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
#include "storage/lwlock.h"
#include "utils/timestamp.h"

#include "evbus.h"
#include "shmem_internal.h"

/*
 * evbus_db_forget --- evbus is not (or no longer) installed in dboid: no
 * worker is started there again.  A database being dropped stays so.
 */
void
evbus_db_forget(Oid dboid)
{
	EvbusDatabase *db;

	LWLockAcquire(evbus_shared->lock, LW_EXCLUSIVE);
	db = evbus_find_db(dboid, false);
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
	db = evbus_find_db(dboid, false);
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
	db = evbus_find_db(dboid, false);
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
	db = evbus_find_db(dboid, false);
	if (db != NULL)
		db->started_at[role] = GetCurrentTimestamp();
	LWLockRelease(evbus_shared->lock);
}

/*
 * evbus_db_start_failed --- no background worker slot was free for a
 * worker of role in dboid (evbus_slot_wanted says so to the workers).
 * Returns true the first time since the worker last ran: the caller logs
 * it then, not at every retry.
 */
bool
evbus_db_start_failed(Oid dboid, int role)
{
	EvbusDatabase *db;
	bool		first = false;

	LWLockAcquire(evbus_shared->lock, LW_EXCLUSIVE);
	evbus_shared->slot_wanted_at = GetCurrentTimestamp();
	db = evbus_find_db(dboid, true);
	if (db != NULL)
	{
		if (db->failed_since[role] == 0)
			db->failed_since[role] = GetCurrentTimestamp();
		db->failed_at[role] = GetCurrentTimestamp();
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
	db = evbus_find_db(dboid, false);
	if (db != NULL)
	{
		db->failed_since[role] = 0;
		db->given_way_at[role] = 0;
		db->failed_at[role] = 0;
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
	db = evbus_find_db(dboid, true);
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
	db = evbus_find_db(dboid, false);
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

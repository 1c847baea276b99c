/*-------------------------------------------------------------------------
 *
 * shmem_internal.h
 *	  The layout of evbus's shared memory, for the files that keep it
 *	  (shmem.c, shmem_databases.c, shmem_idle.c) and no other: everyone
 *	  else goes through their functions, under evbus_shared->lock.
 *
 *-------------------------------------------------------------------------
 */
#ifndef EVBUS_SHMEM_INTERNAL_H
#define EVBUS_SHMEM_INTERNAL_H

#include "evbus.h"

typedef struct EvbusShared
{
	LWLock	   *lock;
	char		embedded_bootstrap[256];	/* "" until the launcher set it */
	Latch	   *launcher_latch; /* NULL while no launcher runs */
	TimestampTz slot_wanted_at; /* a start last found no free slot (0: never) */
	EvbusDatabase dbs[EVBUS_MAX_TRACKED_DBS];
	uint64		watch_settings; /* the launcher's Kafka settings (0: none) */
	uint32		watches_version;	/* bumped when the watches change */
	EvbusWatch	watches[EVBUS_MAX_WATCHES];
	EvbusWorkerSlot slots[FLEXIBLE_ARRAY_MEMBER];
} EvbusShared;

extern EvbusShared *evbus_shared;
extern int	evbus_my_slot;		/* this worker's slot, -1: none */

extern EvbusDatabase *evbus_find_db(Oid dboid, bool create);

#endif							/* EVBUS_SHMEM_INTERNAL_H */

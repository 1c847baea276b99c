/*-------------------------------------------------------------------------
 *
 * identity_claims.c
 *	  What the databases of this server hold of evbus's identities: which
 *	  one took evbus's rows of a dropped database over, and which one holds
 *	  each database id, so that a second copy is found as a copy.
 *
 * A copy whose original was dropped (copied to rename it) takes evbus's
 * rows over at its first start (copy_guard.c).  Two copies of it would
 * both do so, each acting as the original: both publishing its outbox,
 * both in its consumer groups, each handling the messages of the
 * partitions it took and never the other's.  Databases cannot read each
 * other's tables, so the server keeps, in $PGDATA/pg_evbus/identity_claims,
 * one line per database taken over: "<system identifier> <its oid> <the
 * oid of the database that took it over>".  A database that would take
 * over a dropped one that another database of the server, still there,
 * already took over is a copy of that one (test 326_database_copy.pl).
 *
 * Likewise one dump restored into two databases of the server: both
 * would take over the rows of the dumped database, of another server,
 * with its database id.  $PGDATA/pg_evbus/database_ids has one line per
 * database whose workers started: "<database id> <its oid>"; a database
 * whose id another database of the server, still there, holds is a copy
 * of that one; DROP EXTENSION evbus gives a database's id up (test
 * 320_dump_restore.pl).
 *
 * The files are not WAL-logged: a standby has the lines of its base
 * backup only, and after a failover a second copy could take over again
 * what the old primary's first copy took over since.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <unistd.h>

#include "catalog/pg_database.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "storage/fd.h"
#include "storage/lmgr.h"

#include "evbus.h"

#define CLAIMS_FILE		EVBUS_STATE_DIR "/identity_claims"
#define CLAIMS_TEMP		EVBUS_STATE_DIR "/identity_claims.tmp"
#define IDS_FILE		EVBUS_STATE_DIR "/database_ids"
#define IDS_TEMP		EVBUS_STATE_DIR "/database_ids.tmp"

/*
 * evbus_identity_lock --- until the end of the transaction, be the only
 * database of the server reading the claims to decide, or writing them: a
 * lock on database OID 0, which names no database.  Two copies starting
 * at once decide one after the other, and two claims written at once do
 * not lose one of them.
 */
void
evbus_identity_lock(void)
{
	LockSharedObject(DatabaseRelationId, InvalidOid, 0, ExclusiveLock);
}

/*
 * read_lines --- the file path's lines into buf (empty when there is no
 * file yet).
 */
static void
read_lines(const char *path, StringInfo buf)
{
	FILE	   *f = AllocateFile(path, "r");
	char		chunk[1024];
	size_t		got;

	initStringInfo(buf);
	if (f == NULL)
	{
		if (errno != ENOENT)
			ereport(ERROR,
					(errcode_for_file_access(),
					 errmsg("could not read file \"%s\": %m", path)));
		return;
	}
	while ((got = fread(chunk, 1, sizeof(chunk), f)) > 0)
		appendBinaryStringInfo(buf, chunk, got);
	if (ferror(f))
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not read file \"%s\": %m", path)));
	FreeFile(f);
}

/*
 * write_lines --- replace the file path with the lines of out, through
 * temp: on disk, whole, before it returns (a crash leaves the old file or
 * the new one).
 */
static void
write_lines(const char *path, const char *temp, StringInfo out)
{
	int			fd;

	if (MakePGDirectory(EVBUS_STATE_DIR) < 0 && errno != EEXIST)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not create directory \"%s\": %m", EVBUS_STATE_DIR)));
	fd = OpenTransientFile(temp, O_WRONLY | O_CREAT | O_TRUNC | PG_BINARY);
	if (fd < 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not create file \"%s\": %m", temp)));
	errno = 0;
	if (write(fd, out->data, out->len) != out->len)
	{
		if (errno == 0)
			errno = ENOSPC;
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not write file \"%s\": %m", temp)));
	}
	if (pg_fsync(fd) != 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not fsync file \"%s\": %m", temp)));
	if (CloseTransientFile(fd) != 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not close file \"%s\": %m", temp)));
	/* renamed, and the directory synced: the lines survive a crash */
	(void) durable_rename(temp, path, ERROR);
}

/* Parse one line of the claims file; false if it is not one. */
static bool
parse_claim(const char *line, uint64 *system, Oid *original, Oid *claimant)
{
	unsigned int o;
	unsigned int c;

	if (sscanf(line, UINT64_FORMAT " %u %u", system, &o, &c) != 3)
		return false;
	*original = o;
	*claimant = c;
	return true;
}

/*
 * evbus_identity_claimant --- the database that took over the rows of
 * database original of system system, or InvalidOid.  The caller holds
 * evbus_identity_lock().
 */
Oid
evbus_identity_claimant(uint64 system, Oid original)
{
	StringInfoData buf;
	char	   *line;
	char	   *save;
	Oid			claimant = InvalidOid;

	read_lines(CLAIMS_FILE, &buf);
	for (line = strtok_r(buf.data, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
	{
		uint64		s;
		Oid			o;
		Oid			c;

		if (parse_claim(line, &s, &o, &c) && s == system && o == original)
			claimant = c;
	}
	pfree(buf.data);
	return claimant;
}

/*
 * evbus_identity_claim --- record that this database takes over the rows
 * of database original of system system, on disk before it returns.  The
 * caller holds evbus_identity_lock().
 */
void
evbus_identity_claim(uint64 system, Oid original)
{
	StringInfoData buf;
	StringInfoData out;
	char	   *line;
	char	   *save;

	read_lines(CLAIMS_FILE, &buf);
	initStringInfo(&out);
	for (line = strtok_r(buf.data, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
	{
		uint64		s;
		Oid			o;
		Oid			c;

		/* the other claims stay; one of original is replaced */
		if (parse_claim(line, &s, &o, &c) && !(s == system && o == original))
			appendStringInfo(&out, "%s\n", line);
	}
	appendStringInfo(&out, UINT64_FORMAT " %u %u\n", system, original, MyDatabaseId);

	write_lines(CLAIMS_FILE, CLAIMS_TEMP, &out);
	pfree(buf.data);
	pfree(out.data);
}

/* Parse one line of the ids file; false if it is not one. */
static bool
parse_held_id(const char *line, char *id, Oid *holder)
{
	unsigned int h;

	if (sscanf(line, "%36s %u", id, &h) != 2)
		return false;
	*holder = h;
	return true;
}

/*
 * evbus_identity_id_holder --- the database of this server whose workers
 * last started with database id id (a UUID's text), or InvalidOid.  The
 * caller holds evbus_identity_lock() to decide on it, or asks without it
 * whether its own database holds the id: the file is replaced whole
 * (write_lines), never read half written.
 */
Oid
evbus_identity_id_holder(const char *id)
{
	StringInfoData buf;
	char	   *line;
	char	   *save;
	Oid			holder = InvalidOid;

	read_lines(IDS_FILE, &buf);
	for (line = strtok_r(buf.data, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
	{
		char		held[37];
		Oid			h;

		if (parse_held_id(line, held, &h) && strcmp(held, id) == 0)
			holder = h;
	}
	pfree(buf.data);
	return holder;
}

/*
 * set_held_id --- make the ids file say that this database holds id, and
 * no other (none if id is NULL), on disk before it returns; nothing is
 * written when the file says so already (every worker start asks).
 */
static void
set_held_id(const char *id)
{
	StringInfoData buf;
	StringInfoData out;
	char	   *line;
	char	   *save;
	bool		held_already = false;
	int			replaced = 0;

	read_lines(IDS_FILE, &buf);
	initStringInfo(&out);
	for (line = strtok_r(buf.data, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
	{
		char		held[37];
		Oid			h;
		bool		same_id;

		if (!parse_held_id(line, held, &h))
			continue;
		same_id = id != NULL && strcmp(held, id) == 0;
		/* the other databases' ids stay; this one's, and id, are replaced */
		if (h != MyDatabaseId && !same_id)
		{
			appendStringInfo(&out, "%s\n", line);
			continue;
		}
		held_already |= h == MyDatabaseId && same_id;
		replaced++;
	}
	if (id != NULL)
		appendStringInfo(&out, "%s %u\n", id, MyDatabaseId);
	if (id != NULL ? !held_already || replaced > 1 : replaced > 0)
		write_lines(IDS_FILE, IDS_TEMP, &out);
	pfree(buf.data);
	pfree(out.data);
}

/*
 * evbus_identity_hold_id --- record that this database holds database id
 * id (a worker's start).  The caller holds evbus_identity_lock().
 */
void
evbus_identity_hold_id(const char *id)
{
	set_held_id(id);
}

/*
 * evbus_identity_release_ids --- this database holds no database id any
 * more (DROP EXTENSION evbus, before it commits: should the commit fail,
 * the next worker start holds the id again).  The caller holds
 * evbus_identity_lock().
 */
void
evbus_identity_release_ids(void)
{
	set_held_id(NULL);
}

/*-------------------------------------------------------------------------
 *
 * identity_claims.c
 *	  Which database of this server took evbus's rows of a dropped database
 *	  over, so that a second copy of that database is a copy of the first.
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
 * The file is not WAL-logged: a standby has the claims of its base backup
 * only, and after a failover a second copy could take over again what the
 * old primary's first copy took over since.
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
 * read_claims --- the claims file's lines into buf (empty when there is
 * no file yet).
 */
static void
read_claims(StringInfo buf)
{
	FILE	   *f = AllocateFile(CLAIMS_FILE, "r");
	char		chunk[1024];
	size_t		got;

	initStringInfo(buf);
	if (f == NULL)
	{
		if (errno != ENOENT)
			ereport(ERROR,
					(errcode_for_file_access(),
					 errmsg("could not read file \"%s\": %m", CLAIMS_FILE)));
		return;
	}
	while ((got = fread(chunk, 1, sizeof(chunk), f)) > 0)
		appendBinaryStringInfo(buf, chunk, got);
	if (ferror(f))
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not read file \"%s\": %m", CLAIMS_FILE)));
	FreeFile(f);
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

	read_claims(&buf);
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
	int			fd;

	read_claims(&buf);
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

	if (MakePGDirectory(EVBUS_STATE_DIR) < 0 && errno != EEXIST)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not create directory \"%s\": %m", EVBUS_STATE_DIR)));
	fd = OpenTransientFile(CLAIMS_TEMP, O_WRONLY | O_CREAT | O_TRUNC | PG_BINARY);
	if (fd < 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not create file \"%s\": %m", CLAIMS_TEMP)));
	errno = 0;
	if (write(fd, out.data, out.len) != out.len)
	{
		if (errno == 0)
			errno = ENOSPC;
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not write file \"%s\": %m", CLAIMS_TEMP)));
	}
	if (pg_fsync(fd) != 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not fsync file \"%s\": %m", CLAIMS_TEMP)));
	if (CloseTransientFile(fd) != 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not close file \"%s\": %m", CLAIMS_TEMP)));
	/* renamed, and the directory synced: the claim survives a crash */
	(void) durable_rename(CLAIMS_TEMP, CLAIMS_FILE, ERROR);
	pfree(buf.data);
	pfree(out.data);
}

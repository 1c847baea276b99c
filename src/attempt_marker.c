/*-------------------------------------------------------------------------
 *
 * attempt_marker.c
 *	  Remembering, outside the database, which messages the consumer is
 *	  handling, so that a handler that crashes the server still counts as
 *	  an attempt.
 *
 * The consumer handles a batch in one transaction: the inbox rows, the
 * handlers' effects and the stored offsets commit together.  If a handler
 * crashes its backend (a segfault in a C function, the OOM killer),
 * PostgreSQL restarts and that transaction is gone, including every trace
 * that the attempt happened; the same batch would arrive again and crash
 * again, forever.  So before it runs a batch the consumer writes the
 * batch's offset ranges to a small file in the data directory.  A plain
 * write(2), no fsync: what a process wrote survives that process's crash
 * (it is in the kernel's page cache); an operating-system crash is not
 * something a handler causes.
 *
 * Once the batch's transaction has committed the consumer empties the
 * file (another plain write), so the file names a batch only while its
 * transaction is open.  When the consumer starts it reads the file.
 * Messages within those ranges are suspects: a batch containing one is
 * handled the careful way (the attempt is recorded and committed before
 * any handler runs, see inbox.c), so a message that crashes the server is
 * dead-lettered after max_retries + 1 attempts like any other failure.
 *
 * A range names its (group, topic) by a hash: a collision only makes an
 * innocent batch take the careful way.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/hashfn.h"
#include "miscadmin.h"
#include "storage/fd.h"

#include "consumer.h"

#define MARKER_DIR		"pg_evbus"
#define MARKER_MAGIC	0x65766231	/* "evb1" */
#define MARKER_MAX		256		/* ranges per batch; more: all suspect */

typedef struct MarkerRange
{
	uint32		stream;			/* hash of (group, topic) */
	int32		partition;
	int64		first;
	int64		last;
} MarkerRange;

typedef struct MarkerFile
{
	uint32		magic;
	int32		nranges;		/* -1: every message is a suspect */
	MarkerRange ranges[MARKER_MAX];
} MarkerFile;

static int	marker_fd = -1;
static bool marker_broken = false;
static MarkerFile suspects;		/* what the previous run left */
static bool batch_in_hand = false;	/* the file names a batch being handled */

static uint32
stream_hash(const char *group, const char *topic)
{
	uint32		h = hash_bytes((const unsigned char *) group, strlen(group));

	return hash_combine(h, hash_bytes((const unsigned char *) topic, strlen(topic)));
}

/*
 * evbus_attempt_marker_open --- open this database's marker file and
 * remember what the previous run of the consumer was handling when it
 * stopped.  Without a usable file every batch takes the careful way.
 */
void
evbus_attempt_marker_open(void)
{
	char		path[MAXPGPATH];
	ssize_t		got;

	suspects.nranges = 0;
	if (MakePGDirectory(MARKER_DIR) < 0 && errno != EEXIST)
	{
		ereport(WARNING,
				(errcode_for_file_access(),
				 errmsg("evbus: could not create directory \"%s\": %m", MARKER_DIR),
				 errdetail("Every batch is handled the slower careful way.")));
		marker_broken = true;
		return;
	}
	snprintf(path, sizeof(path), MARKER_DIR "/consumer_%u", MyDatabaseId);
	marker_fd = BasicOpenFile(path, O_RDWR | O_CREAT | PG_BINARY);
	if (marker_fd < 0)
	{
		ereport(WARNING,
				(errcode_for_file_access(),
				 errmsg("evbus: could not open file \"%s\": %m", path),
				 errdetail("Every batch is handled the slower careful way.")));
		marker_broken = true;
		return;
	}
	got = pread(marker_fd, &suspects, sizeof(suspects), 0);
	if (got < (ssize_t) offsetof(MarkerFile, ranges) || suspects.magic != MARKER_MAGIC ||
		suspects.nranges > MARKER_MAX ||
		(suspects.nranges > 0 &&
		 got < (ssize_t) (offsetof(MarkerFile, ranges) + suspects.nranges * sizeof(MarkerRange))))
		suspects.nranges = 0;	/* empty or foreign: nothing to suspect */
	if (suspects.nranges != 0)
		ereport(LOG,
				(errmsg("evbus: the consumer stopped while handling a batch; the messages of that batch are handled carefully")));
}

/*
 * evbus_attempt_marker_suspect --- was m within a batch the previous run of
 * the consumer was handling when it stopped?  (Then that run may have
 * attempted it, and the attempt counts.)
 */
bool
evbus_attempt_marker_suspect(const char *group, const ReceivedMessage *m)
{
	uint32		stream;
	int			r;

	if (suspects.nranges < 0)
		return true;
	if (suspects.nranges == 0)
		return false;
	stream = stream_hash(group, m->topic);
	for (r = 0; r < suspects.nranges; r++)
	{
		MarkerRange *range = &suspects.ranges[r];

		if (range->stream == stream && range->partition == m->partition &&
			m->offset >= range->first && m->offset <= range->last)
			return true;
	}
	return false;
}

/*
 * evbus_attempt_marker_write --- note that msgs are about to be handled in
 * one transaction.  Returns false if that is not safe: the note could not
 * be written, or a message of the batch is a suspect (then the caller
 * takes the careful way).
 */
bool
evbus_attempt_marker_write(const char *group, ReceivedMessage *msgs, int n)
{
	MarkerFile	marker;
	size_t		len;
	int			i;
	int			r;

	if (marker_broken)
		return false;
	for (i = 0; i < n; i++)
		if (evbus_attempt_marker_suspect(group, &msgs[i]))
			return false;
	marker.magic = MARKER_MAGIC;
	marker.nranges = 0;
	for (i = 0; i < n; i++)
	{
		uint32		stream = stream_hash(group, msgs[i].topic);

		for (r = 0; r < marker.nranges; r++)
			if (marker.ranges[r].stream == stream &&
				marker.ranges[r].partition == msgs[i].partition)
				break;
		if (r == MARKER_MAX)
		{
			marker.nranges = -1;
			break;
		}
		if (r == marker.nranges)
		{
			marker.ranges[r].stream = stream;
			marker.ranges[r].partition = msgs[i].partition;
			marker.ranges[r].first = msgs[i].offset;
			marker.ranges[r].last = msgs[i].offset;
			marker.nranges++;
		}
		marker.ranges[r].first = Min(marker.ranges[r].first, msgs[i].offset);
		marker.ranges[r].last = Max(marker.ranges[r].last, msgs[i].offset);
	}
	len = offsetof(MarkerFile, ranges) + Max(marker.nranges, 0) * sizeof(MarkerRange);
	if (pwrite(marker_fd, &marker, len, 0) != (ssize_t) len)
	{
		ereport(WARNING,
				(errcode_for_file_access(),
				 errmsg("evbus: could not write the consumer's attempt marker: %m"),
				 errdetail("Every batch is handled the slower careful way from now on.")));
		marker_broken = true;
		return false;
	}
	batch_in_hand = true;
	return true;
}

/*
 * evbus_attempt_marker_clear --- note that no batch is being handled: its
 * transaction has committed, or the consumer leaves cleanly.  A consumer
 * stopped anywhere between batches (a fast shutdown inside its lag
 * report, an immediate shutdown at its wait) then leaves nothing to
 * suspect; had the file kept the last committed batch, the next run took
 * its messages for suspects and said the consumer had stopped while
 * handling them (test 130_consume_kill.pl).
 */
void
evbus_attempt_marker_clear(void)
{
	MarkerFile	marker;
	size_t		len = offsetof(MarkerFile, ranges);

	if (marker_broken || marker_fd < 0)
		return;
	batch_in_hand = false;
	marker.magic = MARKER_MAGIC;
	marker.nranges = 0;
	if (pwrite(marker_fd, &marker, len, 0) != (ssize_t) len)
		ereport(LOG,
				(errcode_for_file_access(),
				 errmsg("evbus: could not clear the consumer's attempt marker: %m"),
				 errdetail("The next start handles the last batch's messages the careful way.")));
}

/*
 * evbus_attempt_marker_exit --- at the consumer's exit (also a FATAL): a
 * consumer that stops between batches, anywhere (a fast shutdown inside
 * its lag report, before its first batch), leaves nothing to suspect; one
 * that stops inside a batch (a FATAL in a handler) leaves the batch
 * (test 130_consume_kill.pl).
 */
void
evbus_attempt_marker_exit(void)
{
	if (!batch_in_hand)
		evbus_attempt_marker_clear();
}

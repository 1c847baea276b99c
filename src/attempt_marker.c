/*-------------------------------------------------------------------------
 *
 * attempt_marker.c
 *	  Remembering, outside the database, which messages the consumer is
 *	  handling, and which handler call is running, so that a handler that
 *	  crashes the server counts as an attempt of that message alone.
 *
 * The consumer handles a batch in one transaction: the inbox rows, the
 * handlers' effects and the stored offsets commit together.  If a handler
 * crashes its backend (a segfault in a C function, the OOM killer),
 * PostgreSQL restarts and that transaction is gone, including every trace
 * that the attempt happened; the same batch would arrive again and crash
 * again, forever.  So before it runs a batch the consumer notes the
 * batch's offset ranges in a small file in the data directory, and before
 * each call of a per-message handler the message and handler of that call
 * (cleared when the call returns).  The file is mapped into the
 * consumer's memory (MAP_SHARED), so a note is a store into the page
 * cache, no system call: what a process stored there survives that
 * process's crash; an operating-system crash is not something a handler
 * causes.
 *
 * Once the batch's transaction has committed the consumer empties the
 * file, so it names a batch only while its transaction is open.  When the
 * consumer starts it reads the file.  Messages within those ranges are
 * suspects: a batch containing one is handled the careful way (attempts
 * recorded and committed before any handler runs, see inbox.c).  The
 * crash is charged to the call that was running: that (message, handler)
 * alone counts one attempt more, so that a message that crashes the
 * server is dead-lettered after max_retries + 1 attempts like any other
 * failure, and the other messages of its batch are not (test
 * 138_consume_kill_neighbours.pl).  A crash outside a per-message call (a
 * batch handler's call of many messages) names no one: then every
 * message of the batch counts it, as every attempt recorded before the
 * crash does.
 *
 * The careful way counts attempts before it runs anything (inbox.c's
 * record step).  The inbox rows so counted are noted too; after a crash
 * in their call, the consumer's next start takes the counted attempt back
 * from each of them but the one that was running
 * (evbus_attempt_marker_uncharged).  The retries count their attempts in
 * the transaction that runs them (evbus_inbox_dispatch_due), which a
 * crash rolls back: then the next start counts the attempt of the row
 * whose call was running, if that row was not counted on disk
 * (evbus_attempt_marker_charged).
 *
 * A range names its (group, topic) by a hash, and the running call its
 * handler by a hash: a collision only makes an innocent batch take the
 * careful way, or an innocent row count one attempt more.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/hashfn.h"
#include "miscadmin.h"
#include "storage/fd.h"

#include "consumer.h"

#define MARKER_MAGIC	0x65766231	/* "evb1" */
#define MARKER_MAX		256		/* ranges per batch; more: all suspect */
#define MARKER_COUNTED	1024	/* counted rows; more: none taken back */

typedef struct MarkerRange
{
	uint32		stream;			/* hash of (group, topic) */
	int32		partition;
	int64		first;
	int64		last;
} MarkerRange;

/* The handler call running: valid is set last, cleared first. */
typedef struct MarkerCall
{
	int32		valid;
	uint32		stream;			/* hash of (group, topic) */
	int32		partition;
	uint32		handler;		/* hash of the handler's signature */
	int64		offset;
	int64		inbox_id;		/* its row (committed if counted) */
} MarkerCall;

/*
 * The file.  The fields after ranges came later: a file of the shorter
 * layout reads as one with no call running and no row counted.
 */
typedef struct MarkerFile
{
	uint32		magic;
	int32		nranges;		/* -1: every message is a suspect */
	MarkerRange ranges[MARKER_MAX];
	MarkerCall	running;
	int32		ncounted;		/* -1: more than MARKER_COUNTED */
	int64		counted[MARKER_COUNTED];
} MarkerFile;

static volatile MarkerFile *marker = NULL;	/* the file, mapped; NULL: none */
static MarkerFile previous;		/* what the previous run left */
static bool batch_in_hand = false;	/* the file names a batch being handled */

static uint32
stream_hash(const char *group, const char *topic)
{
	uint32		h = hash_bytes((const unsigned char *) group, strlen(group));

	return hash_combine(h, hash_bytes((const unsigned char *) topic, strlen(topic)));
}

static uint32
handler_hash(const char *signature)
{
	return hash_bytes((const unsigned char *) signature, strlen(signature));
}

/* Give up the file: every batch takes the careful way from now on. */
static void
marker_give_up(const char *what)
{
	ereport(WARNING,
			(errcode_for_file_access(),
			 errmsg("evbus: could not %s the consumer's attempt marker: %m", what),
			 errdetail("Every batch is handled the slower careful way.")));
}

/*
 * evbus_attempt_marker_open --- open this database's marker file, remember
 * what the previous run of the consumer was handling when it stopped, and
 * map the file.  Without a usable file every batch takes the careful way.
 */
void
evbus_attempt_marker_open(void)
{
	char		path[MAXPGPATH];
	ssize_t		got;
	int			fd;
	void	   *mapped;

	memset(&previous, 0, sizeof(previous));
	if (MakePGDirectory(EVBUS_STATE_DIR) < 0 && errno != EEXIST)
	{
		marker_give_up("create the directory of");
		return;
	}
	snprintf(path, sizeof(path), EVBUS_STATE_DIR "/consumer_%u", MyDatabaseId);
	fd = BasicOpenFile(path, O_RDWR | O_CREAT | PG_BINARY);
	if (fd < 0)
	{
		marker_give_up("open");
		return;
	}
	got = pread(fd, &previous, sizeof(previous), 0);
	if (got < (ssize_t) offsetof(MarkerFile, ranges) || previous.magic != MARKER_MAGIC ||
		previous.nranges > MARKER_MAX ||
		(previous.nranges > 0 &&
		 got < (ssize_t) (offsetof(MarkerFile, ranges) + previous.nranges * sizeof(MarkerRange))))
		memset(&previous, 0, sizeof(previous)); /* empty or foreign */
	if (got < (ssize_t) sizeof(previous) || previous.ncounted > MARKER_COUNTED)
	{
		/* the shorter layout, or torn: no call known, no row counted */
		memset(&previous.running, 0, sizeof(previous.running));
		previous.ncounted = 0;
	}
	if (previous.nranges != 0 || previous.ncounted != 0)
		ereport(LOG,
				(errmsg("evbus: the consumer stopped while handling a batch; the messages of that batch are handled carefully")));

	/*
	 * Written in full (what the previous run left stays until the first
	 * batch), so that its blocks exist: a store into a hole of a mapped file
	 * that finds the disk full would kill the process with SIGBUS.
	 */
	if (pwrite(fd, &previous, sizeof(previous), 0) != (ssize_t) sizeof(previous))
	{
		close(fd);
		marker_give_up("write");
		return;
	}
	mapped = mmap(NULL, sizeof(MarkerFile), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	close(fd);
	if (mapped == MAP_FAILED)
	{
		marker_give_up("map");
		return;
	}
	marker = (volatile MarkerFile *) mapped;
	marker->magic = MARKER_MAGIC;
}

/*
 * evbus_attempt_marker_suspect --- was m within a batch the previous run of
 * the consumer was handling when it stopped?  (Then it takes the careful
 * way.)
 */
bool
evbus_attempt_marker_suspect(const char *group, const ReceivedMessage *m)
{
	uint32		stream;
	int			r;

	if (previous.nranges < 0)
		return true;
	if (previous.nranges == 0)
		return false;
	stream = stream_hash(group, m->topic);
	for (r = 0; r < previous.nranges; r++)
	{
		MarkerRange *range = &previous.ranges[r];

		if (range->stream == stream && range->partition == m->partition &&
			m->offset >= range->first && m->offset <= range->last)
			return true;
	}
	return false;
}

/*
 * evbus_attempt_marker_crashed --- does the previous run's stop count as an
 * attempt of m for handler?  Yes if that handler's call of m was running;
 * if no per-message call was running, for every suspect.
 */
bool
evbus_attempt_marker_crashed(const char *group, const ReceivedMessage *m,
							 const char *handler)
{
	if (!previous.running.valid)
		return evbus_attempt_marker_suspect(group, m);
	return previous.running.stream == stream_hash(group, m->topic) &&
		previous.running.partition == m->partition &&
		previous.running.offset == m->offset &&
		previous.running.handler == handler_hash(handler);
}

/*
 * evbus_attempt_marker_uncharged --- the inbox rows whose attempt the
 * previous run counted before it stopped in the call of another row: their
 * counted attempt did not end in their own call, and is taken back
 * (evbus_inbox_take_back_attempts).  Returns how many, in *ids (palloc'd).
 */
int
evbus_attempt_marker_uncharged(int64 **ids)
{
	int			n = 0;
	int			i;

	*ids = NULL;
	if (!previous.running.valid || previous.running.inbox_id == 0 || previous.ncounted <= 0)
		return 0;
	*ids = palloc(sizeof(int64) * previous.ncounted);
	for (i = 0; i < previous.ncounted; i++)
		if (previous.counted[i] != previous.running.inbox_id)
			(*ids)[n++] = previous.counted[i];
	return n;
}

/*
 * evbus_attempt_marker_charged --- the inbox row whose call was running
 * when the previous run stopped, if its attempt was not counted on disk
 * before the call (the retries), else 0: its attempt is counted now
 * (evbus_inbox_charge_attempt).  A received batch's row, inserted in the
 * transaction that stopped, is not in the inbox, and its message is a
 * suspect instead (evbus_attempt_marker_crashed).  Returns it once: it is
 * forgotten here and in the file, so that a second stop before the next
 * batch does not count it twice.
 */
int64
evbus_attempt_marker_charged(void)
{
	int64		id = previous.running.inbox_id;
	int			i;

	if (!previous.running.valid || id == 0 || previous.ncounted < 0)
		return 0;
	for (i = 0; i < previous.ncounted; i++)
		if (previous.counted[i] == id)
			return 0;
	previous.running.inbox_id = 0;
	if (marker != NULL)
		marker->running.inbox_id = 0;
	return id;
}

/*
 * evbus_attempt_marker_retries --- note that a transaction of retries is
 * about to run: no received batch, no counted row; each call is noted as
 * it runs (evbus_attempt_marker_call), and stays noted if the consumer
 * stops in it, a FATAL included (evbus_attempt_marker_exit).  Returns
 * false without a file: then the caller counts the attempts before the
 * calls.
 */
bool
evbus_attempt_marker_retries(void)
{
	if (marker == NULL)
		return false;
	evbus_attempt_marker_clear();
	batch_in_hand = true;
	return true;
}

/*
 * evbus_attempt_marker_forget_counted --- the attempts of
 * evbus_attempt_marker_uncharged are taken back (committed): forget them,
 * here and in the file, so that they are not taken back twice.
 */
void
evbus_attempt_marker_forget_counted(void)
{
	previous.ncounted = 0;
	if (marker != NULL)
		marker->ncounted = 0;
}

/*
 * evbus_attempt_marker_write --- note that msgs are about to be handled in
 * one transaction.  Returns false if that is not safe: the note cannot be
 * written, or a message of the batch is a suspect (then the caller
 * takes the careful way).
 */
bool
evbus_attempt_marker_write(const char *group, ReceivedMessage *msgs, int n)
{
	int			nranges = 0;
	int			i;
	int			r;

	if (marker == NULL)
		return false;
	for (i = 0; i < n; i++)
		if (evbus_attempt_marker_suspect(group, &msgs[i]))
			return false;
	marker->running.valid = 0;
	marker->ncounted = 0;
	marker->nranges = 0;
	pg_compiler_barrier();
	for (i = 0; i < n; i++)
	{
		uint32		stream = stream_hash(group, msgs[i].topic);
		volatile MarkerRange *range;

		for (r = 0; r < nranges; r++)
			if (marker->ranges[r].stream == stream &&
				marker->ranges[r].partition == msgs[i].partition)
				break;
		if (r == MARKER_MAX)
		{
			nranges = -1;
			break;
		}
		range = &marker->ranges[r];
		if (r == nranges)
		{
			range->stream = stream;
			range->partition = msgs[i].partition;
			range->first = msgs[i].offset;
			range->last = msgs[i].offset;
			nranges++;
		}
		range->first = Min(range->first, msgs[i].offset);
		range->last = Max(range->last, msgs[i].offset);
	}
	pg_compiler_barrier();
	marker->nranges = nranges;
	batch_in_hand = true;
	return true;
}

/*
 * evbus_attempt_marker_counted --- note the inbox rows whose attempts the
 * careful way has just counted and committed, before their handlers run.
 */
void
evbus_attempt_marker_counted(const int64 *ids, int n)
{
	int			i;

	if (marker == NULL)
		return;
	marker->ncounted = 0;
	pg_compiler_barrier();
	if (n > MARKER_COUNTED)
		n = -1;
	for (i = 0; i < n; i++)
		marker->counted[i] = ids[i];
	pg_compiler_barrier();
	marker->ncounted = n;
	batch_in_hand = true;
}

/*
 * evbus_attempt_marker_call --- note the call about to run: handler for the
 * message at (topic, partition, offset) of group, inbox row inbox_id.
 * evbus_attempt_marker_call_done when it returns, or before a call of
 * several messages (a batch handler's), which names none of them.
 */
void
evbus_attempt_marker_call(const char *group, const char *topic, int32 partition,
						  int64 offset, const char *handler, int64 inbox_id)
{
	if (marker == NULL)
		return;
	marker->running.valid = 0;
	pg_compiler_barrier();
	marker->running.stream = stream_hash(group, topic);
	marker->running.partition = partition;
	marker->running.offset = offset;
	marker->running.handler = handler_hash(handler);
	marker->running.inbox_id = inbox_id;
	pg_compiler_barrier();
	marker->running.valid = 1;
	pg_compiler_barrier();
}

void
evbus_attempt_marker_call_done(void)
{
	if (marker == NULL)
		return;
	pg_compiler_barrier();
	marker->running.valid = 0;
	pg_compiler_barrier();
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
	if (marker == NULL)
		return;
	batch_in_hand = false;
	marker->running.valid = 0;
	marker->ncounted = 0;
	marker->nranges = 0;
	pg_compiler_barrier();
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

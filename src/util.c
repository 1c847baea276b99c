/*-------------------------------------------------------------------------
 *
 * util.c
 *	  Small helpers: message ids, name and writability checks, the
 *	  extension's schema and owner.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/namespace.h"
#include "catalog/pg_database.h"
#include "catalog/pg_extension.h"
#include "commands/extension.h"
#include "mb/pg_wchar.h"
#include "port/pg_bswap.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/fmgroids.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "utils/varlena.h"
#include "access/genam.h"
#include "access/table.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "storage/sinval.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"

#include "evbus.h"

/*
 * Random bytes for message ids, drawn from pg_strong_random a pool at a
 * time: one call per message id (OpenSSL's RAND_bytes, with its getpid()
 * system call to detect a fork) was 7 % of the CPU of a loop of
 * evbus.publish, most of what publish costs beyond a plain INSERT
 * (bench/staging_cost.sh).  The bytes are as unpredictable as before: a
 * message id must not be guessable, or whoever may write to a topic could
 * send a message under the id of a coming event, which the receiving
 * inbox would then take for a duplicate.  The pool belongs to the process
 * that filled it (a forked child refills its own).
 */
#define RANDOM_POOL_SIZE 4000

static uint8 random_pool[RANDOM_POOL_SIZE];
static int	random_pool_used = RANDOM_POOL_SIZE;
static int	random_pool_pid = 0;

static void
random_bytes(uint8 *buf, int len)
{
	Assert(len <= RANDOM_POOL_SIZE);
	if (random_pool_pid != MyProcPid || random_pool_used + len > RANDOM_POOL_SIZE)
	{
		if (!pg_strong_random(random_pool, RANDOM_POOL_SIZE))
			ereport(ERROR,
					(errcode(ERRCODE_INTERNAL_ERROR),
					 errmsg("could not generate random values")));
		random_pool_used = 0;
		random_pool_pid = MyProcPid;
	}
	memcpy(buf, random_pool + random_pool_used, len);
	/* what was handed out does not stay behind in memory */
	memset(random_pool + random_pool_used, 0, len);
	random_pool_used += len;
}

/*
 * evbus_new_message_id --- a fresh UUID version 7.
 *
 * 48 bits of Unix milliseconds then random bits: unique like any random
 * UUID, and ordered by time, which keeps indexes on message ids compact.
 */
void
evbus_new_message_id(pg_uuid_t *uuid)
{
	TimestampTz now = GetCurrentTimestamp();
	uint64		unix_ms;

	unix_ms = (uint64) (now / 1000) +
		(uint64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY * 1000;

	random_bytes(&uuid->data[6], UUID_LEN - 6);

	uuid->data[0] = (unix_ms >> 40) & 0xff;
	uuid->data[1] = (unix_ms >> 32) & 0xff;
	uuid->data[2] = (unix_ms >> 24) & 0xff;
	uuid->data[3] = (unix_ms >> 16) & 0xff;
	uuid->data[4] = (unix_ms >> 8) & 0xff;
	uuid->data[5] = unix_ms & 0xff;
	uuid->data[6] = (uuid->data[6] & 0x0f) | 0x70;	/* version 7 */
	uuid->data[8] = (uuid->data[8] & 0x3f) | 0x80;	/* RFC 4122 variant */
}

/* The canonical text form of a UUID, palloc'd. */
char *
evbus_uuid_to_cstring(const pg_uuid_t *uuid)
{
	return DatumGetCString(DirectFunctionCall1(uuid_out,
											   UUIDPGetDatum((pg_uuid_t *) uuid)));
}

/*
 * evbus_clip --- s as an error message quotes it: whole up to max bytes,
 * else as many of its first max bytes as end on a character boundary,
 * and "...".  A message then never repeats an argument of any length,
 * nor ends in half a character (test misuse.sql).
 */
const char *
evbus_clip(const char *s, int max)
{
	int			len = strlen(s);

	if (len <= max)
		return s;
	return psprintf("%.*s...", pg_mbcliplen(s, len, max), s);
}

/*
 * evbus_name_chars_valid --- does name hold only what Kafka allows in a
 * topic or group name: ASCII letters, digits, '.', '_' and '-'?
 */
bool
evbus_name_chars_valid(const char *name)
{
	const char *p;

	for (p = name; *p; p++)
	{
		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
			  (*p >= '0' && *p <= '9') || *p == '.' || *p == '_' || *p == '-'))
			return false;
	}
	return true;
}

/*
 * evbus_check_event_name --- refuse an event name that cannot be a topic.
 *
 * Integration event names become Kafka topic names (with
 * evbus.topic_prefix): ASCII letters, digits, '.', '_' and '-', at most
 * 249 bytes with the prefix, and neither "." nor "..".  Domain event names
 * follow the same rule, so one vocabulary serves both.
 */
void
evbus_check_event_name(const char *name, const char *what)
{
	size_t		len = strlen(name);

	if (len == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_NAME),
				 errmsg("%s name must not be empty", what)));
	if (len + strlen(evbus_topic_prefix) > EVBUS_MAX_TOPIC_LEN)
		ereport(ERROR,
				(errcode(ERRCODE_NAME_TOO_LONG),
				 errmsg("%s name \"%s\" is too long", what, evbus_clip(name, 40)),
				 errdetail("With evbus.topic_prefix, a Kafka topic name may be at most %d bytes.",
						   EVBUS_MAX_TOPIC_LEN)));
	if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_NAME),
				 errmsg("\"%s\" is not a valid %s name", name, what)));
	if (!evbus_name_chars_valid(name))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_NAME),
				 errmsg("\"%s\" is not a valid %s name", name, what),
				 errdetail("Names become Kafka topic and group names, which may contain only ASCII letters, digits, \".\", \"_\" and \"-\".")));
}

/*
 * evbus_group_allowed --- may this database's subscriptions use consumer
 * group group?  Yes for every group when evbus.consumer_groups is empty,
 * else for those it lists.  A superuser sets it per database (ALTER
 * DATABASE ... SET), so that a role that may subscribe cannot join the
 * group of another database and take a share of its partitions (test
 * 251_consumer_groups.pl).
 */
bool
evbus_group_allowed(const char *group)
{
	char	   *copy;
	List	   *groups = NIL;
	ListCell   *lc;
	bool		allowed;

	if (evbus_consumer_groups == NULL)
		return true;
	/* the value passed check_consumer_groups: it splits */
	copy = pstrdup(evbus_consumer_groups);
	allowed = SplitGUCList(copy, ',', &groups) && groups == NIL;
	foreach(lc, groups)
		allowed |= strcmp(lfirst(lc), group) == 0;
	list_free(groups);
	pfree(copy);
	return allowed;
}

/*
 * The value of setting $2 set for database $1 (setrole 0), NULL when none
 * is; and where this session's value came from, and what it is.
 */
#define DATABASE_SETTING_SQL \
	"SELECT (SELECT pg_catalog.substr(c, pg_catalog.length($2) OPERATOR(pg_catalog.+) 2)" \
	" FROM pg_catalog.pg_db_role_setting, pg_catalog.unnest(setconfig) c" \
	" WHERE setdatabase OPERATOR(pg_catalog.=) $1 AND setrole OPERATOR(pg_catalog.=) 0" \
	" AND pg_catalog.starts_with(c, $2 OPERATOR(pg_catalog.||) '='))," \
	" source, setting FROM pg_catalog.pg_settings WHERE name OPERATOR(pg_catalog.=) $2"

/*
 * evbus_database_setting_changed --- has a superuser set, changed or reset
 * this database's value of setting name (ALTER DATABASE ... SET) since
 * this session started?  Database settings are applied only when a session
 * starts, so the workers ask every few seconds about those they hold to
 * (evbus.consumer_groups, evbus.publish_events, evbus.subscribe_events)
 * and start again when one changed (tests 251_consumer_groups.pl,
 * 253_event_lists.pl).  A value this session took from elsewhere than the
 * database or postgresql.conf (a role's setting) is left as it is.  Inside
 * a transaction, SPI connected.
 */
bool
evbus_database_setting_changed(const char *name)
{
	Oid			types[2] = {OIDOID, TEXTOID};
	Datum		values[2] = {ObjectIdGetDatum(MyDatabaseId), CStringGetTextDatum(name)};
	char	   *wanted;
	char	   *source;
	char	   *setting;

	if (SPI_execute_with_args(DATABASE_SETTING_SQL, 2, types, values, NULL, true, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		return false;
	wanted = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	source = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
	setting = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3);
	if (strcmp(source, "database") == 0)
		return wanted == NULL || strcmp(wanted, setting ? setting : "") != 0;
	if (strcmp(source, "default") == 0 || strcmp(source, "configuration file") == 0)
		return wanted != NULL;
	return false;
}

/*
 * evbus_check_writable --- refuse to stage where nothing can be written.
 */
void
evbus_check_writable(const char *what)
{
	if (RecoveryInProgress())
		ereport(ERROR,
				(errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
				 errmsg("cannot %s during recovery", what),
				 errhint("Stage events on the primary server.")));
	if (XactReadOnly)
		ereport(ERROR,
				(errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
				 errmsg("cannot %s in a read-only transaction", what),
				 errhint("Events are staged in the outbox with the transaction's writes; use a read-write transaction.")));
}

/* OID of schema evbus (errors if the extension is not installed). */
Oid
evbus_schema_oid(void)
{
	return get_namespace_oid(EVBUS_SCHEMA, false);
}

/*
 * evbus_database_is_template --- is dboid a template database
 * (datistemplate)?  *exists says whether there is such a database at all.
 * The launcher starts no worker in a template.
 */
bool
evbus_database_is_template(Oid dboid, bool *exists)
{
	HeapTuple	tup = SearchSysCache1(DATABASEOID, ObjectIdGetDatum(dboid));
	bool		result;

	*exists = HeapTupleIsValid(tup);
	if (!*exists)
		return false;
	result = ((Form_pg_database) GETSTRUCT(tup))->datistemplate;
	ReleaseSysCache(tup);
	return result;
}

/*
 * evbus_pauses_present --- has this database's evbus the tables of pausing
 * (SQL version 0.2)?  The workers also run at 0.1, whose tables have no
 * pause: there nothing is ever paused.  Inside a transaction.
 */
bool
evbus_pauses_present(void)
{
	return OidIsValid(get_relname_relid("publishing_pauses", evbus_schema_oid()));
}

/*
 * A table of schema evbus whose changes a worker must notice: its relcache
 * entry is invalidated at the commit of every change (evbus._config_changed).
 */
static void
table_watch_invalidated(Datum arg, Oid relid)
{
	EvbusTableWatch *w = (EvbusTableWatch *) DatumGetPointer(arg);

	if (relid == InvalidOid || relid == w->relid)
		w->stale = true;
}

/* evbus_table_watch --- watch w->relname (w lives for the process). */
void
evbus_table_watch(EvbusTableWatch *w)
{
	w->relid = InvalidOid;
	w->stale = true;
	CacheRegisterRelcacheCallback(table_watch_invalidated, PointerGetDatum(w));
}

/*
 * evbus_table_watch_read --- the table is about to be read, inside a
 * transaction: changes from now on make it stale again.  The read must
 * take a snapshot after this (SPI, not read-only), or a change committed
 * in between is missed.  False when the table does not exist (SQL version
 * 0.1).
 */
bool
evbus_table_watch_read(EvbusTableWatch *w)
{
	w->stale = false;
	w->relid = get_relname_relid(w->relname, evbus_schema_oid());
	return OidIsValid(w->relid);
}

/*
 * The owner is looked up on every staged event: cache it for the backend,
 * and forget it when evbus.outbox_0 is invalidated (which DROP EXTENSION
 * does) or on a full relcache reset.
 */
static Oid	owner_cache = InvalidOid;
static Oid	owner_cache_relid = InvalidOid;
static bool owner_callback_registered = false;

static void
owner_cache_invalidate(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == owner_cache_relid)
		owner_cache = InvalidOid;
}

static Oid	extension_owner_lookup(void);

/*
 * evbus_extension_owner --- the role that owns the evbus extension.
 *
 * evbus's tables belong to it; functions that write them switch to it for
 * the write only.
 */
Oid
evbus_extension_owner(void)
{
	uint64		inval_count;
	Oid			owner;
	Oid			relid;

	if (OidIsValid(owner_cache))
		return owner_cache;
	if (!owner_callback_registered)
	{
		CacheRegisterRelcacheCallback(owner_cache_invalidate, (Datum) 0);
		owner_callback_registered = true;
	}

	/*
	 * The lookups can process invalidations (owner_cache_invalidate): the
	 * answer comes from locals, and is cached only if none arrived.
	 */
	inval_count = SharedInvalidMessageCounter;
	owner = extension_owner_lookup();
	relid = get_relname_relid("outbox_0", evbus_schema_oid());
	if (inval_count == SharedInvalidMessageCounter)
	{
		owner_cache = owner;
		owner_cache_relid = relid;
	}
	return owner;
}

/*
 * evbus_extension_present --- is the evbus extension installed in this
 * database?  Answered from the owner cache while it is valid, so that the
 * workers can ask at the start of each of their transactions for free.
 */
bool
evbus_extension_present(void)
{
	if (OidIsValid(owner_cache))
		return true;
	if (!OidIsValid(get_extension_oid("evbus", true)))
		return false;
	(void) evbus_extension_owner();
	return true;
}

/*
 * evbus_extension_attribute --- attribute attnum of extension extname's
 * pg_extension row (evbus's, or another one evbus looks at), copied into
 * the current memory context; false when that extension is not installed
 * in this database.  Inside a transaction.
 */
bool
evbus_extension_attribute(const char *extname, AttrNumber attnum, Datum *value,
						  bool *isnull)
{
	Relation	rel;
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tup;
	bool		found;

	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_extension_extname, BTEqualStrategyNumber,
				F_NAMEEQ, CStringGetDatum(extname));
	scan = systable_beginscan(rel, ExtensionNameIndexId, true, NULL, 1, &key);
	tup = systable_getnext(scan);
	found = HeapTupleIsValid(tup);
	if (found)
	{
		Form_pg_attribute att = TupleDescAttr(RelationGetDescr(rel), attnum - 1);

		*value = heap_getattr(tup, attnum, RelationGetDescr(rel), isnull);
		if (!*isnull)
			*value = datumCopy(*value, att->attbyval, att->attlen);
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return found;
}

static Oid
extension_owner_lookup(void)
{
	Datum		owner;
	bool		isnull;

	if (!evbus_extension_attribute("evbus", Anum_pg_extension_extowner, &owner, &isnull) || isnull)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("extension \"evbus\" is not installed in this database"),
				 errhint("Run CREATE EXTENSION evbus.")));
	return DatumGetObjectId(owner);
}

/* qsort comparator of int64 values (outbox ids). */
int
evbus_int64_cmp(const void *a, const void *b)
{
	int64		x = *(const int64 *) a;
	int64		y = *(const int64 *) b;

	return x < y ? -1 : x > y ? 1 : 0;
}

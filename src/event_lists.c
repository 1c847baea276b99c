/*-------------------------------------------------------------------------
 *
 * event_lists.c
 *	  Which integration events a database may publish and subscribe to:
 *	  evbus.publish_events and evbus.subscribe_events, set per database by
 *	  a superuser (ALTER DATABASE ... SET).
 *
 * evbus speaks to Kafka as one client for the whole server, so Kafka's
 * ACLs cannot tell its databases apart: without these lists a role that
 * may stage events in one database can publish any integration event,
 * forging the events another database's services publish and others
 * consume, and a role that may subscribe can read any topic, another
 * database's included.  Each list holds event names and prefixes (a name
 * ending in "*": "billing.*"), comma-separated; empty allows every event.
 *
 * Staging an event the list does not allow is refused (42501); so is
 * subscribing to one.  The workers hold to the list their session started
 * with and start again within seconds when a superuser changes it, since
 * a session takes its database's settings only as it starts: the
 * publisher dead-letters an event staged before (or by a session that
 * started before) as Kafka would one its ACLs refuse, and the consumer
 * reads no topic of an event it may not subscribe to, its subscription's
 * rows waiting as a paused one's do (test 253_event_lists.pl).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "nodes/pg_list.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/varlena.h"

#include "evbus.h"

/* A list setting split into its items, kept while the setting holds. */
typedef struct SplitList
{
	char	   *raw;			/* the setting it was split from */
	List	   *items;			/* of char *, in TopMemoryContext */
} SplitList;

/*
 * evbus_name_list_valid --- is value a comma-separated list of names with
 * the characters of Kafka's topic names, each at most a topic name long,
 * with prefixes (a name ending in "*"; "*" alone allows every name)?
 * The check of evbus.consumer_groups (no prefixes) and of both lists here.
 */
bool
evbus_name_list_valid(const char *value, bool prefixes)
{
	char	   *copy = pstrdup(value);
	List	   *items = NIL;
	ListCell   *lc;
	bool		ok = SplitGUCList(copy, ',', &items);

	foreach(lc, items)
	{
		char	   *item = lfirst(lc);
		size_t		len = strlen(item);

		if (prefixes && len > 0 && item[len - 1] == '*')
			item[--len] = '\0';
		ok &= len <= EVBUS_MAX_TOPIC_LEN && evbus_name_chars_valid(item);
	}
	list_free(items);
	pfree(copy);
	return ok;
}

/* evbus_check_event_list --- the check hook of both settings. */
bool
evbus_check_event_list(char **newval, void **extra, GucSource source)
{
	if (evbus_name_list_valid(*newval, true))
		return true;
	GUC_check_errdetail("Integration event names (ASCII letters, digits, \".\", \"_\" and \"-\"), each possibly ending in \"*\" for a prefix, separated by commas.");
	return false;
}

/*
 * split --- list's items, split again only when the setting changed: the
 * publisher asks for every event it produces.
 */
static List *
split(SplitList *cache, const char *list)
{
	MemoryContext old;
	char	   *copy;

	if (cache->raw != NULL && strcmp(cache->raw, list) == 0)
		return cache->items;
	if (cache->raw != NULL)
	{
		list_free(cache->items);
		pfree(cache->raw);
	}
	old = MemoryContextSwitchTo(TopMemoryContext);
	cache->raw = pstrdup(list);
	copy = pstrdup(list);
	cache->items = NIL;
	/* the value passed evbus_check_event_list: it splits */
	(void) SplitGUCList(copy, ',', &cache->items);
	MemoryContextSwitchTo(old);
	return cache->items;
}

/*
 * listed --- does list (a value of one of the settings) allow event?  An
 * empty list allows every event; an item ending in "*" every event that
 * starts with the rest of it.
 */
static bool
listed(SplitList *cache, const char *list, const char *event)
{
	List	   *items;
	ListCell   *lc;

	if (list == NULL || list[0] == '\0')
		return true;
	items = split(cache, list);
	if (items == NIL)
		return true;
	foreach(lc, items)
	{
		const char *item = lfirst(lc);
		size_t		len = strlen(item);

		if (len > 0 && item[len - 1] == '*' ? strncmp(item, event, len - 1) == 0 :
			strcmp(item, event) == 0)
			return true;
	}
	return false;
}

/* evbus_may_publish --- may this database stage integration event event? */
bool
evbus_may_publish(const char *event)
{
	static SplitList cache;

	return listed(&cache, evbus_publish_events, event);
}

/* evbus_may_subscribe --- may this database subscribe to event? */
bool
evbus_may_subscribe(const char *event)
{
	static SplitList cache;

	return listed(&cache, evbus_subscribe_events, event);
}

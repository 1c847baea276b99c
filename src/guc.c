/*-------------------------------------------------------------------------
 *
 * guc.c
 *	  The evbus.* settings (README "Configuration").
 *
 * Where a setting reaches the network (brokers, Kafka properties file,
 * topic prefix) it is PGC_SIGHUP: only postgresql.conf or ALTER SYSTEM can
 * set it, never a session, so no user can point evbus at a broker of their
 * own.  Tunables also reload on SIGHUP; none needs a restart.  Secrets are
 * never a setting: TLS and SASL properties live in evbus.kafka_config_file.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>

#include "utils/guc.h"
#include "utils/varlena.h"

#include "evbus.h"

char	   *evbus_brokers = NULL;
char	   *evbus_kafka_config_file = NULL;
char	   *evbus_topic_prefix = NULL;
char	   *evbus_group_name = NULL;
char	   *evbus_consumer_groups = NULL;
char	   *evbus_publish_events = NULL;
char	   *evbus_subscribe_events = NULL;
int			evbus_max_retries = 10;
int			evbus_retry_interval_ms = 1000;
int			evbus_retry_max_interval_ms = 300000;
int			evbus_handler_timeout_ms = 60000;
int			evbus_copy_check_interval_ms = 60000;
int			evbus_max_message_bytes = 1000000;
int			evbus_batch_size = 10000;
int			evbus_batch_max_bytes = 64 * 1024 * 1024;
int			evbus_poll_interval_ms = 1000;
int			evbus_idle_timeout_s = 60;
int			evbus_publish_linger_ms = 1;
int			evbus_publish_linger_busy_ms = 0;
int			evbus_outbox_rotation_s = 60;
int			evbus_dead_letter_retention_s = 15 * 24 * 3600;
int			evbus_inbox_retention_s = 7 * 24 * 3600;
char	   *evbus_traceparent = NULL;

/* A topic prefix must keep topic names legal: [A-Za-z0-9._-], bounded. */
static bool
check_topic_prefix(char **newval, void **extra, GucSource source)
{
	if (strlen(*newval) > EVBUS_MAX_TOPIC_LEN / 2)
	{
		GUC_check_errdetail("The prefix may be at most %d bytes long.",
							EVBUS_MAX_TOPIC_LEN / 2);
		return false;
	}
	if (!evbus_name_chars_valid(*newval))
	{
		GUC_check_errdetail("Kafka topic names may contain only ASCII letters, digits, \".\", \"_\" and \"-\".");
		return false;
	}
	return true;
}

/*
 * The consumer groups a database may use: group names (the characters of
 * Kafka's names, each at most a topic name long) separated by commas.
 */
static bool
check_consumer_groups(char **newval, void **extra, GucSource source)
{
	if (evbus_name_list_valid(*newval, false))
		return true;
	GUC_check_errdetail("Consumer group names may contain only ASCII letters, digits, \".\", \"_\" and \"-\", separated by commas.");
	return false;
}

/* A traceparent is W3C trace context: printable ASCII, bounded. */
static bool
check_traceparent(char **newval, void **extra, GucSource source)
{
	const char *p;

	if (strlen(*newval) > 512)
	{
		GUC_check_errdetail("A traceparent may be at most 512 bytes long.");
		return false;
	}
	for (p = *newval; *p; p++)
	{
		if (*p < 0x20 || *p > 0x7e)
		{
			GUC_check_errdetail("A traceparent may contain only printable ASCII characters.");
			return false;
		}
	}
	return true;
}

/* Where Kafka is and what evbus calls things there. */
static void
define_kafka_gucs(void)
{
	DefineCustomStringVariable("evbus.brokers",
							   "Kafka bootstrap servers the worker publishes to and consumes from.",
							   "A comma-separated host:port list, 'embedded' for the in-process test broker, or empty to keep every event in the outbox.",
							   &evbus_brokers,
							   "",
							   PGC_SIGHUP, 0,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("evbus.kafka_config_file",
							   "librdkafka properties file (TLS, SASL and tuning) read by the worker.",
							   "One key=value per line. Secrets belong here, never in a setting.",
							   &evbus_kafka_config_file,
							   "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("evbus.topic_prefix",
							   "Prefix prepended to integration event names to form Kafka topic names.",
							   NULL,
							   &evbus_topic_prefix,
							   "",
							   PGC_SIGHUP, 0,
							   check_topic_prefix, NULL, NULL);

	DefineCustomStringVariable("evbus.group_name",
							   "Default consumer group of subscriptions; empty means the database name.",
							   NULL,
							   &evbus_group_name,
							   "",
							   PGC_SIGHUP, 0,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("evbus.consumer_groups",
							   "Consumer groups the subscriptions of a database may use; empty means any.",
							   "A comma-separated list, set per database by a superuser (ALTER DATABASE ... SET): "
							   "evbus.subscribe refuses other groups, and the consumer joins none of them.",
							   &evbus_consumer_groups,
							   "",
							   PGC_SUSET, GUC_LIST_INPUT,
							   check_consumer_groups, NULL, NULL);

	DefineCustomStringVariable("evbus.publish_events",
							   "Integration events a database may publish; empty means any.",
							   "Names, and prefixes ending in \"*\", comma-separated, set per database by a superuser "
							   "(ALTER DATABASE ... SET): staging another event is refused, and the publisher dead-letters one staged before.",
							   &evbus_publish_events,
							   "",
							   PGC_SUSET, GUC_LIST_INPUT,
							   evbus_check_event_list, NULL, NULL);

	DefineCustomStringVariable("evbus.subscribe_events",
							   "Integration events a database may subscribe to; empty means any.",
							   "Names, and prefixes ending in \"*\", comma-separated, set per database by a superuser "
							   "(ALTER DATABASE ... SET): evbus.subscribe refuses another event, and the consumer reads no topic of one subscribed before.",
							   &evbus_subscribe_events,
							   "",
							   PGC_SUSET, GUC_LIST_INPUT,
							   evbus_check_event_list, NULL, NULL);

	DefineCustomStringVariable("evbus.wait_for_standbys",
							   "Standbys (application names) that must have flushed a transaction's WAL before evbus tells Kafka about it.",
							   "A comma-separated list; events are produced and offsets committed to Kafka only once every named standby has flushed the WAL behind them, so that a failover leaves no phantom event. Empty: do not wait.",
							   &evbus_wait_for_standbys,
							   "",
							   PGC_SIGHUP, GUC_LIST_INPUT,
							   evbus_check_wait_for_standbys, NULL, NULL);
}

/* The consuming side: retries and the handlers. */
static void
define_consume_gucs(void)
{
	DefineCustomIntVariable("evbus.max_retries",
							"Default number of retries of a failing handler before its event is dead-lettered.",
							NULL,
							&evbus_max_retries,
							10, 0, 1000,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("evbus.retry_interval",
							"First delay before a failed handler is retried; doubles per attempt, with jitter.",
							NULL,
							&evbus_retry_interval_ms,
							1000, 1, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("evbus.retry_max_interval",
							"Longest delay between two attempts of a failed handler.",
							NULL,
							&evbus_retry_max_interval_ms,
							300000, 1, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("evbus.handler_timeout",
							"Longest a handler may run before it is cancelled and counted as failed.",
							"A handler still running at twice this (it caught the cancel) ends the consumer process.",
							&evbus_handler_timeout_ms,
							60000, 1, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("evbus.copy_check_interval",
							"How often each consumer looks among the members of its consumer groups for a copy of its database on another server; 0 never.",
							"A copy found there gives a WARNING on both servers.",
							&evbus_copy_check_interval_ms,
							60000, 0, 24 * 3600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);
}

/* The publishing side: sizes, batches and pacing. */
static void
define_publish_gucs(void)
{
	DefineCustomIntVariable("evbus.max_message_bytes",
							"Largest integration event, in bytes: payload as compact JSON, key, and header names and values; larger ones are refused when staged.",
							"Keep it at or below the broker's message.max.bytes.",
							&evbus_max_message_bytes,
							1000000, 1024, 100000000,
							PGC_SIGHUP, GUC_UNIT_BYTE,
							NULL, NULL, NULL);

	DefineCustomIntVariable("evbus.batch_size",
							"Most events the worker reads from the outbox in one pass.",
							NULL,
							&evbus_batch_size,
							10000, 1, 1000000,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("evbus.batch_max_bytes",
							"Most payload bytes the worker reads from the outbox in one pass (at least one event).",
							"The worker holds at most twice this much in flight to Kafka.",
							&evbus_batch_max_bytes,
							64 * 1024 * 1024, 64 * 1024, INT_MAX / 2,
							PGC_SIGHUP, GUC_UNIT_BYTE,
							NULL, NULL, NULL);

	DefineCustomIntVariable("evbus.poll_interval",
							"How often the worker looks for work when nothing woke it (a backstop: commits wake it at once).",
							NULL,
							&evbus_poll_interval_ms,
							1000, 10, 3600000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("evbus.publish_linger",
							"After a commit wakes it, how long the worker lets more commits gather before it claims them again.",
							"Like librdkafka's linger.ms: at most one claim per this interval while events trickle in, so each step carries the commits of that interval; while claims carry 20 events or more per millisecond of it (staging of 20,000 events/s or more) it doubles, up to 40 ms; 0 claims at every wake-up.",
							&evbus_publish_linger_ms,
							1, 0, 1000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("evbus.publish_linger_busy",
							"Deprecated, has no effect: the publisher lingers longer only while its own claims carry many events.",
							"Still accepted so that existing configuration files load; the publisher logs a WARNING when it is set.",
							&evbus_publish_linger_busy_ms,
							0, 0, 1000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("evbus.outbox_rotation",
							"How long staging writes to one outbox table before switching to the other, which is then truncated once empty.",
							NULL,
							&evbus_outbox_rotation_s,
							60, 1, 86400,
							PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("evbus.idle_timeout",
							"How long a database's worker has nothing to do before it exits until there is work; 0 keeps it always.",
							"An idle database holds no evbus process; a commit, a due event or retry, or new messages in its topics start its worker again.  While another database's worker waits for a background worker slot, one second is enough.",
							&evbus_idle_timeout_s,
							60, 0, 86400,
							PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);
}

/* How long done and dead events are kept; the trace context. */
static void
define_retention_gucs(void)
{
	DefineCustomIntVariable("evbus.dead_letter_retention",
							"How long dead letters are kept before the worker deletes them.",
							"The inbox row of a dead message goes with its dead letter; the dead letter of a parked key stays until it is retried or discarded.",
							&evbus_dead_letter_retention_s,
							15 * 24 * 3600, 0, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("evbus.inbox_retention",
							"How long handled messages stay in the inbox; redeliveries within it are de-duplicated.",
							NULL,
							&evbus_inbox_retention_s,
							7 * 24 * 3600, 0, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomStringVariable("evbus.traceparent",
							   "W3C traceparent sent as a header with the events this session stages.",
							   NULL,
							   &evbus_traceparent,
							   "",
							   PGC_USERSET, 0,
							   check_traceparent, NULL, NULL);

}

/*
 * evbus_define_gucs --- define every evbus.* setting and reserve the prefix.
 *
 * Called from _PG_init in every process that loads the library.
 */
void
evbus_define_gucs(void)
{
	define_kafka_gucs();
	define_consume_gucs();
	define_publish_gucs();
	define_retention_gucs();
	MarkGUCPrefixReserved("evbus");
}

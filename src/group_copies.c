/*-------------------------------------------------------------------------
 *
 * group_copies.c
 *	  Copies of this database on another server, found among the members
 *	  of its consumer groups.
 *
 * A backup restored on another server (a test environment made from
 * production's backup or dump, a second cluster started from a
 * pg_basebackup) holds the same database, and evbus in it speaks to the
 * same Kafka as the original if its brokers setting came along: its
 * consumer joins the original's groups and takes some of their
 * partitions, whose messages are then handled there and never in the
 * original, with nothing in the original's log.  The copy cannot tell
 * that it is one (copy_guard.c finds copies on the same server only), but
 * the group can show it: every consumer names its database and its
 * server in its client id,
 *
 *		evbus-<database OID>-consumer-<database id>-<server instance>
 *
 * where the database id is the UUID in evbus.database_identity, without
 * its dashes, which every copy carries (a physical backup, a dump,
 * pg_upgrade; evbus.adopt_copy() and a database made from a template draw
 * a new one, copy_guard.c), and the server instance is drawn at random
 * when the postmaster loads evbus (it survives a crash restart, not a
 * restart).  Under evbus 0.1's schema, which has no database id, the
 * system identifier and the OID stand for it, "<system identifier>.<OID>",
 * and a copy restored from a dump is not found.  Every
 * evbus.copy_check_interval (the first time after FIRST_CHECK_MAX_MS at
 * most) the consumer of each group describes its group, and a member with
 * this database id but another client id is a copy.  A member of this
 * server's previous run (an
 * immediate shutdown leaves it in the group until its session times out)
 * looks the same: so a member counts only when a later description, at
 * least the group's session timeout and CONFIRM_MARGIN_MS after the
 * first, shows it still there.  Then a WARNING, on both sides, names the
 * other member's host, repeated every WARN_INTERVAL_MS while it stays
 * (each counted in evbus_consume_copy_warnings_total), and a LOG line when
 * it has left (test 332_copy_elsewhere.pl).
 *
 * The description is librdkafka's rd_kafka_list_groups, through a client
 * made for it and destroyed after it: on the consumer's own connections
 * each request waits behind a fetch (up to fetch.wait.max.ms, twice), a
 * second's stall of the consumer at each description; a client of its own
 * answers in milliseconds and holds no connection between descriptions.
 * It waits DESCRIBE_WAIT_MS at most, outside any transaction, and after a
 * description that did not come the next waits twice as long to be tried,
 * up to 10 minutes, so that a broker that is down costs the consumer
 * little.  Not the asynchronous admin call
 * (rd_kafka_DescribeConsumerGroups): in librdkafka 2.0.2, Debian 12's, and
 * in the releases after it until its issues 3663 and 4605 were fixed, it
 * aborts the process when its request cannot be sent to the group's
 * coordinator (a broker restarting, or the embedded broker, which does
 * not describe groups: test 070_embedded.pl aborted so), and the abort of
 * a worker restarts every database of the server.  With the embedded
 * broker nothing is described: it lives in this server's memory, where no
 * copy can reach it.
 *
 * A client.id set in evbus.kafka_config_file replaces this one: copies
 * are then not found.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xlog.h"
#include "common/pg_prng.h"
#include "miscadmin.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "consumer.h"
#include "kafka.h"

#define FIRST_CHECK_MAX_MS 10000
#define MAX_INTERVAL_MS (10 * 60 * 1000)
#define DESCRIBE_WAIT_MS 2000
#define CONFIRM_MARGIN_MS 5000
#define WARN_INTERVAL_MS (10 * 60 * 1000)

/* This server's instance, drawn by the postmaster (evbus_group_copies_init). */
static uint32 server_instance = 0;

/* A member of the group that names this database and another instance. */
typedef struct CopyMember
{
	char	   *member_id;
	char	   *client_id;
	char	   *host;
	TimestampTz first_seen;
	TimestampTz warned_at;		/* 0: not confirmed yet */
	bool		seen;			/* in the last description */
} CopyMember;

struct GroupCopies
{
	char	   *group;
	char	   *brokers;
	bool		watch;			/* false with the embedded broker */
	TimestampTz next_at;		/* when to describe the group next */
	int			failures;		/* descriptions in a row that did not come */
	int			confirm_ms;		/* session timeout + CONFIRM_MARGIN_MS */
	List	   *members;		/* CopyMember, in TopMemoryContext */
};

/*
 * evbus_group_copies_init --- draw this server's instance, in the
 * postmaster (_PG_init), so that every worker it starts has the same.
 */
void		evbus_group_copies_init(void);

void
evbus_group_copies_init(void)
{
	while (server_instance == 0)
	{
		if (!pg_strong_random(&server_instance, sizeof(server_instance)))
			server_instance = (uint32) (pg_prng_uint64(&pg_global_prng_state) >> 32);
	}
}

/*
 * The client id's part that names this database wherever it runs (its
 * database id without dashes, else "<system identifier>.<OID>"), and this
 * process's whole client id: made once (own_names), after the worker's
 * start found the database id (evbus_copy_of).
 */
static char own_lineage[64] = "";
static char own_client_id[128] = "";

static void
own_names(void)
{
	const char *id = evbus_database_id();
	size_t		n = 0;

	if (own_client_id[0] != '\0')
		return;
	if (*id == '\0')
		snprintf(own_lineage, sizeof(own_lineage), UINT64_FORMAT ".%u",
				 GetSystemIdentifier(), MyDatabaseId);
	else
	{
		for (; *id != '\0' && n + 1 < sizeof(own_lineage); id++)
			if (*id != '-')
				own_lineage[n++] = *id;
		own_lineage[n] = '\0';
	}
	snprintf(own_client_id, sizeof(own_client_id), "evbus-%u-consumer-%s-%08x",
			 MyDatabaseId, own_lineage, server_instance);
}

/*
 * evbus_group_copies_client_id --- the client id of this database's
 * consumers (see the top of this file).
 */
void
evbus_group_copies_client_id(char *buf, size_t len)
{
	own_names();
	strlcpy(buf, own_client_id, len);
}

/*
 * same_lineage --- does client_id, a member's, name this database (the
 * part between "-consumer-" and the last '-' is own_lineage)?
 */
static bool
same_lineage(const char *client_id)
{
	const char *start = strstr(client_id, "-consumer-");
	const char *end = strrchr(client_id, '-');
	size_t		nlen = strlen(own_lineage);

	if (strncmp(client_id, "evbus-", 6) != 0 || start == NULL)
		return false;
	start += strlen("-consumer-");
	return end > start && (size_t) (end - start) == nlen &&
		strncmp(start, own_lineage, nlen) == 0;
}

/*
 * goes_by_own_client_id --- does the consumer rk go by the client id this
 * file gives it?  Not when evbus.kafka_config_file sets client.id: then no
 * copy can be told by its client id, and the consumer says so in the log,
 * once (test 250_kafka_allowlist.pl).
 */
static bool
goes_by_own_client_id(rd_kafka_t *rk)
{
	static bool logged = false;
	char		value[512];
	size_t		size = sizeof(value);

	own_names();
	if (rd_kafka_conf_get(rd_kafka_conf(rk), "client.id", value, &size) != RD_KAFKA_CONF_OK ||
		strcmp(value, own_client_id) == 0)
		return true;
	if (!logged)
		ereport(LOG,
				(errmsg("evbus: the consumers of this database look for no copy of it in their consumer groups"),
				 errdetail("evbus.kafka_config_file sets client.id, which takes the place of evbus's, by which a copy of the database is found.")));
	logged = true;
	return false;
}

/* A new watch of group's members, in TopMemoryContext. */
GroupCopies *
evbus_group_copies_new(const char *group, const char *brokers, rd_kafka_t *rk)
{
	GroupCopies *gcp = MemoryContextAllocZero(TopMemoryContext, sizeof(GroupCopies));
	char		value[32];
	size_t		size = sizeof(value);
	int			session_ms = 45000;

	gcp->group = MemoryContextStrdup(TopMemoryContext, group);
	gcp->brokers = MemoryContextStrdup(TopMemoryContext, brokers);
	gcp->watch = strcmp(evbus_brokers, EVBUS_EMBEDDED) != 0;
	/* not at once: a consumer woken from idle handles its messages first */
	gcp->next_at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
											   Min(evbus_copy_check_interval_ms,
												   FIRST_CHECK_MAX_MS));
	if (rd_kafka_conf_get(rd_kafka_conf(rk), "session.timeout.ms", value, &size) ==
		RD_KAFKA_CONF_OK)
		session_ms = atoi(value);
	gcp->confirm_ms = session_ms + CONFIRM_MARGIN_MS;
	if (gcp->watch && !goes_by_own_client_id(rk))
		gcp->watch = false;
	return gcp;
}

static void
member_free(CopyMember *m)
{
	pfree(m->member_id);
	pfree(m->client_id);
	pfree(m->host);
	pfree(m);
}

/* evbus_group_copies_free --- forget the watch. */
void
evbus_group_copies_free(GroupCopies *gcp)
{
	ListCell   *lc;

	if (gcp == NULL)
		return;
	foreach(lc, gcp->members)
		member_free(lfirst(lc));
	list_free(gcp->members);
	pfree(gcp->group);
	pfree(gcp->brokers);
	pfree(gcp);
}

/* The member of gcp with member_id, or NULL. */
static CopyMember *
find_member(GroupCopies *gcp, const char *member_id)
{
	ListCell   *lc;

	foreach(lc, gcp->members)
	{
		CopyMember *m = lfirst(lc);

		if (strcmp(m->member_id, member_id) == 0)
			return m;
	}
	return NULL;
}

static void
warn_copy(GroupCopies *gcp, CopyMember *m)
{
	ereport(WARNING,
			(errmsg("evbus: consumer group \"%s\" has a member from a copy of this database",
					gcp->group),
			 errdetail("Member \"%s\" (client \"%s\", host \"%s\") carries this database's id and has been in the group for %ld s; the messages of the partitions it holds are handled there, not here.",
					   m->member_id, m->client_id, m->host,
					   (long) ((GetCurrentTimestamp() - m->first_seen) / USECS_PER_SEC)),
			 errhint("Start the server of a copy with evbus.brokers = '' or another Kafka cluster, and stop the one that should not consume.")));
}

/*
 * take_description --- note the members of the group's description that
 * are copies of this database (see the top of this file); warn of the
 * confirmed ones.
 */
static void
take_description(GroupCopies *gcp, const struct rd_kafka_group_info *info,
				 TimestampTz now)
{
	int			i;
	ListCell   *lc;
	MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

	own_names();
	foreach(lc, gcp->members)
		((CopyMember *) lfirst(lc))->seen = false;

	for (i = 0; i < info->member_cnt; i++)
	{
		const char *client_id = info->members[i].client_id;
		const char *member_id = info->members[i].member_id;
		const char *host = info->members[i].client_host;
		CopyMember *m;

		if (client_id == NULL || member_id == NULL ||
			!same_lineage(client_id) || strcmp(client_id, own_client_id) == 0)
			continue;
		m = find_member(gcp, member_id);
		if (m == NULL)
		{
			m = palloc0(sizeof(CopyMember));
			m->member_id = pstrdup(member_id);
			m->client_id = pstrdup(client_id);
			m->host = pstrdup(host ? host : "");
			m->first_seen = now;
			gcp->members = lappend(gcp->members, m);
		}
		m->seen = true;
	}
	MemoryContextSwitchTo(old);

	foreach(lc, gcp->members)
	{
		CopyMember *m = lfirst(lc);

		if (!m->seen)
		{
			if (m->warned_at != 0)
				ereport(LOG,
						(errmsg("evbus: the member \"%s\" of a copy of this database left consumer group \"%s\"",
								m->member_id, gcp->group)));
			gcp->members = foreach_delete_current(gcp->members, lc);
			member_free(m);
			continue;
		}
		if (!TimestampDifferenceExceeds(m->first_seen, now, gcp->confirm_ms))
			continue;			/* maybe this server's previous run */
		if (m->warned_at == 0 ||
			TimestampDifferenceExceeds(m->warned_at, now, WARN_INTERVAL_MS))
		{
			warn_copy(gcp, m);
			evbus_metrics_copy_warning();
			m->warned_at = now;
		}
	}
}

/*
 * describe --- the members of the group, through a client of its own
 * (see the top of this file); false if they did not come.
 */
static bool
describe(GroupCopies *gcp, TimestampTz now)
{
	rd_kafka_conf_t *conf;
	rd_kafka_t *probe;
	char		client_id[128];
	char		errstr[512];
	const struct rd_kafka_group_list *list = NULL;
	rd_kafka_resp_err_t err;
	bool		described = false;
	int			i;

	evbus_group_copies_client_id(client_id, sizeof(client_id));
	strlcat(client_id, "-members", sizeof(client_id));
	conf = evbus_kafka_conf_new(gcp->brokers, client_id, NULL, NULL);
	probe = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
	if (probe == NULL)
	{
		rd_kafka_conf_destroy(conf);
		return false;
	}
	err = rd_kafka_list_groups(probe, gcp->group, &list, DESCRIBE_WAIT_MS);
	/* _PARTIAL: a broker did not answer, maybe not the group's coordinator */
	if ((err == RD_KAFKA_RESP_ERR_NO_ERROR || err == RD_KAFKA_RESP_ERR__PARTIAL) &&
		list != NULL)
	{
		described = err == RD_KAFKA_RESP_ERR_NO_ERROR;
		for (i = 0; i < list->group_cnt; i++)
		{
			const struct rd_kafka_group_info *info = &list->groups[i];

			if (info->err == RD_KAFKA_RESP_ERR_NO_ERROR &&
				strcmp(info->group, gcp->group) == 0)
			{
				take_description(gcp, info, now);
				described = true;
			}
		}
	}
	if (list != NULL)
		rd_kafka_group_list_destroy(list);
	rd_kafka_destroy(probe);
	return described;
}

/*
 * evbus_group_copies_check --- from each poll of the group's consumer,
 * outside any transaction: describe the group when it is time.
 */
void
evbus_group_copies_check(GroupCopies *gcp)
{
	TimestampTz now = GetCurrentTimestamp();
	long		interval_ms;

	if (!gcp->watch || evbus_copy_check_interval_ms == 0 || now < gcp->next_at)
		return;
	if (describe(gcp, now))
		gcp->failures = 0;
	else
		gcp->failures = Min(gcp->failures + 1, 20);
	interval_ms = Min((long) evbus_copy_check_interval_ms << gcp->failures,
					  Max(MAX_INTERVAL_MS, evbus_copy_check_interval_ms));
	gcp->next_at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), interval_ms);
}

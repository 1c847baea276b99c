/*-------------------------------------------------------------------------
 *
 * embedded.c
 *	  The embedded broker: librdkafka's mock cluster inside the launcher.
 *
 * With evbus.brokers = 'embedded', evbus needs no Kafka at all: the
 * launcher creates an in-process mock cluster listening on 127.0.0.1 and
 * publishes its bootstrap address in shared memory, where every
 * database's worker (and evbus.brokers()) finds it.  It is meant for
 * trying evbus out and for fault-injection tests, like CAP's in-memory
 * transport: its topics vanish when the server restarts, which the server
 * log says when it starts.  Its threads are librdkafka's own; they never
 * call PostgreSQL code.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <signal.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include "evbus.h"
#include "kafka.h"

static rd_kafka_t *mock_handle = NULL;
static rd_kafka_mock_cluster_t *mock_cluster = NULL;

/* librdkafka's mock logs from its own threads: keep them out of PostgreSQL. */
static void
mock_log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
}

/*
 * evbus_embedded_start --- start the mock cluster, if it is not running.
 *
 * Its thread is created with every signal blocked.  A new thread takes the
 * signal mask of the thread that creates it, and librdkafka blocks
 * signals around the threads of its clients but not around the mock
 * cluster's: a signal the kernel handed to that thread (a reload's SIGHUP,
 * the shutdown's SIGTERM, whenever the launcher's own thread already had
 * one pending) interrupted its poll(), which ends the thread.  The broker
 * then answered no more, and destroying it at shutdown waited for ever
 * (test 070_embedded.pl).
 */
void
evbus_embedded_start(void)
{
	rd_kafka_conf_t *conf;
	char		errstr[512];
	const char *bootstrap;
	sigset_t	all_signals;
	sigset_t	launcher_signals;

	if (mock_cluster != NULL)
		return;

	conf = rd_kafka_conf_new();
	rd_kafka_conf_set_log_cb(conf, mock_log_cb);
	mock_handle = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
	if (mock_handle == NULL)
	{
		ereport(WARNING,
				(errmsg("evbus: could not start the embedded broker: %s", errstr)));
		return;
	}
	sigfillset(&all_signals);
	pthread_sigmask(SIG_SETMASK, &all_signals, &launcher_signals);
	mock_cluster = rd_kafka_mock_cluster_new(mock_handle, 1);
	pthread_sigmask(SIG_SETMASK, &launcher_signals, NULL);
	if (mock_cluster == NULL)
	{
		rd_kafka_destroy(mock_handle);
		mock_handle = NULL;
		ereport(WARNING,
				(errmsg("evbus: could not start the embedded broker")));
		return;
	}
	bootstrap = rd_kafka_mock_cluster_bootstraps(mock_cluster);
	evbus_set_embedded_bootstrap(bootstrap);
	ereport(LOG,
			(errmsg("evbus: embedded broker listening on %s", bootstrap),
			 errdetail("The embedded broker keeps its topics in memory: they vanish when the server restarts.")));
}

/* evbus_embedded_stop --- stop the mock cluster, if it is running. */
void
evbus_embedded_stop(void)
{
	if (mock_cluster == NULL)
		return;
	evbus_set_embedded_bootstrap(NULL);
	rd_kafka_mock_cluster_destroy(mock_cluster);
	rd_kafka_destroy(mock_handle);
	mock_cluster = NULL;
	mock_handle = NULL;
	ereport(LOG, (errmsg("evbus: embedded broker stopped")));
}

/*
 * evbus_resolve_brokers --- the bootstrap list to use now, or NULL when
 * publishing is paused (evbus.brokers is empty, or the embedded broker
 * has not started yet).
 */
const char *
evbus_resolve_brokers(char *buf, size_t len)
{
	if (evbus_brokers == NULL || evbus_brokers[0] == '\0')
		return NULL;
	if (strcmp(evbus_brokers, EVBUS_EMBEDDED) == 0)
		return evbus_get_embedded_bootstrap(buf, len) ? buf : NULL;
	strlcpy(buf, evbus_brokers, len);
	return buf;
}

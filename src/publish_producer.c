/*-------------------------------------------------------------------------
 *
 * publish_producer.c
 *	  The life cycle of the publisher's Kafka producer.
 *
 * The producer (producer.c) is created when there are brokers to publish
 * to, and destroyed and created again when the brokers or its settings
 * (the file of evbus.kafka_config_file) change, or after a fatal error
 * (test 052_refused_batch_order.pl).  A producer that cannot be created
 * does not crash-loop the worker: it is tried again after the next reload
 * or 30 s, and events wait in the outbox meanwhile.  Events a destroyed
 * producer did not report on are produced again (publish_reports.c).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "evbus.h"
#include "publish.h"
#include "publisher.h"

static EvbusProducer *producer = NULL;
static char current_brokers[1024] = "";
static int	config_generation = 1;	/* bumped by each reload */
static int	failed_generation = 0;	/* when the producer last failed */
static int	checked_generation = 1; /* the producer's settings last compared */
static uint64 producer_fingerprint = 0; /* evbus_kafka_conf_fingerprint */
static TimestampTz failed_at = 0;

/* The producer, or NULL while there is none (not publishing). */
EvbusProducer *
evbus_pubproducer(void)
{
	return producer;
}

/*
 * Has a configuration reload changed what the producer was built from
 * (the file of evbus.kafka_config_file: a new password, say)?  Compared
 * once per reload.
 */
static bool
producer_settings_changed(const char *brokers)
{
	if (checked_generation == config_generation)
		return false;
	checked_generation = config_generation;
	return evbus_kafka_conf_fingerprint(brokers) != producer_fingerprint;
}

/*
 * create_producer --- create the producer for brokers.  A bad
 * evbus.kafka_config_file must not crash-loop the worker: the error is
 * logged, events wait in the outbox, and the producer is tried again
 * after the next reload (or 30 s).
 */
static void
create_producer(const char *brokers)
{
	MemoryContext cxt = CurrentMemoryContext;

	PG_TRY();
	{
		producer_fingerprint = evbus_kafka_conf_fingerprint(brokers);
		checked_generation = config_generation;
		producer = evbus_producer_create(brokers, evbus_reports_on_delivery);
		strlcpy(current_brokers, brokers, sizeof(current_brokers));
		ereport(LOG,
				(errmsg("evbus: publishing to %s", brokers)));
	}
	PG_CATCH();
	{
		/* a stop's cancel is not the configuration's fault: pass it on */
		if (geterrcode() == ERRCODE_QUERY_CANCELED)
			PG_RE_THROW();
		MemoryContextSwitchTo(cxt);
		EmitErrorReport();
		FlushErrorState();
		producer = NULL;
		failed_generation = config_generation;
		failed_at = GetCurrentTimestamp();
		ereport(WARNING,
				(errmsg("evbus: not publishing: the Kafka producer could not be created"),
				 errhint(EVBUS_KAFKA_CLIENT_HINT)));
	}
	PG_END_TRY();
}

/*
 * evbus_pubproducer_sync --- (re)create the producer when the brokers or
 * its settings changed, or after a fatal error.
 */
void
evbus_pubproducer_sync(void)
{
	char		buf[1024];
	const char *brokers = evbus_resolve_brokers(buf, sizeof(buf));

	if (producer != NULL &&
		(evbus_producer_failed(producer) || brokers == NULL ||
		 strcmp(brokers, current_brokers) != 0 ||
		 producer_settings_changed(brokers)))
	{
		ereport(LOG,
				(errmsg("evbus: closing the Kafka producer for %s", current_brokers)));
		evbus_producer_destroy(producer);	/* reports purges: keys blocked */
		producer = NULL;
		current_brokers[0] = '\0';
		evbus_reports_forget_unreported();
		evbus_metrics_broker_unknown(EVBUS_PUBLISHER);

		/*
		 * Reports served so far are recorded by the next step's finish, in
		 * its transaction (there is none here); until then they keep their
		 * events from being produced again (evbus_reports_holds).
		 */
	}
	if (producer == NULL && brokers != NULL &&
		(config_generation != failed_generation ||
		 TimestampDifferenceExceeds(failed_at, GetCurrentTimestamp(), 30000)))
		create_producer(brokers);
}

/* After a configuration reload: try a failed producer again at once. */
void
evbus_publisher_reconfigured(void)
{
	config_generation++;
}

/* Drop the producer at exit: unacknowledged events stay in the outbox. */
void
evbus_publisher_shutdown(void)
{
	if (producer != NULL)
	{
		evbus_producer_destroy(producer);
		producer = NULL;
	}
}

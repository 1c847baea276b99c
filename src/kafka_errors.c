/*-------------------------------------------------------------------------
 *
 * kafka_errors.c
 *	  The one place where librdkafka errors are classified, and where
 *	  librdkafka's log lines enter the server log.
 *
 * A permanent error means retrying cannot help (the message is too large,
 * the topic name is illegal, we are not authorized): the event is
 * dead-lettered at once.  Everything else — brokers down, timeouts, leader
 * changes, purges when the producer is rebuilt — is transient: the event
 * stays in the outbox and is produced again, without consuming retries.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "evbus.h"
#include "kafka.h"

/* How librdkafka's line about a consumer's offset reset begins. */
#define OFFSET_RESET_TEXT "offset reset (at offset"

bool
evbus_kafka_error_is_permanent(rd_kafka_resp_err_t err)
{
	switch (err)
	{
		case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE:
		case RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE:
		case RD_KAFKA_RESP_ERR_INVALID_MSG_SIZE:
		case RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION:
		case RD_KAFKA_RESP_ERR__INVALID_ARG:
		case RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED:
		case RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED:
		case RD_KAFKA_RESP_ERR_INVALID_RECORD:
			return true;
		default:
			return false;
	}
}

/*
 * evbus_kafka_error_hint --- what to check, for the text of a librdkafka
 * error or log line; NULL when there is nothing to add.
 *
 * librdkafka's own advice for a failed certificate check names only the
 * CA file, but a broker reached by a name its certificate does not carry
 * fails the same check (test 066).  A client key or keystore that cannot
 * be opened gets an OpenSSL error code ("PEM lib", "mac verify failure")
 * that does not say a wrong password is the likely cause (test 067).  A
 * consumer's offset reset does not say that messages may be lost (test
 * 308).
 */
const char *
evbus_kafka_error_hint(const char *text)
{
	if (strstr(text, "certificate verify failed"))
		return "Check that ssl.ca.location in evbus.kafka_config_file holds the CA that signed the broker's certificate, "
			"and that the certificate names the host or address given in evbus.brokers.";
	if (strstr(text, "ssl.key.location"))
		return "Check that the server can read the file of ssl.key.location in evbus.kafka_config_file, "
			"that it holds a private key in PEM, and that ssl.key.password is its password.";
	if (strstr(text, "ssl.keystore.location"))
		return "Check that the server can read the file of ssl.keystore.location in evbus.kafka_config_file, "
			"that it is a PKCS#12 keystore, and that ssl.keystore.password is its password.";
	if (strstr(text, OFFSET_RESET_TEXT))
		return "The partition no longer has the offset the consumer was at. Before the start of its log: Kafka deleted "
			"those messages (retention, DeleteRecords) before this database read them, and they are lost to it. "
			"Past its end: the topic was deleted and created again.";
	return NULL;
}

/*
 * evbus_kafka_read_refused_hint --- what to grant, for an error a group's
 * consumer reports; NULL for the others.  A subscribed topic the principal
 * may not read, or a group it may not join, holds its messages back in
 * Kafka until someone changes the ACLs: the consumer reports it once, and
 * then waits (test 175_consume_read_refused.pl).
 */
const char *
evbus_kafka_read_refused_hint(rd_kafka_resp_err_t err)
{
	switch (err)
	{
		case RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED:
			return "Allow the principal that evbus logs in as (evbus.kafka_config_file) to Describe and Read the topic. "
				"Its messages wait in Kafka; they are handled once the consumer may read them.";
		case RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED:
			return "Allow the principal that evbus logs in as (evbus.kafka_config_file) to Read the consumer group. "
				"The group's messages wait in Kafka; they are handled once the consumer may join it.";
		default:
			return NULL;
	}
}

/*
 * evbus_kafka_log_cb --- librdkafka log line into the server log.
 *
 * Logs are forwarded to the main queue (log.queue=true), so this runs in
 * the worker's own thread from rd_kafka_poll(), where ereport is safe.
 * librdkafka redacts sensitive properties in its own log lines.
 *
 * A consumer's offset reset (a partition that no longer has the offset
 * the consumer was at) is a WARNING, counted in
 * evbus_consume_offset_resets_total: messages may be lost to this
 * database (test 308_new_partition_log.pl).
 *
 * Two lines are about the gap-less guarantee that evbus sets on purpose
 * (producer.c) and are left out: the warning, at every producer start,
 * that the property is experimental, and librdkafka's own "Fatal error"
 * when the guarantee stops the producer, which the producer's error
 * callback reports in words of its own.
 */
void
evbus_kafka_log_cb(const rd_kafka_t *rk, int level, const char *fac,
				   const char *buf)
{
	int			elevel;
	const char *hint = evbus_kafka_error_hint(buf);
	bool		offset_reset;

	if ((strcmp(fac, "CONFWARN") == 0 && strstr(buf, "enable.gapless.guarantee")) ||
		(strcmp(fac, "FATAL") == 0 && strstr(buf, "Gap-less ordering")))
		return;
	offset_reset = strcmp(fac, "OFFSET") == 0 && strstr(buf, OFFSET_RESET_TEXT);
	if (offset_reset && rd_kafka_type(rk) == RD_KAFKA_CONSUMER)
		evbus_metrics_offset_reset();
	/* LOG_ERR and worse, and a consumer offset reset: messages may be lost */
	if (level <= 3 || offset_reset)
		elevel = WARNING;
	else if (level <= 5)		/* LOG_WARNING, LOG_NOTICE */
		elevel = LOG;
	else
		elevel = DEBUG1;
	ereport(elevel,
			(errmsg_internal("evbus: kafka %s: %s", fac, buf),
			 hint ? errhint("%s", hint) : 0));
}

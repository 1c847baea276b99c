/*-------------------------------------------------------------------------
 *
 * received_message.c
 *	  A message received from Kafka, copied out of librdkafka into
 *	  PostgreSQL memory: what the consumer hands to the inbox (consumer.h,
 *	  ReceivedMessage).
 *
 * Called by consumer.c; calls nothing of evbus.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "consumer.h"
#include "kafka.h"

/*
 * evbus_copy_message --- copy librdkafka message km into m, in the current
 * memory context: its topic, partition, offset, key, value (NUL-terminated
 * for the decoders, valuelen its length) and headers, so that the message
 * outlives librdkafka's buffer, which is returned at once.
 */
void
evbus_copy_message(const rd_kafka_message_t *km, ReceivedMessage *m)
{
	rd_kafka_headers_t *hdrs = NULL;

	m->topic = pstrdup(rd_kafka_topic_name(km->rkt));
	m->partition = km->partition;
	m->offset = km->offset;
	m->key = km->key ? pnstrdup(km->key, km->key_len) : NULL;
	m->keylen = km->key_len;
	m->value = km->payload ? palloc(km->len + 1) : NULL;
	if (m->value)
	{
		memcpy(m->value, km->payload, km->len);
		m->value[km->len] = '\0';
	}
	m->valuelen = km->len;
	m->nheaders = 0;
	if (rd_kafka_message_headers(km, &hdrs) == RD_KAFKA_RESP_ERR_NO_ERROR && hdrs)
	{
		size_t		n = rd_kafka_header_cnt(hdrs);
		size_t		i;

		m->header_names = palloc(sizeof(char *) * n);
		m->header_values = palloc(sizeof(char *) * n);
		m->header_lens = palloc(sizeof(size_t) * n);
		for (i = 0; i < n; i++)
		{
			const char *name;
			const void *value;
			size_t		size;

			if (rd_kafka_header_get_all(hdrs, i, &name, &value, &size))
				break;
			m->header_names[i] = pstrdup(name);
			m->header_values[i] = value ? pnstrdup(value, size) : NULL;
			m->header_lens[i] = size;
			m->nheaders++;
		}
	}
}

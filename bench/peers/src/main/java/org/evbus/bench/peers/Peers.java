/*
 * Peers - what the three programs of bench/peers share: their settings,
 * read from the environment that bench/peers.sh sets, and the Kafka
 * producer's properties.
 *
 * The producer is kafka-clients' with its defaults but for what evbus's
 * publisher also does: acks=all and idempotence on (evbus sets both in
 * librdkafka).  Keys and values are strings; payloads are the outbox's
 * jsonb as text.
 */
package org.evbus.bench.peers;

import java.util.Properties;

import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.common.serialization.StringSerializer;

final class Peers
{
	private Peers()
	{
	}

	/* A required setting; a missing one stops the program at once. */
	static String env(String name)
	{
		String v = System.getenv(name);

		if (v == null || v.isEmpty())
			throw new IllegalArgumentException("environment variable " + name + " is not set");
		return v;
	}

	/* An optional setting with its default. */
	static String env(String name, String dflt)
	{
		String v = System.getenv(name);

		return v == null || v.isEmpty() ? dflt : v;
	}

	/* The producer of both relays: acks=all, idempotent, else defaults. */
	static Properties producerProps(String brokers)
	{
		Properties p = new Properties();

		p.setProperty(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, brokers);
		p.setProperty(ProducerConfig.ACKS_CONFIG, "all");
		p.setProperty(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, "true");
		p.setProperty(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
		p.setProperty(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
		return p;
	}

	/* One line on stdout, flushed: bench/peers.sh waits for READY. */
	static void say(String line)
	{
		System.out.println(line);
		System.out.flush();
	}
}

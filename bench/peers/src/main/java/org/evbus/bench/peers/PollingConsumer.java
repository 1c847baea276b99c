/*
 * PollingConsumer - the consuming side most teams write by hand: a
 * kafka-clients consumer (group GROUP, offsets committed by hand, from the
 * earliest offset, max.poll.records 1000) whose every poll becomes one
 * database transaction with one JDBC batch (reWriteBatchedInserts):
 *
 *     INSERT INTO public.effect (message_id, payload) VALUES (?, ?::jsonb)
 *         ON CONFLICT (message_id) DO NOTHING
 *
 * de-duplicating on the message id (the cap-msg-id header evbus sends),
 * then the database COMMIT, then commitSync of the Kafka offsets: a crash
 * in between redelivers, and the unique message id makes that exactly
 * once.  No retries: any error stops the program with exit code 1.
 *
 * Environment: PG_URL (a JDBC URL), BROKERS, TOPIC, GROUP.
 * Prints READY when subscribed, then runs until killed.
 */
package org.evbus.bench.peers;

import java.nio.charset.StandardCharsets;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.time.Duration;
import java.util.List;
import java.util.Properties;

import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.ConsumerRecords;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.serialization.StringDeserializer;

public final class PollingConsumer
{
	public static void main(String[] args) throws Exception
	{
		String url = Peers.env("PG_URL");
		Properties p = new Properties();

		p.setProperty(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, Peers.env("BROKERS"));
		p.setProperty(ConsumerConfig.GROUP_ID_CONFIG, Peers.env("GROUP"));
		p.setProperty(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
		p.setProperty(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
		p.setProperty(ConsumerConfig.MAX_POLL_RECORDS_CONFIG, "1000");
		p.setProperty(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
		p.setProperty(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());

		try (KafkaConsumer<String, String> consumer = new KafkaConsumer<>(p);
			 Connection c = DriverManager.getConnection(url + (url.contains("?") ? "&" : "?") + "reWriteBatchedInserts=true"))
		{
			c.setAutoCommit(false);
			PreparedStatement ins = c.prepareStatement(
				"INSERT INTO public.effect (message_id, payload) VALUES (?, ?::jsonb) ON CONFLICT (message_id) DO NOTHING");

			consumer.subscribe(List.of(Peers.env("TOPIC")));
			Peers.say("READY");
			for (;;)
			{
				ConsumerRecords<String, String> recs = consumer.poll(Duration.ofMillis(100));

				if (recs.isEmpty())
					continue;
				for (ConsumerRecord<String, String> r : recs)
				{
					Header h = r.headers().lastHeader("cap-msg-id");

					ins.setString(1, h != null ? new String(h.value(), StandardCharsets.UTF_8)
								  : r.topic() + "/" + r.partition() + "/" + r.offset());
					ins.setString(2, r.value());
					ins.addBatch();
				}
				ins.executeBatch();
				c.commit();
				consumer.commitSync();
			}
		}
	}
}

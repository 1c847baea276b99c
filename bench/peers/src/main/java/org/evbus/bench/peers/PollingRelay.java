/*
 * PollingRelay - the outbox relay most teams write by hand (and what
 * DotNetCore.CAP's dispatcher does): a loop that, in one transaction,
 *
 *     SELECT id, topic, key, payload FROM public.outbox
 *      ORDER BY id LIMIT 1000 FOR UPDATE SKIP LOCKED
 *
 * produces each row with kafka-clients (acks=all, idempotence on, the
 * client's defaults otherwise: linger.ms 5, batch.size 16 KiB), waits for
 * every acknowledgement (flush), deletes the rows and commits.  A failed
 * send stops the program with exit code 1 (no retries: the rows stay).
 * After a poll that found nothing it sleeps POLL_MS (default 1 ms); a
 * full batch is followed by the next poll at once.
 *
 * This is a tuned relay: CAP polls every second by default and is woken
 * by its own commits; a 1 ms interval gives the same wake-up for commits
 * of any writer, at the price of ~1,000 empty polls a second when idle.
 *
 * Environment: PG_URL (a JDBC URL), BROKERS, POLL_MS (1), BATCH (1000).
 * Prints READY when connected to both, then runs until killed.
 */
package org.evbus.bench.peers;

import java.sql.Array;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.Future;

import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;

public final class PollingRelay
{
	public static void main(String[] args) throws Exception
	{
		String url = Peers.env("PG_URL");
		String brokers = Peers.env("BROKERS");
		long pollMs = Long.parseLong(Peers.env("POLL_MS", "1"));
		int batch = Integer.parseInt(Peers.env("BATCH", "1000"));

		try (KafkaProducer<String, String> producer = new KafkaProducer<>(Peers.producerProps(brokers));
			 Connection c = DriverManager.getConnection(url))
		{
			c.setAutoCommit(false);
			PreparedStatement sel = c.prepareStatement(
				"SELECT id, topic, key, payload::text FROM public.outbox ORDER BY id LIMIT ? FOR UPDATE SKIP LOCKED");
			PreparedStatement del = c.prepareStatement(
				"DELETE FROM public.outbox WHERE id = ANY (?)");
			List<Long> ids = new ArrayList<>(batch);
			List<Future<RecordMetadata>> acks = new ArrayList<>(batch);

			sel.setInt(1, batch);
			Peers.say("READY");
			for (;;)
			{
				ids.clear();
				acks.clear();
				try (ResultSet rs = sel.executeQuery())
				{
					while (rs.next())
					{
						ids.add(rs.getLong(1));
						acks.add(producer.send(new ProducerRecord<>(rs.getString(2), rs.getString(3), rs.getString(4))));
					}
				}
				if (ids.isEmpty())
				{
					c.commit();
					Thread.sleep(pollMs);
					continue;
				}
				producer.flush();
				for (Future<RecordMetadata> f : acks)
					f.get();		/* a failed send throws: exit 1 */
				Array a = c.createArrayOf("bigint", ids.toArray());
				del.setArray(1, a);
				del.executeUpdate();
				c.commit();
			}
		}
	}
}

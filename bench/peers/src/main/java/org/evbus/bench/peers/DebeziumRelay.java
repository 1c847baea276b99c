/*
 * DebeziumRelay - the outbox relay of change data capture: Debezium's
 * embedded engine (debezium-embedded and debezium-connector-postgres)
 * reads public.outbox's inserts from PostgreSQL's logical replication
 * (plugin pgoutput, the publication PUBLICATION and the slot SLOT, both
 * made by bench/peers.sh before the engine starts; snapshot.mode no_data:
 * the slot's changes only), and the outbox EventRouter SMT
 * (io.debezium.transforms.outbox.EventRouter) turns each row into a
 * record for the topic of its "topic" column, with its "key" as the key
 * and its "payload" as the value.  Each batch the engine hands over is
 * produced with kafka-clients (acks=all, idempotence on, the client's
 * defaults otherwise), flushed, and only then marked processed: what
 * Debezium Server's Kafka sink does.  A failed send or a failed engine
 * stops the program with exit code 1.
 *
 * Engine settings that are not Debezium's defaults: offsets in memory
 * (MemoryOffsetBackingStore: a benchmark needs no restart),
 * poll.interval.ms POLL_MS (default 1; Debezium's default of 500 ms would
 * add up to half a second to each event's latency).  max.batch.size (2048)
 * and max.queue.size (8192) are the defaults.
 *
 * Environment: PG_HOST, PG_PORT, PG_DB, PG_USER, BROKERS, SLOT,
 * PUBLICATION, POLL_MS (1).  Prints READY when the connector's task has
 * started, then runs until killed.
 */
package org.evbus.bench.peers;

import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;

import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.connect.source.SourceRecord;

import io.debezium.embedded.Connect;
import io.debezium.engine.DebeziumEngine;
import io.debezium.engine.RecordChangeEvent;
import io.debezium.engine.format.ChangeEventFormat;

public final class DebeziumRelay
{
	public static void main(String[] args) throws Exception
	{
		Properties p = new Properties();

		p.setProperty("name", "evbus-bench-outbox");
		p.setProperty("connector.class", "io.debezium.connector.postgresql.PostgresConnector");
		p.setProperty("offset.storage", "org.apache.kafka.connect.storage.MemoryOffsetBackingStore");
		p.setProperty("offset.flush.interval.ms", "1000");
		p.setProperty("database.hostname", Peers.env("PG_HOST"));
		p.setProperty("database.port", Peers.env("PG_PORT"));
		p.setProperty("database.user", Peers.env("PG_USER"));
		p.setProperty("database.password", "unused");
		p.setProperty("database.dbname", Peers.env("PG_DB"));
		p.setProperty("topic.prefix", "bench");
		p.setProperty("plugin.name", "pgoutput");
		p.setProperty("slot.name", Peers.env("SLOT"));
		p.setProperty("publication.name", Peers.env("PUBLICATION"));
		p.setProperty("publication.autocreate.mode", "disabled");
		p.setProperty("table.include.list", "public.outbox");
		p.setProperty("snapshot.mode", "no_data");
		p.setProperty("poll.interval.ms", Peers.env("POLL_MS", "1"));
		p.setProperty("transforms", "outbox");
		p.setProperty("transforms.outbox.type", "io.debezium.transforms.outbox.EventRouter");
		p.setProperty("transforms.outbox.table.field.event.id", "id");
		p.setProperty("transforms.outbox.table.field.event.key", "key");
		p.setProperty("transforms.outbox.table.field.event.payload", "payload");
		p.setProperty("transforms.outbox.route.by.field", "topic");
		p.setProperty("transforms.outbox.route.topic.replacement", "${routedByValue}");

		KafkaProducer<String, String> producer = new KafkaProducer<>(Peers.producerProps(Peers.env("BROKERS")));
		DebeziumEngine<RecordChangeEvent<SourceRecord>> engine =
			DebeziumEngine.create(ChangeEventFormat.of(Connect.class))
			.using(p)
			.using(new DebeziumEngine.ConnectorCallback()
			{
				@Override
				public void taskStarted()
				{
					Peers.say("READY");
				}
			})
			.using((success, message, error) -> {
				if (!success)
				{
					System.err.println("DebeziumRelay: the engine stopped: " + message);
					if (error != null)
						error.printStackTrace();
					System.exit(1);
				}
			})
			.notifying((records, committer) -> {
				List<Future<RecordMetadata>> acks = new ArrayList<>(records.size());

				for (RecordChangeEvent<SourceRecord> r : records)
				{
					SourceRecord s = r.record();

					if (s.value() == null)
						continue;	/* a tombstone: nothing to relay */
					acks.add(producer.send(new ProducerRecord<>(s.topic(),
																s.key() == null ? null : s.key().toString(),
																s.value().toString())));
				}
				producer.flush();
				try
				{
					for (Future<RecordMetadata> f : acks)
						f.get();
				}
				catch (Exception e)
				{
					System.err.println("DebeziumRelay: a send failed: " + e);
					System.exit(1);
				}
				for (RecordChangeEvent<SourceRecord> r : records)
					committer.markProcessed(r);
				committer.markBatchFinished();
			})
			.build();
		ExecutorService executor = Executors.newSingleThreadExecutor();

		executor.execute(engine);
		executor.shutdown();
		while (!executor.isTerminated())
			Thread.sleep(1000);
		System.exit(1);				/* the engine never stops by itself */
	}
}

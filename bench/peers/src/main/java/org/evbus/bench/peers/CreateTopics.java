/*
 * CreateTopics - creates bench/peers.sh's topics in one JVM (instead of
 * one kafka-topics run each): every argument is a topic name, made with
 * PARTITIONS partitions (default 3), replication factor 1 and
 * message.timestamp.type=LogAppendTime, so that each message's timestamp
 * is the time the broker appended it.  Environment: BROKERS, PARTITIONS.
 */
package org.evbus.bench.peers;

import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Properties;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.NewTopic;

public final class CreateTopics
{
	public static void main(String[] args) throws Exception
	{
		Properties p = new Properties();
		int partitions = Integer.parseInt(Peers.env("PARTITIONS", "3"));
		List<NewTopic> topics = new ArrayList<>();

		p.setProperty(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, Peers.env("BROKERS"));
		for (String name : args)
			topics.add(new NewTopic(name, partitions, (short) 1)
					   .configs(Map.of("message.timestamp.type", "LogAppendTime")));
		try (Admin admin = Admin.create(p))
		{
			admin.createTopics(topics).all().get();
		}
	}
}

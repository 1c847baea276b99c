/*-------------------------------------------------------------------------
 *
 * publisher.h
 *	  Publishing outbox events to Kafka: the worker's entry points
 *	  (publisher.c; the producer's life cycle in publish_producer.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef EVBUS_PUBLISHER_H
#define EVBUS_PUBLISHER_H

extern void evbus_publisher_init(const char *database_name);
extern bool evbus_publisher_step(bool claim_wanted);
extern long evbus_publisher_wait_ms(void);
extern int	evbus_publisher_wakeup_fd(void);
extern void evbus_publisher_leave(void);
extern void evbus_publisher_shutdown(void);
extern void evbus_publisher_reconfigured(void);

#endif							/* EVBUS_PUBLISHER_H */

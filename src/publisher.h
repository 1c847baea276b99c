/*-------------------------------------------------------------------------
 *
 * publisher.h
 *	  Publishing outbox events to Kafka (publisher.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef EVBUS_PUBLISHER_H
#define EVBUS_PUBLISHER_H

extern void evbus_publisher_init(const char *database_name);
extern bool evbus_publisher_step(bool claim_wanted);
extern long evbus_publisher_wait_ms(void);
extern int	evbus_publisher_wakeup_fd(void);
extern void evbus_publisher_shutdown(void);
extern void evbus_publisher_reconfigured(void);
extern bool evbus_publisher_holds(int64 id);

#endif							/* EVBUS_PUBLISHER_H */

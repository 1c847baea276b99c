/*-------------------------------------------------------------------------
 *
 * handler_timeout.c
 *	  evbus.handler_timeout for a handler call: a statement timeout, and
 *	  the end of the consumer when the handler ignores it.
 *
 * A call runs under the statement timeout evbus.handler_timeout: at its
 * end the call is cancelled and fails, and its message is retried.  But a
 * cancel is an error that the handler can catch (PL/pgSQL's EXCEPTION WHEN
 * query_canceled) and go on: such a handler would hold the consumer of
 * its database, and every subscriber's messages there, for as long as it
 * liked.  So a second timer ends the consumer when a call is still
 * running at twice evbus.handler_timeout, as pg_terminate_backend would:
 * the FATAL that CHECK_FOR_INTERRUPTS raises then cannot be caught
 * (consumer_worker.c).  The call's transaction is rolled back, a WARNING
 * names the handler, and the next consumer charges the attempt to that
 * call (attempt_marker.c): the message is retried like any failure, and
 * dead-lettered after its last retry; the other messages flow again (test
 * 232_terminate_handler.pl).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <signal.h>

#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "utils/timeout.h"

#include "consumer.h"

/* The second timer, registered once per process (MAX_TIMEOUTS: not yet). */
static TimeoutId overrun_timeout = MAX_TIMEOUTS;

/* Set by the second timer; read on the way out. */
static volatile sig_atomic_t overran = false;

/* The running call's handler and timeout, for the WARNING on the way out. */
static char running_handler[3 * NAMEDATALEN + 64];
static int	running_timeout_ms;

/*
 * handler_overran --- the second timer, in signal context: what die() does
 * for SIGTERM, so that the handler's next CHECK_FOR_INTERRUPTS ends the
 * process.
 */
static void
handler_overran(void)
{
	overran = true;
	if (!proc_exit_inprogress)
	{
		InterruptPending = true;
		ProcDiePending = true;
	}
	SetLatch(MyLatch);
}

/* On the way out: say why, if the second timer ended the consumer. */
static void
report_overrun(int code, Datum arg)
{
	if (!overran)
		return;
	ereport(WARNING,
			(errcode(ERRCODE_QUERY_CANCELED),
			 errmsg("evbus: handler %s was still running at twice evbus.handler_timeout (%d ms), having caught its cancel: the consumer ended to stop it",
					running_handler, running_timeout_ms),
			 errdetail("The attempt counts as failed: its message is retried, then dead-lettered."),
			 errhint("Let the handler's query_canceled error propagate, or raise evbus.handler_timeout.")));
}

/*
 * evbus_handler_timeout_arm --- before a call of handler signature: its
 * statement timeout, and the second timer at twice it.
 */
void
evbus_handler_timeout_arm(const char *signature)
{
	EnableTimeoutParams timers[2];

	if (overrun_timeout == MAX_TIMEOUTS)
	{
		overrun_timeout = RegisterTimeout(USER_TIMEOUT, handler_overran);
		before_shmem_exit(report_overrun, (Datum) 0);
	}
	strlcpy(running_handler, signature, sizeof(running_handler));
	running_timeout_ms = evbus_handler_timeout_ms;

	timers[0].id = STATEMENT_TIMEOUT;
	timers[0].type = TMPARAM_AFTER;
	timers[0].delay_ms = evbus_handler_timeout_ms;
	timers[1].id = overrun_timeout;
	timers[1].type = TMPARAM_AFTER;
	timers[1].delay_ms = (int) Min((int64) evbus_handler_timeout_ms * 2, PG_INT32_MAX);
	enable_timeouts(timers, 2);
}

/*
 * evbus_handler_timeout_disarm --- after the call, returned or failed: both
 * timers off.
 *
 * A statement timeout that fired after the call's last check for
 * interrupts (while its error was being raised: building a large message,
 * unwinding to the caller's PG_CATCH) left its cancel pending with no call
 * left to cancel: the next check, in the consumer's own recording of the
 * call's outcome, raised it there ("canceling statement due to user
 * request") and the consumer ended, the attempt counted as interrupted
 * rather than as the handler's own error (test 140_consume_retries.pl,
 * "loud", on a loaded machine; 258_late_statement_timeout.pl).  So that
 * cancel is dropped here.  A pg_cancel_backend of the consumer in the same
 * instant is dropped with it; the consumer goes on.
 */
void
evbus_handler_timeout_disarm(void)
{
	DisableTimeoutParams timers[2];
	bool		fired = get_timeout_indicator(STATEMENT_TIMEOUT, false);

	timers[0].id = STATEMENT_TIMEOUT;
	timers[0].keep_indicator = false;
	timers[1].id = overrun_timeout;
	timers[1].keep_indicator = false;
	disable_timeouts(timers, overrun_timeout == MAX_TIMEOUTS ? 1 : 2);
	if (fired)
		QueryCancelPending = false;
}

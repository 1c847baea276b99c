#!/usr/bin/env bash
# bench/inbox_backlog.sh - how fast the consumer runs a backlog of pending
# inbox rows: the messages that waited while a subscription was paused,
# behind a key whose earlier message was retrying, or in a batch that a
# crash cut short.  They run through evbus_inbox_dispatch_due (inbox.c,
# inbox_due.c), a transaction of calls at a time, each key's in order.
#
# One throwaway PostgreSQL 15 and Kafka broker; one database with a
# subscription of a no-op SQL handler (owned by and run as a role that is
# not a superuser).  For each number of keys in KEYS: the subscription is
# paused, N pending rows as the consumer writes them (id order is Kafka
# order; keys round robin; a 200-byte payload) are inserted and analyzed,
# and the heads of one key in BLOCKED_EVERY are set retrying for an hour
# (attempts 1, next attempt in an hour), so that their keys' rows wait
# behind them as they would behind a failing message.  Then the
# subscription is resumed.  Measured: the time until every row that may
# run is handled (only the blocked keys' rows stay pending), the rate, and
# the consumer worker's CPU time (user + system, /proc) per handled row.
#
# Usage (as root or any user): bench/inbox_backlog.sh
# Environment: N (20000), KEYS ("40 5000"), BLOCKED_EVERY (8), plus those
#   of bench/lib.sh (EVBUS_REF: the commit to measure).
# Output: summary on stdout and in $RESULTS_DIR/summary.txt.

# shellcheck source=bench/lib.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"
bench_init inbox_backlog 1 "$@"

N=${N:-20000}
KEYS=${KEYS:-40 5000}
BLOCKED_EVERY=${BLOCKED_EVERY:-8}
REF=$(git_ rev-parse --short "${EVBUS_REF:-HEAD}")

environment_report >"$RESULTS_DIR/environment.txt"
echo "settings: N=$N KEYS=$KEYS BLOCKED_EVERY=$BLOCKED_EVERY" >>"$RESULTS_DIR/environment.txt"

pg_start "evbus.idle_timeout = 0"
kafka_start
q "CREATE TABLE handled (n bigint)"
subscribe_noop Backlog g_back "INSERT INTO public.handled VALUES ((payload->>'order_id')::bigint)"
q "GRANT INSERT ON handled TO bench_app"
set_brokers "$BROKERS"
cpid=$(consumer_pid bench) || die "no consumer worker"

: >"$RESULTS_DIR/summary.txt"
for keys in $KEYS; do
	q "SELECT evbus.pause_subscription('Backlog', 'noop(jsonb, jsonb)', 'g_back')" >/dev/null
	q "DELETE FROM evbus.inbox; TRUNCATE handled" >/dev/null
	log "$keys keys: inserting $N pending inbox rows"
	insert_inbox_rows "$N" g_back Backlog "$keys" pending
	# the first row of one key in BLOCKED_EVERY retries in an hour: its key waits
	q "UPDATE evbus.inbox SET attempts = 1, next_attempt_at = now() + interval '1 hour'
	    WHERE id IN (SELECT min(id) FROM evbus.inbox
	                  WHERE substr(event_key, 2)::int % $BLOCKED_EVERY = 0 GROUP BY event_key);
	   CHECKPOINT" >/dev/null
	blocked=$(q "SELECT count(*) FROM evbus.inbox WHERE substr(event_key, 2)::int % $BLOCKED_EVERY = 0")
	runnable=$((N - blocked))
	c0=$(proc_ticks "$cpid")
	t0=$EPOCHREALTIME
	s0=$SECONDS
	q "SELECT evbus.resume_subscription('Backlog', 'noop(jsonb, jsonb)', 'g_back')" >/dev/null
	while :; do
		done_rows=$(q "SELECT count(*) FROM handled")
		((done_rows >= runnable)) && break
		((SECONDS - s0 > 900)) && die "$keys keys: $done_rows of $runnable rows handled after 900 s"
		sleep 0.2
	done
	t1=$EPOCHREALTIME
	c1=$(proc_ticks "$cpid")
	[[ $(q "SELECT count(*) FROM evbus.inbox WHERE state = 'pending'") == "$blocked" ]] \
		|| die "$keys keys: the pending rows are not those of the blocked keys"
	{
		echo "inbox backlog: $N pending rows, $keys keys, $blocked rows behind a retrying head (evbus at $REF)"
		awk -v a="$t0" -v b="$t1" -v n="$runnable" 'BEGIN {printf "  %d rows handled in %.1f s: %.0f rows/s\n", n, b - a, n / (b - a)}'
		echo "  consumer CPU: $(ticks_to_s $((c1 - c0))) s, $(awk -v t=$((c1 - c0)) -v h="$CLK_TCK" -v n="$runnable" 'BEGIN {printf "%.0f", t / h * 1e6 / n}') us per row"
	} | tee -a "$RESULTS_DIR/summary.txt"
done

#!/usr/bin/env bash
# bench/inbox_trim.sh - what the inbox's retention costs the consumer: in a
# steady state every received message's row is also deleted, once
# evbus.inbox_retention has passed, by the consumer's trim.
#
# One throwaway PostgreSQL 15 and Kafka broker; one database with a
# subscription (so that its consumer worker runs) and N handled inbox rows
# as the consumer writes them (one handler, 100 keys, 3 partitions, a
# 200-byte payload and the headers a handler gets), inserted with the
# counting trigger and analyzed while evbus.inbox_retention is 7 days.
# Then the retention goes down to 1 hour, which makes every row due, and
# the consumer trims them.  Measured: the time until the inbox has no row
# of the group (evbus.inbox_messages, which the trim keeps), and the
# consumer worker's CPU time (user + system, /proc) over it, per row.
#
# Usage (as root or any user): bench/inbox_trim.sh
# Environment: N (300000), plus those of bench/lib.sh (EVBUS_REF: the
#   commit to measure).
# Output: summary on stdout and in $RESULTS_DIR/summary.txt.

# shellcheck source=bench/lib.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"
bench_init inbox_trim 1 "$@"

N=${N:-300000}
REF=$(git_ rev-parse --short "${EVBUS_REF:-HEAD}")

environment_report >"$RESULTS_DIR/environment.txt"
echo "settings: N=$N" >>"$RESULTS_DIR/environment.txt"

# the consumer runs throughout: an idle one (evbus.idle_timeout) trims
# nothing until it has work again
pg_start "evbus.idle_timeout = 0"
kafka_start
subscribe_noop Trimmed g_trim
set_brokers "$BROKERS"
cpid=$(consumer_pid bench) || die "no consumer worker"

log "inserting $N handled inbox rows"
insert_inbox_rows "$N" g_trim Trimmed 100 handled
q "CHECKPOINT"
[[ $(q "SELECT messages FROM evbus.inbox_messages WHERE group_name = 'g_trim'") == "$N" ]] \
	|| die "the inbox does not count $N messages"

log "evbus.inbox_retention = 1h: every row is due"
c0=$(proc_ticks "$cpid")
t0=$EPOCHREALTIME
s0=$SECONDS
q "ALTER SYSTEM SET evbus.inbox_retention = '1h'" >/dev/null
q "SELECT pg_reload_conf()" >/dev/null
while :; do
	left=$(q "SELECT messages FROM evbus.inbox_messages WHERE group_name = 'g_trim'")
	[[ $left == 0 ]] && break
	((SECONDS - s0 > 900)) && die "$left rows left after 900 s"
	sleep 0.2
done
t1=$EPOCHREALTIME
c1=$(proc_ticks "$cpid")
[[ $(q "SELECT count(*) FROM evbus.inbox") == 0 ]] || die "rows left in the inbox"

{
	echo "inbox trim: $N due handled rows of one handler (evbus at $REF)"
	echo "  all gone in $(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", b - a}') s"
	echo "  consumer CPU: $(ticks_to_s $((c1 - c0))) s, $(awk -v t=$((c1 - c0)) -v h="$CLK_TCK" -v n="$N" 'BEGIN {printf "%.2f", t / h * 1e6 / n}') us per row"
} | tee "$RESULTS_DIR/summary.txt"

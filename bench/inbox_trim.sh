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
"$KAFKA_SH" topics "$TMP_DIR/kafka" --create --topic Trimmed --partitions 3 \
	--replication-factor 1 >/dev/null
# the handler is subscribed by, owned by and runs as a role that is not a
# superuser
q "CREATE ROLE bench_app; GRANT USAGE ON SCHEMA evbus TO bench_app;
   GRANT EXECUTE ON FUNCTION evbus.subscribe(text, regprocedure, text, integer) TO bench_app"
q "CREATE FUNCTION noop(payload jsonb, headers jsonb) RETURNS void LANGUAGE sql AS 'SELECT';
   ALTER FUNCTION noop(jsonb, jsonb) OWNER TO bench_app"
q "SET ROLE bench_app; SELECT evbus.subscribe('Trimmed', 'noop(jsonb, jsonb)', 'g_trim')" >/dev/null
set_brokers "$BROKERS"
cpid=$(consumer_pid bench) || die "no consumer worker"

log "inserting $N handled inbox rows"
psql -qX -v ON_ERROR_STOP=1 -v n="$N" >/dev/null <<'SQL'
INSERT INTO evbus.inbox (group_name, dedup_key, message_id, integration_event, topic,
		kafka_partition, kafka_offset, handler, event_key, payload, headers, state,
		attempts, handled_at)
SELECT 'g_trim', mid, mid, 'Trimmed', 'Trimmed', i % 3, i / 3, 'public.noop(jsonb,jsonb)',
	   'k' || (i % 100),
	   jsonb_build_object('order_id', i, 'customer', 'c' || (i % 1000), 'amount', 123.45,
						  'currency', 'EUR', 'lines', jsonb_build_array(1, 2, 3),
						  'note', repeat('x', 60)),
	   jsonb_build_object('cap-msg-id', mid, 'cap-msg-name', 'Trimmed',
						  'cap-senttime', '2026-12-05T00:00:00.000000+00:00',
						  'evbus-source', 'bench', 'evbus-domain-event', 'Trimmed',
						  'evbus-topic', 'Trimmed', 'evbus-partition', i % 3,
						  'evbus-offset', i / 3, 'evbus-group', 'g_trim'),
	   'handled', 1, now() - interval '2 hours' + i * interval '1 microsecond'
  FROM (SELECT i, gen_random_uuid()::text AS mid FROM generate_series(1, :n) i) s;
ANALYZE evbus.inbox;
CHECKPOINT;
SQL
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

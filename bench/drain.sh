#!/usr/bin/env bash
# bench/drain.sh - how fast the worker empties a backlog into Kafka.
#
#   1. with publishing paused (evbus.brokers = ''), stage N events with
#      evbus.publish, CHUNK per transaction:
#        SELECT count(evbus.publish('DrainEvent', payload, key))
#          FROM generate_series(i, j) g
#      (the same ~200-byte payload shape as bench/commit_overhead.sh, 10,000
#      distinct keys), then CHECKPOINT;
#   2. point evbus.brokers at a real Kafka broker (own, via
#      test/kafka/kafka.sh; topic pre-created with 3 partitions) and reload;
#   3. wall time from the reload until the outbox is empty (polled every
#      0.1 s: evbus.publish_counters says N published, then
#      SELECT count(*) FROM evbus.outbox = 0)  ->  events/s;
#   4. Kafka holds N messages (sum of the partitions' end offsets, kcat -Q),
#      each message id once (kcat reads the cap-msg-id headers back);
#   5. outbox size (pg_total_relation_size of evbus.outbox_0 + outbox_1)
#      before, right after the drain, and after 2 x evbus.outbox_rotation
#      (10 s here) plus a few seconds: it returns to near empty by TRUNCATE.
#
# CPU seconds of the worker, the other PostgreSQL processes and the broker
# JVM during the drain are read from /proc, to show where the time goes.
#
# Usage (as root or any user; one command):
#   bench/drain.sh
# Environment: N (1000000), CHUNK (100000), ROTATION (10, seconds),
#   DRAIN_TIMEOUT (600 s), CHECK_IDS (1: read all messages back to check
#   message ids are unique), plus those of bench/lib.sh.
# Output: summary on stdout and in $RESULTS_DIR/summary.txt; progress
#   samples in $RESULTS_DIR/timeline.tsv.

# shellcheck source=bench/lib.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"
bench_init drain 1 "$@"

N=${N:-1000000}
CHUNK=${CHUNK:-100000}
ROTATION=${ROTATION:-10}
DRAIN_TIMEOUT=${DRAIN_TIMEOUT:-600}
CHECK_IDS=${CHECK_IDS:-1}
TOPIC=DrainEvent

environment_report >"$RESULTS_DIR/environment.txt"
echo "settings: N=$N CHUNK=$CHUNK ROTATION=${ROTATION}s" >>"$RESULTS_DIR/environment.txt"

pg_start "evbus.outbox_rotation = ${ROTATION}s"
kafka_start
"$KAFKA_SH" topics "$TMP_DIR/kafka" --create --topic "$TOPIC" \
	--partitions 3 --replication-factor 1 >"$RESULTS_DIR/topic-create.log" 2>&1 || { cat "$RESULTS_DIR/topic-create.log" >&2; die "could not create the topic"; }
KAFKA_PID=$(cat "$TMP_DIR/kafka/kafka.pid")
WORKER_PID=$(q "$PUBLISHER_PID_SQL")

outbox_size() {
	q "SELECT pg_total_relation_size('evbus.outbox_0') + pg_total_relation_size('evbus.outbox_1')"
}
pretty() { numfmt --to=iec-i --suffix=B "$1"; }

# ---- 1. stage ----
log "staging $N events, $CHUNK per transaction, publishing paused"
t0=$EPOCHREALTIME
staged=0
while ((staged < N)); do
	hi=$((staged + CHUNK < N ? staged + CHUNK : N))
	q "SELECT count(evbus.publish('$TOPIC',
		jsonb_build_object('account_id', g, 'branch_id', g % 10, 'teller_id', g % 100,
			'delta', g % 5000, 'currency', 'EUR', 'reason', 'pgbench tpcb-like transfer',
			'source', 'evbus bench/drain', 'ref', 'c0ffee00-1234-4abc-8def-000000000042'),
		'k' || (g % 10000)))
		FROM generate_series($((staged + 1)), $hi) g" >/dev/null
	staged=$hi
done
t1=$EPOCHREALTIME
stage_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}')
log "staged $N events in ${stage_s}s"
q "CHECKPOINT" >/dev/null
[[ $(q "SELECT count(*) FROM evbus.outbox") == "$N" ]] || die "the outbox does not hold $N events"
size_before=$(outbox_size)
rows_split=$(q "SELECT (SELECT count(*) FROM evbus.outbox_0) || ' in outbox_0, ' || (SELECT count(*) FROM evbus.outbox_1) || ' in outbox_1'")
q "EXPLAIN SELECT id, message_id, integration_event, event_key, payload, headers, domain_event, traceparent, staged_at FROM evbus.outbox WHERE id >= 1 AND (deliver_at IS NULL OR deliver_at <= now()) ORDER BY id LIMIT 10000" \
	>"$RESULTS_DIR/claim-plan.txt"

# ---- 2./3. drain ----
published() { q "SELECT coalesce((SELECT published FROM evbus.publish_counters WHERE integration_event = '$TOPIC'), 0)"; }
printf 'elapsed_s\tpublished\n' >"$RESULTS_DIR/timeline.tsv"
w0=$(proc_ticks "$WORKER_PID"); k0=$(proc_ticks "$KAFKA_PID"); p0=$(pg_other_ticks)
foreign_snapshot >"$TMP_DIR/foreign0"
log "draining to $BROKERS"
t0=$EPOCHREALTIME
set_brokers "$BROKERS"
limit=$((SECONDS + DRAIN_TIMEOUT))
next_sample=0
while :; do
	now=$EPOCHREALTIME
	el=$(awk -v a="$t0" -v b="$now" 'BEGIN {printf "%.2f", b - a}')
	p=$(published)
	if awk -v e="$el" -v s="$next_sample" 'BEGIN {exit !(e >= s)}'; then
		printf '%s\t%s\n' "$el" "$p" >>"$RESULTS_DIR/timeline.tsv"
		next_sample=$((next_sample + 1))
	fi
	if ((p >= N)) && [[ $(q "SELECT NOT EXISTS (SELECT 1 FROM evbus.outbox)") == t ]]; then
		break
	fi
	if ((SECONDS >= limit)); then
		q "SELECT * FROM evbus.stats" >&2
		die "the outbox still holds $(q "SELECT count(*) FROM evbus.outbox") events after ${DRAIN_TIMEOUT}s"
	fi
	sleep 0.1
done
t1=$EPOCHREALTIME
w1=$(proc_ticks "$WORKER_PID"); k1=$(proc_ticks "$KAFKA_PID"); p1=$(pg_other_ticks)
foreign_snapshot >"$TMP_DIR/foreign1"
printf '%s\t%s\n' "$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}')" "$(published)" >>"$RESULTS_DIR/timeline.tsv"
drain_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}')
rate=$(awk -v n="$N" -v s="$drain_s" 'BEGIN {printf "%.0f", n / s}')
count_after=$(q "SELECT count(*) FROM evbus.outbox")
size_after=$(outbox_size)
log "drained $N events in ${drain_s}s = $rate events/s"

# ---- 4. Kafka side ----
offsets=$(kafka_end_offsets "$TOPIC")
dead=$(q "SELECT count(*) FROM evbus.dead_letters")
unique_ids=-
if [[ $CHECK_IDS == 1 ]]; then
	unique_ids=$(kcat -b "$BROKERS" -C -t "$TOPIC" -o beginning -e -q -f '%h\n' 2>/dev/null \
		| grep -o 'cap-msg-id=[^,]*' | sort -u | wc -l)
fi

# ---- 5. rotation returns the outbox to empty ----
wait_s=$((2 * ROTATION + 5))
log "waiting ${wait_s}s (2 x evbus.outbox_rotation + 5 s)"
sleep "$wait_s"
size_rotated=$(outbox_size)

{
	echo "drain: $N events staged with evbus.publish while paused, then published to a real Kafka broker"
	echo
	echo "staging:        $N events in ${stage_s}s ($(awk -v n="$N" -v s="$stage_s" 'BEGIN {printf "%.0f", n / s}') events/s, $CHUNK per transaction); $rows_split"
	echo "drain:          ${drain_s}s from pg_reload_conf() to an empty outbox  =>  $rate events/s  (goal >= 100000)"
	echo "outbox rows:    $N before, $count_after after"
	echo "kafka:          sum of end offsets of $TOPIC = $offsets (expected $N); distinct cap-msg-id read back = $unique_ids; dead letters = $dead"
	echo "outbox size:    before $(pretty "$size_before"), right after the drain $(pretty "$size_after"), ${wait_s}s later $(pretty "$size_rotated")"
	echo "CPU during the drain (s): evbus worker $(ticks_to_s $((w1 - w0))), other PostgreSQL processes $(ticks_to_s $((p1 - p0))), Kafka JVM $(ticks_to_s $((k1 - k0))), other processes (not this benchmark's) $(foreign_cpu_s "$TMP_DIR/foreign0" "$TMP_DIR/foreign1") (of $(awk -v s="$drain_s" -v c="$(nproc)" 'BEGIN {printf "%.1f", s * c}') available on $(nproc) cores)"
	echo
	echo "progress (elapsed s, published):"
	awk -F'\t' 'NR > 1 {printf "  %6.2f %8d\n", $1, $2}' "$RESULTS_DIR/timeline.tsv"
} | tee "$RESULTS_DIR/summary.txt"

#!/usr/bin/env bash
# bench/metrics.sh - how long a scrape takes: evbus.metrics() and
# evbus.stats with a large inbox.
#
# A throwaway PostgreSQL (bench/lib.sh's pg_start, publishing paused, no
# Kafka).  The inbox is filled by INSERT ... SELECT generate_series, as
# the superuser, not by consuming: SIZES (default "1000000 10000000")
# handled messages of one group on one topic, with their consumer offsets;
# after each size, ANALYZE and a CHECKPOINT, then ROUNDS timed calls of
# each query in one session (psql \timing; the first call of each is a
# warm-up, not counted).  evbus.metrics() reads no table: its time is the
# same at any size; evbus.stats reads the inbox.
#
# Usage (as root or any user; one command):
#   bench/metrics.sh
# Environment: SIZES, ROUNDS (20), plus those of bench/lib.sh.
# Output: summary on stdout and in $RESULTS_DIR/summary.txt; every call's
#   time in $RESULTS_DIR/runs.tsv.

# shellcheck source=bench/lib.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"
bench_init metrics 0 "$@"

SIZES=${SIZES:-"1000000 10000000"}
ROUNDS=${ROUNDS:-20}

environment_report >"$RESULTS_DIR/environment.txt"
echo "settings: SIZES=$SIZES ROUNDS=$ROUNDS" >>"$RESULTS_DIR/environment.txt"

pg_start

# times_ms SQL: ROUNDS + 1 calls in one session; the times of the last ROUNDS
times_ms() {
	local i script="\\timing on"
	for ((i = 0; i <= ROUNDS; i++)); do
		script+=$'\n'"$1"
	done
	psql -qXAt -v ON_ERROR_STOP=1 <<<"$script" | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' | tail -n +2
}

printf 'rows\tquery\tms\n' >"$RESULTS_DIR/runs.tsv"
have=0
for size in $SIZES; do
	log "filling the inbox to $size rows"
	start=$(date +%s)
	q "INSERT INTO evbus.inbox (group_name, dedup_key, message_id, integration_event, topic,
	       kafka_partition, kafka_offset, handler, payload, headers, state, attempts,
	       received_at, handled_at)
	   SELECT 'bench', g::text, g::text, 'BenchEvent', 'BenchEvent', (g % 8)::int, g / 8,
	          'public.handle(pg_catalog.jsonb)', '{\"n\": 1}', '{}', 'handled', 1,
	          now() - interval '1 hour', now() - interval '1 hour'
	     FROM generate_series($((have + 1)), $size) g" >/dev/null
	q "INSERT INTO evbus.consumer_offsets (group_name, topic, kafka_partition, next_offset, high_watermark)
	   SELECT 'bench', 'BenchEvent', p, $size / 8, $size / 8 FROM generate_series(0, 7) p
	   ON CONFLICT (group_name, topic, kafka_partition) DO UPDATE
	   SET next_offset = excluded.next_offset, high_watermark = excluded.high_watermark" >/dev/null
	q "VACUUM ANALYZE evbus.inbox" >/dev/null
	q "CHECKPOINT" >/dev/null
	log "filled in $(($(date +%s) - start)) s: $(q "SELECT pg_size_pretty(pg_total_relation_size('evbus.inbox'))")"
	have=$size
	for query in metrics stats; do
		case $query in
			metrics) sql="SELECT count(*) FROM evbus.metrics();" ;;
			stats) sql="SELECT count(*) FROM evbus.stats;" ;;
		esac
		times_ms "$sql" | while read -r ms; do
			printf '%s\t%s\t%s\n' "$size" "$query" "$ms"
		done >>"$RESULTS_DIR/runs.tsv"
		log "$size rows, $query: median $(awk -F'\t' -v s="$size" -v q="$query" '$1 == s && $2 == q {print $3}' "$RESULTS_DIR/runs.tsv" | median) ms"
	done
done

{
	echo "metrics: time of one call, in ms, $ROUNDS calls per query and size (after a warm-up)"
	echo
	printf '  %-10s  %-8s  %8s  %8s  %8s\n' rows query median min max
	for size in $SIZES; do
		for query in metrics stats; do
			vals=$(awk -F'\t' -v s="$size" -v q="$query" '$1 == s && $2 == q {print $3}' "$RESULTS_DIR/runs.tsv")
			printf '  %-10s  %-8s  %8.3f  %8.3f  %8.3f\n' "$size" "$query" \
				"$(median <<<"$vals")" "$(sort -g <<<"$vals" | head -1)" "$(sort -g <<<"$vals" | tail -1)"
		done
	done
	echo
	echo "metrics = SELECT count(*) FROM evbus.metrics(); stats = SELECT count(*) FROM evbus.stats"
} | tee "$RESULTS_DIR/summary.txt"

#!/usr/bin/env bash
# bench/commit_overhead.sh - what staging an event costs a committing
# transaction: pgbench TPC-B-like transactions plus one event each, three
# ways, with the SAME ~200-byte JSON payload:
#
#   a  a hand-written outbox INSERT into a plain table
#      (id identity PK, topic, key, payload jsonb, headers jsonb, created_at)
#   b  SELECT evbus.raise('AccountUpdatedDomainEvent', payload, key) through
#      one SQL converter (jsonb) RETURNS jsonb that returns its input
#   c  SELECT evbus.publish('AccountUpdated', payload, key)
#
# in two modes:
#   paused  evbus.brokers = '' (events stay in the outbox: pure staging cost)
#   kafka   the worker publishes to a real Kafka broker (full system cost;
#           the broker's JVM runs on the same 2 cores)
#   embedded  the worker publishes to evbus.brokers = 'embedded' (librdkafka's
#           mock cluster, C threads inside evbus's launcher process, whose
#           CPU is not reported): the worker's cost without a JVM broker on
#           the same cores (not in the default MODES)
#
# pgbench scale 10, 8 clients, -j 2, -M prepared; CHECKPOINT before every
# run; variants interleaved in rounds, the order rotated from round to
# round (a b c, b c a, c a b, ...) so that drift hits all alike, and so
# does anything periodic: a round of three 20-s runs lasts about as long
# as one evbus.outbox_rotation (60 s), so in a fixed order the outbox
# switched tables during the same variant's run in every round.  Before each run pgbench_history and the outbox tables are
# emptied (in kafka mode: the worker has drained the evbus outbox), so every
# run starts from the same state.  WAL per transaction is the
# pg_current_wal_lsn() difference over the run divided by the transactions;
# in kafka mode the end LSN is taken once the worker has drained the outbox,
# so the worker's WAL (its finishes) is counted too.
#
# Usage (as root or any user; one command):
#   bench/commit_overhead.sh
# Environment: DURATION (s per run, 30), ROUNDS (3), CLIENTS (8), THREADS (2),
#   SCALE (10), MODES ("paused kafka"), VARIANTS ("a b c"; "t" adds plain
#   TPC-B-like without any outbox), DRAIN_TIMEOUT (s to wait for the worker
#   to empty the outbox after a kafka-mode run, 300), STALL_S (stop waiting
#   when the outbox has not changed for this long, 15), WARMUP (s of
#   uncounted runs, split between the variants, before the rounds of each
#   mode, 240: the broker's JVM keeps compiling for minutes; with 20 s of
#   warm-up per variant it used 1.2-1.6 CPU-s per 20-s run of (c), with
#   80 s 0.6-0.7, for the same events), WAL_STATS (non-empty: save
#   `pg_waldump --stats=record` of each run's WAL as walstats-*.txt), plus
#   those of bench/lib.sh (PG_CONF: server settings).
# Output: a summary on stdout and in $RESULTS_DIR/summary.txt, one row per
#   run in $RESULTS_DIR/runs.tsv, pgbench output per run.

# shellcheck source=bench/lib.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"
bench_init commit_overhead 1 "$@"

DURATION=${DURATION:-30}
ROUNDS=${ROUNDS:-3}
CLIENTS=${CLIENTS:-8}
THREADS=${THREADS:-2}
SCALE=${SCALE:-10}
MODES=${MODES:-paused kafka}
VARIANTS=${VARIANTS:-a b c}
DRAIN_TIMEOUT=${DRAIN_TIMEOUT:-300}
STALL_S=${STALL_S:-15}
WARMUP=${WARMUP:-240}
PG_CONF=${PG_CONF:-}

environment_report >"$RESULTS_DIR/environment.txt"
{
	echo "settings: DURATION=$DURATION ROUNDS=$ROUNDS CLIENTS=$CLIENTS THREADS=$THREADS SCALE=$SCALE MODES='$MODES' VARIANTS='$VARIANTS' PG_CONF='$PG_CONF'"
} >>"$RESULTS_DIR/environment.txt"

pg_start
q "SHOW shared_buffers" >/dev/null

log "pgbench -i -s $SCALE"
pgbench -i -q -s "$SCALE" >"$TMP_DIR/pgbench-init.log" 2>&1 \
	|| { cat "$TMP_DIR/pgbench-init.log" >&2; die "pgbench -i failed"; }

create_staging_variants

# The payload, identical in all variants (its numbers vary per transaction).
PAYLOAD="jsonb_build_object('account_id', :aid::int, 'branch_id', :bid::int, 'teller_id', :tid::int, 'delta', :delta::int, 'currency', 'EUR', 'reason', 'pgbench tpcb-like transfer', 'source', 'evbus bench/commit_overhead', 'ref', 'c0ffee00-1234-4abc-8def-000000000042')"
q "SELECT 'payload: ' || length(jsonb_build_object('account_id', 123456::int, 'branch_id', 3, 'teller_id', 27, 'delta', -1234, 'currency', 'EUR', 'reason', 'pgbench tpcb-like transfer', 'source', 'evbus bench/commit_overhead', 'ref', 'c0ffee00-1234-4abc-8def-000000000042')::text) || ' bytes as jsonb::text (' || length(replace(replace(jsonb_build_object('account_id', 123456::int, 'branch_id', 3, 'teller_id', 27, 'delta', -1234, 'currency', 'EUR', 'reason', 'pgbench tpcb-like transfer', 'source', 'evbus bench/commit_overhead', 'ref', 'c0ffee00-1234-4abc-8def-000000000042')::text, '\": ', '\":'), ', \"', ',\"')) || ' as compact JSON, the Kafka message value)'" \
	| tee -a "$RESULTS_DIR/environment.txt" >&2

declare -A STMT=(
	[t]=""
	[a]="INSERT INTO bench_outbox (topic, key, payload) VALUES ('AccountUpdated', :aid::text, $PAYLOAD);"
	[b]="SELECT evbus.raise('AccountUpdatedDomainEvent', $PAYLOAD, :aid::text);"
	[c]="SELECT evbus.publish('AccountUpdated', $PAYLOAD, :aid::text);"
)
# rotated N WORDS...: the words, rotated left by N (mod their count).
rotated() {
	local n=$1
	shift
	local words=("$@") i
	for ((i = 0; i < ${#words[@]}; i++)); do
		printf '%s ' "${words[(i + n) % ${#words[@]}]}"
	done
}

for v in $VARIANTS; do
	[[ -v STMT[$v] ]] || die "unknown variant $v"
	cat >"$RESULTS_DIR/variant-$v.sql" <<EOF
\\set aid random(1, 100000 * :scale)
\\set bid random(1, 1 * :scale)
\\set tid random(1, 10 * :scale)
\\set delta random(-5000, 5000)
BEGIN;
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
UPDATE pgbench_tellers SET tbalance = tbalance + :delta WHERE tid = :tid;
UPDATE pgbench_branches SET bbalance = bbalance + :delta WHERE bid = :bid;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (:tid, :bid, :aid, :delta, CURRENT_TIMESTAMP);
${STMT[$v]}
END;
EOF
done

printf 'mode\tround\tvariant\ttps\ttransactions\tlatency_ms\twal_bytes\twal_per_tx\tdrain_after_s\tleft_in_outbox\tcpu_busy_pct\tworker_cpu_s\tkafka_cpu_s\tforeign_cpu_s\n' >"$RESULTS_DIR/runs.tsv"
LEFT=0	# events the worker left behind so far (see BENCHMARKS.md)

run_one() {
	local mode=$1 round=$2 v=$3 out lsn0 lsn1 tps n lat wal drain=- left=- settled
	local busy0 tot0 busy1 tot1 w0 w1 k0 k1 wpid kpid
	out=$RESULTS_DIR/pgbench-$mode-r$round-$v.log
	if [[ $mode == paused ]]; then
		q "TRUNCATE evbus.outbox_0, evbus.outbox_1" >/dev/null
	fi
	q "TRUNCATE pgbench_history, bench_outbox" >/dev/null
	q "VACUUM pgbench_branches, pgbench_tellers" >/dev/null
	q "CHECKPOINT" >/dev/null
	wpid=$(evbus_worker_pid)
	kpid=$(kafka_pid)
	w0=$(proc_ticks "$wpid"); k0=$(proc_ticks "$kpid")
	foreign_snapshot >"$TMP_DIR/foreign0"
	read -r busy0 tot0 < <(cpu_stat)
	lsn0=$(q "SELECT pg_current_wal_lsn()")
	pgbench -n -M prepared -c "$CLIENTS" -j "$THREADS" -T "$DURATION" \
		-f "$RESULTS_DIR/variant-$v.sql" >"$out" 2>&1 \
		|| { cat "$out" >&2; die "pgbench failed"; }
	read -r busy1 tot1 < <(cpu_stat)
	foreign_snapshot >"$TMP_DIR/foreign1"
	w1=$(proc_ticks "$wpid"); k1=$(proc_ticks "$kpid")
	if [[ $mode != paused ]]; then
		# the worker's catching up after the run (and its WAL) belongs to it
		read -r drain left < <(wait_outbox_settled "$DRAIN_TIMEOUT" "$STALL_S" "$LEFT")
		if ((left > LEFT)); then
			log "warning: $((left - LEFT)) more events are still in the outbox ${STALL_S}s after its last change"
			{ echo "after $mode round $round variant $v:"; q "SELECT id, event_key, staged_at FROM evbus.outbox ORDER BY id"; } \
				>>"$RESULTS_DIR/left-in-outbox.txt"
		fi
		LEFT=$left
	fi
	lsn1=$(q "SELECT pg_current_wal_lsn()")
	if [[ -n ${WAL_STATS:-} ]]; then
		"$PGBIN/pg_waldump" -p "$TMP_DIR/pg/pg_wal" -s "$lsn0" -e "$lsn1" --stats=record \
			>"$RESULTS_DIR/walstats-$mode-r$round-$v.txt" 2>&1 || true
	fi
	tps=$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time)/\1/p' "$out")
	n=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$out")
	lat=$(sed -n 's/^latency average = \([0-9.]*\) ms/\1/p' "$out")
	wal=$(q "SELECT pg_wal_lsn_diff('$lsn1', '$lsn0')::bigint")
	printf '%s\t%s\t%s\t%.1f\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\n' "$mode" "$round" "$v" "$tps" "$n" "$lat" \
		"$wal" "$((wal / n))" "$drain" "$left" \
		"$(awk -v b=$((busy1 - busy0)) -v t=$((tot1 - tot0)) 'BEGIN {printf "%.0f", 100 * b / t}')" \
		"$(ticks_to_s $((w1 - w0)))" "$(ticks_to_s $((k1 - k0)))" \
		"$(foreign_cpu_s "$TMP_DIR/foreign0" "$TMP_DIR/foreign1")" >>"$RESULTS_DIR/runs.tsv"
	log "$mode round $round variant $v: $tps tps, $((wal / n)) B WAL/tx, latency $lat ms, worker CPU $(ticks_to_s $((w1 - w0)))s, Kafka CPU $(ticks_to_s $((k1 - k0)))s, other processes' CPU $(foreign_cpu_s "$TMP_DIR/foreign0" "$TMP_DIR/foreign1")s, outbox empty ${drain}s after the run (left: $left)"
}

for mode in $MODES; do
	case $mode in
	paused)
		set_brokers ''
		;;
	kafka)
		kafka_start
		"$KAFKA_SH" topics "$TMP_DIR/kafka" --create --topic AccountUpdated \
			--partitions 3 --replication-factor 1 >"$RESULTS_DIR/topic-create.log" 2>&1 || { cat "$RESULTS_DIR/topic-create.log" >&2; die "could not create the topic"; }
		set_brokers "$BROKERS"
		sleep 2
		[[ $(q "SELECT evbus.brokers()") == "$BROKERS" ]] \
			|| log "warning: evbus.brokers() says '$(q "SELECT evbus.brokers()")'"
		;;
	embedded)
		set_brokers embedded
		sleep 2
		[[ $(q "SELECT evbus.brokers()") == 127.0.0.1:* ]] \
			|| die "the embedded broker did not start: evbus.brokers() says '$(q "SELECT evbus.brokers()")'"
		;;
	*) die "unknown mode $mode" ;;
	esac
	if ((WARMUP > 0)); then
		# every variant, so that the paths each one uses (in Kafka mode: the
		# worker's and the broker's JIT-compiled produce path) are warm
		nvar=$(wc -w <<<"$VARIANTS")
		each=$(((WARMUP + nvar - 1) / nvar))
		log "$mode: warm-up, ${each}s of each variant ($VARIANTS; not counted)"
		q "CHECKPOINT" >/dev/null
		for v in $VARIANTS; do
			pgbench -n -M prepared -c "$CLIENTS" -j "$THREADS" -T "$each" \
				-f "$RESULTS_DIR/variant-$v.sql" >"$RESULTS_DIR/pgbench-$mode-warmup-$v.log" 2>&1 \
				|| { cat "$RESULTS_DIR/pgbench-$mode-warmup-$v.log" >&2; die "pgbench failed"; }
		done
	fi
	for round in $(seq 1 "$ROUNDS"); do
		for v in $(rotated $((round - 1)) $VARIANTS); do
			run_one "$mode" "$round" "$v"
		done
	done
	if [[ $mode == kafka ]]; then
		read -r drain left < <(wait_outbox_settled "$DRAIN_TIMEOUT" "$STALL_S")
		echo "kafka: events staged $(q "SELECT last_value FROM evbus.outbox_id_seq"), left in the outbox $left, acknowledged (evbus.stats published) = $(q "SELECT published FROM evbus.stats WHERE topic = 'AccountUpdated'"), end offsets of AccountUpdated = $(kafka_end_offsets AccountUpdated)" \
			| tee -a "$RESULTS_DIR/environment.txt" >&2
	fi
done

# ---- summary ----
summarize() {
	local mode v med wal base col
	echo "commit_overhead: pgbench scale $SCALE, $CLIENTS clients, -j $THREADS, -M prepared, ${DURATION}s runs, $ROUNDS rounds"
	for mode in $MODES; do
		echo
		echo "mode $mode:"
		printf '  %-4s %-28s %8s %6s %9s %9s %8s %8s %8s\n' var "tps per run" median ratio "WAL B/tx" "lat ms" "worker s" "kafka s" "others s"
		base=
		for v in $VARIANTS; do
			col() { awk -F'\t' -v m="$mode" -v v="$v" -v c="$1" '$1==m && $3==v {print $c}' "$RESULTS_DIR/runs.tsv"; }
			med=$(col 4 | median)
			[[ $v == a ]] && base=$med
			printf '  %-4s %-28s %8.1f %6s %9s %9s %8s %8s %8s\n' "$v" "$(col 4 | tr '\n' ' ')" "$med" \
				"$([[ -n $base ]] && awk -v x="$med" -v b="$base" 'BEGIN {printf "%.3f", x / b}' || echo -)" \
				"$(col 8 | median)" "$(col 6 | median)" "$(col 12 | median)" "$(col 13 | median)" "$(col 14 | median)"
		done
	done
	echo
	echo "ratio = median tps of the variant / median tps of variant a (goal for b and c: >= 0.95)"
	echo
	echo "paired ratios (tps of the variant / tps of variant a in the same round), per round and median:"
	for mode in $MODES; do
		for v in $VARIANTS; do
			[[ $v == a ]] && continue
			local ratios
			ratios=$(awk -F'\t' -v m="$mode" -v v="$v" '
				$1 == m && $3 == "a" { a[$2] = $4 }
				$1 == m && $3 == v { x[$2] = $4 }
				END { for (r in x) if (r in a) printf "%.3f\n", x[r] / a[r] }' "$RESULTS_DIR/runs.tsv" | sort -g)
			printf '  %-6s %s/a: %s -> median %s\n' "$mode" "$v" "$(echo $ratios)" "$(echo "$ratios" | median)"
		done
	done
	echo "WAL B/tx, lat ms (pgbench latency average), worker s / kafka s (CPU seconds of the evbus worker /"
	echo "the Kafka JVM during the run), others s (CPU seconds of processes that are not this benchmark's own,"
	echo "e.g. other people's tests on this shared machine; a lower bound): medians over the rounds.  Raw rows: runs.tsv"
}
summarize | tee "$RESULTS_DIR/summary.txt"

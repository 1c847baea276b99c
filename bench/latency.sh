#!/usr/bin/env bash
# bench/latency.sh - how long an event takes from staging to the broker.
#
# With the worker publishing to a real Kafka broker (own, via
# test/kafka/kafka.sh), pgbench produces events at a fixed rate (-R 1000,
# 30 s, 4 clients, -M prepared), one evbus.publish per transaction, whose
# payload carries the staging time clock_timestamp() in microseconds.  The
# topic is created with message.timestamp.type=LogAppendTime, so each
# message's Kafka timestamp is the time the broker appended it to its log.
# kcat reads every message back (-f '%T ...': timestamp, headers, value),
# and per event:
#
#   latency = broker append time - staging time
#
# What this measures: staging -> broker append.  The staging transaction
# commits slightly after clock_timestamp() is taken (the INSERT, then the
# commit's WAL flush), so the latency includes the commit itself; it ends
# when the broker has appended the message (acks=all on a single broker),
# not when the worker has seen the acknowledgement or deleted the outbox row.
# Kafka timestamps have millisecond resolution (truncated), so each value
# is up to 1 ms short.
#
# The cap-senttime header (when the worker handed the event to librdkafka)
# splits the latency into staging -> produce (PostgreSQL side: commit, the
# worker's wake-up and claim) and produce -> append (librdkafka's linger,
# the network round trip and the broker).
#
# With LOAD=N, N more pgbench clients run TPC-B-like transactions (without
# events, as fast as they can) during the warm-up and the measured run:
# the latency of events on a server whose CPUs are contended.  With
# PG_CONF="log_min_messages = debug1" the summary counts the times the
# worker lengthened its linger after a claim of many events (any LOAD;
# docs/publisher.md, "Pacing").
#
# Usage (as root or any user; one command):
#   bench/latency.sh
# Environment: RATE (1000 events/s), DURATION (30 s), CLIENTS (4),
#   THREADS (2), WARMUP (5 s of the same load on another topic before the
#   measured run, so the broker's JVM is warm), LOAD (0 clients of
#   saturating load), plus those of bench/lib.sh (PG_CONF: server
#   settings, e.g. "evbus.publish_linger = 0").
# Output: summary on stdout and in $RESULTS_DIR/summary.txt; per-event
#   values in $RESULTS_DIR/latencies.tsv.gz.

# shellcheck source=bench/lib.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"
bench_init latency 1 "$@"

RATE=${RATE:-1000}
DURATION=${DURATION:-30}
CLIENTS=${CLIENTS:-4}
THREADS=${THREADS:-2}
WARMUP=${WARMUP:-5}
LOAD=${LOAD:-0}
PG_CONF=${PG_CONF:-}
TOPIC=LatencyEvent

environment_report >"$RESULTS_DIR/environment.txt"
echo "settings: RATE=$RATE DURATION=$DURATION CLIENTS=$CLIENTS THREADS=$THREADS LOAD=$LOAD PG_CONF='$PG_CONF'" >>"$RESULTS_DIR/environment.txt"

pg_start
if ((LOAD > 0)); then
	pgbench -i -q -s 10 >"$TMP_DIR/pgbench-init.log" 2>&1 \
		|| { cat "$TMP_DIR/pgbench-init.log" >&2; die "pgbench -i failed"; }
fi

# load_start SECONDS: the saturating load (LOAD clients) in the background
load_start() {
	((LOAD > 0)) || return 0
	pgbench -n -M prepared -b tpcb-like -c "$LOAD" -j "$THREADS" -T "$1" \
		>"$TMP_DIR/load-$1.log" 2>&1 &
	LOAD_PID=$!
}
load_wait() {
	((LOAD > 0)) || return 0
	wait "$LOAD_PID" || { cat "$TMP_DIR/load-$1.log" >&2; die "the load's pgbench failed"; }
}
kafka_start
"$KAFKA_SH" topics "$TMP_DIR/kafka" --create --topic "$TOPIC" --partitions 3 \
	--replication-factor 1 --config message.timestamp.type=LogAppendTime >/dev/null
"$KAFKA_SH" topics "$TMP_DIR/kafka" --describe --topic "$TOPIC" >"$RESULTS_DIR/topic.txt" 2>&1
grep -q 'message.timestamp.type=LogAppendTime' "$RESULTS_DIR/topic.txt" \
	|| die "topic $TOPIC is not LogAppendTime: $(cat "$RESULTS_DIR/topic.txt")"

cat >"$RESULTS_DIR/latency.sql" <<'EOF'
\set k random(1, 10000)
SELECT evbus.publish('LatencyEvent', jsonb_build_object('staged_us', (extract(epoch FROM clock_timestamp()) * 1000000)::bigint, 'account_id', :k::int, 'currency', 'EUR', 'reason', 'pgbench tpcb-like transfer', 'source', 'evbus bench/latency', 'ref', 'c0ffee00-1234-4abc-8def-000000000042'), :k::text);
EOF

set_brokers "$BROKERS"
# warm up (not measured): 20 events on the measured topic, so that the
# producer has its idempotence PID and the topic's metadata (the first
# events after a start wait for them: bench/new_topic.sh; these 20 carry no
# staging time and are skipped when reading back), then WARMUP seconds of the same
# load on another topic, so that the broker's JVM has compiled its hot paths
log "warm-up: 20 events on $TOPIC, then ${WARMUP}s at $RATE events/s on topic LatencyWarmup"
q "SELECT count(evbus.publish('$TOPIC', jsonb_build_object('warmup', true), 'w' || g)) FROM generate_series(1, 20) g" >/dev/null
read -r s left < <(wait_outbox_settled 120 60)
((left == 0)) || die "warm-up events not published after ${s}s"
if ((WARMUP > 0)); then
	sed 's/LatencyEvent/LatencyWarmup/' "$RESULTS_DIR/latency.sql" >"$TMP_DIR/warmup.sql"
	load_start "$WARMUP"
	pgbench -n -M prepared -c "$CLIENTS" -j "$THREADS" -R "$RATE" -T "$WARMUP" \
		-f "$TMP_DIR/warmup.sql" >"$TMP_DIR/warmup.log" 2>&1 \
		|| { cat "$TMP_DIR/warmup.log" >&2; die "pgbench failed"; }
	load_wait "$WARMUP"
	read -r s left < <(wait_outbox_settled 120 15)
fi
sleep 1


wpid=$(evbus_worker_pid)
kpid=$(kafka_pid)
w0=$(proc_ticks "$wpid"); k0=$(proc_ticks "$kpid")
foreign_snapshot >"$TMP_DIR/foreign0"
read -r busy0 tot0 < <(cpu_stat)
log "pgbench -R $RATE -T $DURATION (and $LOAD clients of TPC-B-like load)"
load_start "$DURATION"
pgbench -n -M prepared -c "$CLIENTS" -j "$THREADS" -R "$RATE" -T "$DURATION" \
	-f "$RESULTS_DIR/latency.sql" >"$RESULTS_DIR/pgbench.log" 2>&1 \
	|| { cat "$RESULTS_DIR/pgbench.log" >&2; die "pgbench failed"; }
load_wait "$DURATION"
read -r busy1 tot1 < <(cpu_stat)
foreign_snapshot >"$TMP_DIR/foreign1"
w1=$(proc_ticks "$wpid"); k1=$(proc_ticks "$kpid")
staged=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$RESULTS_DIR/pgbench.log")
read -r s left < <(wait_outbox_settled 120 15)
((left == 0)) || log "warning: $left events still in the outbox ${s}s after the run"

# Read everything back: Kafka timestamp (ms), cap-senttime header, staged_us.
kcat -b "$BROKERS" -C -t "$TOPIC" -o beginning -e -q -f '%T\t%h\t%s\n' 2>/dev/null \
	| perl -MTime::Local=timegm -ne '
		my ($ts, $h, $v) = split /\t/;
		next unless $v =~ /"staged_us":\s*(\d+)/;
		my $staged = $1 / 1000.0;
		my $sent = "";
		if ($h =~ /cap-senttime=(\d+)-(\d+)-(\d+) (\d+):(\d+):(\d+)(\.\d+)?([+-]\d+)/) {
			my $t = timegm($6, $5, $4, $3, $2 - 1, $1) + ($7 // 0) - $8 * 3600;
			$sent = sprintf "%.3f", $t * 1000;
		}
		printf "%.3f\t%d\t%s\t%.3f\t%s\t%s\n", $staged, $ts, $sent, $ts - $staged,
			$sent eq "" ? "" : sprintf("%.3f", $sent - $staged),
			$sent eq "" ? "" : sprintf("%.3f", $ts - $sent);
	' >"$TMP_DIR/lat.tsv"
{
	printf 'staged_ms\tappend_ms\tproduced_ms\tlatency_ms\tstaged_to_produce_ms\tproduce_to_append_ms\n'
	sort -n "$TMP_DIR/lat.tsv"
} | gzip -9 >"$RESULTS_DIR/latencies.tsv.gz"
got=$(wc -l <"$TMP_DIR/lat.tsv")

# percentiles (nearest rank) of column $1 of lat.tsv
pct() {
	cut -f"$1" "$TMP_DIR/lat.tsv" | sort -g | awk '
		{ a[NR] = $1; s += $1 }
		END {
			if (NR == 0) { print "-"; exit }
			n = split("50 90 99", p, " ")
			for (i = 1; i <= n; i++) { r = int((p[i] / 100) * NR + 0.999999); if (r < 1) r = 1; printf "p%s %.1f  ", p[i], a[r] }
			printf "max %.1f  mean %.2f", a[NR], s / NR
		}'
}

{
	echo "latency: $staged events staged by pgbench -R $RATE -T $DURATION ($CLIENTS clients, -M prepared), one evbus.publish per transaction;"
	echo "read back from Kafka: $got (left in the outbox: $left)"
	echo
	echo "staging -> broker append (ms):   $(pct 4)    (goal: p50 <= 5 ms)"
	echo "  staging -> produce (ms):       $(pct 5)"
	echo "  produce -> append (ms):        $(pct 6)"
	echo
	echo "pgbench: $(grep -E '^(latency average|tps)' "$RESULTS_DIR/pgbench.log" | tr '\n' ';' | sed 's/;$//')"
	if ((LOAD > 0)); then
		echo "load ($LOAD clients, TPC-B-like, no events): $(grep -E '^(latency average|tps)' "$TMP_DIR/load-$DURATION.log" | tr '\n' ';' | sed 's/;$//')"
	fi
	[[ ${PG_CONF:-} != *debug1* ]] \
		|| echo "worker: $(grep -c 'evbus: a claim carried [0-9]* events: claims linger [0-9]* ms' "$TMP_DIR/pg.log" || true) lengthening(s) of the linger logged (warm-up included)"
	echo "CPU during the run: machine $(awk -v b=$((busy1 - busy0)) -v t=$((tot1 - tot0)) 'BEGIN {printf "%.0f", 100 * b / t}')% busy; evbus worker $(ticks_to_s $((w1 - w0)))s, Kafka JVM $(ticks_to_s $((k1 - k0)))s, other processes (not this benchmark's) $(foreign_cpu_s "$TMP_DIR/foreign0" "$TMP_DIR/foreign1")s over ${DURATION}s"
	echo
	echo "staging = clock_timestamp() in the staging statement (before its INSERT and COMMIT);"
	echo "append = the message's LogAppendTime (ms, truncated); produce = the cap-senttime header"
	echo "(when the worker handed the event to librdkafka)."
} | tee "$RESULTS_DIR/summary.txt"

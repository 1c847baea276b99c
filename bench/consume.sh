#!/usr/bin/env bash
# bench/consume.sh - the consuming side: how fast a trivial handler runs
# exactly once, and how long an event takes from the producing commit to
# the handler's commit.
#
# One throwaway PostgreSQL 15 with two databases (bench: the producer,
# payments: the consumer) and a throwaway Kafka broker (test/kafka/kafka.sh).
#
# 1. Throughput.  N events (default 200,000; 100 keys) are published by
#    bench and are all in Kafka before payments subscribes a trivial handler,
#    one per HANDLERS entry, each in a consumer group of its own, one after
#    the other: noop (a SQL function that does nothing), insert (one INSERT
#    per message, a SQL function), insertpl (the same INSERT in PL/pgSQL,
#    which keeps its plan across calls; a SQL function's body is parsed and
#    planned at each call), batch (the batch form: one INSERT ... SELECT
#    FROM unnest per batch; needs a commit that has it).  COUNT_TRIGGER=0
#    disables the statement trigger that counts the inbox's messages for
#    evbus.stats (inbox_inserted), to measure what it costs.  Measured per handler: from
#    evbus.subscribe() until the inbox holds N handled messages of that
#    handler (includes joining the group), and the steady rate between the
#    first and the last handled_at.  Checked: N inbox rows, N distinct
#    message ids, no dead letter, and N rows in the table of insert/batch.
#    Also the consumer worker's CPU time (user + system, /proc) over the
#    run, per event: what handling an event costs, which the machine's
#    other load changes less than the rate.  The consumer's pid is written
#    to RESULTS_DIR/consumer.pid while it runs (for `perf record -g -p`).
# 2. Latency.  pgbench stages events at RATE (1,000/s) for DURATION (30 s)
#    in bench, with the staging time clock_timestamp() in the payload; a
#    handler in payments records clock_timestamp() when it runs.
#    latency = handler time - staging time: staging -> Kafka -> handler, just
#    before the handler's transaction commits (its commit adds one WAL flush).
#    WARMUP seconds of the same load run first and are not counted.
#    DURATION=0 skips it.
#
# Usage (as root or any user): bench/consume.sh
# Environment: N, HANDLERS (default "noop"; any of noop insert insertpl
# batch, space-separated; one named twice runs twice, in another group), COUNT_TRIGGER (default 1), RATE, DURATION, CLIENTS, WARMUP (seconds of the latency
# load before the clock starts, default 5), plus those of bench/lib.sh.

# shellcheck source=bench/lib.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"
bench_init consume 1 "$@"

N=${N:-200000}
HANDLERS=${HANDLERS:-noop}
COUNT_TRIGGER=${COUNT_TRIGGER:-1}
RATE=${RATE:-1000}
DURATION=${DURATION:-30}
CLIENTS=${CLIENTS:-4}
WARMUP=${WARMUP:-5}

environment_report >"$RESULTS_DIR/environment.txt"
echo "settings: N=$N HANDLERS=$HANDLERS COUNT_TRIGGER=$COUNT_TRIGGER RATE=$RATE DURATION=$DURATION CLIENTS=$CLIENTS WARMUP=$WARMUP" >>"$RESULTS_DIR/environment.txt"

pg_start "max_worker_processes = 16"
kafka_start
for t in ConsumeEvent LatencyEvent; do
	"$KAFKA_SH" topics "$TMP_DIR/kafka" --create --topic "$t" --partitions 3 \
		--replication-factor 1 >/dev/null
done
psql -qX -d postgres -v ON_ERROR_STOP=1 -c "CREATE DATABASE payments" >/dev/null
qp() { psql -qXAt -d payments -v ON_ERROR_STOP=1 -c "$1"; }
qp "CREATE EXTENSION evbus"
# handlers are subscribed by, owned by and run as a role that is not a
# superuser
qp "CREATE ROLE bench_app; GRANT USAGE ON SCHEMA evbus TO bench_app;
    GRANT EXECUTE ON FUNCTION evbus.subscribe(text, regprocedure, text, integer) TO bench_app"
qp "CREATE FUNCTION noop(payload jsonb, headers jsonb) RETURNS void LANGUAGE sql AS 'SELECT'"
qp "CREATE TABLE sink (id text PRIMARY KEY, payload jsonb)"
qp "CREATE FUNCTION ins(payload jsonb, headers jsonb) RETURNS void LANGUAGE sql AS
    \$\$ INSERT INTO public.sink VALUES (headers->>'cap-msg-id', payload) \$\$"
qp "CREATE TABLE bsink (id text PRIMARY KEY, payload jsonb)"
qp "CREATE TABLE psink (id text PRIMARY KEY, payload jsonb)"
qp "CREATE FUNCTION inspl(payload jsonb, headers jsonb) RETURNS void LANGUAGE plpgsql AS
    \$\$ BEGIN INSERT INTO public.psink VALUES (headers->>'cap-msg-id', payload); END \$\$"
if [[ $HANDLERS == *batch* ]]; then
	qp "CREATE FUNCTION ins_batch(payloads jsonb[], headers jsonb[]) RETURNS void LANGUAGE sql AS
        \$\$ INSERT INTO public.bsink SELECT h->>'cap-msg-id', p FROM unnest(payloads, headers) AS u(p, h) \$\$"
	qp "ALTER FUNCTION ins_batch(jsonb[], jsonb[]) OWNER TO bench_app"
fi
qp "CREATE TABLE lat (staged timestamptz, sent timestamptz, handled timestamptz)"
qp "CREATE FUNCTION record_latency(payload jsonb, headers jsonb) RETURNS void LANGUAGE sql AS
    \$\$ INSERT INTO public.lat VALUES ((payload->>'staged')::timestamptz,
         (headers->>'cap-senttime')::timestamptz, clock_timestamp()) \$\$"
qp "ALTER FUNCTION noop(jsonb, jsonb) OWNER TO bench_app;
    ALTER FUNCTION record_latency(jsonb, jsonb) OWNER TO bench_app; GRANT INSERT ON lat TO bench_app;
    ALTER FUNCTION ins(jsonb, jsonb) OWNER TO bench_app; ALTER FUNCTION inspl(jsonb, jsonb) OWNER TO bench_app;
    GRANT INSERT ON sink, bsink, psink TO bench_app"
if ((COUNT_TRIGGER == 0)); then
	qp "ALTER TABLE evbus.inbox DISABLE TRIGGER inbox_inserted"
fi
set_brokers "$BROKERS"

# ---- 1. throughput ------------------------------------------------------------
publish_consume_events "$N"
log "all $N events are in Kafka (end offsets: $(kafka_end_offsets ConsumeEvent)); subscribing"

# one handler at a time, each in its own group: HANDLER SIGNATURE GROUP TABLE
throughput() {
	local name=$1 sig=$2 group=$3 table=$4 t0 t1 h rows ids dead span total inserted cpid c0 c1
	[[ -n $table ]] && qp "TRUNCATE $table"
	t0=$EPOCHREALTIME
	qp "SET ROLE bench_app; SELECT evbus.subscribe('ConsumeEvent', '$sig', '$group')" >/dev/null
	# the consumer joins the group first: nothing is handled before this
	cpid=$(consumer_pid payments) || die "no consumer worker in database payments"
	c0=$(proc_ticks "$cpid")
	echo "$cpid" >"$RESULTS_DIR/consumer.pid"
	while :; do
		h=$(qp "SELECT count(*) FROM evbus.inbox WHERE state = 'handled' AND group_name = '$group'")
		((h >= N)) && break
		awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN {exit !(b - a > 600)}' && die "$name: only $h of $N handled after 600 s"
		sleep 0.2
	done
	t1=$EPOCHREALTIME
	c1=$(proc_ticks "$cpid")
	rm -f "$RESULTS_DIR/consumer.pid"
	read -r rows ids dead span < <(qp "SELECT count(*), count(DISTINCT message_id),
	    (SELECT count(*) FROM evbus.dead_letters),
	    extract(epoch FROM max(handled_at) - min(handled_at))
	  FROM evbus.inbox WHERE group_name = '$group'" | tr '|' ' ')
	inserted=$N
	[[ -n $table ]] && inserted=$(qp "SELECT count(*) FROM $table")
	total=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}')
	echo "throughput ($name):  $N handled in ${total}s from evbus.subscribe() (group join included): $(awk -v n="$N" -v t="$total" 'BEGIN {printf "%.0f", n / t}') events/s"
	echo "             steady: first to last handled_at ${span}s: $(awk -v n="$N" -v t="$span" 'BEGIN {printf "%.0f", n / t}') events/s"
	echo "             consumer CPU: $(ticks_to_s $((c1 - c0)))s, $(awk -v t=$((c1 - c0)) -v h="$CLK_TCK" -v n="$N" 'BEGIN {printf "%.1f", t / h * 1e6 / n}') us per event"
	echo "exactly once: inbox rows $rows, distinct message ids $ids, dead letters $dead, rows inserted $inserted (expected $N, $N, 0, $N)"
}
: >"$RESULTS_DIR/throughput.txt"
declare -A runs=()
for h in $HANDLERS; do
	# a handler named again runs again, in a group of its own (g_batch_2...)
	runs[$h]=$((${runs[$h]:-0} + 1))
	sfx=""
	((runs[$h] > 1)) && sfx="_${runs[$h]}"
	case $h in
	noop) throughput noop 'noop(jsonb, jsonb)' "g_noop$sfx" "" ;;
	insert) throughput insert 'ins(jsonb, jsonb)' "g_insert$sfx" sink ;;
	insertpl) throughput insertpl 'inspl(jsonb, jsonb)' "g_insertpl$sfx" psink ;;
	batch) throughput batch 'ins_batch(jsonb[], jsonb[])' "g_batch$sfx" bsink ;;
	*) die "unknown handler $h" ;;
	esac | tee -a "$RESULTS_DIR/throughput.txt"
done

if ((DURATION == 0)); then
	{
		echo "consume: trivial handlers, $N events already in Kafka (3 partitions, 100 keys), one consumer database"
		echo
		cat "$RESULTS_DIR/throughput.txt"
	} | tee "$RESULTS_DIR/summary.txt"
	exit 0
fi

# ---- 2. latency ---------------------------------------------------------------
qp "SET ROLE bench_app; SELECT evbus.subscribe('LatencyEvent', 'record_latency(jsonb, jsonb)')"
# warm up: the group has joined and is assigned before the clock starts
q "SELECT evbus.publish('LatencyEvent', jsonb_build_object('staged', clock_timestamp(), 'warmup', true))" >/dev/null
for _ in $(seq 1 300); do
	[[ $(qp "SELECT count(*) FROM lat") -ge 1 ]] && break
	sleep 0.2
done
cat >"$RESULTS_DIR/latency.sql" <<'SQL'
\set k random(1, 10000)
SELECT evbus.publish('LatencyEvent', jsonb_build_object('staged', clock_timestamp(), 'account_id', :k::int, 'amount', 42.5, 'currency', 'EUR'), :k::text);
SQL
# then WARMUP seconds of the measured load, not counted: the first seconds
# of a trickle through a broker that has only seen bulk traffic are slow
# (JIT, heap growth), as bench/latency.sh found for the producing side
if ((WARMUP > 0)); then
	log "warm-up: pgbench -R $RATE -T $WARMUP (not counted)"
	pgbench -n -M prepared -c "$CLIENTS" -j 2 -R "$RATE" -T "$WARMUP" -f "$RESULTS_DIR/latency.sql" \
		>"$RESULTS_DIR/pgbench-warmup.log" 2>&1 || { cat "$RESULTS_DIR/pgbench-warmup.log" >&2; die "pgbench failed"; }
	sleep 2
	qp "SELECT count(*), round(percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM handled - staged) * 1000)::numeric, 1) FROM lat" \
		| tr '|' ' ' | { read -r c p; log "warm-up: $c events, p99 $p ms"; echo "warm-up: $c events handled, p99 $p ms (not counted)" >"$RESULTS_DIR/warmup.txt"; }
fi
qp "TRUNCATE lat"
log "pgbench -R $RATE -T $DURATION"
pgbench -n -M prepared -c "$CLIENTS" -j 2 -R "$RATE" -T "$DURATION" -f "$RESULTS_DIR/latency.sql" \
	>"$RESULTS_DIR/pgbench.log" 2>&1 || { cat "$RESULTS_DIR/pgbench.log" >&2; die "pgbench failed"; }
staged=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$RESULTS_DIR/pgbench.log")
for _ in $(seq 1 600); do
	[[ $(qp "SELECT count(*) FROM lat") -ge $staged ]] && break
	sleep 0.1
done
read -r got p50 p90 p99 pmax < <(qp "SELECT count(*),
    round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 1),
    round(percentile_cont(0.9) WITHIN GROUP (ORDER BY ms)::numeric, 1),
    round(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)::numeric, 1),
    round(max(ms)::numeric, 1)
  FROM (SELECT extract(epoch FROM handled - staged) * 1000 AS ms FROM lat) s" | tr '|' ' ')
read -r sp50 sp99 hp50 hp99 < <(qp "SELECT
    round(percentile_cont(0.5) WITHIN GROUP (ORDER BY s)::numeric, 1),
    round(percentile_cont(0.99) WITHIN GROUP (ORDER BY s)::numeric, 1),
    round(percentile_cont(0.5) WITHIN GROUP (ORDER BY h)::numeric, 1),
    round(percentile_cont(0.99) WITHIN GROUP (ORDER BY h)::numeric, 1)
  FROM (SELECT extract(epoch FROM sent - staged) * 1000 AS s, extract(epoch FROM handled - sent) * 1000 AS h FROM lat) x" | tr '|' ' ')
qp "COPY (SELECT staged, sent, handled, extract(epoch FROM handled - staged) * 1000 FROM lat ORDER BY staged) TO STDOUT" \
	>"$RESULTS_DIR/latencies.tsv"

{
	echo "consume: trivial handlers, $N events already in Kafka (3 partitions, 100 keys), one consumer database"
	echo
	cat "$RESULTS_DIR/throughput.txt"
	echo
	echo "latency:     $staged events staged by pgbench -R $RATE -T $DURATION ($CLIENTS clients), $got handled"
	echo "             staging -> handler (ms): p50 $p50  p90 $p90  p99 $p99  max $pmax  (goals: p50 <= 10, p99 <= 50)"
	echo "             of which staging -> produce (cap-senttime): p50 $sp50  p99 $sp99; produce -> handler: p50 $hp50  p99 $hp99"
	echo "             pgbench: $(grep -E '^(latency average|tps)' "$RESULTS_DIR/pgbench.log" | tr '\n' ';' | sed 's/;$//')"
} | tee "$RESULTS_DIR/summary.txt"

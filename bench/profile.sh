#!/usr/bin/env bash
# bench/profile.sh - where the time goes in one commit_overhead variant.
#
# Runs one variant of bench/commit_overhead.sh (same TPC-B-like script,
# same payload) for DURATION seconds on a throwaway PostgreSQL with
# pg_stat_statements (track = all, so the worker's SPI statements and the
# statements inside evbus.publish/raise are counted too), optionally with
# the worker publishing to a throwaway Kafka broker, and reports:
#   - pgbench tps, and the transactions committed in the database during the
#     run beyond pgbench's own (the worker's short transactions);
#   - the top statements by total time and by calls (pg_stat_statements);
#   - CPU seconds of the worker, the Kafka JVM, and the whole machine;
#   - with PERF=1 and started as root: a system-wide `perf record -g` of the
#     run, summarised by process and by symbol (perf-*.txt).
#
# Usage:  bench/profile.sh                    (variant c, publishing paused)
#         VARIANT=b MODE=kafka PERF=1 bench/profile.sh
# Environment: VARIANT (a|b|c|t, default c), MODE (paused|kafka), DURATION
#   (20), CLIENTS (8), THREADS (2), SCALE (10), PERF (0), plus bench/lib.sh's.

# shellcheck source=bench/lib.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

VARIANT=${VARIANT:-c}
MODE=${MODE:-paused}
DURATION=${DURATION:-20}
CLIENTS=${CLIENTS:-8}
THREADS=${THREADS:-2}
SCALE=${SCALE:-10}
PERF=${PERF:-0}

# perf needs root: the root process records the whole machine while the
# benchmark, run as the unprivileged user, does its work.
if [[ $(id -u) -eq 0 && $PERF == 1 ]]; then
	bench_build
	command -v perf >/dev/null || die "perf is not installed (apt-get install linux-perf)"
	RESULTS_DIR=${RESULTS_DIR:-$BENCH_DIR/results/profile-$VARIANT-$MODE-$(date +%Y%m%d-%H%M%S)}
	mkdir -p "$RESULTS_DIR"
	id "$BENCH_USER" >/dev/null 2>&1 || useradd --system --create-home --shell /bin/bash "$BENCH_USER"
	chown "$BENCH_USER" "$RESULTS_DIR"
	[[ $MODE == kafka ]] && "$KAFKA_SH" fetch
	export RESULTS_DIR PERF_SIGNAL=$RESULTS_DIR/.perf-go
	TMP_PERF_CHILDREN=$(mktemp)
	rm -f "$PERF_SIGNAL" "$RESULTS_DIR/.perf-done"
	runuser -u "$BENCH_USER" -- bash "$0" "$@" &
	child=$!
	# wait for the child to say the measured run starts
	while [[ ! -f $PERF_SIGNAL ]] && kill -0 "$child" 2>/dev/null; do sleep 0.2; done
	if [[ -f $PERF_SIGNAL ]]; then
		set +o pipefail
		perf record -a -g -F 499 -o "$RESULTS_DIR/perf.data" -- sleep "$((DURATION - 2))" 2>"$RESULTS_DIR/perf-record.log"
		perf report -i "$RESULTS_DIR/perf.data" --no-children --sort comm --stdio -g none 2>/dev/null \
			| grep -v '^#' | grep -v '^$' | head -20 >"$RESULTS_DIR/perf-by-process.txt"
		perf report -i "$RESULTS_DIR/perf.data" --no-children --sort comm,dso,symbol --stdio -g none 2>/dev/null \
			| grep -v '^#' | grep -v '^$' | head -60 >"$RESULTS_DIR/perf-by-symbol.txt"
		# inclusive ("children") shares of the staging path and of the
		# worker, in percent of all samples of the machine
		perf report -i "$RESULTS_DIR/perf.data" --children --comm postgres --sort symbol --stdio -g none 2>/dev/null \
			| grep -v '^#' | grep -v '^$' >"$TMP_PERF_CHILDREN"
		{
			echo "inclusive share of all samples (children), postgres processes: evbus functions and what they call"
			grep -E 'evbus_|staging_|call_converter|fmgr_sql|init_sql_fcache|SPI_execute_plan|SPI_connect|SPI_finish|_SPI_execute_plan|ExecInsert|nextval|pg_strong_random|RAND_bytes|SetLatch|kill|jsonb_|XLogFlush|CommitTransaction|PostgresMain|exec_execute_message|LockAcquire|ProcSleep' "$TMP_PERF_CHILDREN" | head -60
		} >"$RESULTS_DIR/perf-staging-path.txt"
		if [[ -f $RESULTS_DIR/.worker-pid ]]; then
			perf report -i "$RESULTS_DIR/perf.data" --children --pid "$(cat "$RESULTS_DIR/.worker-pid")" --sort symbol --stdio -g none 2>/dev/null \
				| grep -v '^#' | grep -v '^$' | head -70 >"$RESULTS_DIR/perf-worker.txt"
		fi
		rm -f "$TMP_PERF_CHILDREN"
		rm -f "$RESULTS_DIR/perf.data"
		set -o pipefail
		touch "$RESULTS_DIR/.perf-done"
	fi
	touch "$RESULTS_DIR/.perf-done"	# never leave the child waiting
	rc=0
	wait "$child" || rc=$?
	rm -f "$PERF_SIGNAL" "$RESULTS_DIR/.perf-done" "$RESULTS_DIR/.worker-pid"
	echo "perf, by process (share of all samples of the machine):"
	cat "$RESULTS_DIR/perf-by-process.txt"
	echo "perf: $RESULTS_DIR/perf-by-symbol.txt, perf-staging-path.txt, perf-worker.txt"
	exit $rc
fi

bench_init "profile-$VARIANT-$MODE" "$([[ $MODE == kafka ]] && echo 1 || echo 0)" "$@"

environment_report >"$RESULTS_DIR/environment.txt"
echo "settings: VARIANT=$VARIANT MODE=$MODE DURATION=$DURATION CLIENTS=$CLIENTS THREADS=$THREADS SCALE=$SCALE PERF=$PERF" >>"$RESULTS_DIR/environment.txt"

pg_start "shared_preload_libraries = 'evbus,pg_stat_statements'" \
	"pg_stat_statements.track = all" "pg_stat_statements.max = 1000"
q "CREATE EXTENSION pg_stat_statements" >/dev/null
pgbench -i -q -s "$SCALE" >"$TMP_DIR/pgbench-init.log" 2>&1 \
	|| { cat "$TMP_DIR/pgbench-init.log" >&2; die "pgbench -i failed"; }
psql -qX -v ON_ERROR_STOP=1 >/dev/null <<'SQL'
CREATE TABLE bench_outbox (
	id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	topic text, key text, payload jsonb, headers jsonb,
	created_at timestamptz DEFAULT now()
);
CREATE SCHEMA bench;
CREATE FUNCTION bench.account_updated(payload jsonb) RETURNS jsonb
	LANGUAGE sql IMMUTABLE AS 'SELECT payload';
SELECT evbus.register_converter('AccountUpdatedDomainEvent', 'AccountUpdated',
								'bench.account_updated(jsonb)');
SQL

PAYLOAD="jsonb_build_object('account_id', :aid::int, 'branch_id', :bid::int, 'teller_id', :tid::int, 'delta', :delta::int, 'currency', 'EUR', 'reason', 'pgbench tpcb-like transfer', 'source', 'evbus bench/commit_overhead', 'ref', 'c0ffee00-1234-4abc-8def-000000000042')"
case $VARIANT in
t) STMT="" ;;
a) STMT="INSERT INTO bench_outbox (topic, key, payload) VALUES ('AccountUpdated', :aid::text, $PAYLOAD);" ;;
b) STMT="SELECT evbus.raise('AccountUpdatedDomainEvent', $PAYLOAD, :aid::text);" ;;
c) STMT="SELECT evbus.publish('AccountUpdated', $PAYLOAD, :aid::text);" ;;
*) die "unknown variant $VARIANT" ;;
esac
cat >"$RESULTS_DIR/variant-$VARIANT.sql" <<EOF
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
$STMT
END;
EOF

if [[ $MODE == kafka ]]; then
	kafka_start
	"$KAFKA_SH" topics "$TMP_DIR/kafka" --create --topic AccountUpdated \
		--partitions 3 --replication-factor 1 >/dev/null 2>&1 || die "could not create the topic"
	set_brokers "$BROKERS"
	sleep 2
fi

q "CHECKPOINT" >/dev/null
q "SELECT pg_stat_statements_reset(), pg_stat_reset()" >/dev/null
sleep 0.6	# let the statistics collector settle
commits0=$(q "SELECT xact_commit FROM pg_stat_database WHERE datname = 'bench'")
wpid=$(evbus_worker_pid)
kpid=$(kafka_pid)
w0=$(proc_ticks "$wpid"); k0=$(proc_ticks "$kpid")
read -r busy0 tot0 < <(cpu_stat)
lsn0=$(q "SELECT pg_current_wal_lsn()")
if [[ -n ${PERF_SIGNAL:-} ]]; then
	echo "$wpid" >"$RESULTS_DIR/.worker-pid"
	touch "$PERF_SIGNAL"
fi
pgbench -n -M prepared -c "$CLIENTS" -j "$THREADS" -T "$DURATION" \
	-f "$RESULTS_DIR/variant-$VARIANT.sql" >"$RESULTS_DIR/pgbench.log" 2>&1 \
	|| { cat "$RESULTS_DIR/pgbench.log" >&2; die "pgbench failed"; }
read -r busy1 tot1 < <(cpu_stat)
w1=$(proc_ticks "$wpid"); k1=$(proc_ticks "$kpid")
lsn1=$(q "SELECT pg_current_wal_lsn()")
sleep 0.6
commits1=$(q "SELECT xact_commit FROM pg_stat_database WHERE datname = 'bench'")
n=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$RESULTS_DIR/pgbench.log")
if [[ -n ${PERF_SIGNAL:-} ]]; then
	while [[ ! -f $RESULTS_DIR/.perf-done ]]; do sleep 0.5; done
fi

{
	echo "profile: variant $VARIANT, mode $MODE, ${DURATION}s, $CLIENTS clients"
	grep -E '^(tps|latency average)' "$RESULTS_DIR/pgbench.log"
	echo "pgbench transactions: $n; transactions committed in the database: $((commits1 - commits0)) (the rest: the worker, psql)"
	echo "WAL per pgbench transaction: $(q "SELECT (pg_wal_lsn_diff('$lsn1', '$lsn0') / $n)::int") bytes"
	echo "CPU: machine $(awk -v b=$((busy1 - busy0)) -v t=$((tot1 - tot0)) 'BEGIN {printf "%.0f", 100 * b / t}')% busy; evbus worker $(ticks_to_s $((w1 - w0)))s; Kafka JVM $(ticks_to_s $((k1 - k0)))s"
	echo
	echo "top statements by total time (pg_stat_statements, track = all):"
	psql -X -P pager=off -c "SELECT calls, round(total_exec_time::numeric, 0) AS total_ms,
		round(mean_exec_time::numeric, 3) AS mean_ms, rows, wal_bytes, left(regexp_replace(query, '\s+', ' ', 'g'), 110) AS query
		FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 15"
	echo "top statements by calls:"
	psql -X -P pager=off -c "SELECT calls, round(total_exec_time::numeric, 0) AS total_ms, rows,
		left(regexp_replace(query, '\s+', ' ', 'g'), 120) AS query
		FROM pg_stat_statements ORDER BY calls DESC LIMIT 12"
} | tee "$RESULTS_DIR/summary.txt"

#!/usr/bin/env bash
# bench/consume_databases.sh - several databases of one server draining
# their consumer groups at once: how the consuming rate of the server
# grows with the databases that consume, each with its own consumer
# worker (one process per database).
#
# One throwaway PostgreSQL 15 with DATABASES + 1 consuming databases and a
# throwaway Kafka broker (test/kafka/kafka.sh).  N events (default 200,000;
# 100 keys) are published to one topic of 3 partitions before anything
# subscribes.  Then, per handler form of HANDLERS (insert: one INSERT per
# message, a SQL function; batch: the batch form, one INSERT ... SELECT
# FROM unnest per call), four phases, each database of a phase in a new
# consumer group of its own (a Kafka group is the broker's, whatever
# database joins it) that handles the same N events:
#  1. one database alone subscribes the handler;
#  2. DATABASES other databases subscribe it at once;
#  3. the same again;
#  4. the one database alone again (A B B A: the machine's speed drifts
#     within minutes).
# Measured per phase: each database's steady rate (first to last
# handled_at of its group), the server's rate (events handled / first to
# last handled_at of all the databases of the phase), and the consumer
# workers' CPU time (user + system, /proc) per event; then the server's
# rate with DATABASES databases over one alone, the sums of both rounds.
# Checked in every database: N inbox rows of the group, N distinct
# message ids, no dead letter, N rows of the group in the handler's table.
#
# Usage (as root or any user): bench/consume_databases.sh
# Environment: N, DATABASES (default 2), HANDLERS (default "insert
# batch"), plus those of bench/lib.sh.

# shellcheck source=bench/lib.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"
bench_init consume_databases 1 "$@"

N=${N:-200000}
DATABASES=${DATABASES:-2}
HANDLERS=${HANDLERS:-insert batch}

environment_report >"$RESULTS_DIR/environment.txt"
echo "settings: N=$N DATABASES=$DATABASES HANDLERS=$HANDLERS" >>"$RESULTS_DIR/environment.txt"

pg_start "max_worker_processes = 32"
kafka_start
"$KAFKA_SH" topics "$TMP_DIR/kafka" --create --topic ConsumeEvent --partitions 3 \
	--replication-factor 1 >/dev/null
psql -qX -d postgres -v ON_ERROR_STOP=1 -c "CREATE ROLE bench_app" >/dev/null

# the consuming databases c0 .. cDATABASES, each with both handlers,
# owned by (and run as) a role that is not a superuser
for ((d = 0; d <= DATABASES; d++)); do
	psql -qX -d postgres -v ON_ERROR_STOP=1 -c "CREATE DATABASE c$d" >/dev/null
	psql -qXAt -d "c$d" -v ON_ERROR_STOP=1 >/dev/null <<'SQL'
CREATE EXTENSION evbus;
GRANT USAGE ON SCHEMA evbus TO bench_app;
GRANT EXECUTE ON FUNCTION evbus.subscribe(text, regprocedure, text, integer) TO bench_app;
CREATE TABLE sink_insert (grp text, id text, payload jsonb, PRIMARY KEY (grp, id));
CREATE TABLE sink_batch (grp text, id text, payload jsonb, PRIMARY KEY (grp, id));
GRANT INSERT ON sink_insert, sink_batch TO bench_app;
CREATE FUNCTION ins(payload jsonb, headers jsonb) RETURNS void LANGUAGE sql AS
    $$ INSERT INTO public.sink_insert VALUES (headers->>'evbus-group', headers->>'cap-msg-id', payload) $$;
CREATE FUNCTION ins_batch(payloads jsonb[], headers jsonb[]) RETURNS void LANGUAGE sql AS
    $$ INSERT INTO public.sink_batch SELECT h->>'evbus-group', h->>'cap-msg-id', p FROM unnest(payloads, headers) AS u(p, h) $$;
ALTER FUNCTION ins(jsonb, jsonb) OWNER TO bench_app;
ALTER FUNCTION ins_batch(jsonb[], jsonb[]) OWNER TO bench_app;
SQL
done
set_brokers "$BROKERS"

publish_consume_events "$N"
log "all $N events are in Kafka (end offsets: $(kafka_end_offsets ConsumeEvent))"

# phase FORM ROUND DB...: the databases subscribe FORM's handler at once,
# each in group FORM_ROUND_DB, and handle the N events; prints one line per
# database and one for the phase, "RATE events/s for the server ..."
phase() {
	local form=$1 round=$2 sig table d pid first last t0 c0=0 c1=0 all h
	shift 2
	case $form in
	insert) sig='ins(jsonb, jsonb)' table=sink_insert ;;
	batch) sig='ins_batch(jsonb[], jsonb[])' table=sink_batch ;;
	*) die "unknown handler form $form" ;;
	esac
	local -a pids=()
	t0=$EPOCHREALTIME
	for d in "$@"; do
		psql -qXAt -d "$d" -v ON_ERROR_STOP=1 \
			-c "SET ROLE bench_app; SELECT evbus.subscribe('ConsumeEvent', '$sig', '${form}_${round}_$d')" >/dev/null
	done
	for d in "$@"; do
		pid=$(consumer_pid "$d") || die "no consumer worker in database $d"
		pids+=("$pid")
		c0=$((c0 + $(proc_ticks "$pid")))
	done
	while :; do
		all=1
		for d in "$@"; do
			h=$(psql -qXAt -d "$d" -c "SELECT count(*) FROM evbus.inbox WHERE state = 'handled' AND group_name = '${form}_${round}_$d'")
			((h >= N)) || all=0
		done
		((all)) && break
		awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN {exit !(b - a > 900)}' && die "$form: not all handled after 900 s"
		sleep 0.2
	done
	for pid in "${pids[@]}"; do
		c1=$((c1 + $(proc_ticks "$pid")))
	done
	first='' last=''
	for d in "$@"; do
		local rows ids dead lo hi inserted
		read -r rows ids dead lo hi < <(psql -qXAt -d "$d" -c "SELECT count(*), count(DISTINCT message_id),
		    (SELECT count(*) FROM evbus.dead_letters),
		    extract(epoch FROM min(handled_at)), extract(epoch FROM max(handled_at))
		  FROM evbus.inbox WHERE group_name = '${form}_${round}_$d'" | tr '|' ' ')
		inserted=$(psql -qXAt -d "$d" -c "SELECT count(*) FROM $table WHERE grp = '${form}_${round}_$d'")
		echo "  $d: steady $(awk -v n="$N" -v a="$lo" -v b="$hi" 'BEGIN {printf "%.0f", n / (b - a)}') events/s; inbox rows $rows, distinct ids $ids, dead letters $dead, rows inserted $inserted (expected $N, $N, 0, $N)"
		first=$(awk -v a="$lo" -v b="${first:-$lo}" 'BEGIN {print (a < b ? a : b)}')
		last=$(awk -v a="$hi" -v b="${last:-$hi}" 'BEGIN {print (a > b ? a : b)}')
	done
	echo "  $(awk -v n=$((N * $#)) -v a="$first" -v b="$last" 'BEGIN {printf "%.0f", n / (b - a)}') events/s for the server ($form, $# database(s) at once, first to last handled_at); consumer CPU $(awk -v t=$((c1 - c0)) -v h="$CLK_TCK" -v n=$((N * $#)) 'BEGIN {printf "%.1f", t / h * 1e6 / n}') us per event"
}

: >"$RESULTS_DIR/summary.txt"
others=()
for ((d = 1; d <= DATABASES; d++)); do
	others+=("c$d")
done
# alone, together, together, alone: the machine's speed drifts within
# minutes, and each pair sees both halves of the drift
for form in $HANDLERS; do
	{
		echo "$form, round 1: one database alone"
		phase "$form" 1 c0 | tee "$RESULTS_DIR/$form-alone-1.txt"
		echo "$form, round 1: $DATABASES databases at once"
		phase "$form" 1 "${others[@]}" | tee "$RESULTS_DIR/$form-together-1.txt"
		echo "$form, round 2: $DATABASES databases at once"
		phase "$form" 2 "${others[@]}" | tee "$RESULTS_DIR/$form-together-2.txt"
		echo "$form, round 2: one database alone"
		phase "$form" 2 c0 | tee "$RESULTS_DIR/$form-alone-2.txt"
		echo "$form: the server's rate with $DATABASES databases at once over one alone, sums of both rounds:" \
			"$(awk '/for the server/ {s += $1} END {print s}' "$RESULTS_DIR/$form"-together-*.txt) /" \
			"$(awk '/for the server/ {s += $1} END {print s}' "$RESULTS_DIR/$form"-alone-*.txt) =" \
			"$(awk '/for the server/ {if (FILENAME ~ /together/) t += $1; else a += $1} END {printf "%.2f", t / a}' "$RESULTS_DIR/$form"-*.txt)"
	} | tee -a "$RESULTS_DIR/summary.txt"
done

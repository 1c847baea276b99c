#!/usr/bin/env bash
# bench/standby_wait.sh - what evbus.wait_for_standbys adds to the latency
# of an event, against a local asynchronous streaming standby.
#
# A primary (bench/lib.sh's pg_start) and a standby made from it with
# pg_basebackup (application_name bench_standby, on the same machine), a
# Kafka broker, and a topic with message.timestamp.type=LogAppendTime.
# pgbench stages events at a fixed rate (-R RATE, DURATION s, one
# evbus.publish per transaction, the staging time clock_timestamp() in
# the payload), twice: with evbus.wait_for_standbys empty, then with it
# naming the standby (ALTER SYSTEM, reload).  kcat reads every event back,
# and per event:
#
#   latency = broker append time - staging time
#
# as in bench/latency.sh (which says what it includes).  The difference
# between the two runs is the standby's flush lag as the publisher sees it,
# plus the primary's WAL flush per batch (docs/production.md, "Replication
# and failover").  The standby is local: over a network add its round
# trip.
#
# Usage (as root or any user; one command):
#   bench/standby_wait.sh
# Environment: RATE (500 events/s), DURATION (20 s), CLIENTS (4), THREADS
#   (2), plus those of bench/lib.sh.
# Output: summary on stdout and in $RESULTS_DIR/summary.txt; per-event
#   values in $RESULTS_DIR/latencies-{off,on}.tsv.

# shellcheck source=bench/lib.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"
bench_init standby_wait 1 "$@"

RATE=${RATE:-500}
DURATION=${DURATION:-20}
CLIENTS=${CLIENTS:-4}
THREADS=${THREADS:-2}
STANDBY=bench_standby

environment_report >"$RESULTS_DIR/environment.txt"
echo "settings: RATE=$RATE DURATION=$DURATION CLIENTS=$CLIENTS THREADS=$THREADS" >>"$RESULTS_DIR/environment.txt"

pg_start "wal_level = replica" "max_wal_senders = 5"

# the standby: a base backup of the primary, streaming asynchronously
STANDBY_PORT=$(free_port)
"$PGBIN/pg_basebackup" -D "$TMP_DIR/standby" -X stream -R -c fast \
	-d "host=$PGHOST port=$PGPORT user=postgres application_name=$STANDBY" \
	>"$TMP_DIR/basebackup.log" 2>&1 \
	|| { cat "$TMP_DIR/basebackup.log" >&2; die "pg_basebackup failed"; }
echo "port = $STANDBY_PORT" >>"$TMP_DIR/standby/postgresql.conf"
"$PGBIN/pg_ctl" -D "$TMP_DIR/standby" -l "$TMP_DIR/standby.log" -w -t 60 start >/dev/null \
	|| { tail -n 30 "$TMP_DIR/standby.log" >&2; die "the standby did not start"; }
standby_stop() {
	"$PGBIN/pg_ctl" -D "$TMP_DIR/standby" -m immediate -w stop >/dev/null 2>&1 || true
}
trap 'rc=$?; standby_stop; (exit $rc); bench_cleanup' EXIT
for _ in $(seq 1 100); do
	[[ $(q "SELECT count(*) FROM pg_stat_replication WHERE application_name = '$STANDBY' AND state = 'streaming'") == 1 ]] && break
	sleep 0.1
done
[[ $(q "SELECT count(*) FROM pg_stat_replication WHERE application_name = '$STANDBY'") == 1 ]] \
	|| die "the standby does not stream"
log "standby $STANDBY streaming on port $STANDBY_PORT"

kafka_start
set_brokers "$BROKERS"

# run MODE SETTING: one measured run on topic StandbyWait_MODE
run() {
	local mode=$1 setting=$2 topic=StandbyWait_$1
	"$KAFKA_SH" topics "$TMP_DIR/kafka" --create --topic "$topic" --partitions 3 \
		--replication-factor 1 --config message.timestamp.type=LogAppendTime >/dev/null
	q "ALTER SYSTEM SET evbus.wait_for_standbys = '$setting'" >/dev/null
	q "SELECT pg_reload_conf()" >/dev/null
	sleep 1
	# warm up: the producer's metadata for the topic
	q "SELECT count(evbus.publish('$topic', jsonb_build_object('warmup', true), 'w' || g)) FROM generate_series(1, 20) g" >/dev/null
	read -r s left < <(wait_outbox_settled 120 60)
	((left == 0)) || die "$mode: warm-up events not published after ${s}s"
	cat >"$TMP_DIR/$mode.sql" <<SQL
\set k random(1, 10000)
SELECT evbus.publish('$topic', jsonb_build_object('staged_us', (extract(epoch FROM clock_timestamp()) * 1000000)::bigint, 'k', :k::int), :k::text);
SQL
	log "$mode: pgbench -R $RATE -T $DURATION, evbus.wait_for_standbys = '$setting'"
	pgbench -n -M prepared -c "$CLIENTS" -j "$THREADS" -R "$RATE" -T "$DURATION" \
		-f "$TMP_DIR/$mode.sql" >"$RESULTS_DIR/pgbench-$mode.log" 2>&1 \
		|| { cat "$RESULTS_DIR/pgbench-$mode.log" >&2; die "pgbench failed"; }
	read -r s left < <(wait_outbox_settled 120 15)
	((left == 0)) || log "warning: $mode: $left events still in the outbox ${s}s after the run"
	kcat -b "$BROKERS" -C -t "$topic" -o beginning -e -q -f '%T\t%s\n' 2>/dev/null \
		| perl -ne '
			my ($ts, $v) = split /\t/;
			next unless $v =~ /"staged_us":\s*(\d+)/;
			printf "%.3f\n", $ts - $1 / 1000.0;' >"$RESULTS_DIR/latencies-$mode.tsv"
}

# percentiles (nearest rank) of a file of numbers
pct() {
	sort -g "$1" | awk '
		{ a[NR] = $1; s += $1 }
		END {
			if (NR == 0) { print "-"; exit }
			n = split("50 90 99", p, " ")
			for (i = 1; i <= n; i++) { r = int((p[i] / 100) * NR + 0.999999); if (r < 1) r = 1; printf "p%s %.1f  ", p[i], a[r] }
			printf "max %.1f  mean %.2f  (n %d)", a[NR], s / NR, NR
		}'
}

run off ''
run on "$STANDBY"
{
	echo "standby_wait: pgbench -R $RATE -T $DURATION ($CLIENTS clients), one evbus.publish per transaction,"
	echo "a local asynchronous streaming standby ($STANDBY)"
	echo
	echo "staging -> broker append (ms), evbus.wait_for_standbys = '':             $(pct "$RESULTS_DIR/latencies-off.tsv")"
	echo "staging -> broker append (ms), evbus.wait_for_standbys = '$STANDBY': $(pct "$RESULTS_DIR/latencies-on.tsv")"
	echo
	echo "staging = clock_timestamp() in the staging statement; append = the message's"
	echo "LogAppendTime (ms, truncated)."
} | tee "$RESULTS_DIR/summary.txt"

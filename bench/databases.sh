#!/usr/bin/env bash
# bench/databases.sh - what idle databases with evbus cost a server.
#
# For each size in SIZES (default 1, 10 and 100 databases), a fresh
# server (max_worker_processes = MAX_WORKERS, default 16: fewer than two
# per database) with evbus in every database: each registers a converter
# and subscribes a handler to its own topic.  A burst (10 events raised in
# every database, each handled once) is followed by evbus.idle_timeout
# (IDLE_TIMEOUT, default 10s) of nothing.  Then, with the databases idle:
#
#   procs      evbus processes (the launcher, publishers, consumers)
#   PSS/RSS    their memory, summed from /proc/PID/smaps_rollup (MB)
#   conns      their TCP connections to the broker (ss)
#   CPU        their CPU time over IDLE_S seconds (default 60), launcher
#              and workers apart
#   wake       COMMIT -> broker append of the first event of a database
#              that was idle (WAKES times, default 3; the topic is
#              LogAppendTime, as in bench/latency.sh): the launcher starts
#              the publisher, which builds its producer and publishes
#
# and the same counts right after the burst (busy), and how long the
# burst took to be handled everywhere and the databases to go idle.
#
# Usage (as root or any user; one command):
#   bench/databases.sh
# Environment: SIZES ("1 10 100"), MAX_WORKERS (16), IDLE_TIMEOUT (10s),
#   IDLE_S (60), WAKES (3), IDLE_WAIT (300: the longest wait for the
#   workers to go idle; a commit before 0.2's idle workers never does, so
#   EVBUS_REF=<older commit> IDLE_WAIT=15 SIZES="1 10" measures the
#   footprint of always running workers), plus those of bench/lib.sh.
# Output: a table on stdout and in $RESULTS_DIR/summary.txt.

# shellcheck source=bench/lib.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"
bench_init databases 1 "$@"

SIZES=${SIZES:-1 10 100}
MAX_WORKERS=${MAX_WORKERS:-16}
IDLE_TIMEOUT=${IDLE_TIMEOUT:-10s}
IDLE_S=${IDLE_S:-60}
WAKES=${WAKES:-3}
IDLE_WAIT=${IDLE_WAIT:-300}

environment_report >"$RESULTS_DIR/environment.txt"
echo "settings: SIZES='$SIZES' MAX_WORKERS=$MAX_WORKERS IDLE_TIMEOUT=$IDLE_TIMEOUT IDLE_S=$IDLE_S WAKES=$WAKES" >>"$RESULTS_DIR/environment.txt"

kafka_start
BROKER_PORT=${BROKERS##*:}

# the evbus processes of this benchmark's server: "pid type"
evbus_procs() {
	local pm p
	pm=$(head -1 "$TMP_DIR/pg/postmaster.pid")
	for p in $(pgrep -P "$pm" -f '^postgres: evbus '); do
		echo "$p $({ tr '\0' ' ' <"/proc/$p/cmdline"; } 2>/dev/null | awk '{print $3}')"
	done
}
# "count pss_mb rss_mb conns" of the evbus processes now
evbus_footprint() {
	local pids p pss=0 rss=0 n=0 conns=0
	pids=$(evbus_procs | awk '{print $1}')
	for p in $pids; do
		n=$((n + 1))
		pss=$((pss + $(awk '/^Pss:/{print $2}' "/proc/$p/smaps_rollup" 2>/dev/null || echo 0)))
		rss=$((rss + $(awk '/^Rss:/{print $2}' "/proc/$p/smaps_rollup" 2>/dev/null || echo 0)))
		conns=$((conns + $(ss -Htnp state established "( dport = :$BROKER_PORT )" 2>/dev/null | grep -c "pid=$p," || true)))
	done
	awk -v n="$n" -v p="$pss" -v r="$rss" -v c="$conns" 'BEGIN {printf "%d %.1f %.1f %d\n", n, p / 1024, r / 1024, c}'
}
# databases whose evbus workers run now
running_workers() {
	q "SELECT count(*) FROM pg_stat_activity WHERE backend_type IN ('evbus publisher', 'evbus consumer')"
}

printf '%-5s | %-22s | %-22s | %-9s | %-13s | %s\n' databases 'busy: procs PSS RSS conns' 'idle: procs PSS RSS conns' 'burst,idle' "CPU ${IDLE_S}s L/W" 'wake COMMIT->append ms' \
	| tee "$RESULTS_DIR/summary.txt"

for n in $SIZES; do
	log "---- $n databases"
	pg_start "max_worker_processes = $MAX_WORKERS" "evbus.idle_timeout = '$IDLE_TIMEOUT'" \
		"evbus.topic_prefix = 'n$n.'"
	set_brokers "$BROKERS"
	q "CREATE ROLE bench_app" >/dev/null
	dbs=(bench)
	for i in $(seq 2 "$n"); do
		q "CREATE DATABASE d$i" >/dev/null
		dbs+=("d$i")
	done
	for db in "${dbs[@]}"; do
		[[ $db == bench ]] || psql -qX -v ON_ERROR_STOP=1 -d "$db" -c 'CREATE EXTENSION evbus' >/dev/null 2>&1
		psql -qX -v ON_ERROR_STOP=1 -d "$db" >/dev/null <<SQL
GRANT CREATE, USAGE ON SCHEMA public TO bench_app;
GRANT USAGE ON SCHEMA evbus TO bench_app;
GRANT EXECUTE ON FUNCTION evbus.subscribe(text, regprocedure, text, integer) TO bench_app;
CREATE FUNCTION ping(payload jsonb) RETURNS jsonb LANGUAGE sql IMMUTABLE AS 'SELECT payload';
SELECT evbus.register_converter('PingDomainEvent', 'Ping_$db', 'ping(jsonb)');
SET ROLE bench_app;
CREATE TABLE received (payload jsonb);
CREATE PROCEDURE handle(payload jsonb) LANGUAGE sql AS \$\$ INSERT INTO public.received VALUES (payload) \$\$;
SELECT evbus.subscribe('Ping_$db', 'handle(jsonb)');
SQL
	done
	wake_db=${dbs[$(((n - 1) / 2))]}
	"$KAFKA_SH" topics "$TMP_DIR/kafka" --create --topic "n$n.Wake_$wake_db" --partitions 1 \
		--replication-factor 1 --config message.timestamp.type=LogAppendTime >/dev/null

	# the burst, handled everywhere
	t0=$EPOCHREALTIME
	for db in "${dbs[@]}"; do
		psql -qXAt -d "$db" -c "SELECT sum(evbus.raise('PingDomainEvent', jsonb_build_object('n', g))) FROM generate_series(1, 10) g" >/dev/null
	done
	for db in "${dbs[@]}"; do
		for _ in $(seq 1 3000); do
			[[ $(psql -qXAt -d "$db" -c 'SELECT count(*) FROM received') -ge 10 ]] && break
			sleep 0.1
		done
	done
	t1=$EPOCHREALTIME
	read -r bn bpss brss bconns < <(evbus_footprint)
	for _ in $(seq 1 $((IDLE_WAIT * 10))); do
		[[ $(running_workers) == 0 ]] && break
		sleep 0.1
	done
	t2=$EPOCHREALTIME
	burst=$(awk -v a="$t0" -v b="$t1" -v c="$t2" 'BEGIN {printf "%.0f,%.0f", b - a, c - b}')
	sleep 2
	read -r in ipss irss iconns < <(evbus_footprint)
	evbus_procs >"$RESULTS_DIR/procs-$n.txt"

	# idle CPU of the launcher and the workers
	declare -A t_start=()
	while read -r p type; do t_start[$p]=$(proc_ticks "$p"); done < <(evbus_procs)
	sleep "$IDLE_S"
	lt=0 wt=0
	while read -r p type; do
		[[ -n ${t_start[$p]:-} ]] || continue
		d=$(($(proc_ticks "$p") - ${t_start[$p]}))
		if [[ $type == launcher ]]; then lt=$((lt + d)); else wt=$((wt + d)); fi
	done < <(evbus_procs)
	unset t_start
	cpu="$(ticks_to_s "$lt")/$(ticks_to_s "$wt")"

	# wake: COMMIT -> broker append in an idle database
	db=$wake_db
	for w in $(seq 1 "$WAKES"); do
		for _ in $(seq 1 $((IDLE_WAIT * 10))); do
			[[ $(psql -qXAt -d "$db" -c "SELECT state FROM evbus.worker_status() WHERE worker = 'publisher'") == idle ]] && break
			sleep 0.1
		done
		psql -qXAt -d "$db" -c "SELECT evbus.publish('Wake_$db', jsonb_build_object('staged_us', (extract(epoch FROM clock_timestamp()) * 1000000)::bigint, 'w', $w))" >/dev/null
	done
	sleep 2
	wake=$(kcat -b "$BROKERS" -C -t "n$n.Wake_$db" -o beginning -e -q -f '%T\t%s\n' 2>/dev/null \
		| perl -ne 'my ($ts, $v) = split /\t/; printf "%.0f ", $ts - $1 / 1000.0 if $v =~ /"staged_us":\s*(\d+)/')

	printf '%-9s | %-22s | %-22s | %-9s | %-13s | %s\n' "$n" "$bn $bpss $brss $bconns" "$in $ipss $irss $iconns" "$burst" "$cpu" "$wake" \
		| tee -a "$RESULTS_DIR/summary.txt"
	cp "$TMP_DIR/pg.log" "$RESULTS_DIR/postgresql-$n.log"
	"$PGBIN/pg_ctl" -D "$TMP_DIR/pg" -m fast -w stop >/dev/null
	PG_STARTED=0
	rm -rf "$TMP_DIR/pg"
done
{
	echo
	echo "busy: right after the burst was handled; idle: evbus.idle_timeout later."
	echo "burst,idle: seconds until every database handled its 10 events, then until no worker ran."
	echo "CPU L/W: CPU seconds of the launcher / of the workers over ${IDLE_S}s idle."
	echo "wake: ms from the staging statement (clock_timestamp, before its COMMIT) to the broker's append, per event."
} | tee -a "$RESULTS_DIR/summary.txt"

#!/usr/bin/env bash
# bench/peers.sh - evbus beside the two ways teams usually move events
# from PostgreSQL to Kafka and back, on the same PostgreSQL and the same
# broker in one run:
#
#   debezium  Debezium's embedded engine (pgoutput) with the outbox
#             EventRouter SMT, produced with kafka-clients
#             (bench/peers/.../DebeziumRelay.java)
#   polling   a SELECT ... FOR UPDATE SKIP LOCKED relay with
#             kafka-clients (bench/peers/.../PollingRelay.java); on the
#             consuming side a batch consumer that de-duplicates on the
#             message id (PollingConsumer.java)
#   evbus     evbus with its defaults
#
# One throwaway PostgreSQL 15 (bench/lib.sh, plus wal_level = logical for
# Debezium and a TCP listener on 127.0.0.1 for the JVMs' JDBC) and one
# Kafka broker (test/kafka/kafka.sh).  Every topic has 3 partitions and
# message.timestamp.type=LogAppendTime.  Every event has the same 207-byte
# payload (public.peers_payload(g), which carries its staging time
# clock_timestamp() in microseconds), with 10,000 distinct keys.  The
# relays of Debezium and polling read public.outbox (id, topic, key,
# payload); evbus stages with evbus.publish.
#
# Measured, each twice, the systems in the order A B C C B A:
#
# 1. drain: N events staged (CHUNK per transaction) while the relay is
#    paused, then CHECKPOINT and resume; drain time = the last message's
#    LogAppendTime - the resume.  evbus is paused as bench/drain.sh does
#    (evbus.brokers = '', then set and reloaded); a JVM relay is started
#    and warmed up (its first events delivered), then paused with SIGSTOP
#    and resumed with SIGCONT.  events/s = N / drain time.
# 2. worker CPU-s per 100k events: user + system time (/proc/PID/stat) of
#    the relay's process over the drain: the JVM, or evbus's publisher
#    background worker.  The other PostgreSQL processes' CPU (for Debezium
#    the walsender that decodes the WAL) is in the raw results.
# 3. latency: pgbench -R RATE for DURATION seconds, one event per
#    transaction (CLIENTS clients, -M prepared), after WARMUP seconds of
#    the same load on another topic; per event, the broker's LogAppendTime
#    - the staging time in the payload (ms; append times are whole ms):
#    p50, p99, max (the method of bench/latency.sh).  Each event's
#    latency and staging time (ms since the epoch) are kept in
#    latencies-SYSTEM-RUN.txt.gz, so that a tail can be placed in time.
# 4. consume: N events published by evbus into one topic, then read by a
#    fresh consumer group of each consumer in turn (evbus polling polling
#    evbus), in database "consumer": evbus subscribes a handler
#    (public.effect_insert) that does one INSERT into public.effect; the
#    polling consumer does the same INSERT, batched, ON CONFLICT DO
#    NOTHING.  events/s = N / (last - first effect row's clock_timestamp());
#    checked: N rows, N distinct message ids, no dead letter.  CPU-s per
#    100k events: what PostgreSQL's processes (all but the publishing
#    worker, idle then) used from the start (subscribe or JVM launch)
#    until the N rows are there, and the polling consumer's JVM from its
#    READY (subscribed; its start-up is not counted) until then; the
#    broker's CPU is not counted.
#
# Any failure (a JVM that exits, an event missing, a timeout) stops the
# run with an error and no table.  Every process it started (JVMs,
# PostgreSQL, Kafka) is stopped on exit, Ctrl-C included.
#
# Usage (as root or any user; one command):
#   bench/peers.sh
# Environment: N (200000), CHUNK (100000), RATE (1000), DURATION (30),
#   WARMUP (5), CLIENTS (4), THREADS (2), POLL_MS (1: the empty-poll
#   interval of both JVM relays), JAVA_OPTS (-Xms256m -Xmx1g), TIMEOUT
#   (600 s for each wait), ONLY=consume (the consuming side alone: no
#   drain, no latency, no table, the raw numbers only), CONSUMERS (the
#   consume runs in order, default "evbus polling polling evbus"), plus
#   those of bench/lib.sh.
# Output: the markdown table on stdout and in $RESULTS_DIR/table.md; raw
#   numbers in $RESULTS_DIR/raw.tsv; each JVM's log and each run's files
#   in $RESULTS_DIR.

# shellcheck source=bench/lib.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

PEERS_DIR=$BENCH_DIR/peers

# peers_build: fetch the jars (Maven Central, as test/kafka/kafka.sh does)
# and compile the Java programs into bench/peers/target, unless the
# sources and pom.xml are those of the last build.  Run before bench_init
# re-executes the script as the unprivileged user, so that root builds.
peers_build() {
	local sum out
	sum=$(cat "$PEERS_DIR/pom.xml" "$PEERS_DIR"/src/main/java/org/evbus/bench/peers/*.java | sha256sum | cut -c1-16)
	[[ -f $PEERS_DIR/target/.built && $(cat "$PEERS_DIR/target/.built") == "$sum" ]] && return 0
	command -v mvn >/dev/null || die "mvn not found (test/install-deps.sh installs maven)"
	command -v javac >/dev/null || die "javac not found (a JDK 17+: test/install-deps.sh)"
	log "building bench/peers (mvn dependency:copy-dependencies, javac)"
	rm -rf "$PEERS_DIR/target"
	mkdir -p "$PEERS_DIR/target/classes"
	out=$PEERS_DIR/target/build.log
	mvn -B -q -Dstyle.color=never -f "$PEERS_DIR/pom.xml" dependency:copy-dependencies \
		-DoutputDirectory="$PEERS_DIR/target/lib" >"$out" 2>&1 \
		|| { cat "$out" >&2; die "mvn dependency:copy-dependencies failed"; }
	javac -d "$PEERS_DIR/target/classes" -cp "$PEERS_DIR/target/lib/*" --release 17 \
		"$PEERS_DIR"/src/main/java/org/evbus/bench/peers/*.java >>"$out" 2>&1 \
		|| { cat "$out" >&2; die "javac failed"; }
	chmod -R a+rX "$PEERS_DIR/target"
	echo "$sum" >"$PEERS_DIR/target/.built"
}
peers_build
bench_init peers 1 "$@"

N=${N:-200000}
CHUNK=${CHUNK:-100000}
RATE=${RATE:-1000}
DURATION=${DURATION:-30}
WARMUP=${WARMUP:-5}
CLIENTS=${CLIENTS:-4}
THREADS=${THREADS:-2}
POLL_MS=${POLL_MS:-1}
JAVA_OPTS=${JAVA_OPTS:--Xms256m -Xmx1g}
TIMEOUT=${TIMEOUT:-600}
SYSTEMS=(debezium polling evbus)
ORDER=(evbus polling debezium debezium polling evbus)
ONLY=${ONLY:-}
[[ -z $ONLY || $ONLY == consume ]] || die "ONLY=$ONLY: only ONLY=consume is known"
[[ $ONLY == consume ]] && ORDER=()
read -r -a CONSUMERS <<<"${CONSUMERS:-evbus polling polling evbus}"
CP="$PEERS_DIR/target/classes:$PEERS_DIR/target/lib/*"
# the programs log warnings and errors only (slf4j-simple), to stderr
JAVA_LOG=-Dorg.slf4j.simpleLogger.defaultLogLevel=warn
RAW=$RESULTS_DIR/raw.tsv

# Ctrl-C: bash does not run its INT trap while it waits for a command
# substitution or for a child that handles SIGINT itself (psql, kcat), so
# the measurements run in a background child (peers_main) and this shell
# only waits for it: the wait builtin returns at once on a trapped signal.
# On exit, whatever the cause, this shell stops that child, every JVM it
# started (their pids are in $TMP_DIR/jvm.pids; after a SIGSTOP too), then
# PostgreSQL and Kafka (bench_cleanup).
# stop_pid PID: SIGCONT (it may be stopped), SIGTERM, at most 10 s, SIGKILL
stop_pid() {
	local i
	kill -CONT "$1" 2>/dev/null || true
	kill -TERM "$1" 2>/dev/null || true
	for i in $(seq 1 100); do
		kill -0 "$1" 2>/dev/null || return 0
		sleep 0.1
	done
	kill -KILL "$1" 2>/dev/null || true
}
peers_cleanup() {
	local p
	if [[ -n ${BODY_PID:-} ]] && kill -0 "$BODY_PID" 2>/dev/null; then
		for p in $(pgrep -P "$BODY_PID"); do
			kill -TERM "$p" 2>/dev/null || true
		done
		kill -TERM "$BODY_PID" 2>/dev/null || true
	fi
	for p in $(cat "$TMP_DIR/jvm.pids" 2>/dev/null); do
		kill -0 "$p" 2>/dev/null && stop_pid "$p"
	done
	[[ -f $TMP_DIR/pg/postmaster.pid ]] && PG_STARTED=1
	return 0
}
# (errexit off: a process may exit between two of the kills)
trap 'rc=$?; set +e; peers_cleanup; (exit $rc); bench_cleanup' EXIT

peers_main() {
environment_report >"$RESULTS_DIR/environment.txt"
{
	echo "java: $(java -version 2>&1 | head -1)"
	echo "jars: $(cd "$PEERS_DIR/target/lib" && ls | grep -E '^(debezium-embedded|debezium-connector-postgres|kafka-clients|postgresql)-' | tr '\n' ' ')"
	echo "settings: N=$N CHUNK=$CHUNK RATE=$RATE DURATION=$DURATION WARMUP=$WARMUP CLIENTS=$CLIENTS POLL_MS=$POLL_MS JAVA_OPTS='$JAVA_OPTS'"
} >>"$RESULTS_DIR/environment.txt"
printf 'measure\tsystem\trun\tvalue\tdetail\n' >"$RAW"
raw() { printf '%s\t%s\t%s\t%s\t%s\n' "$@" >>"$RAW"; }

pg_start "wal_level = logical" "listen_addresses = '127.0.0.1'" \
	"max_worker_processes = 16" "wal_sender_timeout = 0"
kafka_start
JDBC_URL="jdbc:postgresql://127.0.0.1:$PGPORT/bench?user=postgres"
CONSUMER_JDBC_URL="jdbc:postgresql://127.0.0.1:$PGPORT/consumer?user=postgres"

psql -qX -v ON_ERROR_STOP=1 >/dev/null <<'SQL'
-- the outbox of the two JVM relays
CREATE TABLE public.outbox (
	id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	topic text NOT NULL,
	key text,
	payload jsonb NOT NULL
);
-- every system's event: ~200 bytes, with its staging time
CREATE FUNCTION public.peers_payload(g bigint) RETURNS jsonb LANGUAGE sql VOLATILE AS $$
	SELECT jsonb_build_object('staged_us', (extract(epoch FROM clock_timestamp()) * 1000000)::bigint,
		'account_id', g, 'branch_id', g % 10, 'teller_id', g % 100, 'delta', g % 5000,
		'currency', 'EUR', 'reason', 'pgbench tpcb-like transfer',
		'ref', 'c0ffee00-1234-4abc-8def-000000000042')
$$;
SQL
PAYLOAD_BYTES=$(q "SELECT octet_length(public.peers_payload(123456)::text)")
echo "payload: $PAYLOAD_BYTES bytes (g = 123456)" >>"$RESULTS_DIR/environment.txt"
psql -qX -d postgres -v ON_ERROR_STOP=1 -c "CREATE DATABASE consumer" >/dev/null
qc() { psql -qXAt -d consumer -v ON_ERROR_STOP=1 -c "$1"; }
psql -qX -d consumer -v ON_ERROR_STOP=1 >/dev/null <<'SQL'
CREATE EXTENSION evbus;
CREATE TABLE public.effect (
	message_id text PRIMARY KEY,
	payload jsonb NOT NULL,
	handled_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
-- evbus's handler runs as a role that is not a superuser
CREATE ROLE bench_app;
GRANT USAGE ON SCHEMA evbus TO bench_app;
GRANT EXECUTE ON FUNCTION evbus.subscribe(text, regprocedure, text, integer) TO bench_app;
GRANT EXECUTE ON FUNCTION evbus.unsubscribe(text, regprocedure, text) TO bench_app;
GRANT INSERT ON public.effect TO bench_app;
CREATE FUNCTION public.effect_insert(payload jsonb, headers jsonb) RETURNS void LANGUAGE sql AS $$
	INSERT INTO public.effect (message_id, payload) VALUES (headers->>'cap-msg-id', payload)
$$;
ALTER FUNCTION public.effect_insert(jsonb, jsonb) OWNER TO bench_app;
SQL

# all topics at once (one JVM); LogAppendTime, 3 partitions
topics=(PeersWarmup PeersLatWarmup PeersConsume)
for r in 1 2; do
	for s in "${SYSTEMS[@]}"; do
		topics+=("PeersDrain_${s}_$r" "PeersLat_${s}_$r")
	done
done
BROKERS=$BROKERS java "$JAVA_LOG" $JAVA_OPTS -cp "$CP" org.evbus.bench.peers.CreateTopics "${topics[@]}" \
	>"$RESULTS_DIR/create-topics.log" 2>&1 || { cat "$RESULTS_DIR/create-topics.log" >&2; die "could not create the topics"; }
set_brokers "$BROKERS"

now() { echo "$EPOCHREALTIME"; }
# noise_begin / noise_end: the CPU seconds that processes outside this
# benchmark (other people's work on a shared machine) took in between, and
# the load average at the end, for the raw results
noise_begin() { foreign_snapshot >"$TMP_DIR/foreign0"; }
noise_end() {
	foreign_snapshot >"$TMP_DIR/foreign1"
	echo "other processes (not this benchmark's) $(foreign_cpu_s "$TMP_DIR/foreign0" "$TMP_DIR/foreign1")s CPU, load average $(cut -d' ' -f1 /proc/loadavg)"
}
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", b - a}'; }

# jvm_start NAME CLASS [VAR=VALUE...]: start a Java program of
# bench/peers in the background, wait for its READY line; sets JVM_PID.
jvm_start() {
	local name=$1 class=$2 i
	shift 2
	env "$@" java "$JAVA_LOG" $JAVA_OPTS -cp "$CP" "org.evbus.bench.peers.$class" \
		>"$RESULTS_DIR/$name.log" 2>&1 &
	JVM_PID=$!
	echo "$JVM_PID" >>"$TMP_DIR/jvm.pids"
	JVM_NAME=$name
	for i in $(seq 1 1200); do
		grep -q '^READY$' "$RESULTS_DIR/$name.log" && return 0
		jvm_check
		sleep 0.1
	done
	die "$name did not start within 120 s: $(tail -n 20 "$RESULTS_DIR/$name.log")"
}
# jvm_check: stop the run if the current JVM has exited
jvm_check() {
	[[ -z ${JVM_PID:-} ]] && return 0
	kill -0 "$JVM_PID" 2>/dev/null && return 0
	local st=0
	wait "$JVM_PID" 2>/dev/null || st=$?
	die "$JVM_NAME exited (status $st); its log ends:
$(tail -n 30 "$RESULTS_DIR/$JVM_NAME.log")"
}
jvm_stop() {
	local pid=$JVM_PID
	JVM_PID=
	stop_pid "$pid"
	wait "$pid" 2>/dev/null || true
}

# wait_offsets TOPIC COUNT WHAT: wait until TOPIC's partitions hold COUNT
# messages (the running JVM, if any, must stay alive)
wait_offsets() {
	local topic=$1 want=$2 what=$3 limit=$((SECONDS + TIMEOUT)) got
	while :; do
		got=$(kafka_end_offsets "$topic")
		((got >= want)) && break
		jvm_check
		((SECONDS < limit)) || die "$what: $got of $want messages in $topic after ${TIMEOUT}s"
		sleep 0.2
	done
	((got == want)) || die "$what: $got messages in $topic, expected $want"
}

# stage SYSTEM TOPIC FROM TO: stage events FROM..TO in one transaction
stage() {
	if [[ $1 == evbus ]]; then
		q "SELECT count(evbus.publish('$2', public.peers_payload(g), 'k' || (g % 10000)))
			FROM generate_series($3, $4) g" >/dev/null
	else
		q "INSERT INTO public.outbox (topic, key, payload)
			SELECT '$2', 'k' || (g % 10000), public.peers_payload(g) FROM generate_series($3, $4) g" >/dev/null
	fi
}

# relay_start SYSTEM: start the relay of SYSTEM and warm it up (20 events
# on PeersWarmup delivered); sets RELAY_PID (the worker whose CPU counts)
WARMED=0
relay_start() {
	case $1 in
		evbus)
			JVM_PID=
			;;
		polling)
			jvm_start "polling-relay-$2" PollingRelay PG_URL="$JDBC_URL" BROKERS="$BROKERS" POLL_MS="$POLL_MS"
			;;
		debezium)
			q "SELECT pg_create_logical_replication_slot('peers_debezium', 'pgoutput')" >/dev/null
			q "CREATE PUBLICATION peers_debezium FOR TABLE public.outbox" >/dev/null
			jvm_start "debezium-relay-$2" DebeziumRelay PG_HOST=127.0.0.1 PG_PORT="$PGPORT" PG_DB=bench \
				PG_USER=postgres BROKERS="$BROKERS" SLOT=peers_debezium PUBLICATION=peers_debezium POLL_MS="$POLL_MS"
			;;
	esac
	stage "$1" PeersWarmup 1 20
	WARMED=$((WARMED + 20))
	wait_offsets PeersWarmup "$WARMED" "$1 warm-up"
}
relay_stop() {
	local i
	case $1 in
		evbus) ;;
		polling)
			# the last batch's DELETE commits after its acknowledgements
			for i in $(seq 1 100); do
				[[ $(q "SELECT count(*) FROM public.outbox") == 0 ]] && break
				sleep 0.1
			done
			jvm_stop
			[[ $(q "SELECT count(*) FROM public.outbox") == 0 ]] || die "the polling relay left rows in public.outbox"
			;;
		debezium)
			jvm_stop
			for i in $(seq 1 100); do
				[[ $(q "SELECT active FROM pg_replication_slots WHERE slot_name = 'peers_debezium'") == f ]] && break
				sleep 0.1
			done
			q "SELECT pg_drop_replication_slot('peers_debezium')" >/dev/null
			q "DROP PUBLICATION peers_debezium" >/dev/null
			q "TRUNCATE public.outbox" >/dev/null
			;;
	esac
}

# drain SYSTEM RUN
drain() {
	local sys=$1 run=$2 topic=PeersDrain_$1_$2 staged=0 hi pid t0 w0 w1 p0 p1 last n s cpu noise
	log "drain $run: $sys, staging $N events while paused"
	if [[ $sys == evbus ]]; then
		set_brokers ''
		sleep 1
	else
		kill -STOP "$JVM_PID"
	fi
	while ((staged < N)); do
		hi=$((staged + CHUNK < N ? staged + CHUNK : N))
		stage "$sys" "$topic" $((staged + 1)) "$hi"
		staged=$hi
	done
	q "CHECKPOINT" >/dev/null
	if [[ $sys == evbus ]]; then
		pid=$(q "$PUBLISHER_PID_SQL")
	else
		pid=$JVM_PID
	fi
	w0=$(proc_ticks "$pid")
	p0=$(pg_other_ticks)
	noise_begin
	t0=$(now)
	if [[ $sys == evbus ]]; then
		set_brokers "$BROKERS"
	else
		kill -CONT "$JVM_PID"
	fi
	wait_offsets "$topic" "$N" "$sys drain"
	w1=$(proc_ticks "$pid")
	p1=$(pg_other_ticks)
	noise=$(noise_end)
	[[ $sys != evbus || $(q "$PUBLISHER_PID_SQL") == "$pid" ]] || die "the evbus publisher restarted during the drain"
	# the last append time, and every message there once
	read -r n last < <(kcat -b "$BROKERS" -C -t "$topic" -o beginning -e -q -f '%T\n' 2>/dev/null \
		| awk 'BEGIN {m = 0} {n++; if ($1 > m) m = $1} END {print n + 0, m}')
	((n == N)) || die "$sys drain: read $n messages back from $topic, expected $N"
	s=$(awk -v a="$t0" -v l="$last" 'BEGIN {printf "%.3f", l / 1000 - a}')
	awk -v s="$s" 'BEGIN {exit !(s > 0)}' || die "$sys drain: last append time before the start ($s s)"
	cpu=$(awk -v t=$((w1 - w0)) -v h="$CLK_TCK" -v n="$N" 'BEGIN {printf "%.2f", t / h / n * 100000}')
	raw drain_events_per_s "$sys" "$run" "$(awk -v n="$N" -v s="$s" 'BEGIN {printf "%.0f", n / s}')" "$N events in ${s}s; $noise"
	raw worker_cpu_s_per_100k "$sys" "$run" "$cpu" "worker $(ticks_to_s $((w1 - w0)))s, other PostgreSQL processes $(ticks_to_s $((p1 - p0)))s"
	log "drain $run: $sys: $N events in ${s}s, worker CPU $(ticks_to_s $((w1 - w0)))s"
}

# latency SYSTEM RUN
latency() {
	local sys=$1 run=$2 topic=PeersLat_$1_$2 sql=$RESULTS_DIR/latency-$1-$2.sql staged got noise
	if [[ $sys == evbus ]]; then
		printf '%s\n' '\set k random(1, 10000)' \
			"SELECT evbus.publish('$topic', public.peers_payload(:k), :k::text);" >"$sql"
	else
		printf '%s\n' '\set k random(1, 10000)' \
			"INSERT INTO public.outbox (topic, key, payload) VALUES ('$topic', :k::text, public.peers_payload(:k));" >"$sql"
	fi
	# 20 events that only give the producer the topic's metadata (no
	# staging time: skipped when read back), then WARMUP s of the load on
	# another topic
	if [[ $sys == evbus ]]; then
		q "SELECT count(evbus.publish('$topic', jsonb_build_object('warmup', true), 'w' || g)) FROM generate_series(1, 20) g" >/dev/null
	else
		q "INSERT INTO public.outbox (topic, key, payload) SELECT '$topic', 'w' || g, jsonb_build_object('warmup', true) FROM generate_series(1, 20) g" >/dev/null
	fi
	wait_offsets "$topic" 20 "$sys latency warm-up"
	if ((WARMUP > 0)); then
		sed "s/'$topic'/'PeersLatWarmup'/" "$sql" >"$TMP_DIR/warmup.sql"
		pgbench -n -M prepared -c "$CLIENTS" -j "$THREADS" -R "$RATE" -T "$WARMUP" \
			-f "$TMP_DIR/warmup.sql" >"$TMP_DIR/warmup.log" 2>&1 \
			|| { cat "$TMP_DIR/warmup.log" >&2; die "pgbench failed"; }
		jvm_check
	fi
	log "latency $run: $sys, pgbench -R $RATE -T $DURATION"
	noise_begin
	pgbench -n -M prepared -c "$CLIENTS" -j "$THREADS" -R "$RATE" -T "$DURATION" \
		-f "$sql" >"$RESULTS_DIR/pgbench-$sys-$run.log" 2>&1 \
		|| { cat "$RESULTS_DIR/pgbench-$sys-$run.log" >&2; die "pgbench failed"; }
	noise=$(noise_end)
	staged=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$RESULTS_DIR/pgbench-$sys-$run.log")
	[[ -n $staged ]] || die "pgbench printed no transaction count"
	wait_offsets "$topic" $((staged + 20)) "$sys latency"
	kcat -b "$BROKERS" -C -t "$topic" -o beginning -e -q -f '%T\t%s\n' 2>/dev/null \
		| perl -ne 'my ($ts, $v) = split /\t/; next unless $v =~ /"staged_us":\s*(\d+)/;
			printf "%.3f\t%.3f\n", $ts - $1 / 1000.0, $1 / 1000.0' | sort -g >"$TMP_DIR/lat.txt"
	got=$(wc -l <"$TMP_DIR/lat.txt")
	((got == staged)) || die "$sys latency: $got events with a staging time read back, $staged staged"
	gzip -9c "$TMP_DIR/lat.txt" >"$RESULTS_DIR/latencies-$sys-$run.txt.gz"
	read -r p50 p99 pmax < <(awk '{a[NR] = $1} END {
			r50 = int(0.50 * NR + 0.999999); r99 = int(0.99 * NR + 0.999999)
			printf "%.1f %.1f %.1f\n", a[r50], a[r99], a[NR] }' "$TMP_DIR/lat.txt")
	raw latency_p50_ms "$sys" "$run" "$p50" "$staged events; $noise"
	raw latency_p99_ms "$sys" "$run" "$p99" "$staged events"
	raw latency_max_ms "$sys" "$run" "$pmax" "$staged events"
	log "latency $run: $sys: p50 $p50 p99 $p99 max $pmax ms ($staged events)"
}

# ---- producing side: drain and latency, A B C C B A ----
declare -A RUN=()
for sys in "${ORDER[@]}"; do
	RUN[$sys]=$((${RUN[$sys]:-0} + 1))
	relay_start "$sys" "${RUN[$sys]}"
	drain "$sys" "${RUN[$sys]}"
	latency "$sys" "${RUN[$sys]}"
	relay_stop "$sys"
done

# ---- consuming side ----
log "consume: publishing $N events to PeersConsume"
for ((i = 0; i < N; i += CHUNK)); do
	stage evbus PeersConsume $((i + 1)) $((i + CHUNK < N ? i + CHUNK : N))
done
wait_offsets PeersConsume "$N" "consume staging"

# consume SYSTEM RUN
consume() {
	local sys=$1 run=$2 group=peers-$1-$2 t0 t1 h limit rows ids span dead noise p0 p1 j0=0 jvm=0 cpu
	qc "TRUNCATE public.effect"
	log "consume $run: $sys (group $group)"
	p0=$(pg_other_ticks)
	noise_begin
	t0=$(now)
	if [[ $sys == evbus ]]; then
		qc "SET ROLE bench_app; SELECT evbus.subscribe('PeersConsume', 'public.effect_insert(jsonb, jsonb)', '$group')" >/dev/null
	else
		jvm_start "polling-consumer-$run" PollingConsumer PG_URL="$CONSUMER_JDBC_URL" BROKERS="$BROKERS" \
			TOPIC=PeersConsume GROUP="$group"
		j0=$(proc_ticks "$JVM_PID")
	fi
	limit=$((SECONDS + TIMEOUT))
	while :; do
		h=$(qc "SELECT count(*) FROM public.effect")
		((h >= N)) && break
		jvm_check
		dead=$(qc "SELECT count(*) FROM evbus.dead_letters")
		((dead == 0)) || die "consume: $dead dead letters in database consumer"
		((SECONDS < limit)) || die "consume: $sys handled $h of $N in ${TIMEOUT}s"
		sleep 0.2
	done
	t1=$(now)
	p1=$(pg_other_ticks)
	[[ $sys == polling ]] && jvm=$(($(proc_ticks "$JVM_PID") - j0))
	noise=$(noise_end)
	if [[ $sys == evbus ]]; then
		qc "SET ROLE bench_app; SELECT evbus.unsubscribe('PeersConsume', 'public.effect_insert(jsonb, jsonb)', '$group')" >/dev/null
	else
		jvm_stop
	fi
	read -r rows ids span < <(qc "SELECT count(*), count(DISTINCT message_id),
		extract(epoch FROM max(handled_at) - min(handled_at)) FROM public.effect" | tr '|' ' ')
	((rows == N && ids == N)) || die "consume: $sys: $rows rows, $ids distinct message ids, expected $N"
	dead=$(qc "SELECT count(*) FROM evbus.dead_letters")
	((dead == 0)) || die "consume: $dead dead letters in database consumer"
	raw consume_events_per_s "$sys" "$run" "$(awk -v n="$N" -v s="$span" 'BEGIN {printf "%.0f", n / s}')" \
		"first to last effect row ${span}s; $(elapsed "$t0" "$t1")s from the start (subscribe or JVM launch); $noise"
	cpu=$(awk -v t=$((p1 - p0 + jvm)) -v h="$CLK_TCK" -v n="$N" 'BEGIN {printf "%.2f", t / h / n * 100000}')
	raw consume_cpu_s_per_100k "$sys" "$run" "$cpu" \
		"PostgreSQL $(ticks_to_s $((p1 - p0)))s, JVM $(ticks_to_s "$jvm")s"
	log "consume $run: $sys: $N in ${span}s (first to last row), CPU ${cpu}s per 100k"
}
for sys in "${CONSUMERS[@]}"; do
	RUN[c$sys]=$((${RUN[c$sys]:-0} + 1))
	consume "$sys" "${RUN[c$sys]}"
done
if [[ $ONLY == consume ]]; then
	log "raw numbers in $RAW"
	exit 0
fi

# ---- the table ----
thousands() { echo "$1" | sed ':a;s/\B[0-9]\{3\}\>/,&/;ta'; }
# range MEASURE SYSTEM: "lo-hi" of the runs' values
range() {
	awk -F'\t' -v m="$1" -v s="$2" '$1 == m && $2 == s {v[++n] = $4}
		END {
			if (n == 0) { print "-"; exit }
			lo = v[1]; hi = v[1]
			for (i = 2; i <= n; i++) { if (v[i] + 0 < lo + 0) lo = v[i]; if (v[i] + 0 > hi + 0) hi = v[i] }
			print (lo == hi ? lo : lo "-" hi)
		}' "$RAW"
}
{
	echo "| measure | Debezium | polling relay | evbus, defaults |"
	echo "|---|---|---|---|"
	printf '| drain of %s staged events, events/s | %s | %s | %s |\n' "$(thousands "$N")" \
		"$(range drain_events_per_s debezium)" "$(range drain_events_per_s polling)" "$(range drain_events_per_s evbus)"
	printf '| worker CPU-s per 100k events | %s | %s | %s |\n' \
		"$(range worker_cpu_s_per_100k debezium)" "$(range worker_cpu_s_per_100k polling)" "$(range worker_cpu_s_per_100k evbus)"
	lat() { echo "$(range latency_p50_ms "$1") / $(range latency_p99_ms "$1") / $(range latency_max_ms "$1")"; }
	printf '| commit -> broker append at %s events/s: p50 / p99 / max ms | %s | %s | %s |\n' "$(thousands "$RATE")" \
		"$(lat debezium)" "$(lat polling)" "$(lat evbus)"
	printf '| consume %s, trivial handler INSERT, exactly once: events/s | - | %s (polling consumer) | %s |\n' "$(thousands "$N")" \
		"$(range consume_events_per_s polling)" "$(range consume_events_per_s evbus)"
	printf '| consume: CPU-s per 100k events, PostgreSQL (and the JVM) | - | %s (polling consumer) | %s |\n' \
		"$(range consume_cpu_s_per_100k polling)" "$(range consume_cpu_s_per_100k evbus)"
} | tee "$RESULTS_DIR/table.md"
log "raw numbers in $RAW"
}

peers_main &
BODY_PID=$!
wait "$BODY_PID"

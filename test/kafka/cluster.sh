#!/usr/bin/env bash
# cluster.sh - a throwaway three-broker Apache Kafka cluster (KRaft, each
# node a combined broker and controller: a three-voter quorum) for the
# evbus fault campaign, run from the same jars as kafka.sh, with each
# broker reachable by clients only through a toxiproxy proxy of its own,
# so that the campaign can cut, slow or black-hole the links one by one.
#
# Usage: cluster.sh SUBCOMMAND CDIR [ARGS]
#
#   start CDIR      Start the cluster whose state lives in CDIR (created if
#                   missing): brokers 1, 2, 3 in CDIR/b1, CDIR/b2, CDIR/b3,
#                   and a toxiproxy server in CDIR/toxiproxy with one proxy
#                   per broker (b1, b2, b3).  The first start picks the
#                   ports and formats the data dirs; a later start reuses
#                   them.  Each broker has an INTERNAL listener (inter-broker
#                   traffic, admin tools, the campaign's checker) and an
#                   EXTERNAL one whose advertised address is its proxy's, so
#                   a client bootstrapped from the proxies reaches every
#                   broker only through them.  Replication factor 3,
#                   min.insync.replicas 2 for every topic, the offsets and
#                   transaction state topics too.  Waits until all three
#                   answer and a message goes round trip; writes
#                     CDIR/bootstrap           the INTERNAL addresses, comma
#                                              separated (so `kafka.sh
#                                              consume|topics CDIR ...` work)
#                     CDIR/proxied_bootstrap   the proxies' addresses (what
#                                              evbus.brokers is set to)
#                     CDIR/toxiproxy/api       the toxiproxy API address
#                   and prints the proxied bootstrap.
#   stop CDIR       Stop the three brokers (SIGTERM, SIGKILL after
#                   EVBUS_KAFKA_STOP_TIMEOUT s) and the toxiproxy server.
#   kill CDIR N     SIGKILL broker N (1-3) and wait until it is gone.
#   start-one CDIR N
#                   (Re)start broker N and wait until it answers metadata
#                   requests on its internal listener.
#   pause CDIR N    SIGSTOP broker N's JVM (a hung broker); resume CDIR N:
#                   SIGCONT.
#   leader CDIR TOPIC PARTITION
#                   Print the node id (1-3) of the partition's leader, or
#                   -1 when it has none.
#   status CDIR     One line per broker: "N running PID" or "N stopped";
#                   exit 0 when all three run, 3 otherwise.
#
# Environment: as kafka.sh (EVBUS_KAFKA_LIBS, JAVA_HOME,
# EVBUS_KAFKA_START_TIMEOUT, EVBUS_KAFKA_STOP_TIMEOUT);
# EVBUS_CLUSTER_HEAP_OPTS (each broker's heap, default "-Xms128m -Xmx384m").
# Needs what kafka.sh needs, toxiproxy (test/campaign/toxiproxy.sh fetch),
# curl and jq.

# kafka.sh's functions (need_java, free_ports, write_log4j2, wait_gone, ...)
# shellcheck source=test/kafka/kafka.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/kafka.sh"

CLUSTER_SH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/cluster.sh
TOXIPROXY_SH=$(cd "$(dirname "${BASH_SOURCE[0]}")/../campaign" && pwd)/toxiproxy.sh
CLUSTER_HEAP=${EVBUS_CLUSTER_HEAP_OPTS:--Xms128m -Xmx384m}

cdie() { echo "cluster.sh: $*" >&2; exit 1; }

cusage() {
	sed -n '2,/^# curl and jq/p' "$CLUSTER_SH" | sed 's/^# \{0,1\}//' >&2
	exit 2
}

need_cdir() {
	[[ -n ${1:-} ]] || cusage
	[[ -d $1 ]] || cdie "no such cluster dir: $1"
}

need_n() {
	[[ ${1:-} =~ ^[123]$ ]] || cdie "broker number must be 1, 2 or 3, not '${1:-}'"
}

# First start of CDIR: three ports per broker (internal, controller,
# external) and one per proxy, the three server.properties, one cluster id,
# three formatted data dirs.
init_cluster() {
	local cdir=$1 n ports voters cluster_id
	read -r -a ports < <(free_ports 12)
	((${#ports[@]} == 12)) || cdie "could not pick free ports"
	# ports[(n-1)*4 + 0..3]: internal, controller, external, proxy of broker n
	voters=
	for n in 1 2 3; do
		voters+="${voters:+,}$n@127.0.0.1:${ports[(n - 1) * 4 + 1]}"
	done
	cluster_id=-
	while [[ $cluster_id == -* ]]; do
		cluster_id=$(head -c16 /dev/urandom | base64 | tr '+/' '-_' | cut -c1-22)
	done
	for n in 1 2 3; do
		local d=$cdir/b$n i=${ports[(n - 1) * 4]} c=${ports[(n - 1) * 4 + 1]}
		local e=${ports[(n - 1) * 4 + 2]} p=${ports[(n - 1) * 4 + 3]}
		rm -rf "$d"
		mkdir -p "$d/data" "$d/logs"
		cat >"$d/server.properties" <<PROPS
# node $n of a three-node KRaft cluster for the evbus fault campaign;
# written by cluster.sh
process.roles=broker,controller
node.id=$n
controller.quorum.voters=$voters
listeners=INTERNAL://127.0.0.1:$i,CONTROLLER://127.0.0.1:$c,EXTERNAL://127.0.0.1:$e
# clients that bootstrap from the proxies are sent to the proxies
advertised.listeners=INTERNAL://127.0.0.1:$i,EXTERNAL://127.0.0.1:$p
inter.broker.listener.name=INTERNAL
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,INTERNAL:PLAINTEXT,EXTERNAL:PLAINTEXT
log.dirs=$d/data
auto.create.topics.enable=true
num.partitions=3
default.replication.factor=3
min.insync.replicas=2
offsets.topic.replication.factor=3
offsets.topic.num.partitions=3
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
transaction.state.log.num.partitions=3
share.coordinator.state.topic.replication.factor=3
share.coordinator.state.topic.min.isr=2
unclean.leader.election.enable=false
group.initial.rebalance.delay.ms=0
broker.session.timeout.ms=5000
broker.heartbeat.interval.ms=1000
replica.lag.time.max.ms=10000
num.network.threads=2
num.io.threads=2
num.recovery.threads.per.data.dir=1
background.threads=2
num.replica.fetchers=1
log.cleaner.threads=1
PROPS
		write_log4j2 "$d/log4j2.properties" "$d/logs/server.log" INFO
		echo "127.0.0.1:$i" >"$d/bootstrap"
		echo "127.0.0.1:$e" >"$d/external"
		echo "127.0.0.1:$p" >"$d/proxy"
		"$JAVA" -Xmx256m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC \
			-Dlog4j2.configurationFile="$d/log4j2.properties" \
			-cp "$LIBS/*" kafka.tools.StorageTool format \
			-t "$cluster_id" -c "$d/server.properties" >"$d/logs/format.log" 2>&1 \
			|| { cat "$d/logs/format.log" >&2; cdie "formatting $d/data failed"; }
	done
	mkdir -p "$cdir/logs"
	cat "$cdir"/b{1,2,3}/proxy | paste -sd, >"$cdir/proxied_bootstrap"
	cat "$cdir"/b{1,2,3}/bootstrap | paste -sd, >"$cdir/bootstrap" # written last
}

# Launch broker N's JVM unless it runs (its pid in CDIR/bN/kafka.pid).
launch() {
	local cdir=$1 n=$2 d pid
	d=$cdir/b$n
	pid=$(live_pid "$d")
	[[ -z $pid ]] || return 0
	echo "==== start $(date -u +%FT%TZ)" >>"$d/logs/stdout.log"
	# shellcheck disable=SC2086
	setsid "$JAVA" $CLUSTER_HEAP \
		-XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExplicitGCInvokesConcurrent \
		-XX:CICompilerCount=2 -Djava.awt.headless=true \
		-Dkafka.logs.dir="$d/logs" \
		-Dlog4j2.configurationFile="$d/log4j2.properties" \
		-cp "$LIBS/*" kafka.Kafka "$d/server.properties" \
		</dev/null >>"$d/logs/stdout.log" 2>&1 &
	echo "$!" >"$d/kafka.pid"
}

# The toxiproxy server of CDIR, with a proxy bN for each broker N (listen:
# its advertised EXTERNAL address, upstream: its EXTERNAL listener).
start_proxies() {
	local cdir=$1 api n
	api=$(bash "$TOXIPROXY_SH" start "$cdir/toxiproxy") || cdie "toxiproxy did not start"
	for n in 1 2 3; do
		curl -sf -o /dev/null "http://$api/proxies/b$n" && continue
		curl -sf -o /dev/null -X POST "http://$api/proxies" \
			-d "{\"name\": \"b$n\", \"listen\": \"$(cat "$cdir/b$n/proxy")\", \"upstream\": \"$(cat "$cdir/b$n/external")\", \"enabled\": true}" \
			|| cdie "could not create the proxy b$n"
	done
}

# Wait until broker N answers a metadata request on its internal listener
# and lists itself, at most START_TIMEOUT seconds.
wait_broker() {
	local cdir=$1 n=$2 d deadline pid
	d=$cdir/b$n
	deadline=$((SECONDS + START_TIMEOUT))
	until timeout 10 kcat -b "$(cat "$d/bootstrap")" -L -m 5 2>/dev/null | grep -q "broker $n at"; do
		pid=$(live_pid "$d")
		[[ -n $pid ]] || fail_start "$d" "broker $n exited during start-up"
		((SECONDS < deadline)) || fail_start "$d" "broker $n not ready after ${START_TIMEOUT}s"
		sleep 0.5
	done
}

ccmd_start() {
	[[ -n ${1:-} ]] || cusage
	mkdir -p "$1"
	local cdir n deadline token
	cdir=$(abs_dir "$1")
	need_libs
	need_java
	check_java_version
	command -v kcat >/dev/null || cdie "kcat not found (test/install-deps.sh installs it)"
	command -v jq >/dev/null || cdie "jq not found (test/install-deps.sh installs it)"
	[[ -f $cdir/bootstrap ]] || init_cluster "$cdir"
	start_proxies "$cdir"
	for n in 1 2 3; do launch "$cdir" "$n"; done
	for n in 1 2 3; do wait_broker "$cdir" "$n"; done
	# a round trip through all three (the probe topic has 3 replicas)
	deadline=$((SECONDS + START_TIMEOUT))
	token="probe-$$-$RANDOM$RANDOM"
	until probe "$(cat "$cdir/bootstrap")" "$token"; do
		((SECONDS < deadline)) || cdie "cluster in $cdir not ready after ${START_TIMEOUT}s"
		sleep 0.5
	done
	cat "$cdir/proxied_bootstrap"
}

ccmd_stop() {
	need_cdir "${1:-}"
	local cdir n pid pids=()
	cdir=$(abs_dir "$1")
	# SIGTERM all three at once; a paused JVM cannot act on it
	for n in 1 2 3; do
		pid=$(live_pid "$cdir/b$n")
		[[ -n $pid ]] || continue
		kill -CONT "$pid" 2>/dev/null || true
		kill -TERM "$pid" 2>/dev/null || true
		pids+=("$pid")
	done
	for pid in "${pids[@]}"; do
		if ! wait_gone "$pid" "$STOP_TIMEOUT"; then
			kill -KILL "$pid" 2>/dev/null || true
			wait_gone "$pid" 10 || cdie "pid $pid survives SIGKILL"
		fi
	done
	rm -f "$cdir"/b{1,2,3}/kafka.pid
	[[ -d $cdir/toxiproxy ]] && bash "$TOXIPROXY_SH" stop "$cdir/toxiproxy"
	return 0
}

ccmd_kill() {
	need_cdir "${1:-}"
	need_n "${2:-}"
	local cdir pid
	cdir=$(abs_dir "$1")
	pid=$(live_pid "$cdir/b$2")
	[[ -n $pid ]] || return 0
	kill -KILL "$pid" 2>/dev/null || true
	wait_gone "$pid" 10 || cdie "pid $pid survives SIGKILL"
	rm -f "$cdir/b$2/kafka.pid"
}

ccmd_start_one() {
	need_cdir "${1:-}"
	need_n "${2:-}"
	local cdir
	cdir=$(abs_dir "$1")
	need_libs
	need_java
	launch "$cdir" "$2"
	wait_broker "$cdir" "$2"
}

# pause/resume: SIGSTOP/SIGCONT broker N's JVM
ccmd_signal() {
	local sig=$1 cdir pid
	need_cdir "${2:-}"
	need_n "${3:-}"
	cdir=$(abs_dir "$2")
	pid=$(live_pid "$cdir/b$3")
	[[ -n $pid ]] || cdie "broker $3 is not running"
	kill "-$sig" "$pid"
}

ccmd_leader() {
	need_cdir "${1:-}"
	[[ -n ${2:-} && ${3:-} =~ ^[0-9]+$ ]] || cusage
	timeout 15 kcat -b "$(cat "$1/bootstrap")" -L -J -t "$2" -m 10 2>/dev/null \
		| jq -r --arg t "$2" --argjson p "$3" \
			'[.topics[] | select(.topic == $t) | .partitions[] | select(.partition == $p) | .leader][0] // -1'
}

ccmd_status() {
	need_cdir "${1:-}"
	local cdir n pid rc=0
	cdir=$(abs_dir "$1")
	for n in 1 2 3; do
		pid=$(live_pid "$cdir/b$n")
		if [[ -n $pid ]]; then
			echo "$n running $pid"
		else
			echo "$n stopped"
			rc=3
		fi
	done
	return "$rc"
}

cmain() {
	local sub=${1:-}
	[[ $# -gt 0 ]] && shift
	case $sub in
	start) ccmd_start "$@" ;;
	stop) ccmd_stop "$@" ;;
	kill) ccmd_kill "$@" ;;
	start-one) ccmd_start_one "$@" ;;
	pause) ccmd_signal STOP "$@" ;;
	resume) ccmd_signal CONT "$@" ;;
	leader) ccmd_leader "$@" ;;
	status) ccmd_status "$@" ;;
	*) cusage ;;
	esac
}

cmain "$@"

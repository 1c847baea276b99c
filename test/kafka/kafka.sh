#!/usr/bin/env bash
# kafka.sh - a throwaway single-node Apache Kafka (KRaft) broker for the evbus
# tests, run from the Maven Central jars that test/kafka/pom.xml names, with
# the machine's JDK 17+ (JAVA_HOME/bin/java, else `java` on PATH).
#
# Usage: kafka.sh SUBCOMMAND [ARGS]
#
#   fetch
#       Copy the jars into the libs dir (EVBUS_KAFKA_LIBS, default
#       test/kafka/libs) with `mvn dependency:copy-dependencies`.  No-op when
#       the libs dir already holds the jars of the current pom.xml (a stamp
#       file records the pom's checksum).  Files are made world-readable.
#
#   start DIR
#       Start the broker whose state lives in DIR (created if missing).  The
#       first start picks five free ports on 127.0.0.1 (broker, controller,
#       SASL, TLS, mutual TLS; above the ephemeral range, see free_ports),
#       makes the TLS keys (keytool), writes DIR/server.properties and
#       formats DIR/data; a later start of the same DIR (a restart) reuses
#       the ports, keys and data, so a stopped broker comes back with its
#       topics, messages and ACLs.  The JVM runs detached
#       (setsid); its pid is in DIR/kafka.pid, its log in DIR/logs/server.log.
#       Waits until the broker answers (`kcat -L` and a produce+consume round
#       trip on topic __evbus_probe), at most EVBUS_KAFKA_START_TIMEOUT
#       seconds (default 90); on failure prints the log tail and exits 1.
#       Prints the bootstrap address 127.0.0.1:PORT on stdout (also written
#       to DIR/bootstrap).  Starting a running broker only re-checks and
#       prints the address.  More listeners, each with its address in a
#       file:
#         DIR/sasl_bootstrap   SASL/PLAIN (no TLS); one user, "evbus", with
#                              the password in DIR/sasl_password
#         DIR/ssl_bootstrap    TLS (security.protocol=SSL) with the broker's
#                              self-signed certificate (EC P-256, SAN
#                              IP:127.0.0.1), in PEM in DIR/ca.pem: the file
#                              for ssl.ca.location
#         DIR/mtls_bootstrap   the same, and a client certificate is
#                              required: the one it trusts is in the PKCS#12
#                              keystore DIR/client.p12 (CN=evbus-client,
#                              certificate DIR/client.pem), whose password is
#                              in DIR/client_password; the same key, in PEM
#                              and encrypted with that password, is in
#                              DIR/client-key.pem (ssl.key.location)
#         DIR/sasl_ssl_bootstrap  SASL/PLAIN over TLS (security.protocol=
#                              SASL_SSL): the user of DIR/sasl_password,
#                              the certificate of DIR/ca.pem
#       Passwords are random and only in mode-600 files (these and
#       server.properties).  ACLs are enforced (StandardAuthorizer) with
#       allow.everyone.if.no.acl.found=true, so only what an ACL restricts
#       is restricted, and only for SASL users and client certificates:
#       PLAINTEXT, controller and SSL clients are User:ANONYMOUS, a super
#       user.
#
#   stop DIR        SIGTERM, wait for the process to exit (at most
#                   EVBUS_KAFKA_STOP_TIMEOUT s, default 30), then SIGKILL.
#                   Stopping a stopped broker is a no-op.
#   kill DIR        SIGKILL now (a crash), wait until the process is gone.
#   bootstrap DIR   Print the bootstrap address (known after the first start,
#                   whether running or not); exit 1 if never started.
#   status DIR      Print "running PID ADDR" (exit 0) or "stopped" (exit 3).
#
#   consume DIR TOPIC N [TIMEOUT_S]
#       Kafka's own Java console consumer (not librdkafka) reads TOPIC from
#       the beginning (all partitions, a fresh consumer group) and exits after
#       N messages or TIMEOUT_S seconds (default 30), whichever first.  One
#       line per message on stdout, fields separated by TAB:
#           Partition:P <TAB> Offset:O <TAB> HEADERS <TAB> KEY <TAB> VALUE
#       HEADERS is "name:value,name:value" or NO_HEADERS; a null key, value
#       or header value prints as "null".  (A value containing a newline
#       spans lines: this is a debugging/wire-check view, not a codec.)
#       Exit 0 when N messages were read, 3 when fewer (timeout), 1 on error.
#       The JVM's own log goes to DIR/logs/tools.log.
#
#   produce DIR TOPIC [EXTRA-ARGS...]
#       Kafka's Java console producer sends one message per stdin line until
#       EOF, synchronously (acks=all), so a failed send makes it exit non-zero
#       (after at most 30 s).  Each line is
#           HEADERS <TAB> KEY <TAB> VALUE
#       where HEADERS is "name:value,name:value" (no commas or colons inside
#       names/values); use the null marker \N for a null key or value and
#       for HEADERS to send no headers.  EXTRA-ARGS go to
#       org.apache.kafka.tools.ConsoleProducer as they are (e.g.
#       --property parse.headers=false makes lines KEY<TAB>VALUE).
#
#   configs DIR ARGS...
#       kafka.admin.ConfigCommand (kafka-configs.sh) against the broker; e.g.
#       `kafka.sh configs DIR --alter --entity-type topics --entity-name t
#       --add-config max.message.bytes=2000`.
#
#   topics DIR ARGS...
#       org.apache.kafka.tools.TopicCommand (kafka-topics.sh) against the
#       broker; e.g. `kafka.sh topics DIR --create --topic t --partitions 5`.
#
#   acls DIR ARGS...
#       org.apache.kafka.tools.AclCommand (kafka-acls.sh) against the
#       broker; e.g. `kafka.sh acls DIR --add --deny-principal User:evbus
#       --operation Write --topic t`.
#
#   delete-records DIR ARGS...
#       org.apache.kafka.tools.DeleteRecordsCommand (kafka-delete-records.sh)
#       against the broker; e.g. `kafka.sh delete-records DIR
#       --offset-json-file f.json` deletes a partition's messages below an
#       offset, as retention does.
#
# Environment: EVBUS_KAFKA_LIBS (jar dir), JAVA_HOME, EVBUS_KAFKA_HEAP_OPTS
# (broker heap, default "-Xms256m -Xmx512m"), EVBUS_KAFKA_START_TIMEOUT,
# EVBUS_KAFKA_STOP_TIMEOUT.  Needs: java 17+ and its keytool, openssl, mvn (fetch
# only), kcat, perl.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LIBS=${EVBUS_KAFKA_LIBS:-$SCRIPT_DIR/libs}
POM=$SCRIPT_DIR/pom.xml
START_TIMEOUT=${EVBUS_KAFKA_START_TIMEOUT:-90}
STOP_TIMEOUT=${EVBUS_KAFKA_STOP_TIMEOUT:-30}
BROKER_HEAP=${EVBUS_KAFKA_HEAP_OPTS:--Xms256m -Xmx512m}
PROBE_TOPIC=__evbus_probe

# the script run ($0): kafka.sh, or a script that sources it for its
# functions and has a header of the same form (test/campaign/toxiproxy.sh)
die() { echo "$(basename "$0"): $*" >&2; exit 1; }

usage() {
	sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
	exit 2
}

# Sets JAVA: $JAVA_HOME/bin/java, else `java` on PATH.
JAVA=
need_java() {
	if [[ -n ${JAVA_HOME:-} && -x $JAVA_HOME/bin/java ]]; then
		JAVA=$JAVA_HOME/bin/java
	elif command -v java >/dev/null; then
		JAVA=$(command -v java)
	else
		die "no java: install a JDK 17+ (test/install-deps.sh) or set JAVA_HOME"
	fi
}

# Kafka 4.x brokers need Java 17+.
check_java_version() {
	local v
	v=$("$JAVA" -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n1)
	[[ -n $v ]] || die "cannot tell the version of $JAVA"
	((v >= 17)) || die "$JAVA is Java $v; Kafka 4 needs 17+ (set JAVA_HOME)"
}

pom_sum() { sha256sum "$POM" | cut -d' ' -f1; }

cmd_fetch() {
	local stamp=$LIBS/.fetched
	if [[ -f $stamp && $(cat "$stamp") == "$(pom_sum)" ]]; then
		return 0
	fi
	command -v mvn >/dev/null || die "mvn not found (test/install-deps.sh installs maven)"
	mkdir -p "$LIBS"
	rm -f "$LIBS"/*.jar "$stamp"
	# Maven's output is kept for a failure only (even -q prints colour codes)
	local out
	out=$(mktemp)
	if ! mvn -B -q -Dstyle.color=never -f "$POM" \
		dependency:copy-dependencies -DoutputDirectory="$LIBS" >"$out" 2>&1; then
		cat "$out" >&2
		rm -f "$out"
		die "mvn dependency:copy-dependencies failed"
	fi
	rm -f "$out"
	ls "$LIBS"/kafka_2.13-*.jar >/dev/null 2>&1 || die "no kafka jar in $LIBS after fetch"
	chmod a+rx "$LIBS"
	chmod a+r "$LIBS"/*.jar
	pom_sum >"$stamp"
	chmod a+r "$stamp"
}

need_libs() {
	ls "$LIBS"/kafka_2.13-*.jar >/dev/null 2>&1 || die "no Kafka jars in $LIBS: run '$0 fetch' first"
}

need_dir() {
	[[ -n ${1:-} ]] || usage
	[[ -d $1 ]] || die "no such broker dir: $1"
}

# Absolute path of DIR (creating it when asked), so the pid file, configs and
# the process's command line name the same place whatever the caller's cwd.
abs_dir() { (cd "$1" && pwd); }

# N distinct free TCP ports on 127.0.0.1 (init_dir takes five: broker,
# controller, SASL, TLS, mutual TLS), printed on one line.
# They are picked outside the kernel's ephemeral range (so no outgoing
# connection can take them while the broker is down for a restart) and below
# 10200 or above 32767 (PostgreSQL::Test::Cluster's node ports); by default
# that is 61000-65535.  All are held open together while probing, so they
# differ; a small race with other processes remains until Kafka binds.
free_ports() {
	perl -MIO::Socket::INET -e '
		my $n = shift;
		my ($elo, $ehi) = (32768, 60999);
		if (open my $f, "<", "/proc/sys/net/ipv4/ip_local_port_range") {
			($elo, $ehi) = split " ", scalar <$f>;
		}
		my ($lo, $hi) = $ehi < 64500 && $ehi >= 32767 ? ($ehi + 1, 65535) : (2000, 10199);
		my @s;
		for (1 .. 500) {
			my $p = $lo + int(rand($hi - $lo + 1));
			next if grep { $_->sockport == $p } @s;
			my $s = IO::Socket::INET->new(LocalAddr => "127.0.0.1", LocalPort => $p,
			                              Proto => "tcp", Listen => 1, ReuseAddr => 1)
			  or next;
			push @s, $s;
			last if @s == $n;
		}
		@s == $n or die "no free ports in $lo-$hi\n";
		print join(" ", map { $_->sockport } @s), "\n";' "$1"
}

# pid_of PIDFILE TEXT: the pid in PIDFILE if that process is alive and its
# command line holds TEXT (guards against a recycled pid); nothing
# otherwise.  The command line is read whole, not piped into grep -q:
# under pipefail tr's SIGPIPE, when grep exits first, would make a running
# process look stopped.
pid_of() {
	local pidfile=$1 text=$2 pid cmd
	[[ -f $pidfile ]] || return 0
	pid=$(cat "$pidfile")
	[[ $pid =~ ^[0-9]+$ ]] || return 0
	kill -0 "$pid" 2>/dev/null || return 0
	cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 0
	[[ $cmd == *"$text"* ]] && echo "$pid"
	return 0
}

# The pid of DIR's broker if it runs; nothing otherwise.
live_pid() { pid_of "$1/kafka.pid" "$1/server.properties"; }

# log4j2 configuration: everything at INFO into FILE, nothing on the console.
write_log4j2() {
	local file=$1 log=$2 level=$3
	cat >"$file" <<EOF
# written by kafka.sh
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = $log
appender.file.append = true
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = $level
rootLogger.appenderRef.file.ref = FILE
EOF
}

# A random secret: 16 url-safe characters.
random_secret() { head -c12 /dev/urandom | base64 | tr '+/' '-_'; }

# keytool of the JDK that runs the broker, with the tool JVMs' fast start-up
# flags.  Store passwords are passed in the environment (-storepass:env),
# never on a command line.
keytool_q() {
	"$(dirname "$(readlink -f "$JAVA")")/keytool" -J-XX:TieredStopAtLevel=1 \
		-J-XX:+UseSerialGC -J-Xshare:auto -J-Djava.awt.headless=true "$@"
}

# make_key STORE PEM DNAME PWVAR [KEYTOOL-OPTIONS...]: a self-signed EC P-256
# key pair in the PKCS#12 keystore STORE, whose password is in the
# environment variable PWVAR, and its certificate in PEM in PEM.  (EC, not
# RSA: keytool makes a 2048-bit RSA key in 1-2 s on a 2-core box, a P-256
# key in a tenth of that.)
make_key() {
	local store=$1 pem=$2 dname=$3 pwvar=$4
	shift 4
	keytool_q -genkeypair -noprompt -storetype PKCS12 -keystore "$store" \
		-storepass:env "$pwvar" -alias key -keyalg EC -groupname secp256r1 \
		-validity 3650 -dname "$dname" "$@" \
		&& keytool_q -exportcert -rfc -keystore "$store" -storepass:env "$pwvar" \
			-alias key -file "$pem"
}

# The TLS keys of DIR: the broker's (DIR/broker.p12, SAN IP:127.0.0.1; its
# certificate DIR/ca.pem is what clients trust) and a client's
# (DIR/client.p12, CN=evbus-client; its certificate DIR/client.pem is what
# the mutual-TLS listener trusts; its key also in DIR/client-key.pem, in
# PEM, encrypted with the keystore's password by openssl).  Keystore
# passwords come from the environment: EVBUS_BROKER_KS_PASSWORD,
# EVBUS_CLIENT_KS_PASSWORD.  The two keys are made side by side; the tools'
# output goes to DIR/logs/keytool.log.
make_tls_keys() {
	local dir=$1 broker client b
	(
		umask 077
		make_key "$dir/broker.p12" "$dir/ca.pem" CN=127.0.0.1 EVBUS_BROKER_KS_PASSWORD \
			-ext SAN=IP:127.0.0.1 &
		broker=$!
		make_key "$dir/client.p12" "$dir/client.pem" CN=evbus-client EVBUS_CLIENT_KS_PASSWORD &
		client=$!
		wait "$broker"
		b=$?
		wait "$client" && ((b == 0)) &&
			openssl pkcs12 -in "$dir/client.p12" -nocerts \
				-passin env:EVBUS_CLIENT_KS_PASSWORD \
				-passout env:EVBUS_CLIENT_KS_PASSWORD -out "$dir/client-key.pem" &&
			grep -q 'BEGIN ENCRYPTED PRIVATE KEY' "$dir/client-key.pem"
	) >"$dir/logs/keytool.log" 2>&1 || return 1
	chmod 644 "$dir/ca.pem" "$dir/client.pem" # certificates: no secret
}

# First start of DIR: ports, TLS keys (made while the data dir is formatted),
# server.properties, log4j2 config, formatted data dir.
init_dir() {
	local dir=$1 bport cport sport tport mport xport sasl_password cluster_id keys
	read -r bport cport sport tport mport xport < <(free_ports 6)
	[[ -n $xport ]] || die "could not pick free ports"
	sasl_password=$(random_secret)
	rm -rf "$dir/data" "$dir/broker.p12" "$dir/client.p12" "$dir/client-key.pem" # a half-done earlier init
	mkdir -p "$dir/data" "$dir/logs"
	local -x EVBUS_BROKER_KS_PASSWORD EVBUS_CLIENT_KS_PASSWORD
	EVBUS_BROKER_KS_PASSWORD=$(random_secret)
	EVBUS_CLIENT_KS_PASSWORD=$(random_secret)
	make_tls_keys "$dir" &
	keys=$!
	cat >"$dir/server.properties" <<EOF
# single-node combined broker+controller (KRaft) for evbus tests; written by kafka.sh
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$bport,CONTROLLER://127.0.0.1:$cport,SASL_PLAINTEXT://127.0.0.1:$sport,SSL://127.0.0.1:$tport,MTLS://127.0.0.1:$mport,SASL_SSL://127.0.0.1:$xport
advertised.listeners=PLAINTEXT://127.0.0.1:$bport,SASL_PLAINTEXT://127.0.0.1:$sport,SSL://127.0.0.1:$tport,MTLS://127.0.0.1:$mport,SASL_SSL://127.0.0.1:$xport
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT,SSL:SSL,MTLS:SSL,SASL_SSL:SASL_SSL
# SASL/PLAIN clients (tests 055, 065; over TLS: 067): one user, evbus
sasl.enabled.mechanisms=PLAIN
listener.name.sasl_plaintext.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_evbus="$sasl_password";
listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_evbus="$sasl_password";
# TLS clients (tests 066, 067): the broker's self-signed certificate
# (ca.pem) on the three TLS listeners; MTLS also requires the client
# certificate client.pem
ssl.keystore.type=PKCS12
ssl.keystore.location=$dir/broker.p12
ssl.keystore.password=$EVBUS_BROKER_KS_PASSWORD
listener.name.mtls.ssl.client.auth=required
listener.name.mtls.ssl.truststore.type=PEM
listener.name.mtls.ssl.truststore.location=$dir/client.pem
# ACLs (test 055).  PLAINTEXT, CONTROLLER and SSL clients are ANONYMOUS, a
# super user; a resource without ACLs is open to every user, so only what a
# test restricts with ACLs is restricted
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:ANONYMOUS
allow.everyone.if.no.acl.found=true
log.dirs=$dir/data
auto.create.topics.enable=true
num.partitions=3
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
# a broker restarted after a crash (kill) cannot register until the old
# incarnation's session expires (default 9 s): shorten that
broker.session.timeout.ms=5000
broker.heartbeat.interval.ms=1000
# a 2-core test box: few threads
num.network.threads=2
num.io.threads=2
num.recovery.threads.per.data.dir=1
background.threads=2
num.replica.fetchers=1
log.cleaner.threads=1
EOF
	chmod 600 "$dir/server.properties" # it holds the SASL and keystore passwords
	write_log4j2 "$dir/log4j2.properties" "$dir/logs/server.log" INFO
	# A cluster id is 16 random bytes, base64url without padding (what
	# `kafka-storage.sh random-uuid` prints); made here to save a JVM launch.
	# An id starting with "-" would be read as an option by the format
	# tool: draw again until it does not.
	cluster_id=-
	while [[ $cluster_id == -* ]]; do
		cluster_id=$(head -c16 /dev/urandom | base64 | tr '+/' '-_' | cut -c1-22)
	done
	"$JAVA" -Xmx256m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC \
		-Dlog4j2.configurationFile="$dir/log4j2.properties" \
		-cp "$LIBS/*" kafka.tools.StorageTool format \
		-t "$cluster_id" -c "$dir/server.properties" >"$dir/logs/format.log" 2>&1 \
		|| { cat "$dir/logs/format.log" >&2; die "formatting $dir/data failed"; }
	wait "$keys" || { cat "$dir/logs/keytool.log" >&2; die "making the TLS keys failed"; }
	echo "127.0.0.1:$sport" >"$dir/sasl_bootstrap"
	(umask 077 && echo "$sasl_password" >"$dir/sasl_password")
	echo "127.0.0.1:$tport" >"$dir/ssl_bootstrap"
	echo "127.0.0.1:$mport" >"$dir/mtls_bootstrap"
	echo "127.0.0.1:$xport" >"$dir/sasl_ssl_bootstrap"
	(umask 077 && echo "$EVBUS_CLIENT_KS_PASSWORD" >"$dir/client_password")
	echo "127.0.0.1:$bport" >"$dir/bootstrap"
}

# Report a failed start: this start's ERROR lines (the cause, usually) and the
# tail of its log, then exit 1.  $3: server.log line where this start began.
fail_start() {
	local dir=$1 msg=$2 from=${3:-1} log=$1/logs/server.log
	echo "kafka.sh: $msg" >&2
	if [[ -f $log ]]; then
		echo "---- errors in $log ----" >&2
		tail -n "+$from" "$log" | grep -E '^\[[^]]*\] (ERROR|FATAL) ' | tail -n 10 >&2 || true
		echo "---- tail of $log ----" >&2
		tail -n "+$from" "$log" | tail -n 25 >&2
	fi
	echo "---- tail of $dir/logs/stdout.log ----" >&2
	tail -n 10 "$dir/logs/stdout.log" >&2 2>/dev/null || true
	exit 1
}

# One readiness check: metadata answers, and a message produced to the probe
# topic (auto-created) is read back.
probe() {
	local addr=$1 token=$2
	timeout 10 kcat -b "$addr" -L -m 5 >/dev/null 2>&1 || return 1
	echo "$token" | timeout 15 kcat -P -b "$addr" -t "$PROBE_TOPIC" \
		-X message.timeout.ms=10000 >/dev/null 2>&1 || return 1
	timeout 15 kcat -C -b "$addr" -t "$PROBE_TOPIC" -o beginning -e -q -m 5 2>/dev/null \
		| grep -qxF "$token"
}

cmd_start() {
	[[ -n ${1:-} ]] || usage
	mkdir -p "$1"
	local dir pid addr deadline token from=1
	dir=$(abs_dir "$1")
	need_libs
	need_java
	check_java_version
	command -v kcat >/dev/null || die "kcat not found (test/install-deps.sh installs it)"
	[[ -f $dir/bootstrap ]] || init_dir "$dir" # written last by init_dir
	addr=$(cat "$dir/bootstrap")
	pid=$(live_pid "$dir")
	if [[ -z $pid ]]; then
		mkdir -p "$dir/logs"
		[[ -f $dir/logs/server.log ]] && from=$(($(wc -l <"$dir/logs/server.log") + 1))
		echo "==== start $(date -u +%FT%TZ)" >>"$dir/logs/stdout.log"
		# setsid: own session, so a Ctrl-C or the death of the caller
		# does not take the broker down; stdio detached so no pipe of the
		# caller (prove, a TAP test's system()) is held open.
		# shellcheck disable=SC2086
		setsid "$JAVA" $BROKER_HEAP \
			-XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExplicitGCInvokesConcurrent \
			-XX:CICompilerCount=2 -Djava.awt.headless=true \
			-Dkafka.logs.dir="$dir/logs" \
			-Dlog4j2.configurationFile="$dir/log4j2.properties" \
			-cp "$LIBS/*" kafka.Kafka "$dir/server.properties" \
			</dev/null >>"$dir/logs/stdout.log" 2>&1 &
		pid=$!
		echo "$pid" >"$dir/kafka.pid"
	fi
	deadline=$((SECONDS + START_TIMEOUT))
	token="probe-$pid-$RANDOM$RANDOM"
	until probe "$addr" "$token"; do
		kill -0 "$pid" 2>/dev/null || fail_start "$dir" "broker (pid $pid) exited during start-up" "$from"
		((SECONDS < deadline)) || fail_start "$dir" "broker at $addr not ready after ${START_TIMEOUT}s (pid $pid still running)" "$from"
		sleep 0.5
	done
	echo "$addr"
}

# Wait until PID is gone, at most $2 seconds; return 1 on timeout.
wait_gone() {
	local pid=$1 limit=$2 end
	end=$((SECONDS + limit))
	while kill -0 "$pid" 2>/dev/null; do
		((SECONDS < end)) || return 1
		sleep 0.2
	done
}

cmd_stop() {
	need_dir "${1:-}"
	local dir pid
	dir=$(abs_dir "$1")
	pid=$(live_pid "$dir")
	[[ -n $pid ]] || { rm -f "$dir/kafka.pid"; return 0; }
	kill -TERM "$pid" 2>/dev/null || true
	if ! wait_gone "$pid" "$STOP_TIMEOUT"; then
		echo "kafka.sh: broker pid $pid still up after ${STOP_TIMEOUT}s, sending SIGKILL" >&2
		kill -KILL "$pid" 2>/dev/null || true
		wait_gone "$pid" 10 || die "pid $pid survives SIGKILL"
	fi
	rm -f "$dir/kafka.pid"
}

cmd_kill() {
	need_dir "${1:-}"
	local dir pid
	dir=$(abs_dir "$1")
	pid=$(live_pid "$dir")
	[[ -n $pid ]] || { rm -f "$dir/kafka.pid"; return 0; }
	kill -KILL "$pid" 2>/dev/null || true
	wait_gone "$pid" 10 || die "pid $pid survives SIGKILL"
	rm -f "$dir/kafka.pid"
}

cmd_bootstrap() {
	need_dir "${1:-}"
	[[ -f $1/bootstrap ]] || die "broker in $1 was never started"
	cat "$1/bootstrap"
}

cmd_status() {
	need_dir "${1:-}"
	local dir pid
	dir=$(abs_dir "$1")
	pid=$(live_pid "$dir")
	if [[ -n $pid ]]; then
		echo "running $pid $(cat "$dir/bootstrap")"
	else
		echo "stopped"
		exit 3
	fi
}

# Run a short-lived Kafka tool JVM (fast start-up flags), logging to
# DIR/logs/tools.log; the command is prefixed by the TOOL_WRAP array (e.g.
# a `timeout`).
TOOL_WRAP=()
run_tool() {
	local dir=$1
	shift
	need_libs
	need_java
	mkdir -p "$dir/logs"
	[[ -f $dir/tools-log4j2.properties ]] \
		|| write_log4j2 "$dir/tools-log4j2.properties" "$dir/logs/tools.log" WARN
	"${TOOL_WRAP[@]}" "$JAVA" -Xmx256m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Xshare:auto \
		-Djava.awt.headless=true \
		-Dlog4j2.configurationFile="$dir/tools-log4j2.properties" \
		-cp "$LIBS/*" "$@"
}

cmd_consume() {
	[[ $# -ge 3 ]] || usage
	need_dir "$1"
	local dir topic=$2 n=$3 limit=${4:-30} errf rc=0 got
	dir=$(abs_dir "$1")
	[[ $n =~ ^[0-9]+$ && $limit =~ ^[0-9]+$ ]] || die "N and TIMEOUT_S must be integers"
	errf=$(mktemp)
	# --timeout-ms: give up when idle that long; `timeout`: overall cap
	# (JVM start-up and group join included).
	TOOL_WRAP=(timeout --kill-after=5 "$limit")
	run_tool "$dir" org.apache.kafka.tools.consumer.ConsoleConsumer \
		--bootstrap-server "$(cat "$dir/bootstrap")" --topic "$topic" \
		--from-beginning --max-messages "$n" --timeout-ms "$((limit * 1000))" \
		--consumer-property enable.auto.commit=false \
		--property print.partition=true \
		--property print.offset=true \
		--property print.headers=true \
		--property print.key=true \
		--property print.value=true \
		--property print.timestamp=false \
		2>"$errf" || rc=$?
	got=$(sed -n 's/^Processed a total of \([0-9]*\) messages.*/\1/p' "$errf" | tail -n1)
	if [[ $got == "$n" ]]; then
		rm -f "$errf"
		return 0
	fi
	if [[ $rc -ne 0 && $rc -ne 124 && $rc -ne 137 && -z $got ]]; then
		cat "$errf" >&2
		rm -f "$errf"
		die "console consumer failed (exit $rc)"
	fi
	echo "kafka.sh: consume $topic: got ${got:-fewer than $n} of $n messages in ${limit}s" >&2
	rm -f "$errf"
	exit 3
}

cmd_produce() {
	[[ $# -ge 2 ]] || usage
	need_dir "$1"
	local dir topic=$2
	dir=$(abs_dir "$1")
	shift 2
	run_tool "$dir" org.apache.kafka.tools.ConsoleProducer \
		--bootstrap-server "$(cat "$dir/bootstrap")" --topic "$topic" \
		--sync --producer-property acks=all \
		--producer-property max.block.ms=30000 \
		--producer-property delivery.timeout.ms=30000 \
		--property parse.key=true \
		--property parse.headers=true \
		--property 'null.marker=\N' \
		"$@"
}

# admin_tool CLASS DIR ARGS...: the Kafka admin tool CLASS against DIR's
# broker (its PLAINTEXT listener: a super user).
admin_tool() {
	local class=$1 dir
	shift
	[[ $# -ge 1 ]] || usage
	need_dir "$1"
	dir=$(abs_dir "$1")
	shift
	run_tool "$dir" "$class" --bootstrap-server "$(cat "$dir/bootstrap")" "$@"
}

main() {
	local sub=${1:-}
	[[ $# -gt 0 ]] && shift
	case $sub in
	fetch) cmd_fetch "$@" ;;
	start) cmd_start "$@" ;;
	stop) cmd_stop "$@" ;;
	kill) cmd_kill "$@" ;;
	bootstrap) cmd_bootstrap "$@" ;;
	status) cmd_status "$@" ;;
	consume) cmd_consume "$@" ;;
	produce) cmd_produce "$@" ;;
	topics) admin_tool org.apache.kafka.tools.TopicCommand "$@" ;;
	configs) admin_tool kafka.admin.ConfigCommand "$@" ;;
	acls) admin_tool org.apache.kafka.tools.AclCommand "$@" ;;
	delete-records) admin_tool org.apache.kafka.tools.DeleteRecordsCommand "$@" ;;
	*) usage ;;
	esac
}

# run only when executed: test/kafka/cluster.sh sources this file for its
# functions
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
	main "$@"
fi

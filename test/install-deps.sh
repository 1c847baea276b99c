#!/usr/bin/env bash
# install-deps.sh - install on Debian 12 everything evbus's build and tests
# need: PostgreSQL 15 and its server headers, librdkafka, pgTAP, IPC::Run,
# kcat, a C toolchain, Prometheus and its PostgreSQL exporter (test
# 290_metrics_exporter.pl runs them on ports of its own, not as services),
# a JDK 17 (only if no `java` is on PATH) and Maven (only if no `mvn`),
# curl and jq, and Go (only if no `go` on PATH nor in /usr/local/go/bin:
# Debian's golang-go).  The Kafka jars themselves come from Maven Central
# through test/kafka/kafka.sh fetch; toxiproxy, the proxy of the fault
# campaign (test 400), is built with Go from the Go module proxy by
# test/campaign/toxiproxy.sh fetch.
#
# Idempotent and non-interactive: packages already installed are skipped and
# `apt-get update` runs only when something is missing.  Installing needs
# root; run as another user it only checks, and when something is missing
# prints the command to run as root and exits 1.
set -euo pipefail

PACKAGES=(
	postgresql-15 postgresql-server-dev-15
	librdkafka-dev
	postgresql-15-pgtap libtap-parser-sourcehandler-pgtap-perl
	libipc-run-perl perl
	kcat openssl curl jq
	build-essential pkg-config
	prometheus prometheus-postgres-exporter
)
command -v java >/dev/null || PACKAGES+=(openjdk-17-jdk-headless)
command -v mvn >/dev/null || PACKAGES+=(maven)
command -v go >/dev/null || [[ -x /usr/local/go/bin/go ]] || PACKAGES+=(golang-go)

# a package counts as present when dpkg says "install ok installed"
missing=()
for p in "${PACKAGES[@]}"; do
	if [[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true) != "install ok installed" ]]; then
		missing+=("$p")
	fi
done

if ((${#missing[@]} == 0)); then
	echo "install-deps: all present"
	exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
	echo "install-deps: missing packages: ${missing[*]}" >&2
	echo "install-deps: installing needs root; run:  sudo bash test/install-deps.sh" >&2
	exit 1
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# postgresql-15 need not create (and start) a system cluster: the tests run
# their own servers.
if [[ " ${missing[*]} " == *" postgresql-15 "* ]]; then
	mkdir -p /etc/postgresql-common/createcluster.d
	echo "create_main_cluster = false" >/etc/postgresql-common/createcluster.d/evbus-no-cluster.conf
fi
# --no-install-recommends keeps it lean (no X11 bits with the JDK)
apt-get install -y -qq --no-install-recommends \
	-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
	"${missing[@]}" >/dev/null
echo "install-deps: done"

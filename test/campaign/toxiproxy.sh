#!/usr/bin/env bash
# toxiproxy.sh - the TCP proxy of the fault campaign: Shopify's toxiproxy
# server, built from source with Go, so that the campaign can slow, cut,
# black-hole and reset the connections between evbus and each Kafka broker.
#
# Usage: toxiproxy.sh SUBCOMMAND [ARGS]
#
#   fetch       Build toxiproxy-server (github.com/Shopify/toxiproxy/v2,
#               version TOXIPROXY_VERSION below) with `go install` into the
#               bin dir (EVBUS_TOXIPROXY_BIN, default test/campaign/bin, not
#               tracked by git).  No-op when that binary is already there
#               and stamped with this version.  Needs go (PATH or
#               /usr/local/go/bin); the module comes from the Go module
#               proxy (GOPROXY).
#   start DIR   Start a server whose state lives in DIR (created if
#               missing) on a free port of 127.0.0.1; its pid is in
#               DIR/toxiproxy.pid, its API address (127.0.0.1:PORT) in
#               DIR/api, its log in DIR/toxiproxy.log.  Waits until the API
#               answers (at most 30 s); prints the API address.
#   stop DIR    SIGTERM the server of DIR, wait until it is gone (SIGKILL
#               after 10 s).  Stopping a stopped server is a no-op.
#   api DIR     Print the API address of DIR's server.
#
# The proxies and toxics are driven through the server's HTTP API (see
# EvbusCampaign.pm and test/kafka/cluster.sh): POST /proxies, POST
# /proxies/NAME/toxics, DELETE /proxies/NAME/toxics/TOXIC.
set -euo pipefail

# kafka.sh's free_ports (a port outside the ephemeral range), die and usage
# shellcheck source=test/kafka/kafka.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")/../kafka" && pwd)/kafka.sh"

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BIN_DIR=${EVBUS_TOXIPROXY_BIN:-$SCRIPT_DIR/bin}
TOXIPROXY_VERSION=v2.5.0
SERVER=$BIN_DIR/toxiproxy-server

# Sets GO: `go` on PATH, else the usual tarball location.
GO=
need_go() {
	if command -v go >/dev/null; then
		GO=$(command -v go)
	elif [[ -x /usr/local/go/bin/go ]]; then
		GO=/usr/local/go/bin/go
	else
		die "no go: install Go 1.21+ (test/install-deps.sh says how)"
	fi
}

cmd_fetch() {
	local stamp=$BIN_DIR/.version tmp
	if [[ -x $SERVER && -f $stamp && $(cat "$stamp") == "$TOXIPROXY_VERSION" ]]; then
		return 0
	fi
	need_go
	mkdir -p "$BIN_DIR"
	tmp=$(mktemp -d)
	# go install names the binary after its package directory (cmd/server)
	if ! GOBIN=$tmp GOFLAGS=-mod=mod "$GO" install \
		"github.com/Shopify/toxiproxy/v2/cmd/server@$TOXIPROXY_VERSION" >"$tmp/build.log" 2>&1; then
		cat "$tmp/build.log" >&2
		rm -rf "$tmp"
		die "go install of toxiproxy $TOXIPROXY_VERSION failed"
	fi
	mv "$tmp/server" "$SERVER"
	rm -rf "$tmp"
	chmod a+rx "$BIN_DIR" "$SERVER"
	echo "$TOXIPROXY_VERSION" >"$stamp"
	chmod a+r "$stamp"
}

# The pid of DIR's toxiproxy server if it runs; nothing otherwise
# (kafka.sh's pid_of).
live_pid() { pid_of "$1/toxiproxy.pid" toxiproxy-server; }

cmd_start() {
	[[ -n ${1:-} ]] || usage
	mkdir -p "$1"
	local dir pid port deadline
	dir=$(cd "$1" && pwd)
	[[ -x $SERVER ]] || die "no $SERVER: run '$0 fetch' first"
	pid=$(live_pid "$dir")
	if [[ -z $pid ]]; then
		port=$(free_ports 1)
		echo "127.0.0.1:$port" >"$dir/api"
		setsid "$SERVER" -host 127.0.0.1 -port "$port" </dev/null >>"$dir/toxiproxy.log" 2>&1 &
		pid=$!
		echo "$pid" >"$dir/toxiproxy.pid"
	fi
	deadline=$((SECONDS + 30))
	until curl -sf "http://$(cat "$dir/api")/version" >/dev/null; do
		kill -0 "$pid" 2>/dev/null || { tail -n 20 "$dir/toxiproxy.log" >&2; die "toxiproxy exited during start-up"; }
		((SECONDS < deadline)) || die "toxiproxy not answering after 30 s"
		sleep 0.2
	done
	cat "$dir/api"
}

cmd_stop() {
	[[ -n ${1:-} && -d $1 ]] || usage
	local dir pid end
	dir=$(cd "$1" && pwd)
	pid=$(live_pid "$dir")
	[[ -n $pid ]] || { rm -f "$dir/toxiproxy.pid"; return 0; }
	kill -TERM "$pid" 2>/dev/null || true
	end=$((SECONDS + 10))
	while kill -0 "$pid" 2>/dev/null; do
		if ((SECONDS >= end)); then
			kill -KILL "$pid" 2>/dev/null || true
			sleep 0.2
			break
		fi
		sleep 0.1
	done
	rm -f "$dir/toxiproxy.pid"
}

cmd_api() {
	[[ -n ${1:-} && -f $1/api ]] || die "no toxiproxy was started in ${1:-?}"
	cat "$1/api"
}

main() {
	local sub=${1:-}
	[[ $# -gt 0 ]] && shift
	case $sub in
	fetch) cmd_fetch "$@" ;;
	start) cmd_start "$@" ;;
	stop) cmd_stop "$@" ;;
	api) cmd_api "$@" ;;
	*) usage ;;
	esac
}

main "$@"

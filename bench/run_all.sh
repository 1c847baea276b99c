#!/usr/bin/env bash
# bench/run_all.sh - run the three evbus benchmarks one after the other
# (commit_overhead, drain, latency), each with its own throwaway PostgreSQL
# and Kafka broker; their results go to bench/results/NAME-TIMESTAMP/.
# Takes about 17 minutes on a 2-core machine.  Environment variables are
# passed on to each benchmark (see the comment atop each script).
set -euo pipefail
dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
for b in commit_overhead drain latency; do
	echo "==== $b ($(date -u +%FT%TZ))"
	"$dir/$b.sh"
done

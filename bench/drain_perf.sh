#!/usr/bin/env bash
# bench/drain_perf.sh - bench/drain.sh with a system-wide `perf record -g`
# during the drain (8 s from the reload), to see where the worker spends its
# time.  Needs root (perf -a) and linux-perf.
#
# Usage:  bench/drain_perf.sh [OUTDIR]      (as root; EVBUS_REF, N as for drain.sh)
# Output: OUTDIR/drain/ (drain.sh's results), perf-by-process.txt,
#   perf-postgres-symbols.txt (self time), perf-worker-children.txt
#   (inclusive time of the publisher's steps).
set -u
dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=${1:-$dir/results/drain-perf-$(date +%Y%m%d-%H%M%S)}
[[ $(id -u) -eq 0 ]] || { echo "drain_perf.sh: run as root (perf -a)" >&2; exit 1; }
mkdir -p "$OUT/drain"
chmod 777 "$OUT" "$OUT/drain"
RESULTS_DIR=$OUT/drain CHECK_IDS=0 "$dir/drain.sh" >"$OUT/drain.out" 2>&1 &
child=$!
for _ in $(seq 1 600); do
	grep -q 'draining to' "$OUT/drain.out" 2>/dev/null && break
	kill -0 "$child" 2>/dev/null || break
	sleep 0.2
done
perf record -a -g -F 499 -o "$OUT/perf.data" -- sleep 8 2>"$OUT/perf-record.log"
wait "$child"
rep() { perf report -i "$OUT/perf.data" --stdio -g none "$@" 2>/dev/null | grep -v '^#' | grep -v '^$'; }
rep --no-children --sort comm | head -20 >"$OUT/perf-by-process.txt"
rep --no-children --comm postgres --sort dso,symbol | head -70 >"$OUT/perf-postgres-symbols.txt"
rep --children --comm postgres --sort symbol \
	| grep -E 'evbus_|claim_|produce_|finish_|on_delivery|copy_row|build_headers|rd_kafka_|SPI_|CommitTransaction|XLogFlush|exec_or_die|escape_json|hash_search' \
	| head -50 >"$OUT/perf-worker-children.txt"
rm -f "$OUT/perf.data"
grep -E 'drained|kafka:' "$OUT/drain.out"
echo "perf: $OUT/perf-*.txt"

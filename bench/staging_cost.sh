#!/usr/bin/env bash
# bench/staging_cost.sh - what one staged event costs the staging backend,
# without the noise of a contended TPC-B-like run.
#
# bench/commit_overhead.sh measures what matters in the end, the throughput
# of transactions that stage events, but on this 2-core shared machine its
# ratios move by ±5 % between runs of the same code (BENCHMARKS.md).  This
# isolates the staging call itself: one session, publishing paused, a
# PL/pgSQL loop of N calls in one transaction per variant, the same
# statements and payload as commit_overhead.sh:
#
#   a  INSERT INTO bench_outbox (topic, key, payload) VALUES (...)
#   b  PERFORM evbus.raise('AccountUpdatedDomainEvent', payload, key)
#      through one SQL converter (SELECT payload)
#   c  PERFORM evbus.publish('AccountUpdated', payload, key)
#   t  PERFORM payload (building the payload only: the loop's own cost)
#
# Per call: (time of the loop) / N, in microseconds; the difference from
# (a) is what evbus costs beyond a hand-written outbox INSERT.  Variants
# run in turn, ROUNDS times; the tables are truncated and a CHECKPOINT
# taken between rounds.  Commit, WAL flush and lock waits are not in it:
# commit_overhead.sh has those.
#
# Usage (as root or any user; one command):
#   bench/staging_cost.sh
# Environment: N (50000 calls per loop), ROUNDS (5), plus those of
#   bench/lib.sh.
# Output: summary on stdout and in $RESULTS_DIR/summary.txt; raw rows in
#   $RESULTS_DIR/runs.tsv.

# shellcheck source=bench/lib.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"
bench_init staging_cost 0 "$@"

N=${N:-50000}
ROUNDS=${ROUNDS:-5}

environment_report >"$RESULTS_DIR/environment.txt"
echo "settings: N=$N ROUNDS=$ROUNDS" >>"$RESULTS_DIR/environment.txt"

pg_start
create_staging_variants

PAYLOAD="jsonb_build_object('account_id', i, 'branch_id', 3, 'teller_id', 27, 'delta', -1234, 'currency', 'EUR', 'reason', 'pgbench tpcb-like transfer', 'source', 'evbus bench/commit_overhead', 'ref', 'c0ffee00-1234-4abc-8def-000000000042')"
declare -A STMT=(
	[a]="INSERT INTO bench_outbox (topic, key, payload) VALUES ('AccountUpdated', i::text, $PAYLOAD)"
	[b]="PERFORM evbus.raise('AccountUpdatedDomainEvent', $PAYLOAD, i::text)"
	[c]="PERFORM evbus.publish('AccountUpdated', $PAYLOAD, i::text)"
	[t]="PERFORM $PAYLOAD"
)
VARIANTS="a b c t"

# loop_ms V: milliseconds of one loop of N calls of variant V
loop_ms() {
	psql -qXAt -v ON_ERROR_STOP=1 -c '\timing on' \
		-c "DO \$\$ BEGIN FOR i IN 1..$N LOOP ${STMT[$1]}; END LOOP; END \$\$" \
		| sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p'
}

# one loop of each, not counted: caches, the first pages
for v in $VARIANTS; do loop_ms "$v" >/dev/null; done
q "TRUNCATE bench_outbox, evbus.outbox_0, evbus.outbox_1; CHECKPOINT" >/dev/null

printf 'round\tvariant\tcalls\tms\tus_per_call\n' >"$RESULTS_DIR/runs.tsv"
for ((r = 1; r <= ROUNDS; r++)); do
	for v in $VARIANTS; do
		ms=$(loop_ms "$v")
		us=$(awk -v ms="$ms" -v n="$N" 'BEGIN {printf "%.3f", ms * 1000 / n}')
		printf '%d\t%s\t%d\t%s\t%s\n' "$r" "$v" "$N" "$ms" "$us" >>"$RESULTS_DIR/runs.tsv"
		log "round $r variant $v: $us us per call"
	done
	q "TRUNCATE bench_outbox, evbus.outbox_0, evbus.outbox_1; CHECKPOINT" >/dev/null
done

{
	echo "staging_cost: $N calls per loop, one session, publishing paused, $ROUNDS rounds"
	echo
	variant_medians "$RESULTS_DIR/runs.tsv" a "$VARIANTS" "us per call, per round"
	echo
	echo "a = hand-written outbox INSERT, b = evbus.raise through one SQL converter,"
	echo "c = evbus.publish, t = the payload alone (the loop's own cost)"
} | tee "$RESULTS_DIR/summary.txt"

#!/usr/bin/env bash
# bench/campaign.sh - the fault campaign of test/t/400_fault_campaign.pl,
# for longer: MINUTES of workload and random faults (default 30) against
# evbus on a three-broker Kafka cluster behind toxiproxy, then the drain
# and the checker's verdict on the whole history.
#
# Usage (as root or any user; one command):
#   bench/campaign.sh [MINUTES]
# Environment: EVBUS_CAMPAIGN_SEED (default: random, printed),
#   EVBUS_PG_BIN (the PostgreSQL 15 bin dir, as for test/run-tests.sh).
# Output: the checker's summary (seed, events, faults by kind, drain time,
#   violations per invariant) on stdout; the exit status is 0 only when it
#   found no violation.  It runs through test/run-tests.sh (build, install,
#   jars, toxiproxy), which keeps the logs and the history directory of a
#   failed run (tmp_check/log/400_hist in the test tree it names).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MINUTES=${1:-30}
[[ $MINUTES =~ ^[0-9]+$ && $MINUTES -gt 0 ]] || { echo "usage: bench/campaign.sh [MINUTES]" >&2; exit 2; }
SEED=${EVBUS_CAMPAIGN_SEED:-$((RANDOM * 32768 + RANDOM))}
LOG=$(mktemp "${TMPDIR:-/tmp}/evbus-campaign.XXXXXX")
echo "campaign: $MINUTES min, seed $SEED, log $LOG"

rc=0
EVBUS_TEST_ONLY=tap EVBUS_TAP_TESTS=test/t/400_fault_campaign.pl EVBUS_TEST_KEEP=1 \
	EVBUS_CAMPAIGN_SEED=$SEED EVBUS_CAMPAIGN_DURATION=$((MINUTES * 60)) \
	bash "$ROOT/test/run-tests.sh" >"$LOG" 2>&1 || rc=$?

# the tree the tests ran in: a kept copy when run as root, else this one
tree=$(sed -n 's/^run-tests: test tree kept: //p' "$LOG" | tail -n1)
summary=${tree:-$ROOT}/tmp_check/log/400_summary.txt
if [[ -f $summary ]]; then
	cat "$summary"
else
	echo "campaign: no checker summary (the campaign did not get that far); see $LOG" >&2
	tail -n 40 "$LOG" >&2
fi
echo "campaign: seed $SEED, exit $rc, log $LOG${tree:+, tree $tree}"
exit "$rc"

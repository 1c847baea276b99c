#!/usr/bin/env bash
# run-tests.sh - THE test command of evbus (README: `bash test/run-tests.sh`;
# .ci/run calls exactly that).  A thin wrapper around `make installcheck`
# (see the Makefile and CONTRIBUTING.md).  On a fresh Debian 12 machine:
#
#   1. deps     test/install-deps.sh (as root it installs; otherwise it only
#               checks and stops the run when something is missing)
#   2. build    make && make install with PGXS (PG_CONFIG below); warnings are
#               errors (COPT=-Werror; EVBUS_COPT= overrides).  Not root:
#               make install needs a writable PostgreSQL lib dir or `sudo -n`.
#   3. fetch    test/kafka/kafka.sh fetch (the Kafka jars, Maven Central)
#               and test/campaign/toxiproxy.sh fetch (toxiproxy, built with
#               Go, for the fault campaign of test 400)
#   4. user     PostgreSQL refuses to run as root: as root, create the user
#               evbus_test once, copy the tree (with test/kafka/libs, without
#               .git) to a fresh temporary directory owned by it and run the
#               rest there as that user (runuser).  Not root: run in place.
#   5. kafka    one broker for the whole run, in a temporary directory;
#               exported to the tests as EVBUS_TEST_KAFKA_BOOTSTRAP,
#               EVBUS_TEST_KAFKA_DIR and EVBUS_TEST_KAFKA_SH (only when the
#               Perl TAP tests run)
#   6. make installcheck: pg_regress (sql/*.sql), pgTAP (test/pgtap/*.sql
#               with pg_prove) and Perl TAP (test/t/*.pl with prove), each
#               against temporary instances of its own
#   7. demo     as root, with no EVBUS_TEST_ONLY or EVBUS_TAP_TESTS: the
#               README's other command, bash demo/run.sh (it checks what it
#               shows and exits non-zero otherwise), counted as one test
#   8. the broker is always stopped; on failure regression.diffs and the
#               logs of what failed are printed and the exit status is
#               non-zero.  The last line counts the pg_regress tests and the
#               pgTAP and TAP files:
#                   evbus: N passed, N failed, N skipped
#
# Environment:
#   EVBUS_TEST_ONLY=regress|pgtap|tap   run only that layer of step 6
#                                 (make installcheck-regress|-pgtap|-tap)
#   EVBUS_TAP_TESTS='test/t/010_x.pl ...'  the TAP tests to run (default all;
#                                 make installcheck PROVE_TESTS=...)
#   EVBUS_TAP_JOBS=N              TAP files run N at a time (default 4;
#                                 the Makefile's TAP_ALONE run alone)
#   EVBUS_TEST_KEEP=1             keep the temporary tree / broker dir even
#                                 when everything passed
#   EVBUS_COPT                    extra C flags for the build (default -Werror)
#   EVBUS_SKIP_INSTALL=1          not root: skip `make install` (done by hand)
#   EVBUS_PG_BIN                  the PostgreSQL 15 bin directory to build,
#                                 install and test against (default
#                                 /usr/lib/postgresql/15/bin); a relocated
#                                 copy of the installation keeps two trees'
#                                 runs from sharing one installed evbus
# Internal: EVBUS_TEST_STAGE=inner marks the part after step 4.
# shellcheck disable=SC2317 # the step functions are called through phase()
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PG_BIN=${EVBUS_PG_BIN:-/usr/lib/postgresql/15/bin}
PG_CONFIG=$PG_BIN/pg_config
TEST_USER=evbus_test
ONLY=${EVBUS_TEST_ONLY:-}
KEEP=${EVBUS_TEST_KEEP:-}

cd "$ROOT"

say() { echo "run-tests: $*"; }

case $ONLY in
'' | regress | pgtap | tap) ;;
*) say "EVBUS_TEST_ONLY must be regress, pgtap or tap, not '$ONLY'" >&2; exit 2 ;;
esac

# phase NAME CMD... : run CMD, print "NAME ok|FAILED (Ns)"; return its status.
# CMD runs in a `||` context where `set -e` does not apply: the functions
# below check each step themselves.
phase() {
	local name=$1 start=$SECONDS rc=0
	shift
	say "---- $name"
	"$@" || rc=$?
	if ((rc == 0)); then
		say "phase $name: ok ($((SECONDS - start))s)"
	else
		say "phase $name: FAILED, exit $rc ($((SECONDS - start))s)"
	fi
	return "$rc"
}

# ---------------------------------------------------------------- steps 1-4

do_deps() { bash "$ROOT/test/install-deps.sh"; }

do_build() {
	local copt=${EVBUS_COPT--Werror}
	[[ -f $ROOT/Makefile ]] || { say "no Makefile in $ROOT" >&2; return 1; }
	make -C "$ROOT" -j"$(nproc)" PG_CONFIG="$PG_CONFIG" COPT="$copt" || return 1
	if [[ -n ${EVBUS_SKIP_INSTALL:-} && $(id -u) -ne 0 ]]; then
		say "EVBUS_SKIP_INSTALL set: not installing"
	elif [[ $(id -u) -eq 0 || -w $($PG_CONFIG --pkglibdir) ]]; then
		make -C "$ROOT" PG_CONFIG="$PG_CONFIG" install || return 1
	elif sudo -n true 2>/dev/null; then
		sudo -n make -C "$ROOT" PG_CONFIG="$PG_CONFIG" install || return 1
	else
		say "make install needs root: run this script as root, or 'sudo make install PG_CONFIG=$PG_CONFIG' first and set EVBUS_SKIP_INSTALL=1" >&2
		return 1
	fi
}

do_fetch() {
	bash "$ROOT/test/kafka/kafka.sh" fetch && bash "$ROOT/test/campaign/toxiproxy.sh" fetch
}

# As root: the unprivileged user (created once) and a private copy of the
# tree it owns, in TREE.
TREE=
make_copy() {
	local tree libs=${EVBUS_KAFKA_LIBS:-$ROOT/test/kafka/libs}
	id -u "$TEST_USER" >/dev/null 2>&1 \
		|| useradd --system --create-home --shell /bin/bash "$TEST_USER" || return 1
	tree=$(mktemp -d /tmp/evbus-test.XXXXXX) || return 1
	tar -C "$ROOT" --exclude=./.git --exclude=./tmp_check --exclude=./tmp_check_regress \
		--exclude=./tmp_check_pgtap --exclude=./test/tmp_check \
		--exclude=./results --exclude=./test/kafka/libs -cf - . \
		| tar -C "$tree" -xf - || return 1
	mkdir -p "$tree/test/kafka/libs" || return 1
	cp -a "$libs/." "$tree/test/kafka/libs/" || return 1
	chown -R "$TEST_USER:" "$tree" || return 1
	TREE=$tree
}

# ---------------------------------------------------------------- steps 5-7

KAFKA_DIR=
KAFKA_SH=$ROOT/test/kafka/kafka.sh

stop_kafka() {
	[[ -n $KAFKA_DIR ]] || return 0
	local start=$SECONDS
	bash "$KAFKA_SH" stop "$KAFKA_DIR" || say "could not stop the broker in $KAFKA_DIR" >&2
	say "broker stopped ($((SECONDS - start))s)"
}

start_kafka() {
	KAFKA_DIR=$RUN_DIR/kafka
	EVBUS_TEST_KAFKA_BOOTSTRAP=$(bash "$KAFKA_SH" start "$KAFKA_DIR") || return 1
	export EVBUS_TEST_KAFKA_BOOTSTRAP EVBUS_TEST_KAFKA_DIR=$KAFKA_DIR EVBUS_TEST_KAFKA_SH=$KAFKA_SH
	say "broker at $EVBUS_TEST_KAFKA_BOOTSTRAP, dir $KAFKA_DIR"
}

# count_prove LOG EXT TOTAL: set PASS, FAIL, SKIP for the files ending in EXT
# that prove (or pg_prove) reported in LOG, out of TOTAL run.  Its "Test
# Summary Report" names each failed file as "FILE (Wstat: ..."; a skipped
# file prints "FILE .. skipped: why".  Also sets FAILED_FILES.
count_prove() {
	local log=$1 ext=$2 total=$3
	FAILED_FILES=$(sed -n "s/^\(\S*\\$ext\) *(Wstat:.*/\1/p" "$log")
	FAIL=$(grep -c . <<<"$FAILED_FILES" || true)
	SKIP=$(grep -cE "\\$ext \.+ skipped" "$log" || true)
	PASS=$((total - FAIL - SKIP))
}

REGRESS_PASS=0 REGRESS_FAIL=0 PGTAP_PASS=0 PGTAP_FAIL=0 PGTAP_SKIP=0
TAP_PASS=0 TAP_FAIL=0 TAP_SKIP=0

# make installcheck (or one layer of it), then the counts of each layer
# from its output, and the logs of what failed
run_installcheck() {
	local rc=0 target=installcheck tap_tests pgtap_tests t base f log=$LOG_DIR/installcheck.log
	local -a args=(PG_CONFIG="$PG_CONFIG")
	[[ -z $ONLY ]] || target=installcheck-$ONLY
	if [[ -n ${EVBUS_TAP_TESTS:-} ]]; then
		args+=(PROVE_TESTS="$EVBUS_TAP_TESTS")
		read -r -a tap_tests <<<"$EVBUS_TAP_TESTS"
	else
		tap_tests=("$ROOT"/test/t/*.pl)
	fi
	pgtap_tests=("$ROOT"/test/pgtap/*.sql)
	rm -f "$ROOT/regression.diffs" "$ROOT/regression.out"
	make -C "$ROOT" --no-print-directory "${args[@]}" "$target" 2>&1 | tee "$log" || rc=$?

	if [[ $ONLY == '' || $ONLY == regress ]]; then
		# pg_regress 15 prints "test NAME ... ok|FAILED" (or "     NAME ... ") per test
		REGRESS_PASS=$(grep -cE '^(test | +)\S+ +\.\.\. +ok( |$)' "$log" || true)
		REGRESS_FAIL=$(grep -cE '^(test | +)\S+ +\.\.\. +FAILED' "$log" || true)
		if ((REGRESS_FAIL == 0)) && ! grep -qE 'All [0-9]+ tests passed' "$log"; then
			REGRESS_FAIL=1 # failed before or outside any test
		fi
	fi
	if [[ $ONLY == '' || $ONLY == pgtap ]]; then
		count_prove "$log" .sql "${#pgtap_tests[@]}"
		PGTAP_PASS=$PASS PGTAP_FAIL=$FAIL PGTAP_SKIP=$SKIP
		if ((PGTAP_FAIL == 0)) && grep -q '^pgtap: ' "$log"; then
			PGTAP_FAIL=${#pgtap_tests[@]} PGTAP_PASS=0 # the instance could not be set up
		fi
		[[ -f $ROOT/tmp_check_pgtap/log/postmaster.log ]] && {
			say "---- $ROOT/tmp_check_pgtap/log/postmaster.log (last 60 lines)"
			tail -n 60 "$ROOT/tmp_check_pgtap/log/postmaster.log"
		}
	fi
	if [[ $ONLY == '' || $ONLY == tap ]]; then
		count_prove "$log" .pl "${#tap_tests[@]}"
		TAP_PASS=$PASS TAP_FAIL=$FAIL TAP_SKIP=$SKIP
		if ((TAP_FAIL == 0)) && grep -q '^installcheck-tap: no Kafka broker' "$log"; then
			TAP_FAIL=${#tap_tests[@]} TAP_PASS=0
		fi
		for t in $FAILED_FILES; do
			base=$(basename "$t" .pl)
			f=$ROOT/tmp_check/log/regress_log_$base
			[[ -f $f ]] && { say "---- $f (last 200 lines)"; tail -n 200 "$f"; }
			for f in "$ROOT/tmp_check/log/${base}"_*.log; do
				[[ -f $f ]] && { say "---- $f (last 60 lines)"; tail -n 60 "$f"; }
			done
		done
	fi
	if [[ -s $ROOT/regression.diffs ]]; then
		say "---- $ROOT/regression.diffs (first 300 lines)"
		head -n 300 "$ROOT/regression.diffs"
	fi
	if [[ -f $ROOT/tmp_check_regress/log/postmaster.log ]]; then
		say "---- $ROOT/tmp_check_regress/log/postmaster.log (last 60 lines)"
		tail -n 60 "$ROOT/tmp_check_regress/log/postmaster.log"
	fi
	# a failure no file accounts for (make itself, a layer that did not start)
	if ((rc != 0 && REGRESS_FAIL + PGTAP_FAIL + TAP_FAIL == 0)); then
		REGRESS_FAIL=1
	fi
	return "$rc"
}

inner() {
	local failed=0
	# RUN_DIR: the broker's dir (kafka/) and this run's log
	RUN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/evbus-run.XXXXXX")
	LOG_DIR=$RUN_DIR
	trap 'stop_kafka' EXIT
	trap 'exit 130' INT TERM
	# only the Perl TAP tests need the broker
	if [[ $ONLY == '' || $ONLY == tap ]]; then
		phase kafka start_kafka || { say "no broker, no tests"; exit 1; }
	fi
	phase installcheck run_installcheck || failed=1
	trap - EXIT
	stop_kafka
	if ((failed == 0)) && [[ -z $KEEP ]]; then
		rm -rf "$RUN_DIR"
		say "passed; temporary files removed (EVBUS_TEST_KEEP=1 keeps them)"
	else
		say "logs: $RUN_DIR/installcheck.log, $ROOT/regression.diffs," \
			"$ROOT/tmp_check_regress/log (pg_regress), $ROOT/tmp_check_pgtap/log (pgTAP)," \
			"$ROOT/tmp_check/log (TAP)${KAFKA_DIR:+, $KAFKA_DIR/logs (broker)}"
	fi
	[[ $ONLY != '' && $ONLY != regress ]] || say "regress: $REGRESS_PASS passed, $REGRESS_FAIL failed"
	[[ $ONLY != '' && $ONLY != pgtap ]] || say "pgtap: $PGTAP_PASS passed, $PGTAP_FAIL failed, $PGTAP_SKIP skipped"
	[[ $ONLY != '' && $ONLY != tap ]] || say "tap: $TAP_PASS passed, $TAP_FAIL failed, $TAP_SKIP skipped"
	# the closing line, printed last by the outer stage
	echo "evbus: $((REGRESS_PASS + PGTAP_PASS + TAP_PASS)) passed," \
		"$((REGRESS_FAIL + PGTAP_FAIL + TAP_FAIL)) failed, $((PGTAP_SKIP + TAP_SKIP)) skipped" \
		>"$EVBUS_TEST_SUMMARY"
	return "$failed"
}

# ---------------------------------------------------------------- main

if [[ ${EVBUS_TEST_STAGE:-} == inner ]]; then
	inner
	exit $?
fi

T0=$SECONDS
phase deps do_deps
phase build do_build
phase fetch do_fetch

rc=0
if [[ $(id -u) -eq 0 ]]; then
	phase copy make_copy
	say "running the tests as $TEST_USER in $TREE"
	SUMMARY=$TREE/.summary
	runuser -u "$TEST_USER" -- env -C "$TREE" EVBUS_TEST_STAGE=inner \
		HOME="$(getent passwd "$TEST_USER" | cut -d: -f6)" \
		EVBUS_KAFKA_LIBS="$TREE/test/kafka/libs" EVBUS_TEST_SUMMARY="$SUMMARY" \
		bash "$TREE/test/run-tests.sh" || rc=$?
	line=$(cat "$SUMMARY" 2>/dev/null || echo "evbus: 0 passed, 1 failed")
	if ((rc == 0)) && [[ -z $KEEP ]]; then
		rm -rf "$TREE"
	else
		say "test tree kept: $TREE"
	fi
else
	SUMMARY=$(mktemp)
	EVBUS_TEST_STAGE=inner EVBUS_TEST_SUMMARY=$SUMMARY bash "$ROOT/test/run-tests.sh" || rc=$?
	line=$(cat "$SUMMARY" 2>/dev/null || echo "evbus: 0 passed, 1 failed")
	rm -f "$SUMMARY"
fi
# the demo, which runs as root only, when the whole suite runs
if [[ $(id -u) -eq 0 && -z $ONLY && -z ${EVBUS_TAP_TESTS:-} ]]; then
	DEMO_LOG=$(mktemp /tmp/evbus-demo-log.XXXXXX)
	run_demo() { bash "$ROOT/demo/run.sh" >"$DEMO_LOG" 2>&1; }
	count() { echo "$line" | grep -o "[0-9]* $1" | grep -o '^[0-9]*' || echo 0; }
	passed=$(count passed) failed=$(count failed) skipped=$(count skipped)
	if phase demo run_demo; then
		passed=$((passed + 1))
		rm -f "$DEMO_LOG"
	else
		failed=$((failed + 1))
		rc=1
		tail -n 40 "$DEMO_LOG"
		say "demo log: $DEMO_LOG"
	fi
	line="evbus: $passed passed, $failed failed, $skipped skipped"
fi
say "total $((SECONDS - T0))s, exit $rc"
echo "$line"
exit "$rc"

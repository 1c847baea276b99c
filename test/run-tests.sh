#!/usr/bin/env bash
# run-tests.sh - THE test command of evbus (README: `bash test/run-tests.sh`;
# .ci/run calls exactly that).  On a fresh Debian 12 machine:
#
#   1. deps     test/install-deps.sh (as root it installs; otherwise it only
#               checks and stops the run when something is missing)
#   2. build    make && make install with PGXS (PG_CONFIG below); warnings are
#               errors (COPT=-Werror; EVBUS_COPT= overrides).  Not root:
#               make install needs a writable PostgreSQL lib dir or `sudo -n`.
#   3. fetch    test/kafka/kafka.sh fetch (the Kafka jars, Maven Central)
#   4. user     PostgreSQL refuses to run as root: as root, create the user
#               evbus_test once, copy the tree (with test/kafka/libs, without
#               .git) to a fresh temporary directory owned by it and run the
#               rest there as that user (runuser).  Not root: run in place.
#   5. kafka    one broker for the whole run, in a temporary directory;
#               exported to the tests as EVBUS_TEST_KAFKA_BOOTSTRAP,
#               EVBUS_TEST_KAFKA_DIR and EVBUS_TEST_KAFKA_SH
#   6. regress  make installcheck (pg_regress, its own --temp-instance)
#      tap      prove -I test/lib -I <pgxs perl> test/t/*.pl
#   7. the broker is always stopped; on failure regression.diffs and the
#      failing TAP tests' logs are printed and the exit status is non-zero.
#
# Environment:
#   EVBUS_TEST_ONLY=regress|tap   run only that phase of step 6
#   EVBUS_TAP_TESTS='test/t/010_x.pl ...'  the TAP tests to run (default all)
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
PGXS_DIR=$(dirname "$PG_BIN")/lib/pgxs
PGXS_PERL=$PGXS_DIR/src/test/perl
PG_REGRESS=$PGXS_DIR/src/test/regress/pg_regress
TEST_USER=evbus_test
ONLY=${EVBUS_TEST_ONLY:-}
KEEP=${EVBUS_TEST_KEEP:-}

cd "$ROOT"

say() { echo "run-tests: $*"; }

case $ONLY in
'' | regress | tap) ;;
*) say "EVBUS_TEST_ONLY must be regress or tap, not '$ONLY'" >&2; exit 2 ;;
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

do_fetch() { bash "$ROOT/test/kafka/kafka.sh" fetch; }

# As root: the unprivileged user (created once) and a private copy of the
# tree it owns, in TREE.
TREE=
make_copy() {
	local tree libs=${EVBUS_KAFKA_LIBS:-$ROOT/test/kafka/libs}
	id -u "$TEST_USER" >/dev/null 2>&1 \
		|| useradd --system --create-home --shell /bin/bash "$TEST_USER" || return 1
	tree=$(mktemp -d /tmp/evbus-test.XXXXXX) || return 1
	tar -C "$ROOT" --exclude=./.git --exclude=./tmp_check --exclude=./test/tmp_check \
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

REGRESS_PASS=0 REGRESS_FAIL=0 TAP_PASS=0 TAP_FAIL=0 TAP_SKIP=0

run_regress() {
	local rc=0
	rm -f "$ROOT/regression.diffs" "$ROOT/regression.out"
	make -C "$ROOT" PG_CONFIG="$PG_CONFIG" installcheck 2>&1 | tee "$LOG_DIR/regress.log" || rc=$?
	# pg_regress 15 prints "test NAME ... ok|FAILED" (or "     NAME ... ") per test
	REGRESS_PASS=$(grep -cE '\.\.\. +ok( |$)' "$LOG_DIR/regress.log" || true)
	REGRESS_FAIL=$(grep -cE '\.\.\. +FAILED' "$LOG_DIR/regress.log" || true)
	if ((rc != 0)) && ((REGRESS_FAIL == 0)); then
		REGRESS_FAIL=1 # failed before or outside any test
	fi
	if [[ -s $ROOT/regression.diffs ]]; then
		say "---- $ROOT/regression.diffs (first 300 lines)"
		head -n 300 "$ROOT/regression.diffs"
	fi
	if ((rc != 0)) && [[ -f $ROOT/tmp_check/log/postmaster.log ]]; then
		say "---- $ROOT/tmp_check/log/postmaster.log (last 60 lines)"
		tail -n 60 "$ROOT/tmp_check/log/postmaster.log"
	fi
	return "$rc"
}

run_tap() {
	local rc=0 tests t base f failed_files
	if [[ -n ${EVBUS_TAP_TESTS:-} ]]; then
		read -r -a tests <<<"$EVBUS_TAP_TESTS"
	else
		tests=("$ROOT"/test/t/*.pl)
		tests=("${tests[@]#"$ROOT"/}")
	fi
	[[ -e ${tests[0]:-} ]] || { say "no TAP tests found" >&2; TAP_FAIL=1; return 1; }
	# what PGXS's prove_installcheck sets: TESTDIR (tmp_check/ with the
	# logs and node data goes there), PATH, PG_REGRESS
	rm -rf "$ROOT/test/tmp_check"
	mkdir -p "$ROOT/test/tmp_check"
	TESTDIR=$ROOT/test PATH="$PG_BIN:$PATH" PG_REGRESS=$PG_REGRESS \
		prove --timer -I "$ROOT/test/lib" -I "$PGXS_PERL" "${tests[@]}" 2>&1 \
		| tee "$LOG_DIR/prove.log" || rc=$?
	# prove's "Test Summary Report" names each failed file as "FILE (Wstat: ...";
	# skipped files print "FILE .. skipped: why"
	failed_files=$(sed -n 's/^\(\S*\.pl\) *(Wstat:.*/\1/p' "$LOG_DIR/prove.log")
	TAP_FAIL=$(grep -c . <<<"$failed_files" || true)
	TAP_SKIP=$(grep -cE '\.pl \.+ skipped' "$LOG_DIR/prove.log" || true)
	((rc == 0 || TAP_FAIL > 0)) || TAP_FAIL=${#tests[@]} # prove itself failed
	TAP_PASS=$((${#tests[@]} - TAP_FAIL - TAP_SKIP))
	for t in $failed_files; do
		base=$(basename "$t" .pl)
		f=$ROOT/test/tmp_check/log/regress_log_$base
		[[ -f $f ]] && { say "---- $f (last 200 lines)"; tail -n 200 "$f"; }
		for f in "$ROOT/test/tmp_check/log/${base}"_*.log; do
			[[ -f $f ]] && { say "---- $f (last 60 lines)"; tail -n 60 "$f"; }
		done
	done
	return "$rc"
}

inner() {
	local failed=0
	# RUN_DIR: the broker's dir (kafka/) and this run's logs
	RUN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/evbus-run.XXXXXX")
	LOG_DIR=$RUN_DIR
	trap 'stop_kafka' EXIT
	trap 'exit 130' INT TERM
	phase kafka start_kafka || { say "no broker, no tests"; exit 1; }
	if [[ $ONLY != tap ]]; then
		phase regress run_regress || failed=1
	fi
	if [[ $ONLY != regress ]]; then
		phase tap run_tap || failed=1
	fi
	trap - EXIT
	stop_kafka
	if ((failed == 0)) && [[ -z $KEEP ]]; then
		rm -rf "$RUN_DIR"
		say "passed; temporary files removed (EVBUS_TEST_KEEP=1 keeps them)"
	else
		say "logs: $RUN_DIR/{regress,prove}.log, $ROOT/regression.diffs," \
			"$ROOT/test/tmp_check/log (TAP), $KAFKA_DIR/logs (broker)"
	fi
	[[ $ONLY == tap ]] || say "regress: $REGRESS_PASS passed, $REGRESS_FAIL failed"
	[[ $ONLY == regress ]] || say "tap: $TAP_PASS passed, $TAP_FAIL failed, $TAP_SKIP skipped"
	# the closing line, printed last by the outer stage
	echo "evbus: $((REGRESS_PASS + TAP_PASS)) passed, $((REGRESS_FAIL + TAP_FAIL)) failed, $TAP_SKIP skipped" \
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
say "total $((SECONDS - T0))s, exit $rc"
echo "$line"
exit "$rc"

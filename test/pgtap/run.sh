#!/usr/bin/env bash
# run.sh - the pgTAP layer of `make installcheck`: the SQL API's contract
# (schema shape, privileges, ownership, error codes) checked by pg_prove
# against a temporary PostgreSQL instance of its own, never a system
# cluster.
#
# Usage: run.sh BINDIR [TEST.sql ...]     (default: test/pgtap/*.sql)
#
# BINDIR is the PostgreSQL 15 bin directory whose installation holds evbus
# and pgTAP (the Makefile passes pg_config --bindir).  The instance lives in
# tmp_check_pgtap/ at the top of the tree: initdb (UTF8), the settings of
# sql/evbus.conf (evbus preloaded, publishing paused) and a Unix socket in
# that directory only (no TCP port, so runs of other trees never collide),
# then a database with the extensions pgtap and evbus.  Each test file is
# a plan()-ed script that runs in one transaction and rolls it back, so
# the files share the database and leave nothing behind.  pg_prove runs
# psql with ON_ERROR_STOP, unaligned tuples only and no psqlrc, so the
# files need no psql settings of their own.
#
# The instance is always stopped; tmp_check_pgtap/ is removed when every
# file passed and kept otherwise (its log/postmaster.log, log/pg_prove.log).
# PostgreSQL refuses to run as root: run it as another user (test/run-tests.sh
# does).  Exit status: pg_prove's, or 1 when the instance cannot be set up.
set -euo pipefail

[[ $# -ge 1 ]] || { echo "usage: $0 BINDIR [TEST.sql ...]" >&2; exit 2; }
BINDIR=$1
shift
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DIR=$ROOT/tmp_check_pgtap
DB=evbus_pgtap
PORT=54329

cd "$ROOT"
if (($# > 0)); then
	tests=("$@")
else
	tests=(test/pgtap/*.sql)
fi
say() { echo "pgtap: $*"; }

if [[ $(id -u) -eq 0 ]]; then
	say "PostgreSQL refuses to run as root: run this as another user (bash test/run-tests.sh does)" >&2
	exit 1
fi
command -v pg_prove >/dev/null || {
	say "pg_prove not found (Debian: libtap-parser-sourcehandler-pgtap-perl, see test/install-deps.sh)" >&2
	exit 1
}

rm -rf "$DIR"
mkdir -p "$DIR/log"
export PATH="$BINDIR:$PATH" PGHOST=$DIR PGPORT=$PORT PGDATABASE=$DB
unset PGUSER PGPASSWORD PGSERVICE PGOPTIONS

"$BINDIR/initdb" -D "$DIR/data" --auth=trust --encoding=UTF8 --locale=C --no-sync \
	>"$DIR/log/initdb.log" 2>&1 || { say "initdb failed, see $DIR/log/initdb.log" >&2; exit 1; }
{
	echo "# sql/evbus.conf, the settings of the pg_regress suite"
	cat "$ROOT/sql/evbus.conf"
	echo "listen_addresses = ''"
	echo "unix_socket_directories = '$DIR'"
	echo "port = $PORT"
	echo "fsync = off"
} >>"$DIR/data/postgresql.conf"

stop() { "$BINDIR/pg_ctl" -D "$DIR/data" -m fast -w stop >/dev/null 2>&1 || true; }
trap stop EXIT
"$BINDIR/pg_ctl" -D "$DIR/data" -l "$DIR/log/postmaster.log" -w start >/dev/null \
	|| { say "the instance did not start, see $DIR/log/postmaster.log" >&2; exit 1; }
"$BINDIR/createdb" --encoding=UTF8 --template=template0 "$DB"
"$BINDIR/psql" -X -q -v ON_ERROR_STOP=1 \
	-c 'CREATE EXTENSION pgtap' -c 'CREATE EXTENSION evbus' >/dev/null \
	|| { say "could not create the extensions pgtap and evbus" >&2; exit 1; }

rc=0
pg_prove --timer --psql-bin "$BINDIR/psql" "${tests[@]}" 2>&1 \
	| tee "$DIR/log/pg_prove.log" || rc=$?
stop
trap - EXIT
if ((rc == 0)); then
	rm -rf "$DIR"
else
	say "failed; instance and logs kept in $DIR" >&2
fi
exit "$rc"

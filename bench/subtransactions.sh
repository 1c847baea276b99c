#!/usr/bin/env bash
# bench/subtransactions.sh - what a draining consumer costs the other
# sessions of its server through subtransactions.
#
# Each call of a per-message handler runs in a subtransaction that takes a
# transaction id of its own when it writes.  PostgreSQL keeps 64 of them
# per transaction in shared memory; past that the transaction is
# "overflowed", and while it runs every snapshot taken on the server looks
# the transaction ids it meets in the snapshot's range up in pg_subtrans
# (an SLRU of 32 pages of 2,048 ids in PostgreSQL 15).  A long transaction
# elsewhere widens that range to every id assigned since it began.
#
# One throwaway PostgreSQL 15 and Kafka broker; databases payments (evbus,
# a handler doing one INSERT) and app (pgbench -i -s 10).  N events
# (default 400,000) are in Kafka before payments subscribes.  With LONG=1
# (default) a session of app holds a transaction id open throughout.
# pgbench (tpcb-like, CLIENTS 4, DURATION 6 s) runs in app once before the
# drain (baseline) and once during it.  Measured over the second run:
# pgbench's transactions per second, the pg_subtrans pages read from
# outside PostgreSQL's buffers and found in them (pg_stat_slru,
# 'Subtrans': blks_read, blks_hit; every subtransaction id assigned also
# counts one hit, when its parent is noted), and the messages the
# consumer handled meanwhile.
#
# Usage: bench/subtransactions.sh; compare commits with EVBUS_REF.
# Environment: N, LONG, CLIENTS, DURATION, plus those of bench/lib.sh.

# shellcheck source=bench/lib.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"
bench_init subtransactions 1 "$@"

N=${N:-400000}
LONG=${LONG:-1}
CLIENTS=${CLIENTS:-4}
DURATION=${DURATION:-6}

environment_report >"$RESULTS_DIR/environment.txt"
echo "settings: N=$N LONG=$LONG CLIENTS=$CLIENTS DURATION=$DURATION" >>"$RESULTS_DIR/environment.txt"

pg_start "max_worker_processes = 16"
kafka_start
"$KAFKA_SH" topics "$TMP_DIR/kafka" --create --topic ConsumeEvent --partitions 3 \
	--replication-factor 1 >/dev/null
psql -qX -d postgres -v ON_ERROR_STOP=1 -c "CREATE DATABASE payments" -c "CREATE DATABASE app" >/dev/null
pgbench -i -q -s 10 app >"$RESULTS_DIR/pgbench-init.log" 2>&1 || die "pgbench -i failed"
qp() { psql -qXAt -d payments -v ON_ERROR_STOP=1 -c "$1"; }
qp "CREATE EXTENSION evbus"
qp "CREATE ROLE bench_app; GRANT USAGE ON SCHEMA evbus TO bench_app;
    GRANT EXECUTE ON FUNCTION evbus.subscribe(text, regprocedure, text, integer) TO bench_app"
qp "CREATE TABLE sink (id text PRIMARY KEY, payload jsonb)"
qp "CREATE FUNCTION ins(payload jsonb, headers jsonb) RETURNS void LANGUAGE sql AS
    \$\$ INSERT INTO public.sink VALUES (headers->>'cap-msg-id', payload) \$\$"
qp "ALTER FUNCTION ins(jsonb, jsonb) OWNER TO bench_app; GRANT INSERT ON sink TO bench_app"
set_brokers "$BROKERS"

publish_consume_events "$N"

slru() { psql -qXAt -d postgres -c "SELECT blks_hit || ' ' || blks_read FROM pg_stat_slru WHERE name = 'Subtrans'"; }
tps() { sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$1"; }

log "baseline: pgbench -c $CLIENTS -T $DURATION"
pgbench -n -c "$CLIENTS" -j 2 -T "$DURATION" app >"$RESULTS_DIR/pgbench-baseline.log" 2>&1 \
	|| die "pgbench failed"
if ((LONG)); then
	psql -qX -d app -c "BEGIN" -c "SELECT pg_current_xact_id()" -c "SELECT pg_sleep(3600)" \
		>/dev/null 2>&1 &
	sleep 1
fi
qp "SET ROLE bench_app; SELECT evbus.subscribe('ConsumeEvent', 'ins(jsonb, jsonb)', 'g_insert')" >/dev/null
for _ in $(seq 1 300); do
	[[ $(qp "SELECT count(*) FROM sink") -gt 0 ]] && break
	sleep 0.1
done
log "during the drain: pgbench -c $CLIENTS -T $DURATION"
read -r h0 r0 < <(slru)
c0=$(qp "SELECT count(*) FROM sink")
pgbench -n -c "$CLIENTS" -j 2 -T "$DURATION" app >"$RESULTS_DIR/pgbench-drain.log" 2>&1 \
	|| die "pgbench failed"
read -r h1 r1 < <(slru)
c1=$(qp "SELECT count(*) FROM sink")
((c1 < N)) || log "warning: the drain ended before pgbench did (raise N)"

{
	echo "subtransactions: a consumer draining $N events (one INSERT per message) beside pgbench ($CLIENTS clients), long transaction open: $LONG"
	echo
	echo "pgbench tps: baseline $(tps "$RESULTS_DIR/pgbench-baseline.log"), during the drain $(tps "$RESULTS_DIR/pgbench-drain.log")"
	echo "handled during pgbench's ${DURATION}s: $((c1 - c0)) messages"
	echo "pg_subtrans pages: read $((r1 - r0)), found in buffers $((h1 - h0))"
} | tee "$RESULTS_DIR/summary.txt"

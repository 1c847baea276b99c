#!/usr/bin/env bash
# experiment (session 9): what the WAL of variants (a) and (c) of the
# commit-overhead transaction consists of (pg_waldump --stats=record), in
# Kafka mode, one 20-s run each after a warm-up.
. /work/main/bench/lib.sh
bench_init waldump2 1 "$@"
DURATION=${DURATION:-20}
pg_start
pgbench -i -q -s 10 >/dev/null 2>&1 || die "pgbench -i"
PAYLOAD="jsonb_build_object('account_id', :aid::int, 'branch_id', :bid::int, 'teller_id', :tid::int, 'delta', :delta::int, 'currency', 'EUR', 'reason', 'pgbench tpcb-like transfer', 'source', 'evbus bench/commit_overhead', 'ref', 'c0ffee00-1234-4abc-8def-000000000042')"
q "CREATE TABLE bench_outbox (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, topic text, key text, payload jsonb, headers jsonb, created_at timestamptz DEFAULT now())" >/dev/null
for V in a b c; do
case $V in
a) STMT="INSERT INTO bench_outbox (topic, key, payload) VALUES ('AccountUpdated', :aid::text, $PAYLOAD);" ;;
b) STMT="SELECT evbus.publish('AccountUpdated', $PAYLOAD, :aid::text);" ;;
c) STMT="SELECT evbus.publish('AccountUpdated', $PAYLOAD, :aid::text);" ;;
esac
cat >"$TMP_DIR/$V.sql" <<EOS
\\set aid random(1, 100000 * :scale)
\\set bid random(1, 1 * :scale)
\\set tid random(1, 10 * :scale)
\\set delta random(-5000, 5000)
BEGIN;
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
UPDATE pgbench_tellers SET tbalance = tbalance + :delta WHERE tid = :tid;
UPDATE pgbench_branches SET bbalance = bbalance + :delta WHERE bid = :bid;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (:tid, :bid, :aid, :delta, CURRENT_TIMESTAMP);
$STMT
END;
EOS
done
kafka_start
"$KAFKA_SH" topics "$TMP_DIR/kafka" --create --topic AccountUpdated --partitions 3 --replication-factor 1 >/dev/null 2>&1 || die topic
set_brokers "$BROKERS"
sleep 2
for V in a b c a b c; do pgbench -n -M prepared -c 8 -j 2 -T 30 -f "$TMP_DIR/$V.sql" >/dev/null 2>&1; done
for V in a c b c a c c; do
	q "TRUNCATE pgbench_history, bench_outbox" >/dev/null
	sleep 3
	q "CHECKPOINT" >/dev/null
	l0=$(q "SELECT pg_current_wal_lsn()")
	pgbench -n -M prepared -c 8 -j 2 -T "$DURATION" -f "$TMP_DIR/$V.sql" >"$TMP_DIR/pgb.log" 2>&1 || die pgbench
	sleep 3
	l1=$(q "SELECT pg_current_wal_lsn()")
	n=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$TMP_DIR/pgb.log")
	{
		echo "== variant $V: $n transactions, WAL $l0 .. $l1 = $(q "SELECT pg_wal_lsn_diff('$l1', '$l0')::bigint / $n") B per transaction"
		pg_waldump -p "$TMP_DIR/pg/pg_wal" -s "$l0" -e "$l1" --stats=record 2>&1
		echo "-- FPI bytes per relation:"
		{ pg_waldump -p "$TMP_DIR/pg/pg_wal" -s "$l0" -e "$l1" 2>/dev/null || true; } | grep -o "rel [0-9/]* fork main blk [0-9]* FPW" | awk '{c[$2]++} END{for (k in c) print c[k], k}' | sort -rn | head -10 || true
		date
		q "SELECT 'relfilenodes: ' || string_agg(relname || '=' || pg_relation_filenode(oid), ' ') FROM pg_class WHERE relname IN ('outbox_0','outbox_1','outbox_0_pkey','outbox_1_pkey','bench_outbox','bench_outbox_pkey','publish_counters','pgbench_history','pgbench_accounts','pgbench_branches','pgbench_tellers','pgbench_accounts_pkey','outbox_published_0','outbox_published_1')"
	} >>"$RESULTS_DIR/waldump.txt"
done
cat "$RESULTS_DIR/waldump.txt"

#!/usr/bin/env bash
# experiment (session 9): does the co-located broker's disk writing cost the
# transactions?  One PostgreSQL, two brokers: one with its log on the disk
# (as in bench/), one on tmpfs.  Configs: a (variant a), ck (c -> disk broker),
# ckt (c -> tmpfs broker), cp (c paused).  Per run: tps, worker/broker CPU,
# disk sectors written, WAL fsyncs and mean fsync time (track_wal_io_timing).
. /work/main/bench/lib.sh
bench_init gcab 1 "$@"
DURATION=${DURATION:-20}
ROUNDS=${ROUNDS:-5}
WARMUP=${WARMUP:-150}
CONFIGS=${CONFIGS:-a ck cks}
PG_CONF="track_wal_io_timing = on${PG_CONF:+;$PG_CONF}"
pg_start
pgbench -i -q -s 10 >/dev/null 2>&1 || die "pgbench -i"
PAYLOAD="jsonb_build_object('account_id', :aid::int, 'branch_id', :bid::int, 'teller_id', :tid::int, 'delta', :delta::int, 'currency', 'EUR', 'reason', 'pgbench tpcb-like transfer', 'source', 'evbus bench/commit_overhead', 'ref', 'c0ffee00-1234-4abc-8def-000000000042')"
q "CREATE TABLE bench_outbox (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, topic text, key text, payload jsonb, headers jsonb, created_at timestamptz DEFAULT now())" >/dev/null
for V in a c; do
case $V in
a) STMT="INSERT INTO bench_outbox (topic, key, payload) VALUES ('AccountUpdated', :aid::text, $PAYLOAD);" ;;
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
DISK_BROKERS=$BROKERS
DISK_KPID=$(kafka_pid)
"$KAFKA_SH" topics "$TMP_DIR/kafka" --create --topic AccountUpdated --partitions 3 --replication-factor 1 >/dev/null 2>&1 || die topic
SHM=$(mktemp -d /tmp/evbus-gcab2.XXXXXX); chmod 755 "$SHM"

TMPFS_BROKERS=$(EVBUS_KAFKA_GC_OPTS="${GC2:--XX:+UseSerialGC}" /work/main/test/kafka/kafka.sh start "$SHM/kafka") || die "second broker"
TMPFS_KPID=$(cat "$SHM/kafka/kafka.pid")
/work/main/test/kafka/kafka.sh topics "$SHM/kafka" --create --topic AccountUpdated --partitions 3 --replication-factor 1 >/dev/null 2>&1 || die topic2
trap '"$KAFKA_SH" stop "$SHM/kafka" >/dev/null 2>&1; rm -rf "$SHM"; bench_cleanup' EXIT
echo "disk broker $DISK_BROKERS pid $DISK_KPID; tmpfs broker $TMPFS_BROKERS pid $TMPFS_KPID" | tee -a "$RESULTS_DIR/environment.txt" >&2
KPID=$DISK_KPID
apply() {
	case $1 in
	a) VSQL=a ;;
	cp) VSQL=c; set_brokers "" ;;
	ck) VSQL=c; set_brokers "$DISK_BROKERS"; KPID=$DISK_KPID ;;
	cks) VSQL=c; set_brokers "$TMPFS_BROKERS"; KPID=$TMPFS_KPID ;;
	esac
	sleep 3
	[[ $1 == cp ]] && q "TRUNCATE evbus.outbox_0, evbus.outbox_1" >/dev/null
	# a few seconds of load so that the producer has reconnected and warmed up
	pgbench -n -M prepared -c 8 -j 2 -T 4 -f "$TMP_DIR/$VSQL.sql" >/dev/null 2>&1
	sleep 2
}
sectors() { awk '$3 == "vda" {print $10}' /proc/diskstats; }
walstat() { q "SELECT wal_sync || ' ' || round(wal_sync_time::numeric, 1) || ' ' || wal_write FROM pg_stat_wal"; }
run() {
	local w0 k0 w1 k1 out=$TMP_DIR/pgb.log wpid s0 s1 ws0 wt0 ww0 ws1 wt1 ww1
	q "TRUNCATE pgbench_history, bench_outbox" >/dev/null
	q "VACUUM pgbench_branches, pgbench_tellers" >/dev/null
	q "CHECKPOINT" >/dev/null
	wpid=$(evbus_worker_pid)
	w0=$(proc_ticks "$wpid"); k0=$(( $(proc_ticks "$DISK_KPID") + $(proc_ticks "$TMPFS_KPID") ))
	s0=$(sectors); read -r ws0 wt0 ww0 < <(walstat)
	pgbench -n -M prepared -c 8 -j 2 -T "$1" -f "$TMP_DIR/$VSQL.sql" >"$out" 2>&1 || { cat "$out"; die pgbench; }
	w1=$(proc_ticks "$wpid"); k1=$(( $(proc_ticks "$DISK_KPID") + $(proc_ticks "$TMPFS_KPID") ))
	s1=$(sectors); read -r ws1 wt1 ww1 < <(walstat)
	tps=$(sed -n 's/^tps = \([0-9.]*\) (without.*/\1/p' "$out")
	n=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$out")
	echo "$tps $n $((w1 - w0)) $((k1 - k0)) $(( (s1 - s0) / 2048 )) $((ws1 - ws0)) $(awk -v t=$wt1 -v u=$wt0 -v a=$ws1 -v b=$ws0 'BEGIN{printf "%.3f", (t-u)/(a-b)}')"
}
for c in $CONFIGS; do apply "$c"; run $((WARMUP / $(wc -w <<<"$CONFIGS"))) >/dev/null; done
printf 'round\tconfig\ttps\tn\tworker_ticks\tkafka_ticks(both)\tdisk_MB\twal_syncs\tms_per_sync\n' | tee "$RESULTS_DIR/runs.tsv"
cfgs=($CONFIGS)
for ((r = 1; r <= ROUNDS; r++)); do
	for ((j = 0; j < ${#cfgs[@]}; j++)); do
		c=${cfgs[(j + r) % ${#cfgs[@]}]}
		apply "$c"
		read -r tps n wt kt mb ws mps < <(run "$DURATION")
		printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$c" "$tps" "$n" "$wt" "$kt" "$mb" "$ws" "$mps" | tee -a "$RESULTS_DIR/runs.tsv"
	done
done

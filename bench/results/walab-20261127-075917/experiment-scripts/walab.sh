#!/usr/bin/env bash
# experiment: CPU of worker + broker per event, and tps, under the commit_overhead (c) load,
# alternating configurations in one run.  CONFIGS: names; conf_<name> function sets them.
. /work/main/bench/lib.sh
bench_init walab 1 "$@"
DURATION=${DURATION:-20}
ROUNDS=${ROUNDS:-4}
WARMUP=${WARMUP:-150}
CONFIGS=${CONFIGS:-lz4 none}
VARIANT=${VARIANT:-c}
pg_start
pgbench -i -q -s 10 >/dev/null 2>&1 || die "pgbench -i"
PAYLOAD="jsonb_build_object('account_id', :aid::int, 'branch_id', :bid::int, 'teller_id', :tid::int, 'delta', :delta::int, 'currency', 'EUR', 'reason', 'pgbench tpcb-like transfer', 'source', 'evbus bench/commit_overhead', 'ref', 'c0ffee00-1234-4abc-8def-000000000042')"
q "CREATE TABLE bench_outbox (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, topic text, key text, payload jsonb, headers jsonb, created_at timestamptz DEFAULT now())" >/dev/null
q "CREATE TABLE bench_outbox_w (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, topic text, key text, payload jsonb, headers jsonb, created_at timestamptz DEFAULT now(), pad text)" >/dev/null
for VARIANT in a c aw; do
case $VARIANT in
a) STMT="INSERT INTO bench_outbox (topic, key, payload) VALUES ('AccountUpdated', :aid::text, $PAYLOAD);" ;;
c) STMT="SELECT evbus.publish('AccountUpdated', $PAYLOAD, :aid::text);" ;;
aw) STMT="INSERT INTO bench_outbox_w (topic, key, payload, pad) VALUES ('AccountUpdated', :aid::text, $PAYLOAD, 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx');" ;;
esac
cat >"$TMP_DIR/$VARIANT.sql" <<EOS
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
VSQL=c
kafka_start
echo "kafka pid $(kafka_pid)" >&2
"$KAFKA_SH" topics "$TMP_DIR/kafka" --create --topic AccountUpdated --partitions 3 --replication-factor 1 >/dev/null 2>&1 || die topic
set_brokers "$BROKERS"
sleep 2
printf 'compression.type=none\n' >"$TMP_DIR/none.conf"
printf 'compression.type=lz4\n' >"$TMP_DIR/lz4.conf"
printf 'compression.type=zstd\n' >"$TMP_DIR/zstd.conf"
chmod 600 "$TMP_DIR"/*.conf
apply() {
	case $1 in
	a) VSQL=a; BURN=; echo 0 > /tmp/nice-kafka; sleep 1 ;;
	aw) VSQL=aw; BURN=; sleep 1 ;;
	ab0) VSQL=a; BURN=0; sleep 1 ;;
	ab19) VSQL=a; BURN=19; sleep 1 ;;
	ckk19) VSQL=c; echo 19 > /tmp/nice-kafka; sleep 1 ;;
	cp) VSQL=c; set_brokers ""; sleep 1; q "TRUNCATE evbus.outbox_0, evbus.outbox_1" >/dev/null ;;
	ck) VSQL=c; q "ALTER SYSTEM RESET evbus.publish_linger_busy" >/dev/null; q "ALTER SYSTEM RESET evbus.kafka_config_file" >/dev/null ;;
	ckl*) VSQL=c; q "ALTER SYSTEM SET evbus.publish_linger_busy = ${1#ckl}" >/dev/null; q "ALTER SYSTEM RESET evbus.kafka_config_file" >/dev/null ;;
	ckn200) VSQL=c; q "ALTER SYSTEM SET evbus.publish_linger_busy = 200" >/dev/null; q "ALTER SYSTEM SET evbus.kafka_config_file = '$TMP_DIR/none.conf'" >/dev/null ;;
	ck10) VSQL=c; echo 10 > /tmp/nice-flag; sleep 1 ;;
	ck19) VSQL=c; echo 19 > /tmp/nice-flag; sleep 1 ;;
	lz4|none|zstd) q "ALTER SYSTEM SET evbus.kafka_config_file = '$TMP_DIR/$1.conf'" >/dev/null; q "ALTER SYSTEM RESET evbus.publish_linger_busy" >/dev/null ;;
	lz4l100) q "ALTER SYSTEM SET evbus.kafka_config_file = '$TMP_DIR/lz4.conf'" >/dev/null; q "ALTER SYSTEM SET evbus.publish_linger_busy = 100" >/dev/null ;;
	nonel100) q "ALTER SYSTEM SET evbus.kafka_config_file = '$TMP_DIR/none.conf'" >/dev/null; q "ALTER SYSTEM SET evbus.publish_linger_busy = 100" >/dev/null ;;
	esac
	q "SELECT pg_reload_conf()" >/dev/null
	sleep 3
}
run() {
	local w0 k0 w1 k1 out=$TMP_DIR/pgb.log wpid kpid
	q "TRUNCATE pgbench_history, bench_outbox, bench_outbox_w" >/dev/null
	q "VACUUM pgbench_branches, pgbench_tellers" >/dev/null
	q "CHECKPOINT" >/dev/null
	wpid=$(evbus_worker_pid); kpid=$(kafka_pid)
	w0=$(proc_ticks "$wpid"); k0=$(proc_ticks "$kpid")
	local bpid=
	if [[ -n ${BURN:-} ]]; then nice -n "$BURN" /tmp/burner & bpid=$!; fi
	local l0 l1
	l0=$(q "SELECT pg_current_wal_lsn()")
	pgbench -n -M prepared -c 8 -j 2 -T "$1" -f "$TMP_DIR/$VSQL.sql" >"$out" 2>&1 || { cat "$out"; die pgbench; }
	[[ $VSQL == c ]] && sleep 2
	l1=$(q "SELECT pg_current_wal_lsn()")
	WALB=$(q "SELECT pg_wal_lsn_diff('$l1', '$l0')::bigint")
	w1=$(proc_ticks "$wpid"); k1=$(proc_ticks "$kpid")
	[[ -n $bpid ]] && kill $bpid
	sleep 2
	tps=$(sed -n 's/^tps = \([0-9.]*\) (without.*/\1/p' "$out")
	n=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$out")
	echo "$tps $n $((w1 - w0)) $((k1 - k0)) $((WALB / n))"
}
i=0
for c in $CONFIGS; do apply "$c"; run $((WARMUP / $(wc -w <<<"$CONFIGS"))) >/dev/null; done
printf 'round\tconfig\ttps\tn\tworker_ticks\tkafka_ticks\tus_per_event_w\tus_per_event_k\twal_per_tx\n' | tee "$RESULTS_DIR/runs.tsv"
cfgs=($CONFIGS)
for ((r = 1; r <= ROUNDS; r++)); do
	for ((j = 0; j < ${#cfgs[@]}; j++)); do
		c=${cfgs[(j + r) % ${#cfgs[@]}]}
		apply "$c"
		read -r tps n wt kt wpt < <(run "$DURATION")
		printf '%s\t%s\t%s\t%s\t%s\t%s\t%.1f\t%.1f\t%s\n' "$r" "$c" "$tps" "$n" "$wt" "$kt" \
			"$(awk -v t=$wt -v n=$n 'BEGIN{print t*10000/n}')" "$(awk -v t=$kt -v n=$n 'BEGIN{print t*10000/n}')" "$wpt" | tee -a "$RESULTS_DIR/runs.tsv"
	done
done

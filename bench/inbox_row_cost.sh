#!/usr/bin/env bash
# bench/inbox_row_cost.sh - what the row a received message leaves in
# evbus.inbox costs the consumer, and what narrower rows would cost.
#
# bench/consume.sh measures the whole consumer (Kafka, decoding, the
# handler, the commit); its profile puts half of the consumer's time in the
# inbox insert.  This isolates that insert and compares it, in one run,
# with the rows a consumer needs at the least: N received messages as the
# consumer records them (the same columns, a 200-byte payload and the
# headers a handler gets), inserted in transactions of 500 rows (the
# consumer's batch) with INSERT ... SELECT, into:
#
#   i  evbus.inbox itself, with its counting trigger (what the consumer does)
#   c  a copy of evbus.inbox with the same indexes, without the trigger
#   p  the copy, the rows without payload and headers (NULL, '{}')
#   h  the copy without the index on handled_at
#   d  a de-duplication row only: (group, message id, handler, topic,
#      partition, offset, handled_at), unique on (group, message id, handler)
#   e  the effect row of bench/peers.sh (message id primary key, payload):
#      all the polling consumer writes per message, and what evbus's
#      handler there writes besides the inbox row
#   t  reading the source rows only (the loop's own cost)
#
# Per row: (time of the loop) / N, in microseconds; the difference from
# (t) is the row's own cost.  Variants run in turn, ROUNDS times; the
# tables are truncated and a CHECKPOINT taken before each loop, so WAL
# segments are recycled, as in a server running for a while (a fresh
# cluster also pays for creating them, as consume.sh's runs do).
#
# Usage (as root or any user; one command):
#   bench/inbox_row_cost.sh
# Environment: N (200000 rows per loop), ROUNDS (3), VARIANTS (default
#   "i c p h d e t"; t is needed, the others are measured against it),
#   plus those of bench/lib.sh (PG_ICU_LOCALE: the cluster's collation).
# Output: summary on stdout and in $RESULTS_DIR/summary.txt; raw rows in
#   $RESULTS_DIR/runs.tsv.

# shellcheck source=bench/lib.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"
bench_init inbox_row_cost 0 "$@"

N=${N:-200000}
ROUNDS=${ROUNDS:-3}

environment_report >"$RESULTS_DIR/environment.txt"
echo "settings: N=$N ROUNDS=$ROUNDS" >>"$RESULTS_DIR/environment.txt"

pg_start

# The source: N messages as the consumer records them.  Message ids are
# UUIDs version 7 in staging order (what evbus's publisher sends), 100
# keys, 3 partitions; the headers are those a handler gets.
psql -qX -v ON_ERROR_STOP=1 -v n="$N" >/dev/null <<'SQL'
CREATE TABLE bench_received AS
SELECT i,
	   (lpad(to_hex(1790000000000 + i / 20), 12, '0') || '7' || substr(h, 1, 3) || '8' || substr(h, 4, 15)) AS mid,
	   i % 3 AS part,
	   'k' || (i % 100) AS event_key,
	   jsonb_build_object('order_id', i, 'customer', 'c' || (i % 1000), 'amount', 123.45,
						  'currency', 'EUR', 'lines', jsonb_build_array(1, 2, 3),
						  'note', repeat('x', 80)) AS payload
FROM (SELECT i, md5(i::text) AS h FROM generate_series(1, :n) i) s;
UPDATE bench_received SET mid = substr(mid, 1, 8) || '-' || substr(mid, 9, 4) || '-' || substr(mid, 13, 4)
	|| '-' || substr(mid, 17, 4) || '-' || substr(mid, 21, 12);
ALTER TABLE bench_received ADD COLUMN headers jsonb;
UPDATE bench_received SET headers = jsonb_build_object(
	'cap-msg-id', mid, 'cap-msg-name', 'OrderPlaced', 'cap-senttime', now()::text,
	'evbus-source', 'shop', 'evbus-group', 'payments', 'evbus-topic', 'OrderPlaced',
	'evbus-partition', part, 'evbus-offset', i / 3);
CREATE INDEX ON bench_received (i);
VACUUM ANALYZE bench_received;

CREATE TABLE bench_inbox_c (LIKE evbus.inbox INCLUDING ALL);
CREATE TABLE bench_inbox_p (LIKE evbus.inbox INCLUDING ALL);
CREATE TABLE bench_inbox_h (LIKE evbus.inbox INCLUDING ALL);
DO $$
DECLARE
	ix text;
BEGIN
	SELECT indexrelid::regclass INTO ix FROM pg_index
	 WHERE indrelid = 'bench_inbox_h'::regclass AND indpred IS NULL
	   AND pg_get_indexdef(indexrelid) LIKE '%(handled_at)';
	EXECUTE 'DROP INDEX ' || ix;
END $$;
CREATE TABLE bench_dedup (
	group_name text NOT NULL,
	dedup_key text NOT NULL,
	handler text NOT NULL,
	topic text NOT NULL,
	kafka_partition integer NOT NULL,
	kafka_offset bigint NOT NULL,
	handled_at timestamptz,
	UNIQUE (group_name, dedup_key, handler)
);
CREATE TABLE bench_effect (
	message_id text PRIMARY KEY,
	payload jsonb NOT NULL,
	handled_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- the inbox insert of the consumer, 500 rows a transaction, into table t
CREATE PROCEDURE bench_load(variant text, t regclass, n integer) LANGUAGE plpgsql AS $p$
DECLARE
	lo integer := 0;
	cols text := 'group_name, dedup_key, message_id, integration_event, topic,'
		' kafka_partition, kafka_offset, event_key, payload, headers, state, attempts,'
		' next_attempt_at, handled_at, handler';
	rows text := 'SELECT ''payments'', mid, mid, ''OrderPlaced'', ''OrderPlaced'', part, i / 3,'
		' event_key, %s, %s, ''handled'', 1, NULL, now(), ''public.on_order_placed(jsonb,jsonb)'''
		' FROM bench_received WHERE i > $1 AND i <= $1 + 500';
	stmt text;
BEGIN
	stmt := CASE variant
		WHEN 'p' THEN format('INSERT INTO %s (%s) ', t, cols) || format(rows, 'NULL', '''{}''::jsonb')
		WHEN 'd' THEN format('INSERT INTO %s SELECT ''payments'', mid, ''public.on_order_placed(jsonb,jsonb)'','
			' ''OrderPlaced'', part, i / 3, now() FROM bench_received WHERE i > $1 AND i <= $1 + 500', t)
		WHEN 'e' THEN format('INSERT INTO %s (message_id, payload) SELECT mid, payload'
			' FROM bench_received WHERE i > $1 AND i <= $1 + 500', t)
		WHEN 't' THEN 'SELECT count(*) FROM (SELECT mid, payload, headers FROM bench_received'
			' WHERE i > $1 AND i <= $1 + 500) s'
		ELSE format('INSERT INTO %s (%s) ', t, cols) || format(rows, 'payload', 'headers')
	END;
	WHILE lo < n LOOP
		EXECUTE stmt USING lo;
		COMMIT;
		lo := lo + 500;
	END LOOP;
END $p$;
SQL

VARIANTS=${VARIANTS:-i c p h d e t}
declare -A TABLE=([i]=evbus.inbox [c]=bench_inbox_c [p]=bench_inbox_p [h]=bench_inbox_h
	[d]=bench_dedup [e]=bench_effect [t]=bench_received)

# reset: empty every target table, and recycle WAL
reset() {
	q "TRUNCATE evbus.inbox, bench_inbox_c, bench_inbox_p, bench_inbox_h, bench_dedup, bench_effect; CHECKPOINT" >/dev/null
}

# loop_ms V: milliseconds of one load of N rows by variant V
loop_ms() {
	psql -qXAt -v ON_ERROR_STOP=1 -c '\timing on' \
		-c "CALL bench_load('$1', '${TABLE[$1]}', $N)" \
		| sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p'
}

# one loop of each, not counted: caches, the first pages
# (and a check that the rows went in)
for v in $VARIANTS; do
	reset
	loop_ms "$v" >/dev/null
	[[ $v == t ]] && continue
	rows=$(q "SELECT count(*) FROM ${TABLE[$v]}")
	[[ $rows == "$N" ]] || die "variant $v: ${TABLE[$v]} holds $rows rows, not $N"
done

printf 'round\tvariant\trows\tms\tus_per_row\n' >"$RESULTS_DIR/runs.tsv"
for ((r = 1; r <= ROUNDS; r++)); do
	for v in $VARIANTS; do
		reset
		ms=$(loop_ms "$v")
		us=$(awk -v ms="$ms" -v n="$N" 'BEGIN {printf "%.3f", ms * 1000 / n}')
		printf '%d\t%s\t%d\t%s\t%s\n' "$r" "$v" "$N" "$ms" "$us" >>"$RESULTS_DIR/runs.tsv"
		log "round $r variant $v: $us us per row"
	done
done

{
	echo "inbox_row_cost: $N rows per loop in transactions of 500, one session, $ROUNDS rounds"
	echo
	variant_medians "$RESULTS_DIR/runs.tsv" t "$VARIANTS" "us per row, per round"
	echo
	echo "i = evbus.inbox (with its counting trigger), c = its copy without the trigger,"
	echo "p = the copy without payload and headers, h = the copy without the handled_at"
	echo "index, d = a de-duplication row only, e = the effect row of bench/peers.sh,"
	echo "t = reading the source rows only"
} | tee "$RESULTS_DIR/summary.txt"

\set aid random(1, 100000 * :scale)
\set bid random(1, 1 * :scale)
\set tid random(1, 10 * :scale)
\set delta random(-5000, 5000)
BEGIN;
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
UPDATE pgbench_tellers SET tbalance = tbalance + :delta WHERE tid = :tid;
UPDATE pgbench_branches SET bbalance = bbalance + :delta WHERE bid = :bid;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (:tid, :bid, :aid, :delta, CURRENT_TIMESTAMP);
INSERT INTO bench_outbox (topic, key, payload) VALUES ('AccountUpdated', :aid::text, jsonb_build_object('account_id', :aid::int, 'branch_id', :bid::int, 'teller_id', :tid::int, 'delta', :delta::int, 'currency', 'EUR', 'reason', 'pgbench tpcb-like transfer', 'source', 'evbus bench/commit_overhead', 'ref', 'c0ffee00-1234-4abc-8def-000000000042'));
END;

\set k random(1, 10000)
SELECT evbus.publish('LatencyEvent', jsonb_build_object('staged_us', (extract(epoch FROM clock_timestamp()) * 1000000)::bigint, 'account_id', :k::int, 'currency', 'EUR', 'reason', 'pgbench tpcb-like transfer', 'source', 'evbus bench/latency', 'ref', 'c0ffee00-1234-4abc-8def-000000000042'), :k::text);

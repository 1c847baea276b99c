\set k random(1, 10000)
SELECT evbus.publish('LatencyEvent', jsonb_build_object('staged', clock_timestamp(), 'account_id', :k::int, 'amount', 42.5, 'currency', 'EUR'), :k::text);

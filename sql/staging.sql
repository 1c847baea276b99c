-- evbus.publish stages an integration event in the caller's transaction
SELECT evbus.publish('OrderShipped', '{"orderId": 1, "items": [1, 2]}', 'order-1') IS NOT NULL AS staged;

SELECT integration_event, event_key, payload, headers, domain_event, deliver_at
  FROM evbus.outbox ORDER BY id;

-- the message id returned is the one staged; it is a version 7 UUID
CREATE TEMP TABLE p AS SELECT evbus.publish('OrderShipped', '{"orderId": 2}') AS id;
SELECT o.message_id = p.id AS same_id,
       substr(p.id::text, 15, 1) AS uuid_version,
       o.event_key IS NULL AS no_key
  FROM p JOIN evbus.outbox o ON o.message_id = p.id;

-- user headers and a deferred delivery
SELECT evbus.publish('OrderShipped', '{"orderId": 3}', 'order-3',
                     '{"tenant": "acme", "x-request": "42"}',
                     now() + interval '1 hour') IS NOT NULL AS staged;
SELECT headers, deliver_at > now() AS deferred
  FROM evbus.outbox WHERE payload->>'orderId' = '3';

-- the session's trace context travels with the events it stages
SET evbus.traceparent = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01';
SELECT evbus.publish('OrderShipped', '{"orderId": 4}') IS NOT NULL AS staged;
RESET evbus.traceparent;
SELECT traceparent FROM evbus.outbox WHERE payload->>'orderId' = '4';
SET evbus.traceparent = E'bad\nvalue';

-- rolled back: nothing staged
BEGIN;
SELECT evbus.publish('OrderShipped', '{"orderId": 5}') IS NOT NULL AS staged;
ROLLBACK;

-- rolled back subtransaction: its event goes, the rest stays
BEGIN;
SELECT evbus.publish('OrderShipped', '{"orderId": 6}') IS NOT NULL AS staged;
SAVEPOINT s;
SELECT evbus.publish('OrderShipped', '{"orderId": 7}') IS NOT NULL AS staged;
ROLLBACK TO SAVEPOINT s;
COMMIT;

-- two-phase commit: ROLLBACK PREPARED stages nothing, COMMIT PREPARED does
BEGIN;
SELECT evbus.publish('OrderShipped', '{"orderId": 8}') IS NOT NULL AS staged;
PREPARE TRANSACTION 'evbus_rollback';
ROLLBACK PREPARED 'evbus_rollback';
BEGIN;
SELECT evbus.publish('OrderShipped', '{"orderId": 9}') IS NOT NULL AS staged;
PREPARE TRANSACTION 'evbus_commit';
COMMIT PREPARED 'evbus_commit';

SELECT array_agg((payload->>'orderId')::int ORDER BY id) AS staged_orders FROM evbus.outbox;

-- staging keeps its lock on the outbox table till the transaction ends, as
-- an INSERT does: the worker's TRUNCATE of a rotated-out table must wait
-- for rows that are not committed yet
BEGIN;
SELECT evbus.publish('OrderShipped', '{"orderId": 10}') IS NOT NULL AS staged;
SELECT count(*) AS outbox_locks FROM pg_locks
 WHERE pid = pg_backend_pid() AND locktype = 'relation' AND mode = 'RowExclusiveLock'
   AND relation IN ('evbus.outbox_0'::regclass, 'evbus.outbox_1'::regclass);
ROLLBACK;

-- message ids: version 7, RFC 4122 variant, distinct in their random bits
-- (2,000 of them draw on several pools of random bytes)
BEGIN;
CREATE TEMP TABLE ids AS
  SELECT n, evbus.publish('OrderShipped', jsonb_build_object('n', n)) AS id
  FROM generate_series(1, 2000) n;
SELECT count(DISTINCT id) AS distinct_ids,
       bool_and(substr(id::text, 15, 1) = '7') AS version_7,
       bool_and(substr(id::text, 20, 1) IN ('8', '9', 'a', 'b')) AS variant,
       count(DISTINCT substr(id::text, 20, 17)) AS distinct_random_parts
  FROM ids;
ROLLBACK;

-- ids are strictly increasing in staging order
SELECT bool_and(id > prev) AS ordered
  FROM (SELECT id, lag(id) OVER (ORDER BY staged_at, id) AS prev FROM evbus.outbox) s
 WHERE prev IS NOT NULL;

-- stats: staged = published + dead + pending
SELECT side, topic, staged, published, dead, pending, oldest_pending_age IS NOT NULL AS has_age
  FROM evbus.stats ORDER BY topic;

-- retry of an unknown message id
SELECT evbus.retry('00000000-0000-0000-0000-000000000000');

DELETE FROM evbus.outbox_0;
DELETE FROM evbus.outbox_1;

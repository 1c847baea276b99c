-- handlers subscribe to integration events, per consumer group.  A
-- subscription belongs to the role that subscribes it (never a superuser),
-- the handler runs as that role, and the role owns the handler (or is a
-- member of its owner)
CREATE ROLE evbus_subscriber;
GRANT USAGE ON SCHEMA evbus TO evbus_subscriber;
GRANT CREATE ON SCHEMA public TO evbus_subscriber;
GRANT EXECUTE ON FUNCTION evbus.subscribe(text, regprocedure, text, integer),
                          evbus.unsubscribe(text, regprocedure, text)
   TO evbus_subscriber;
SET ROLE evbus_subscriber;
CREATE TABLE received (payload jsonb, headers jsonb);
CREATE PROCEDURE on_order(payload jsonb, headers jsonb) LANGUAGE sql
	AS $$ INSERT INTO public.received VALUES (payload, headers) $$;
CREATE FUNCTION on_order_payload_only(payload jsonb) RETURNS void LANGUAGE sql
	AS $$ INSERT INTO public.received VALUES (payload, NULL) $$;

-- the default group is evbus.group_name, or the database name
SELECT evbus.subscribe('OrderCreated', 'on_order(jsonb, jsonb)');
SELECT evbus.subscribe('OrderCreated', 'on_order_payload_only(jsonb)', 'audit', 3);
RESET ROLE;
-- the handler is kept as its qualified signature
SELECT integration_event, group_name, handler, is_procedure, takes_headers,
       run_as, max_retries
  FROM evbus.subscriptions ORDER BY group_name;

-- subscribing again updates the subscription
SET ROLE evbus_subscriber;
SELECT evbus.subscribe('OrderCreated', 'on_order_payload_only(jsonb)', 'audit', 5);
RESET ROLE;
SELECT group_name, max_retries FROM evbus.subscriptions WHERE group_name = 'audit';

-- unsubscribe: true when it existed
SET ROLE evbus_subscriber;
SELECT evbus.unsubscribe('OrderCreated', 'on_order_payload_only(jsonb)', 'audit');
SELECT evbus.unsubscribe('OrderCreated', 'on_order_payload_only(jsonb)', 'audit');
RESET ROLE;
SELECT count(*) FROM evbus.subscriptions;

-- wrong handlers are refused at subscribe time
SET ROLE evbus_subscriber;
CREATE FUNCTION wrong_args(payload text) RETURNS void LANGUAGE sql AS $$ SELECT $$;
CREATE FUNCTION three_args(a jsonb, b jsonb, c jsonb) RETURNS void LANGUAGE sql AS $$ SELECT $$;
CREATE FUNCTION second_not_jsonb(a jsonb, b text) RETURNS void LANGUAGE sql AS $$ SELECT $$;
CREATE FUNCTION set_returning(a jsonb) RETURNS SETOF int LANGUAGE sql AS $$ SELECT 1 $$;
SELECT evbus.subscribe('OrderCreated', 'wrong_args(text)');
SELECT evbus.subscribe('OrderCreated', 'three_args(jsonb, jsonb, jsonb)');
SELECT evbus.subscribe('OrderCreated', 'second_not_jsonb(jsonb, text)');
SELECT evbus.subscribe('OrderCreated', 'set_returning(jsonb)');
SELECT evbus.subscribe('OrderCreated', 'no_such_handler(jsonb)');
SELECT evbus.subscribe('bad topic', 'on_order(jsonb, jsonb)');
SELECT evbus.subscribe('OrderCreated', 'on_order(jsonb, jsonb)', 'bad group');
SELECT evbus.subscribe('OrderCreated', 'on_order(jsonb, jsonb)', NULL, -1);
SELECT evbus.subscribe(NULL, 'on_order(jsonb, jsonb)');
-- the batch form: (payloads jsonb[], headers jsonb[]), both arrays
CREATE FUNCTION half_batch(a jsonb[], b jsonb) RETURNS void LANGUAGE sql AS $$ SELECT $$;
CREATE FUNCTION payloads_only(a jsonb[]) RETURNS void LANGUAGE sql AS $$ SELECT $$;
CREATE PROCEDURE on_orders(payloads jsonb[], headers jsonb[]) LANGUAGE sql AS $$ SELECT $$;
SELECT evbus.subscribe('OrderCreated', 'half_batch(jsonb[], jsonb)');
SELECT evbus.subscribe('OrderCreated', 'payloads_only(jsonb[])');
SELECT evbus.subscribe('OrderCreated', 'on_orders(jsonb[], jsonb[])', 'batched');
RESET ROLE;
SELECT handler, is_procedure, takes_headers FROM evbus.subscriptions WHERE group_name = 'batched';
SET ROLE evbus_subscriber;
SELECT evbus.unsubscribe('OrderCreated', 'on_orders(jsonb[], jsonb[])', 'batched');
RESET ROLE;

-- a handler runs as the role that subscribed it; that role must be allowed
-- to execute it, and own it or be a member of its owner
CREATE ROLE evbus_consumer_role;
GRANT USAGE ON SCHEMA evbus TO evbus_consumer_role;
GRANT EXECUTE ON FUNCTION evbus.subscribe(text, regprocedure, text, integer),
                          evbus.unsubscribe(text, regprocedure, text)
   TO evbus_consumer_role;
CREATE FUNCTION private_handler(payload jsonb) RETURNS void LANGUAGE sql AS $$ SELECT $$;
REVOKE ALL ON FUNCTION private_handler(jsonb) FROM PUBLIC;
SET ROLE evbus_consumer_role;
SELECT evbus.subscribe('OrderCreated', 'private_handler(jsonb)');
SELECT evbus.subscribe('OrderCreated', 'on_order_payload_only(jsonb)', 'limited');
RESET ROLE;
GRANT evbus_subscriber TO evbus_consumer_role;
SET ROLE evbus_consumer_role;
SELECT evbus.subscribe('OrderCreated', 'on_order_payload_only(jsonb)', 'limited');
RESET ROLE;
SELECT group_name, run_as FROM evbus.subscriptions WHERE group_name = 'limited';
-- without EXECUTE on evbus.subscribe, nothing
CREATE ROLE evbus_nobody;
SET ROLE evbus_nobody;
SELECT evbus.subscribe('OrderCreated', 'on_order(jsonb, jsonb)');
RESET ROLE;

-- the consumer worker runs next to the publishing one
DO $$
BEGIN
	FOR i IN 1..100 LOOP
		EXIT WHEN evbus.consumer_pid() IS NOT NULL;
		PERFORM pg_sleep(0.05);
	END LOOP;
END $$;
SELECT backend_type FROM pg_stat_activity WHERE pid = evbus.consumer_pid();

SET ROLE evbus_consumer_role;
SELECT evbus.unsubscribe('OrderCreated', 'on_order_payload_only(jsonb)', 'limited');
RESET ROLE;
SET ROLE evbus_subscriber;
SELECT evbus.unsubscribe('OrderCreated', 'on_order(jsonb, jsonb)');
RESET ROLE;
DROP TABLE received;
DROP ROUTINE on_order(jsonb, jsonb), on_order_payload_only(jsonb), wrong_args(text),
              three_args(jsonb, jsonb, jsonb), second_not_jsonb(jsonb, text),
              set_returning(jsonb), private_handler(jsonb), half_batch(jsonb[], jsonb),
              payloads_only(jsonb[]), on_orders(jsonb[], jsonb[]);
REVOKE ALL ON SCHEMA evbus FROM evbus_consumer_role, evbus_subscriber;
REVOKE ALL ON SCHEMA public FROM evbus_subscriber;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA evbus FROM evbus_consumer_role, evbus_subscriber;
DROP ROLE evbus_consumer_role, evbus_subscriber, evbus_nobody;

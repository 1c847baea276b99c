-- converters turn domain events into integration events
CREATE FUNCTION order_created_to_integration(payload jsonb) RETURNS jsonb
LANGUAGE sql AS $$
	SELECT jsonb_build_object('orderId', payload->'id', 'total', payload->'total')
$$;
CREATE FUNCTION order_created_to_audit(payload jsonb) RETURNS jsonb
LANGUAGE sql AS $$
	SELECT jsonb_build_object('what', 'order created', 'id', payload->'id')
$$;
-- NULL means: emit nothing for this event
CREATE FUNCTION only_big_orders(payload jsonb) RETURNS jsonb
LANGUAGE sql AS $$
	SELECT CASE WHEN (payload->>'total')::numeric >= 100
	            THEN jsonb_build_object('orderId', payload->'id') END
$$;

SELECT evbus.register_converter('OrderCreatedDomainEvent', 'OrderCreatedIntegrationEvent',
                                'order_created_to_integration(jsonb)');
SELECT domain_event, integration_event, converter, registered_by = current_user AS by_me
  FROM evbus.converters;

-- one converter: one event, returns 1
SELECT evbus.raise('OrderCreatedDomainEvent', '{"id": 10, "total": 25}', 'order-10');
SELECT integration_event, event_key, payload, domain_event FROM evbus.outbox ORDER BY id;

-- fan-out: every converter of a domain event runs
SELECT evbus.register_converter('OrderCreatedDomainEvent', 'OrderAudited',
                                'order_created_to_audit(jsonb)');
SELECT evbus.register_converter('OrderCreatedDomainEvent', 'BigOrderPlaced',
                                'only_big_orders(jsonb)');
SELECT evbus.raise('OrderCreatedDomainEvent', '{"id": 11, "total": 5}', 'order-11');
SELECT evbus.raise('OrderCreatedDomainEvent', '{"id": 12, "total": 500}', 'order-12');
SELECT integration_event, event_key, payload FROM evbus.outbox
 WHERE domain_event = 'OrderCreatedDomainEvent' AND event_key <> 'order-10'
 ORDER BY id;

-- re-registering a pair replaces its converter
SELECT evbus.register_converter('OrderCreatedDomainEvent', 'OrderAudited',
                                'order_created_to_integration(jsonb)');
SELECT integration_event, converter FROM evbus.converters ORDER BY integration_event;

-- unregister: true when it existed, false otherwise
SELECT evbus.unregister_converter('OrderCreatedDomainEvent', 'OrderAudited');
SELECT evbus.unregister_converter('OrderCreatedDomainEvent', 'OrderAudited');
SELECT evbus.unregister_converter('OrderCreatedDomainEvent', 'BigOrderPlaced');
SELECT evbus.raise('OrderCreatedDomainEvent', '{"id": 13, "total": 500}');

-- a converter error aborts the caller's transaction: nothing is staged
CREATE FUNCTION failing_converter(payload jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
	RAISE EXCEPTION 'cannot convert order %', payload->>'id';
END $$;
SELECT evbus.register_converter('OrderCancelledDomainEvent', 'OrderCancelled',
                                'failing_converter(jsonb)');
CREATE TABLE orders (id int PRIMARY KEY, state text);
BEGIN;
INSERT INTO orders VALUES (1, 'cancelled');
SELECT evbus.raise('OrderCancelledDomainEvent', '{"id": 1}');
COMMIT;
SELECT count(*) AS orders FROM orders;
SELECT count(*) AS cancelled_events FROM evbus.outbox WHERE integration_event = 'OrderCancelled';

-- a dropped converter function is reported clearly
CREATE FUNCTION soon_dropped(payload jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT payload $$;
SELECT evbus.register_converter('ShortLived', 'ShortLivedIntegration', 'soon_dropped(jsonb)');
DROP FUNCTION soon_dropped(jsonb);
SELECT evbus.raise('ShortLived', '{}');
SELECT evbus.unregister_converter('ShortLived', 'ShortLivedIntegration');

-- a converter replaced while a session uses it: the next raise runs the new body
CREATE FUNCTION versioned(payload jsonb) RETURNS jsonb LANGUAGE sql
AS $$ SELECT jsonb_build_object('version', 1) $$;
SELECT evbus.register_converter('Versioned', 'VersionedIntegration', 'versioned(jsonb)');
SELECT evbus.raise('Versioned', '{}');
CREATE OR REPLACE FUNCTION versioned(payload jsonb) RETURNS jsonb LANGUAGE sql
AS $$ SELECT jsonb_build_object('version', 2) $$;
SELECT evbus.raise('Versioned', '{}');
-- ... and so does a replaced function that the converter calls
CREATE FUNCTION version_number() RETURNS int LANGUAGE sql AS $$ SELECT 3 $$;
CREATE OR REPLACE FUNCTION versioned(payload jsonb) RETURNS jsonb LANGUAGE sql
AS $$ SELECT jsonb_build_object('version', public.version_number()) $$;
SELECT evbus.raise('Versioned', '{}');
CREATE OR REPLACE FUNCTION version_number() RETURNS int LANGUAGE sql AS $$ SELECT 4 $$;
SELECT evbus.raise('Versioned', '{}');
-- a converter runs with search_path = pg_catalog, pg_temp, whatever the
-- raising session's: the session cannot put its own functions in place of
-- the ones the converter names (qualify them) ...
CREATE SCHEMA other_versions;
CREATE FUNCTION other_versions.version_number() RETURNS int LANGUAGE sql AS $$ SELECT 5 $$;
SET search_path = other_versions, public;
SELECT evbus.raise('Versioned', '{}');
RESET search_path;
SELECT evbus.raise('Versioned', '{}');
SELECT payload FROM evbus.outbox WHERE integration_event = 'VersionedIntegration' ORDER BY id;
-- ... and an unqualified name of a function outside pg_catalog is not found
CREATE FUNCTION unqualified(payload jsonb) RETURNS jsonb LANGUAGE sql
AS $$ SELECT jsonb_build_object('version', version_number()) $$;
SELECT evbus.register_converter('Unqualified', 'UnqualifiedIntegration', 'unqualified(jsonb)');
SELECT evbus.raise('Unqualified', '{}');
SELECT evbus.unregister_converter('Unqualified', 'UnqualifiedIntegration');

-- a converter that raises a domain event itself
CREATE FUNCTION order_shipped(payload jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
	PERFORM evbus.raise('ParcelCreatedDomainEvent', payload || '{"parcel": true}');
	RETURN jsonb_build_object('shipped', payload->'id');
END $$;
CREATE FUNCTION parcel_created(payload jsonb) RETURNS jsonb LANGUAGE sql
AS $$ SELECT jsonb_build_object('parcelOf', payload->'id') $$;
SELECT evbus.register_converter('OrderShippedDomainEvent', 'OrderShipped', 'order_shipped(jsonb)');
SELECT evbus.register_converter('ParcelCreatedDomainEvent', 'ParcelCreated', 'parcel_created(jsonb)');
SELECT evbus.raise('OrderShippedDomainEvent', '{"id": 7}');
SELECT evbus.raise('OrderShippedDomainEvent', '{"id": 8}');
SELECT integration_event, payload FROM evbus.outbox
 WHERE integration_event IN ('OrderShipped', 'ParcelCreated') ORDER BY id;

SELECT integration_event, count(*) FROM evbus.outbox GROUP BY 1 ORDER BY 1;

DELETE FROM evbus.outbox_0;
DELETE FROM evbus.outbox_1;

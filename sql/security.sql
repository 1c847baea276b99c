-- an application role gets only what it is granted
CREATE ROLE evbus_app LOGIN;
CREATE ROLE evbus_outsider LOGIN;
GRANT USAGE ON SCHEMA evbus TO evbus_app, evbus_outsider;
GRANT EXECUTE ON FUNCTION evbus.publish(text, jsonb, text, jsonb, timestamptz),
                          evbus.raise(text, jsonb, text),
                          evbus.register_converter(text, text, regprocedure)
   TO evbus_app;

CREATE FUNCTION public.app_converter(payload jsonb) RETURNS jsonb
LANGUAGE sql AS $$ SELECT jsonb_build_object('by', current_user, 'p', payload) $$;
CREATE FUNCTION public.private_converter(payload jsonb) RETURNS jsonb
LANGUAGE sql AS $$ SELECT payload $$;
REVOKE ALL ON FUNCTION public.private_converter(jsonb) FROM PUBLIC;

SET ROLE evbus_app;
-- staging works without any grant on evbus's tables
SELECT evbus.publish('AppEvent', '{"n": 1}') IS NOT NULL AS staged;
SELECT evbus.register_converter('AppDomain', 'AppIntegration', 'public.app_converter(jsonb)');
-- the converter runs as the role that raises the event
SELECT evbus.raise('AppDomain', '{"n": 2}');
-- but the tables stay closed
SELECT count(*) FROM evbus.outbox_0;
SELECT count(*) FROM evbus.converters;
INSERT INTO evbus.outbox_0 (id, message_id, integration_event, payload, staged_at)
VALUES (-1, gen_random_uuid(), 'Forged', '{}', now());
-- a converter the role may not execute cannot be registered
SELECT evbus.register_converter('AppDomain', 'Private', 'public.private_converter(jsonb)');
RESET ROLE;

-- a role without EXECUTE cannot stage at all
SET ROLE evbus_outsider;
SELECT evbus.publish('AppEvent', '{}');
SELECT evbus.raise('AppDomain', '{}');
SELECT evbus.register_converter('X', 'Y', 'public.app_converter(jsonb)');
SELECT evbus.retry('00000000-0000-0000-0000-000000000000');
RESET ROLE;

-- a converter registered by evbus_app but raised by someone whose
-- EXECUTE was revoked fails with a permission error
REVOKE EXECUTE ON FUNCTION public.app_converter(jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION evbus.raise(text, jsonb, text) TO evbus_outsider;
SET ROLE evbus_outsider;
SELECT evbus.raise('AppDomain', '{}');
RESET ROLE;

-- the functions a converter calls are checked for the role that raises,
-- even when the same session ran the converter as another role before,
-- and again after a REVOKE
CREATE FUNCTION public.secret_stamp() RETURNS text LANGUAGE sql AS $$ SELECT 'stamped' $$;
REVOKE ALL ON FUNCTION public.secret_stamp() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.secret_stamp() TO evbus_app;
CREATE FUNCTION public.stamping_converter(payload jsonb) RETURNS jsonb
LANGUAGE sql AS $$ SELECT jsonb_build_object('stamp', public.secret_stamp()) $$;
SELECT evbus.register_converter('Stamped', 'StampedIntegration', 'public.stamping_converter(jsonb)');
SELECT evbus.raise('Stamped', '{}');
SET ROLE evbus_outsider;
SELECT evbus.raise('Stamped', '{}');
RESET ROLE;
SET ROLE evbus_app;
SELECT evbus.raise('Stamped', '{}');
RESET ROLE;
REVOKE EXECUTE ON FUNCTION public.secret_stamp() FROM evbus_app;
SET ROLE evbus_app;
SELECT evbus.raise('Stamped', '{}');
RESET ROLE;
SELECT evbus.unregister_converter('Stamped', 'StampedIntegration');

SELECT integration_event, payload, registered_by
  FROM evbus.outbox o LEFT JOIN evbus.converters c USING (integration_event)
 ORDER BY id;

DELETE FROM evbus.outbox_0;
DELETE FROM evbus.outbox_1;
SELECT evbus.unregister_converter('AppDomain', 'AppIntegration');
REVOKE ALL ON SCHEMA evbus FROM evbus_app, evbus_outsider;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA evbus FROM evbus_app, evbus_outsider;
DROP FUNCTION public.app_converter(jsonb), public.private_converter(jsonb),
              public.stamping_converter(jsonb), public.secret_stamp();
DROP ROLE evbus_app, evbus_outsider;

-- subscriptions: a subscription belongs to the role that subscribed it
-- (never a superuser); its handler must be owned by that role or a role it
-- is a member of
CREATE ROLE evbus_team;
CREATE ROLE evbus_bob IN ROLE evbus_team;
CREATE ROLE evbus_mallory IN ROLE evbus_team;
GRANT USAGE ON SCHEMA evbus TO evbus_team;
GRANT CREATE ON SCHEMA public TO evbus_team;
GRANT EXECUTE ON FUNCTION evbus.subscribe(text, regprocedure, text, integer),
                          evbus.unsubscribe(text, regprocedure, text)
   TO evbus_team;
SET ROLE evbus_team;
CREATE FUNCTION public.team_handler(payload jsonb) RETURNS void LANGUAGE sql AS $$ SELECT $$;
SET ROLE evbus_bob;
CREATE FUNCTION public.bob_handler(payload jsonb) RETURNS void LANGUAGE sql AS $$ SELECT $$;
SELECT evbus.subscribe('Paid', 'public.team_handler(jsonb)', 'billing');
RESET ROLE;
-- a superuser cannot subscribe: its handler would run as a superuser
SELECT evbus.subscribe('Paid', 'public.team_handler(jsonb)', 'superusers');
\echo :LAST_ERROR_SQLSTATE
-- mallory cannot take over, change or remove bob's subscription
SET ROLE evbus_mallory;
SELECT evbus.subscribe('Paid', 'public.team_handler(jsonb)', 'billing');
\echo :LAST_ERROR_SQLSTATE
SELECT evbus.subscribe('Paid', 'public.team_handler(jsonb)', 'billing', 0);
\echo :LAST_ERROR_SQLSTATE
SELECT evbus.unsubscribe('Paid', 'public.team_handler(jsonb)', 'billing');
\echo :LAST_ERROR_SQLSTATE
-- nor subscribe a handler owned by bob: bob could make it act as mallory
SELECT evbus.subscribe('Paid', 'public.bob_handler(jsonb)', 'mallorys');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
-- a subscribed handler cannot be dropped, nor can a role that
-- subscriptions run as
DROP FUNCTION public.team_handler(jsonb);
\echo :LAST_ERROR_SQLSTATE
DROP ROLE evbus_bob;
\echo :LAST_ERROR_SQLSTATE
SELECT group_name, handler, run_as FROM evbus.subscriptions WHERE integration_event = 'Paid';
SET ROLE evbus_bob;
SELECT evbus.unsubscribe('Paid', 'public.team_handler(jsonb)', 'billing');
RESET ROLE;
DROP FUNCTION public.team_handler(jsonb), public.bob_handler(jsonb);
REVOKE ALL ON SCHEMA evbus, public FROM evbus_team;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA evbus FROM evbus_team;
DROP ROLE evbus_bob, evbus_mallory, evbus_team;

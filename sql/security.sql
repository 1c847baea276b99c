-- an application role gets only what it is granted
CREATE ROLE evbus_app LOGIN;
CREATE ROLE evbus_outsider LOGIN;
GRANT USAGE ON SCHEMA evbus TO evbus_app, evbus_outsider;
GRANT EXECUTE ON FUNCTION evbus.publish(text, jsonb, text, jsonb, timestamptz),
                          evbus.raise(text, jsonb, text),
                          evbus.register_converter(text, text, regprocedure),
                          evbus.unregister_converter(text, text)
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
-- the converter runs as the role that registered it (here also the one
-- that raises)
SELECT evbus.raise('AppDomain', '{"n": 2}');
-- but the tables stay closed
SELECT count(*) FROM evbus.outbox_0;
SELECT count(*) FROM evbus.converters;
INSERT INTO evbus.outbox_0 (id, message_id, integration_event, payload, staged_at)
VALUES (-1, gen_random_uuid(), 'Forged', '{}', now());
-- a converter the role may not execute cannot be registered
SELECT evbus.register_converter('AppDomain', 'Private', 'public.private_converter(jsonb)');
RESET ROLE;

-- a pair belongs to the role that registered it: another role can neither
-- replace nor unregister it (a converter runs as its registrant, so taking
-- over a pair would run the new owner's code for the old one's events)
CREATE ROLE evbus_rival LOGIN;
GRANT USAGE ON SCHEMA evbus TO evbus_rival;
GRANT EXECUTE ON FUNCTION evbus.register_converter(text, text, regprocedure),
                          evbus.unregister_converter(text, text)
   TO evbus_rival;
SET ROLE evbus_rival;
SELECT evbus.register_converter('AppDomain', 'AppIntegration', 'public.app_converter(jsonb)');
\echo :LAST_ERROR_SQLSTATE
SELECT evbus.unregister_converter('AppDomain', 'AppIntegration');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;

-- a function that belongs to another role (not a superuser, not one the
-- registrant is a member of) cannot be registered: its owner could
-- redefine it and run code as the registrant
CREATE FUNCTION public.rival_converter(payload jsonb) RETURNS jsonb
LANGUAGE sql AS $$ SELECT payload $$;
ALTER FUNCTION public.rival_converter(jsonb) OWNER TO evbus_rival;
SET ROLE evbus_app;
SELECT evbus.register_converter('AppDomain', 'Rival', 'public.rival_converter(jsonb)');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
-- ... and a registered one is refused when called once it belongs to such
-- a role: the raising transaction fails
ALTER FUNCTION public.app_converter(jsonb) OWNER TO evbus_rival;
SELECT evbus.raise('AppDomain', '{"n": 3}');
\echo :LAST_ERROR_SQLSTATE
ALTER FUNCTION public.app_converter(jsonb) OWNER TO CURRENT_USER;

-- a converter runs as a security-restricted operation, with search_path
-- pg_catalog, pg_temp, and no setting it changes outlives it
CREATE FUNCTION public.meddling_converter(payload jsonb) RETURNS jsonb
LANGUAGE sql AS $$
	SELECT jsonb_build_object('user', current_user,
	                          'search_path', current_setting('search_path'),
	                          'set', set_config('search_path', 'evbus_app_schema', false),
	                          'set_local', set_config('work_mem', '77kB', true))
$$;
SET ROLE evbus_app;
SELECT evbus.register_converter('Meddling', 'MeddlingIntegration', 'public.meddling_converter(jsonb)');
RESET ROLE;
BEGIN;
SELECT evbus.raise('Meddling', '{}');
SHOW search_path;
SHOW work_mem;
COMMIT;
SELECT payload FROM evbus.outbox WHERE integration_event = 'MeddlingIntegration';
CREATE FUNCTION public.temp_table_converter(payload jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
	CREATE TEMP TABLE converter_scratch (n int);
	RETURN payload;
END $$;
SET ROLE evbus_app;
SELECT evbus.register_converter('Scratch', 'ScratchIntegration', 'public.temp_table_converter(jsonb)');
RESET ROLE;
SELECT evbus.raise('Scratch', '{}');
\echo :LAST_ERROR_SQLSTATE
SET ROLE evbus_app;
SELECT evbus.unregister_converter('Meddling', 'MeddlingIntegration');
SELECT evbus.unregister_converter('Scratch', 'ScratchIntegration');
RESET ROLE;
DELETE FROM evbus.outbox_0 WHERE integration_event = 'MeddlingIntegration';
DELETE FROM evbus.outbox_1 WHERE integration_event = 'MeddlingIntegration';
REVOKE ALL ON SCHEMA evbus FROM evbus_rival;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA evbus FROM evbus_rival;
DROP FUNCTION public.rival_converter(jsonb), public.meddling_converter(jsonb),
              public.temp_table_converter(jsonb);
DROP ROLE evbus_rival;

-- a role without EXECUTE cannot stage at all
SET ROLE evbus_outsider;
SELECT evbus.publish('AppEvent', '{}');
SELECT evbus.raise('AppDomain', '{}');
SELECT evbus.register_converter('X', 'Y', 'public.app_converter(jsonb)');
SELECT evbus.retry('00000000-0000-0000-0000-000000000000');
RESET ROLE;

-- EXECUTE on a converter is checked for the role that registered it,
-- whoever raises: revoked from PUBLIC, evbus_app (its registrant) no
-- longer has it and raising fails; granted to evbus_app, a role that may
-- not execute the converter itself raises the event
REVOKE EXECUTE ON FUNCTION public.app_converter(jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION evbus.raise(text, jsonb, text) TO evbus_outsider;
SET ROLE evbus_outsider;
SELECT evbus.raise('AppDomain', '{}');
RESET ROLE;
GRANT EXECUTE ON FUNCTION public.app_converter(jsonb) TO evbus_app;
SET ROLE evbus_outsider;
SELECT evbus.raise('AppDomain', '{"n": 4}');
RESET ROLE;

-- the functions a converter calls are checked for the role that
-- registered it, whoever raises, and again after a REVOKE
CREATE FUNCTION public.secret_stamp() RETURNS text LANGUAGE sql AS $$ SELECT 'stamped' $$;
REVOKE ALL ON FUNCTION public.secret_stamp() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.secret_stamp() TO evbus_app;
CREATE FUNCTION public.stamping_converter(payload jsonb) RETURNS jsonb
LANGUAGE sql AS $$ SELECT jsonb_build_object('stamp', public.secret_stamp()) $$;
SET ROLE evbus_app;
SELECT evbus.register_converter('Stamped', 'StampedIntegration', 'public.stamping_converter(jsonb)');
SELECT evbus.raise('Stamped', '{}');
RESET ROLE;
SELECT evbus.raise('Stamped', '{}');
SET ROLE evbus_outsider;
SELECT evbus.raise('Stamped', '{}');
RESET ROLE;
REVOKE EXECUTE ON FUNCTION public.secret_stamp() FROM evbus_app;
SELECT evbus.raise('Stamped', '{}');
SET ROLE evbus_app;
SELECT evbus.raise('Stamped', '{}');
SELECT evbus.unregister_converter('Stamped', 'StampedIntegration');
RESET ROLE;

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

-- DROP DATABASE by a role that does not own the database is refused by
-- PostgreSQL (42501) and leaves the database's evbus workers alone: evbus
-- stops them only for a drop that will proceed
CREATE ROLE evbus_dropper LOGIN;
SELECT evbus.publisher_pid() AS worker_before \gset
SELECT current_database() AS this_db \gset
SET ROLE evbus_dropper;
DROP DATABASE :"this_db";
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
SELECT pg_sleep(0.5);
SELECT evbus.publisher_pid() = :worker_before AS worker_undisturbed;
DROP ROLE evbus_dropper;

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

-- message chains: evbus.message_chain reads the inbox and the outbox with
-- the caller's privileges and is not granted to PUBLIC, so a role with
-- USAGE on the schema cannot follow other roles' messages; granted
-- EXECUTE alone, it still reads no table
CREATE ROLE evbus_tracer;
GRANT USAGE ON SCHEMA evbus TO evbus_tracer;
SET ROLE evbus_tracer;
SELECT * FROM evbus.message_chain('01890a5d-ac96-774b-bcce-b302099a8057');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
GRANT EXECUTE ON FUNCTION evbus.message_chain(text) TO evbus_tracer;
SET ROLE evbus_tracer;
SELECT * FROM evbus.message_chain('01890a5d-ac96-774b-bcce-b302099a8057');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
-- the extension's owner follows it (an id this database never saw: no rows)
SELECT count(*) FROM evbus.message_chain('01890a5d-ac96-774b-bcce-b302099a8057');
REVOKE ALL ON FUNCTION evbus.message_chain(text) FROM evbus_tracer;
REVOKE ALL ON SCHEMA evbus FROM evbus_tracer;
DROP ROLE evbus_tracer;

-- repair in bulk: evbus.retry by filter, evbus.discard and
-- evbus.edit_dead_letter are granted to nobody, nor are evbus.failures
-- and evbus.repair_log.  An edited payload runs in the handler as the
-- role that subscribed it, or is published as this database's: a role
-- granted EXECUTE on evbus.edit_dead_letter alone still edits neither.
CREATE ROLE evbus_repair_team;
CREATE ROLE evbus_repair_hostile;
GRANT USAGE ON SCHEMA evbus TO evbus_repair_team, evbus_repair_hostile;
GRANT CREATE, USAGE ON SCHEMA public TO evbus_repair_team;
GRANT EXECUTE ON FUNCTION evbus.subscribe(text, regprocedure, text, integer),
                          evbus.unsubscribe(text, regprocedure, text)
   TO evbus_repair_team;
SET ROLE evbus_repair_team;
CREATE FUNCTION public.refund_handler(payload jsonb) RETURNS void
LANGUAGE sql AS $$ SELECT $$;
SELECT evbus.subscribe('Refund', 'public.refund_handler(jsonb)', 'billing');
RESET ROLE;
INSERT INTO evbus.dead_letters (message_id, direction, integration_event, group_name,
                                handler, payload, error_code, error_message)
VALUES ('01890a5d-ac96-774b-bcce-b302099a8001', 'consume', 'Refund', 'billing',
        'public.refund_handler(pg_catalog.jsonb)', '{"amount": 5}', 'EV001', 'refused'),
       ('01890a5d-ac96-774b-bcce-b302099a8002', 'publish', 'Refund', NULL,
        NULL, '{"amount": 7}', 'MSG_SIZE_TOO_LARGE', 'too large');
SET ROLE evbus_repair_hostile;
SELECT evbus.retry(match_all => true);
\echo :LAST_ERROR_SQLSTATE
SELECT evbus.discard(reason => 'mine now', match_all => true);
\echo :LAST_ERROR_SQLSTATE
SELECT evbus.discard('01890a5d-ac96-774b-bcce-b302099a8001', 'mine now');
\echo :LAST_ERROR_SQLSTATE
SELECT evbus.edit_dead_letter('01890a5d-ac96-774b-bcce-b302099a8001', '{"amount": -500}');
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM evbus.failures;
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM evbus.repair_log;
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
GRANT EXECUTE ON FUNCTION evbus.edit_dead_letter(text, jsonb, regprocedure, text, text)
   TO evbus_repair_hostile;
SET ROLE evbus_repair_hostile;
-- the consume side one would run in evbus_repair_team's handler
SELECT evbus.edit_dead_letter('01890a5d-ac96-774b-bcce-b302099a8001', '{"amount": -500}');
\echo :LAST_ERROR_SQLSTATE
-- the publish side one would be published, as only evbus.publish may
-- (terse: the hint names the extension owner, whose name varies)
\set VERBOSITY terse
SELECT evbus.edit_dead_letter('01890a5d-ac96-774b-bcce-b302099a8002', '{"amount": -500}');
\echo :LAST_ERROR_SQLSTATE
\set VERBOSITY default
RESET ROLE;
-- bad input, as the extension owner
SELECT evbus.retry();
\echo :LAST_ERROR_SQLSTATE
SELECT evbus.retry(side => 'both');
\echo :LAST_ERROR_SQLSTATE
SELECT evbus.discard('01890a5d-ac96-774b-bcce-b302099a8001', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT evbus.edit_dead_letter('01890a5d-ac96-774b-bcce-b302099a8001', '"just text"');
\echo :LAST_ERROR_SQLSTATE
SELECT evbus.edit_dead_letter('no-such-message', '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT message_id, payload FROM evbus.dead_letters ORDER BY id;
-- the extension owner may edit and discard; both leave audit rows
SELECT evbus.edit_dead_letter('01890a5d-ac96-774b-bcce-b302099a8001', '{"amount": 50}',
                              reason => 'decimal point');
SELECT evbus.discard(integration_event => 'Refund', reason => 'test rows');
SELECT action, message_id, direction, payload, new_payload, reason FROM evbus.repair_log ORDER BY id;
SELECT count(*) FROM evbus.dead_letters;
DELETE FROM evbus.repair_log;
SET ROLE evbus_repair_team;
SELECT evbus.unsubscribe('Refund', 'public.refund_handler(jsonb)', 'billing');
RESET ROLE;
DROP FUNCTION public.refund_handler(jsonb);
REVOKE ALL ON SCHEMA evbus, public FROM evbus_repair_team;
REVOKE ALL ON SCHEMA evbus FROM evbus_repair_hostile;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA evbus FROM evbus_repair_team, evbus_repair_hostile;
DROP ROLE evbus_repair_team, evbus_repair_hostile;
-- pause, resume, replay: none is granted to PUBLIC.  A subscription
-- belongs to the role it runs as: that role, or a member of it, may
-- pause, resume and replay it, never another role (42501, the hint names
-- the owner).  Publishing has no owner: EXECUTE on the functions decides.
CREATE ROLE evbus_shipper;
CREATE ROLE evbus_intruder;
GRANT USAGE ON SCHEMA evbus TO evbus_shipper, evbus_intruder;
GRANT CREATE ON SCHEMA public TO evbus_shipper;
GRANT EXECUTE ON FUNCTION evbus.subscribe(text, regprocedure, text, integer),
                          evbus.unsubscribe(text, regprocedure, text)
   TO evbus_shipper;
SET ROLE evbus_shipper;
CREATE FUNCTION public.ship_handler(payload jsonb) RETURNS void LANGUAGE sql AS $$ SELECT $$;
SELECT evbus.subscribe('Shipped', 'public.ship_handler(jsonb)', 'shipping');
-- not granted to PUBLIC
SELECT evbus.pause_subscription('Shipped', NULL, 'shipping');
\echo :LAST_ERROR_SQLSTATE
SELECT evbus.replay('Shipped', 'shipping', from_offset => 0);
\echo :LAST_ERROR_SQLSTATE
SELECT evbus.pause_publishing('Shipped');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
GRANT EXECUTE ON FUNCTION evbus.pause_subscription(text, regprocedure, text),
                          evbus.resume_subscription(text, regprocedure, text),
                          evbus.replay(text, text, timestamptz, bigint, boolean)
   TO evbus_shipper, evbus_intruder;
-- the owner pauses its subscription
SET ROLE evbus_shipper;
SELECT evbus.pause_subscription('Shipped', 'public.ship_handler(jsonb)', 'shipping');
-- another role may neither resume nor replay it
SET ROLE evbus_intruder;
SELECT evbus.resume_subscription('Shipped', NULL, 'shipping');
\echo :LAST_ERROR_SQLSTATE
SELECT evbus.replay('Shipped', 'shipping', from_offset => 0, rerun => true);
\echo :LAST_ERROR_SQLSTATE
-- an unknown group or event
SELECT evbus.pause_subscription('Shipped', NULL, 'nowhere');
\echo :LAST_ERROR_SQLSTATE
SELECT evbus.replay('NeverSubscribed', 'shipping', from_offset => 0);
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
SELECT handler, paused_at IS NOT NULL AS paused FROM evbus.subscriptions
 WHERE integration_event = 'Shipped';
-- arguments that make no sense
SET ROLE evbus_shipper;
SELECT evbus.replay('Shipped', 'shipping', now(), 0);
\echo :LAST_ERROR_SQLSTATE
SELECT evbus.replay('Shipped', 'shipping');
\echo :LAST_ERROR_SQLSTATE
SELECT evbus.replay('Shipped', 'shipping', from_offset => -1);
\echo :LAST_ERROR_SQLSTATE
SELECT evbus.replay('Shipped', 'shipping', from_offset => 0, rerun => NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT evbus.pause_subscription(NULL);
\echo :LAST_ERROR_SQLSTATE
-- the owner resumes and replays its subscription
SELECT evbus.resume_subscription('Shipped', NULL, 'shipping');
SELECT evbus.replay('Shipped', 'shipping', from_offset => 0, rerun => true) > 0 AS asked;
RESET ROLE;
SELECT group_name, integration_event, from_time, from_offset, rerun, requested_by
  FROM evbus.replays;
-- publishing: an event this database does not know; one it knows
SELECT evbus.pause_publishing('NeverStaged');
\echo :LAST_ERROR_SQLSTATE
BEGIN;
SELECT evbus.publish('Shipped', '{"parcel": 1}') IS NOT NULL AS staged;
SELECT evbus.pause_publishing('Shipped');
SELECT evbus.pause_publishing('Shipped') AS paused_again;
SELECT integration_event, paused_by = current_user AS by_me FROM evbus.publishing_pauses;
SELECT evbus.resume_publishing('Shipped');
SELECT evbus.resume_publishing('Shipped') AS resumed_again;
ROLLBACK;
DELETE FROM evbus.replays;
SET ROLE evbus_shipper;
SELECT evbus.unsubscribe('Shipped', 'public.ship_handler(jsonb)', 'shipping');
RESET ROLE;
DROP FUNCTION public.ship_handler(jsonb);
REVOKE ALL ON SCHEMA evbus, public FROM evbus_shipper, evbus_intruder;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA evbus FROM evbus_shipper, evbus_intruder;
DROP ROLE evbus_shipper, evbus_intruder;
-- metrics: evbus.metrics() is granted to pg_monitor only, as evbus.stats
-- is; a role with USAGE on the schema alone may not read it, nor the
-- message counts evbus.stats reads (evbus.inbox_messages)
CREATE ROLE evbus_watcher;
GRANT USAGE ON SCHEMA evbus TO evbus_watcher;
SET ROLE evbus_watcher;
SELECT count(*) FROM evbus.metrics();
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM evbus.inbox_messages;
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
GRANT pg_monitor TO evbus_watcher;
SET ROLE evbus_watcher;
SELECT count(*) >= 0 AS readable FROM evbus.metrics();
SELECT count(*) >= 0 AS readable FROM evbus.stats;
RESET ROLE;
REVOKE ALL ON SCHEMA evbus FROM evbus_watcher;
DROP ROLE evbus_watcher;

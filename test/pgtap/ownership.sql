/*
 * ownership.sql - pgTAP: converters and subscriptions belong to the role
 * that made them.  A converter runs as the role that registered it and a
 * handler as the role that subscribed it, so another role must not be
 * able to replace or remove either (42501, the hint names the owner), a
 * function of another role must not become one (its owner could redefine
 * it and run code as the registrant), and a superuser cannot subscribe
 * (its handler would run as a superuser).  A subscribed handler and a
 * role that subscriptions run as cannot be dropped (2BP01).  Runs in a
 * transaction that it rolls back.
 */
BEGIN;
SELECT plan(27);

--------------------------------------------------------------------------
-- converters
--------------------------------------------------------------------------

CREATE ROLE evbus_pgtap_alice;
CREATE ROLE evbus_pgtap_deputy IN ROLE evbus_pgtap_alice;
CREATE ROLE evbus_pgtap_rival;
GRANT USAGE ON SCHEMA evbus TO evbus_pgtap_alice, evbus_pgtap_rival;
GRANT EXECUTE ON FUNCTION evbus.register_converter(text, text, regprocedure),
					  evbus.unregister_converter(text, text),
					  evbus.raise(text, jsonb, text)
	TO evbus_pgtap_alice, evbus_pgtap_rival;
CREATE FUNCTION public.pgtap_converter(payload jsonb) RETURNS jsonb
	LANGUAGE sql AS $$ SELECT payload $$;
CREATE FUNCTION public.pgtap_rival_converter(payload jsonb) RETURNS jsonb
	LANGUAGE sql AS $$ SELECT payload $$;
ALTER FUNCTION public.pgtap_rival_converter(jsonb) OWNER TO evbus_pgtap_rival;
CREATE FUNCTION public.pgtap_private_converter(payload jsonb) RETURNS jsonb
	LANGUAGE sql AS $$ SELECT payload $$;
REVOKE ALL ON FUNCTION public.pgtap_private_converter(jsonb) FROM PUBLIC;

SET ROLE evbus_pgtap_alice;
SELECT lives_ok($$SELECT evbus.register_converter('PgtapDomain', 'PgtapIntegration', 'public.pgtap_converter(jsonb)')$$,
				'a role registers a converter');
SELECT throws_ok($$SELECT * FROM evbus.converters$$, '42501', NULL,
				 'the registrant cannot read evbus.converters: only the API writes it');
SELECT throws_ok($$SELECT evbus.register_converter('PgtapDomain', 'PgtapRival', 'public.pgtap_rival_converter(jsonb)')$$,
				 '42501', NULL,
				 'a function that belongs to another role cannot be registered');
SELECT throws_ok($$SELECT evbus.register_converter('PgtapDomain', 'PgtapPrivate', 'public.pgtap_private_converter(jsonb)')$$,
				 '42501', NULL,
				 'a function the registrant may not execute cannot be registered');
RESET ROLE;
SELECT is((SELECT registered_by::text FROM evbus.converters
		   WHERE domain_event = 'PgtapDomain' AND integration_event = 'PgtapIntegration'),
		  'evbus_pgtap_alice', 'the converter belongs to the role that registered it');

SET ROLE evbus_pgtap_rival;
SELECT throws_ok($$SELECT evbus.register_converter('PgtapDomain', 'PgtapIntegration', 'public.pgtap_converter(jsonb)')$$,
				 '42501', NULL,
				 'another role cannot replace the converter');
SELECT throws_like($$SELECT evbus.register_converter('PgtapDomain', 'PgtapIntegration', 'public.pgtap_converter(jsonb)')$$,
				   '%belongs to role "evbus_pgtap_alice"%',
				   'the refusal names the owner');
SELECT throws_ok($$SELECT evbus.unregister_converter('PgtapDomain', 'PgtapIntegration')$$,
				 '42501', NULL,
				 'another role cannot unregister the converter');
RESET ROLE;

-- a registered converter given to another role since is refused when
-- it runs: the raising transaction fails
ALTER FUNCTION public.pgtap_converter(jsonb) OWNER TO evbus_pgtap_rival;
SET ROLE evbus_pgtap_alice;
SELECT throws_ok($$SELECT evbus.raise('PgtapDomain', '{}')$$, '42501', NULL,
				 'a converter that now belongs to another role is refused when raised');
RESET ROLE;
ALTER FUNCTION public.pgtap_converter(jsonb) OWNER TO CURRENT_USER;
SET ROLE evbus_pgtap_alice;
SELECT is(evbus.raise('PgtapDomain', '{}'), 1, 'the owner raises the domain event through its converter');
RESET ROLE;

-- a role with the owner's privileges may replace it, and the pair is then
-- its own
SET ROLE evbus_pgtap_deputy;
SELECT lives_ok($$SELECT evbus.register_converter('PgtapDomain', 'PgtapIntegration', 'public.pgtap_converter(jsonb)')$$,
				'a member of the owning role replaces the converter');
RESET ROLE;
SELECT is((SELECT registered_by::text FROM evbus.converters
		   WHERE domain_event = 'PgtapDomain' AND integration_event = 'PgtapIntegration'),
		  'evbus_pgtap_deputy', 'the replaced converter belongs to the role that replaced it');
SET ROLE evbus_pgtap_deputy;
SELECT is(evbus.unregister_converter('PgtapDomain', 'PgtapIntegration'), true,
		  'the owner unregisters the converter');
SELECT is(evbus.unregister_converter('PgtapDomain', 'PgtapIntegration'), false,
		  'unregistering a converter that is not there returns false');
RESET ROLE;

--------------------------------------------------------------------------
-- subscriptions
--------------------------------------------------------------------------

CREATE ROLE evbus_pgtap_team;
CREATE ROLE evbus_pgtap_bob IN ROLE evbus_pgtap_team;
CREATE ROLE evbus_pgtap_mallory IN ROLE evbus_pgtap_team;
GRANT USAGE ON SCHEMA evbus TO evbus_pgtap_team;
GRANT EXECUTE ON FUNCTION evbus.subscribe(text, regprocedure, text, integer),
					  evbus.unsubscribe(text, regprocedure, text)
	TO evbus_pgtap_team;
CREATE FUNCTION public.pgtap_team_handler(payload jsonb) RETURNS void
	LANGUAGE sql AS $$ SELECT $$;
ALTER FUNCTION public.pgtap_team_handler(jsonb) OWNER TO evbus_pgtap_team;
CREATE FUNCTION public.pgtap_bob_handler(payload jsonb) RETURNS void
	LANGUAGE sql AS $$ SELECT $$;
ALTER FUNCTION public.pgtap_bob_handler(jsonb) OWNER TO evbus_pgtap_bob;

SET ROLE evbus_pgtap_bob;
SELECT lives_ok($$SELECT evbus.subscribe('PgtapPaid', 'public.pgtap_team_handler(jsonb)', 'pgtap')$$,
				'a role subscribes a handler owned by a role it is a member of');
RESET ROLE;
SELECT is((SELECT run_as::text FROM evbus.subscriptions
		   WHERE integration_event = 'PgtapPaid' AND group_name = 'pgtap'),
		  'evbus_pgtap_bob', 'the subscription runs as (and belongs to) the role that subscribed it');

SELECT throws_ok($$SELECT evbus.subscribe('PgtapPaid', 'public.pgtap_team_handler(jsonb)', 'pgtap_superusers')$$,
				 '42501', NULL,
				 'a superuser cannot subscribe');

SET ROLE evbus_pgtap_mallory;
SELECT throws_ok($$SELECT evbus.subscribe('PgtapPaid', 'public.pgtap_team_handler(jsonb)', 'pgtap')$$,
				 '42501', NULL,
				 'another role cannot take over the subscription');
SELECT throws_ok($$SELECT evbus.subscribe('PgtapPaid', 'public.pgtap_team_handler(jsonb)', 'pgtap', 0)$$,
				 '42501', NULL,
				 'another role cannot change the subscription');
SELECT throws_ok($$SELECT evbus.unsubscribe('PgtapPaid', 'public.pgtap_team_handler(jsonb)', 'pgtap')$$,
				 '42501', NULL,
				 'another role cannot remove the subscription');
SELECT throws_like($$SELECT evbus.unsubscribe('PgtapPaid', 'public.pgtap_team_handler(jsonb)', 'pgtap')$$,
				   '%to PgtapPaid in group pgtap%',
				   'the refusal names the subscription');
SELECT throws_ok($$SELECT evbus.subscribe('PgtapPaid', 'public.pgtap_bob_handler(jsonb)', 'pgtap_mallory')$$,
				 '42501', NULL,
				 'a handler owned by another role cannot be subscribed');
RESET ROLE;

SELECT throws_ok($$DROP FUNCTION public.pgtap_team_handler(jsonb)$$, '2BP01', NULL,
				 'a subscribed handler cannot be dropped');
SELECT throws_ok($$DROP ROLE evbus_pgtap_bob$$, '2BP01', NULL,
				 'a role that subscriptions run as cannot be dropped');

SET ROLE evbus_pgtap_bob;
SELECT is(evbus.unsubscribe('PgtapPaid', 'public.pgtap_team_handler(jsonb)', 'pgtap'), true,
		  'the owner unsubscribes');
SELECT is(evbus.unsubscribe('PgtapPaid', 'public.pgtap_team_handler(jsonb)', 'pgtap'), false,
		  'unsubscribing what is not subscribed returns false');
RESET ROLE;
SELECT lives_ok($$DROP FUNCTION public.pgtap_team_handler(jsonb)$$,
				'an unsubscribed handler can be dropped');

SELECT * FROM finish();
ROLLBACK;

/*
 * errors.sql - pgTAP: the SQLSTATE of each misuse of the API.  Callers
 * (and their retry logic) branch on these codes, so they are part of the
 * contract; sql/misuse.sql keeps the readable transcript of the messages.
 * Runs in a transaction that it rolls back.
 */
BEGIN;
SELECT plan(61);

CREATE FUNCTION public.pgtap_identity(payload jsonb) RETURNS jsonb
	LANGUAGE sql AS $$ SELECT payload $$;
CREATE FUNCTION public.pgtap_text_converter(payload text) RETURNS text
	LANGUAGE sql AS $$ SELECT payload $$;
CREATE FUNCTION public.pgtap_two_args(a jsonb, b jsonb) RETURNS jsonb
	LANGUAGE sql AS $$ SELECT a $$;
CREATE FUNCTION public.pgtap_set_converter(payload jsonb) RETURNS SETOF jsonb
	LANGUAGE sql AS $$ SELECT payload $$;
CREATE PROCEDURE public.pgtap_proc_converter(payload jsonb)
	LANGUAGE sql AS $$ SELECT 1 $$;
CREATE FUNCTION public.pgtap_array_converter(payload jsonb) RETURNS jsonb
	LANGUAGE sql AS $$ SELECT '[1, 2]'::jsonb $$;
CREATE FUNCTION public.pgtap_scalar_converter(payload jsonb) RETURNS jsonb
	LANGUAGE sql AS $$ SELECT '42'::jsonb $$;
CREATE FUNCTION public.pgtap_handler(payload jsonb, headers jsonb) RETURNS void
	LANGUAGE sql AS $$ SELECT $$;
CREATE FUNCTION public.pgtap_bad_handler(payload text) RETURNS void
	LANGUAGE sql AS $$ SELECT $$;
CREATE FUNCTION public.pgtap_three_args(a jsonb, b jsonb, c jsonb) RETURNS void
	LANGUAGE sql AS $$ SELECT $$;
CREATE FUNCTION public.pgtap_set_handler(a jsonb) RETURNS SETOF integer
	LANGUAGE sql AS $$ SELECT 1 $$;
CREATE TABLE public.pgtap_rows (id text, body text);

-- evbus.register_converter
SELECT throws_ok($$SELECT evbus.register_converter('D', 'I', 'public.no_such_function(jsonb)')$$,
				 '42883', NULL, 'register_converter: unknown converter function (42883)');
SELECT throws_ok($$SELECT evbus.register_converter('D', 'I', 'public.pgtap_text_converter(text)')$$,
				 '42P13', NULL, 'register_converter: converter (text) RETURNS text (42P13)');
SELECT throws_ok($$SELECT evbus.register_converter('D', 'I', 'public.pgtap_two_args(jsonb, jsonb)')$$,
				 '42P13', NULL, 'register_converter: converter with two arguments (42P13)');
SELECT throws_ok($$SELECT evbus.register_converter('D', 'I', 'public.pgtap_set_converter(jsonb)')$$,
				 '42P13', NULL, 'register_converter: set-returning converter (42P13)');
SELECT throws_ok($$SELECT evbus.register_converter('D', 'I', 'public.pgtap_proc_converter(jsonb)')$$,
				 '42P13', NULL, 'register_converter: a procedure as converter (42P13)');
SELECT throws_ok($$SELECT evbus.register_converter('ok', 'not/ok', 'public.pgtap_identity(jsonb)')$$,
				 '42602', NULL, 'register_converter: invalid integration event name (42602)');
SELECT ok(evbus.register_converter('D', 'I', NULL) IS NULL
		  AND NOT EXISTS (SELECT FROM evbus.converters WHERE domain_event = 'D'),
		  'register_converter is STRICT: a NULL argument does nothing');

-- evbus.raise
SELECT throws_ok($$SELECT evbus.raise('PgtapNobodyRegisteredThis', '{}')$$,
				 '42704', NULL, 'raise: unknown domain event (42704)');
SELECT evbus.register_converter('PgtapArray', 'PgtapArrayIntegration', 'public.pgtap_array_converter(jsonb)');
SELECT evbus.register_converter('PgtapScalar', 'PgtapScalarIntegration', 'public.pgtap_scalar_converter(jsonb)');
SELECT evbus.register_converter('PgtapBig', 'PgtapBigIntegration', 'public.pgtap_identity(jsonb)');
SELECT throws_ok($$SELECT evbus.raise('PgtapArray', '{}')$$,
				 '22023', NULL, 'raise: converter result is an array, not an object (22023)');
SELECT throws_ok($$SELECT evbus.raise('PgtapScalar', '{}')$$,
				 '22023', NULL, 'raise: converter result is a scalar, not an object (22023)');
SELECT throws_ok($$SELECT evbus.raise(NULL, '{}')$$,
				 '22004', NULL, 'raise: NULL domain event (22004)');
SELECT throws_ok($$SELECT evbus.raise('PgtapBig', NULL)$$,
				 '22004', NULL, 'raise: NULL payload (22004)');
SELECT throws_ok($$SELECT evbus.raise('PgtapBig', jsonb_build_object('blob', repeat('x', 999980)), repeat('k', 10))$$,
				 '54000', NULL, 'raise: payload + key over evbus.max_message_bytes (54000)');
SELECT throws_ok($$SET TRANSACTION READ ONLY; SELECT evbus.raise('PgtapBig', '{}')$$,
				 '25006', NULL, 'raise: read-only transaction (25006)');

-- evbus.publish
SELECT throws_ok($$SELECT evbus.publish('Thing', '[1]')$$,
				 '22023', NULL, 'publish: payload is an array (22023)');
SELECT throws_ok($$SELECT evbus.publish('Thing', '"text"')$$,
				 '22023', NULL, 'publish: payload is a string (22023)');
SELECT throws_ok($$SELECT evbus.publish(NULL, '{}')$$,
				 '22004', NULL, 'publish: NULL integration event (22004)');
SELECT throws_ok($$SELECT evbus.publish('Thing', NULL)$$,
				 '22004', NULL, 'publish: NULL payload (22004)');
SELECT throws_ok($$SELECT evbus.publish('Big', jsonb_build_object('blob', repeat('x', 1000000)))$$,
				 '54000', NULL, 'publish: payload over evbus.max_message_bytes (54000)');
SELECT throws_ok($$SELECT evbus.publish('Big', jsonb_build_object('blob', repeat(E'\u0001', 200000)))$$,
				 '54000', NULL, 'publish: escapes count towards evbus.max_message_bytes (54000)');
SELECT throws_ok($$SELECT evbus.publish('Big', '{}', repeat('k', 1000001))$$,
				 '54000', NULL, 'publish: key over evbus.max_message_bytes (54000)');
SELECT throws_ok($$SELECT evbus.publish('Big', jsonb_build_object('blob', repeat('x', 999980)), NULL, jsonb_build_object('h', repeat('v', 9)))$$,
				 '54000', NULL, 'publish: payload + headers over evbus.max_message_bytes (54000)');
SELECT throws_ok($$SELECT evbus.publish('', '{}')$$,
				 '42602', NULL, 'publish: empty integration event name (42602)');
SELECT throws_ok($$SELECT evbus.publish('has space', '{}')$$,
				 '42602', NULL, 'publish: integration event name with a space (42602)');
SELECT throws_ok($$SELECT evbus.publish('..', '{}')$$,
				 '42602', NULL, 'publish: integration event name ".." (42602)');
SELECT throws_ok($$SELECT evbus.publish('ünïcode', '{}')$$,
				 '42602', NULL, 'publish: non-ASCII integration event name (42602)');
SELECT throws_ok($$SELECT evbus.publish(repeat('a', 250), '{}')$$,
				 '42622', NULL, 'publish: integration event name too long for a topic (42622)');
SELECT throws_ok($$SELECT evbus.publish('Thing', '{}', NULL, '["a"]')$$,
				 '22023', NULL, 'publish: headers not an object (22023)');
SELECT throws_ok($$SELECT evbus.publish('Thing', '{}', NULL, '{"n": 1}')$$,
				 '22023', NULL, 'publish: header value not a string (22023)');
SELECT throws_ok($$SELECT evbus.publish('Thing', '{}', NULL, '{"cap-msg-id": "forged"}')$$,
				 '22023', NULL, 'publish: reserved header cap-msg-id (22023)');
SELECT throws_ok($$SELECT evbus.publish('Thing', '{}', NULL, '{"Evbus-Source": "forged"}')$$,
				 '22023', NULL, 'publish: reserved header evbus-source, any case (22023)');
SELECT throws_ok($$SELECT evbus.publish('Thing', '{}', NULL, '{"traceparent": "x"}')$$,
				 '22023', NULL, 'publish: reserved header traceparent (22023)');
SELECT throws_ok($$SELECT evbus.publish('Thing', '{}', NULL, '{"": "x"}')$$,
				 '22023', NULL, 'publish: empty header name (22023)');
SELECT throws_ok($$SET TRANSACTION READ ONLY; SELECT evbus.publish('Thing', '{}')$$,
				 '25006', NULL, 'publish: read-only transaction (25006)');

-- evbus.capture
CREATE TABLE public.pgtap_notes (body text);
SELECT throws_ok($$CREATE TRIGGER pgtap_before BEFORE INSERT ON public.pgtap_notes
					FOR EACH ROW EXECUTE FUNCTION evbus.capture('PgtapBig');
				   INSERT INTO public.pgtap_notes VALUES ('before')$$,
				 '39P01', NULL, 'capture: a BEFORE trigger (39P01)');
SELECT throws_ok($$CREATE TRIGGER pgtap_statement AFTER INSERT ON public.pgtap_notes
					FOR EACH STATEMENT EXECUTE FUNCTION evbus.capture('PgtapBig');
				   INSERT INTO public.pgtap_notes VALUES ('statement')$$,
				 '39P01', NULL, 'capture: a statement trigger (39P01)');
SELECT throws_ok($$CREATE TRIGGER pgtap_noargs AFTER INSERT ON public.pgtap_notes
					FOR EACH ROW EXECUTE FUNCTION evbus.capture();
				   INSERT INTO public.pgtap_notes VALUES ('no args')$$,
				 '39P01', NULL, 'capture: no domain event argument (39P01)');
SELECT throws_ok($$CREATE TRIGGER pgtap_badkey AFTER INSERT ON public.pgtap_notes
					FOR EACH ROW EXECUTE FUNCTION evbus.capture('PgtapBig', 'no_such_column');
				   INSERT INTO public.pgtap_notes VALUES ('bad key')$$,
				 '42703', NULL, 'capture: unknown key column (42703)');
SELECT throws_ok($$CREATE TRIGGER pgtap_unknown AFTER INSERT ON public.pgtap_notes
					FOR EACH ROW EXECUTE FUNCTION evbus.capture('PgtapNobodyConvertsThis');
				   INSERT INTO public.pgtap_notes VALUES ('unknown')$$,
				 '42704', NULL, 'capture: unknown domain event (42704)');
SELECT throws_ok($$SELECT evbus.capture()$$,
				 '39P01', NULL, 'capture: called other than as a trigger (39P01)');
SELECT throws_ok($$CREATE TRIGGER pgtap_capture AFTER INSERT ON public.pgtap_rows
					FOR EACH ROW EXECUTE FUNCTION evbus.capture('PgtapBig', 'id');
				   INSERT INTO public.pgtap_rows VALUES (repeat('k', 400000), repeat('x', 300000))$$,
				 '54000', NULL, 'capture: captured row over evbus.max_message_bytes (54000)');

-- evbus.subscribe and evbus.unsubscribe, as a role that may subscribe (a
-- superuser may not) and owns the handlers
CREATE ROLE evbus_pgtap_subscriber;
GRANT USAGE ON SCHEMA evbus TO evbus_pgtap_subscriber;
GRANT EXECUTE ON FUNCTION evbus.subscribe(text, regprocedure, text, integer),
					  evbus.unsubscribe(text, regprocedure, text)
	TO evbus_pgtap_subscriber;
ALTER FUNCTION public.pgtap_handler(jsonb, jsonb) OWNER TO evbus_pgtap_subscriber;
ALTER FUNCTION public.pgtap_bad_handler(text) OWNER TO evbus_pgtap_subscriber;
ALTER FUNCTION public.pgtap_three_args(jsonb, jsonb, jsonb) OWNER TO evbus_pgtap_subscriber;
ALTER FUNCTION public.pgtap_set_handler(jsonb) OWNER TO evbus_pgtap_subscriber;
SET ROLE evbus_pgtap_subscriber;
SELECT throws_ok($$SELECT evbus.subscribe('PgtapOrder', 'public.no_such_handler(jsonb)')$$,
				 '42883', NULL, 'subscribe: unknown handler (42883)');
SELECT throws_ok($$SELECT evbus.subscribe('PgtapOrder', 'public.pgtap_bad_handler(text)')$$,
				 '42P13', NULL, 'subscribe: handler (text) (42P13)');
SELECT throws_ok($$SELECT evbus.subscribe('PgtapOrder', 'public.pgtap_three_args(jsonb, jsonb, jsonb)')$$,
				 '42P13', NULL, 'subscribe: handler with three arguments (42P13)');
SELECT throws_ok($$SELECT evbus.subscribe('PgtapOrder', 'public.pgtap_set_handler(jsonb)')$$,
				 '42P13', NULL, 'subscribe: set-returning handler (42P13)');
SELECT throws_ok($$SELECT evbus.subscribe('bad topic', 'public.pgtap_handler(jsonb, jsonb)')$$,
				 '42602', NULL, 'subscribe: invalid integration event name (42602)');
SELECT throws_ok($$SELECT evbus.subscribe('PgtapOrder', 'public.pgtap_handler(jsonb, jsonb)', 'bad group')$$,
				 '42602', NULL, 'subscribe: invalid consumer group name (42602)');
SELECT throws_ok($$SELECT evbus.subscribe('PgtapOrder', 'public.pgtap_handler(jsonb, jsonb)', NULL, -1)$$,
				 '22023', NULL, 'subscribe: negative max_retries (22023)');
SELECT throws_ok($$SELECT evbus.subscribe(NULL, 'public.pgtap_handler(jsonb, jsonb)')$$,
				 '22004', NULL, 'subscribe: NULL integration event (22004)');
SELECT throws_ok($$SELECT evbus.unsubscribe(NULL, 'public.pgtap_handler(jsonb, jsonb)')$$,
				 '22004', NULL, 'unsubscribe: NULL integration event (22004)');
SELECT throws_ok($$SELECT evbus.unsubscribe('PgtapOrder', NULL)$$,
				 '22004', NULL, 'unsubscribe: NULL handler (22004)');
RESET ROLE;

-- evbus.retry
SELECT is(evbus.retry('pgtap-no-such-message'), false, 'retry(text): an unknown message id returns false');
SELECT is(evbus.retry('00000000-0000-0000-0000-000000000000'::uuid), false,
		  'retry(uuid): an unknown message id returns false');
SELECT throws_ok($$SELECT evbus.retry('not a uuid'::uuid)$$,
				 '22P02', NULL, 'retry(uuid): not a uuid (22P02)');

-- the settings that reach the network cannot be changed by a session
SELECT throws_ok($$SET evbus.brokers = 'evil.example.com:9092'$$,
				 '55P02', NULL, 'SET evbus.brokers in a session (55P02)');
SELECT throws_ok($$SET evbus.topic_prefix = 'x'$$,
				 '55P02', NULL, 'SET evbus.topic_prefix in a session (55P02)');
SELECT throws_ok($$SET evbus.kafka_config_file = '/tmp/x'$$,
				 '55P02', NULL, 'SET evbus.kafka_config_file in a session (55P02)');
SELECT throws_ok($$SET evbus.no_such_setting = 1$$,
				 '42602', NULL, 'the prefix evbus. is reserved: an unknown setting is refused (42602)');

-- the functions that only report never fail for lack of workers
SELECT lives_ok($$SELECT evbus.brokers(), evbus.publisher_pid(), evbus.consumer_pid()$$,
				'brokers(), publisher_pid(), consumer_pid() answer');
SELECT lives_ok($$SELECT * FROM evbus.worker_status()$$, 'worker_status() answers');

-- nothing was staged by the refused calls
SELECT is((SELECT pg_catalog.count(*)::integer FROM evbus.outbox), 0,
		  'no refused call staged anything');

SELECT * FROM finish();
ROLLBACK;

-- CREATE EXTENSION creates the schema and starts this database's worker
CREATE EXTENSION evbus;

SELECT extname, extversion, extrelocatable FROM pg_extension WHERE extname = 'evbus';
SELECT nspname FROM pg_namespace WHERE nspname = 'evbus';

-- the worker starts within a second of COMMIT
DO $$
BEGIN
	FOR i IN 1..100 LOOP
		EXIT WHEN evbus.publisher_pid() IS NOT NULL;
		PERFORM pg_sleep(0.05);
	END LOOP;
END $$;
SELECT evbus.publisher_pid() IS NOT NULL AS worker_running;
SELECT backend_type FROM pg_stat_activity WHERE pid = evbus.publisher_pid();

-- empty evbus.brokers: publishing is paused and no broker is in use
SHOW evbus.brokers;
SELECT evbus.brokers() IS NULL AS paused;

-- settings and their defaults
SELECT name, setting, unit, context FROM pg_settings
 WHERE name LIKE 'evbus.%' ORDER BY name;

-- the prefix is reserved: a typo is refused, not silently accepted
SET evbus.no_such_setting = 1;

-- nothing that writes is executable by PUBLIC, no table is readable by it
SELECT p.proname, has_function_privilege('public', p.oid, 'EXECUTE') AS public_can_execute
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = 'evbus' ORDER BY p.proname;
SELECT c.relname, has_table_privilege('public', c.oid, 'SELECT') AS public_can_read
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'evbus' AND c.relkind IN ('r', 'v') ORDER BY c.relname;

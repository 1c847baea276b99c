/*
 * evbus--0.1--0.2.sql: ALTER EXTENSION evbus UPDATE from 0.1 to 0.2.
 *
 * evbus--0.1.sql is frozen as released; every schema change since ships
 * here and in evbus--0.2.sql (a fresh install), and the two must give the
 * same schema (test 340_extension_update.pl compares them).
 */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION evbus UPDATE TO '0.2'" to load this file. \quit

-- As in the install scripts, every name is schema-qualified and every
-- operator on user-visible data is written OPERATOR(pg_catalog.op).

--------------------------------------------------------------------------
-- pg_dump and pg_restore: what a dump of the database carries
--------------------------------------------------------------------------

/*
 * evbus's tables belong to the extension, so pg_dump leaves their rows
 * out unless they are marked here.  A dump carries the configuration
 * (converters, subscriptions), the events staged and not yet published,
 * and the consuming side's state (offsets, the inbox that de-duplicates
 * redeliveries, dead letters), with the sequences that number them, so
 * that a restored database publishes what was pending, with the same
 * message ids, and handles nothing twice (test 320_dump_restore.pl).
 *
 * Left out: the ranges of published ids (outbox_published_0/1) and the
 * published rows they cover, which the filter below skips, and the
 * statistics of evbus.publish_counters, which start again from zero, as
 * PostgreSQL's own statistics do after a restore.
 *
 * pg_dump runs with an empty search_path: the filters are qualified.
 * The workers of a database wait while a restore writes its tables
 * (restore.c).
 */
SELECT pg_catalog.pg_extension_config_dump('evbus.converters', '');
SELECT pg_catalog.pg_extension_config_dump('evbus.subscriptions', '');
SELECT pg_catalog.pg_extension_config_dump('evbus.consumer_offsets', '');
SELECT pg_catalog.pg_extension_config_dump('evbus.inbox', '');
SELECT pg_catalog.pg_extension_config_dump('evbus.inbox_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('evbus.dead_letters', '');
SELECT pg_catalog.pg_extension_config_dump('evbus.dead_letters_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('evbus.outbox_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('evbus.outbox_0',
	'WHERE NOT id OPERATOR(pg_catalog.<@) (SELECT COALESCE(pg_catalog.range_agg(pg_catalog.int8range(lo, hi, ''[]'')), ''{}'') FROM evbus.outbox_published_0)');
SELECT pg_catalog.pg_extension_config_dump('evbus.outbox_1',
	'WHERE NOT id OPERATOR(pg_catalog.<@) (SELECT COALESCE(pg_catalog.range_agg(pg_catalog.int8range(lo, hi, ''[]'')), ''{}'') FROM evbus.outbox_published_1)');

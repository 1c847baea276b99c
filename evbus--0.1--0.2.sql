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

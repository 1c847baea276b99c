# 220_handler_role_settings.pl - a handler runs with its role's own
# settings, as a login of that role would.  alice has settings for all
# databases (work_mem, TimeZone) and for this database (TimeZone again,
# search_path): the database's win where both name a setting.  bob has
# none: his handler, run after alice's for the same event, starts from the
# server's settings, not alice's.  carol's settings include one that cannot
# be applied inside a handler (role, refused in a security-restricted
# operation) and one that can: the first is skipped with a WARNING, the
# second applies, and her handler runs.
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;

kafka_bootstrap();
my $prefix = "t220.$$.";
my $group = "t220_$$";
my $node = new_node(
	'rolesettings',
	kafka => 1,
	conf => [ "evbus.topic_prefix = '$prefix'", "evbus.group_name = '$group'", "TimeZone = 'UTC'" ]);
$node->safe_psql('postgres', 'CREATE EXTENSION evbus');

sub sql { return $node->safe_psql('postgres', $_[0]); }

sql(q{
CREATE ROLE alice;
CREATE ROLE bob;
CREATE ROLE carol;
CREATE SCHEMA app;
GRANT USAGE ON SCHEMA evbus TO alice, bob, carol;
GRANT USAGE, CREATE ON SCHEMA app TO alice, bob, carol;
GRANT EXECUTE ON FUNCTION evbus.subscribe(text, regprocedure, text, integer) TO alice, bob, carol;
CREATE TABLE app.seen (id bigint GENERATED ALWAYS AS IDENTITY, handler text, n int, settings text);
GRANT INSERT ON app.seen TO alice, bob, carol;
CREATE FUNCTION app.settings_now() RETURNS text LANGUAGE sql AS $$
	SELECT pg_catalog.concat_ws(' ', pg_catalog.current_setting('TimeZone'),
		pg_catalog.current_setting('work_mem'),
		pg_catalog.replace(pg_catalog.current_setting('search_path'), ' ', ''))
$$;
ALTER ROLE alice SET work_mem = '3MB';
ALTER ROLE alice SET TimeZone = 'Asia/Tokyo';
ALTER ROLE alice IN DATABASE postgres SET TimeZone = 'America/New_York';
ALTER ROLE alice IN DATABASE postgres SET search_path = app, pg_catalog;
ALTER ROLE alice IN DATABASE template1 SET work_mem = '9MB';
ALTER ROLE carol SET role = 'alice';
ALTER ROLE carol SET work_mem = '5MB';

SET ROLE alice;
SET search_path = app, pg_catalog;
CREATE PROCEDURE app.a_reads(payload jsonb) LANGUAGE sql AS $$
	INSERT INTO seen (handler, n, settings)
	VALUES ('a_reads', (payload->>'n')::int, settings_now())
$$;
SELECT evbus.subscribe('RoleSettings', 'app.a_reads(jsonb)');
SET ROLE bob;
CREATE PROCEDURE app.b_reads(payload jsonb) LANGUAGE sql AS $$
	INSERT INTO app.seen (handler, n, settings)
	VALUES ('b_reads', (payload->>'n')::int, app.settings_now())
$$;
SELECT evbus.subscribe('RoleSettings', 'app.b_reads(jsonb)');
SET ROLE carol;
CREATE PROCEDURE app.c_reads(payload jsonb) LANGUAGE sql AS $$
	INSERT INTO app.seen (handler, n, settings)
	VALUES ('c_reads', (payload->>'n')::int, app.settings_now() || ' ' || current_user)
$$;
SELECT evbus.subscribe('RoleSettings', 'app.c_reads(jsonb)');
});

my $work_mem = sql(q{SELECT current_setting('work_mem')});
ok(wait_for_sql($node, 'postgres', q{SELECT evbus.consumer_pid() IS NOT NULL}, 't', 30), 'the consumer runs');
sql(q{SELECT evbus.publish('RoleSettings', '{"n": 1}', 'k')});
ok(wait_for_sql($node, 'postgres', q{SELECT count(*) FROM app.seen WHERE n = 1}, '3', 60), 'event 1: the three handlers ran');
sql(q{SELECT evbus.publish('RoleSettings', '{"n": 2}', 'k')});
ok(wait_for_sql($node, 'postgres', q{SELECT count(*) FROM app.seen WHERE n = 2}, '3', 60), 'event 2: the three handlers ran');

for my $n (1, 2)
{
	is(sql(qq{SELECT settings FROM app.seen WHERE handler = 'a_reads' AND n = $n}),
		'America/New_York 3MB app,pg_catalog',
		"event $n: alice's handler has her settings, this database's winning");
	is(sql(qq{SELECT settings FROM app.seen WHERE handler = 'b_reads' AND n = $n}),
		"UTC $work_mem \"\$user\",public",
		"event $n: bob's handler, run after alice's, starts from the server's settings");
	is(sql(qq{SELECT settings FROM app.seen WHERE handler = 'c_reads' AND n = $n}),
		'UTC 5MB "$user",public carol',
		"event $n: carol's handler runs as carol with the setting that applies");
}
is(sql(q{SELECT count(*) FROM evbus.dead_letters}), '0', 'no dead letter');
my $log = slurp_file($node->logfile);
like($log, qr/WARNING:.*parameter "role"/, 'the setting that cannot apply is a WARNING in the log');

$node->stop;
done_testing();

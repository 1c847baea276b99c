# 218_handler_plan_cache.pl - each subscription runs its own handler,
# however long and alike the handlers' names.  Two procedures in a schema
# whose name is mostly double quotes, their names 55 double quotes and 8
# letters: quoted, their CALL statements are over 190 bytes and alike in
# their first 190.  Each is subscribed to its own event; each event is
# handled by its own procedure, also after the other ran first (the
# prepared statements are cached by the consumer across transactions).
use strict;
use warnings;

use EvbusTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);

kafka_bootstrap();
my $prefix = "t218.$$.";
my $group = "t218_$$";
my $node = new_node(
	'plan_cache',
	kafka => 1,
	conf => [ "evbus.topic_prefix = '$prefix'", "evbus.group_name = '$group'" ]);
$node->safe_psql('postgres', 'CREATE EXTENSION evbus');

sub sql { return $node->safe_psql('postgres', $_[0]); }
sub ident { my ($name) = @_; $name =~ s/"/""/g; return qq{"$name"}; }

my $schema = ident('"' x 40 . 'x');
my $a_name = '"' x 55 . 'aaaaaaaa';
my $b_name = '"' x 55 . 'bbbbbbbb';
is(length($a_name), 63, 'the names are as long as PostgreSQL allows');
cmp_ok(length("CALL $schema." . ident($a_name) . '($1, $2)'), '>', 191, 'the statements are long');

my $as_app = as_subscriber($node);
sql(qq{CREATE SCHEMA $schema AUTHORIZATION evbus_app});
sql($as_app . qq{
CREATE TABLE public.ran (event text, handler text);
CREATE PROCEDURE $schema.@{[ident($a_name)]}(payload jsonb, headers jsonb) LANGUAGE sql
	AS \$\$ INSERT INTO public.ran VALUES (headers->>'cap-msg-name', 'a') \$\$;
CREATE PROCEDURE $schema.@{[ident($b_name)]}(payload jsonb, headers jsonb) LANGUAGE sql
	AS \$\$ INSERT INTO public.ran VALUES (headers->>'cap-msg-name', 'b') \$\$;
SELECT evbus.subscribe(CASE WHEN p.proname LIKE '%a' THEN 'ForA' ELSE 'ForB' END, p.oid::regprocedure)
  FROM pg_proc p WHERE p.proname IN ('} . $a_name =~ s/'/''/gr . qq{', '} . $b_name =~ s/'/''/gr . q{');
});
is(sql(q{SELECT count(*) FROM evbus.subscriptions}), '2', 'both subscribed');

ok(wait_for_sql($node, 'postgres', q{SELECT evbus.consumer_pid() IS NOT NULL}, 't', 30), 'the consumer runs');
sql(q{SELECT evbus.publish('ForA', '{}')});
ok(wait_for_sql($node, 'postgres', q{SELECT count(*) FROM ran}, '1', 60), 'ForA handled');
sql(q{SELECT evbus.publish('ForB', '{}')});
ok(wait_for_sql($node, 'postgres', q{SELECT count(*) FROM ran}, '2', 60), 'ForB handled');
sql(q{SELECT evbus.publish('ForA', '{}')});
ok(wait_for_sql($node, 'postgres', q{SELECT count(*) FROM ran}, '3', 60), 'ForA handled again');
is(sql(q{SELECT string_agg(event || ':' || handler, ',' ORDER BY event, handler) FROM ran}),
	'ForA:a,ForA:a,ForB:b', 'each event ran its own handler');

$node->stop;
done_testing();

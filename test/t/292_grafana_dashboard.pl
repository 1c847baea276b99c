# 292_grafana_dashboard.pl - the shipped monitoring files agree with each
# other and with evbus.metrics().  monitoring/grafana-dashboard.json
# parses, and every metric named in a panel's query is a series that
# monitoring/postgres_exporter.yaml defines (a histogram's _bucket, _sum
# and _count included); every metric the exporter file defines, and every
# metric the alert rules name, is one that evbus.metrics() returns on a
# server whose workers publish and consume.
use strict;
use warnings;

use EvbusTest;
use FindBin;
use JSON::PP;
use PostgreSQL::Test::Utils;
use Test::More;

my $dir = "$FindBin::RealBin/../../monitoring";
$dir = 'monitoring' unless -d $dir;

# --- the exporter file: "<query>:" then "    - <column>:" and "usage:" ---
my (%series, %histograms, $query, $column);
open my $fh, '<', "$dir/postgres_exporter.yaml" or die "postgres_exporter.yaml: $!";
while (my $line = <$fh>)
{
	if ($line =~ /^(\w+):\s*$/) { $query = $1; next; }
	if ($line =~ /^    - (\w+):\s*$/) { $column = $1; next; }
	if ($line =~ /^\s+usage:\s*"(\w+)"/ && $1 ne 'LABEL')
	{
		my $name = "${query}_$column";
		if ($1 eq 'HISTOGRAM')
		{
			$histograms{$name} = 1;
			$series{"${name}_$_"} = 1 for qw(bucket sum count);
		}
		else
		{
			$series{$name} = 1;
		}
	}
}
close $fh;
ok(keys %series >= 10, 'the exporter file defines ' . scalar(keys %series) . ' series');

# --- the dashboard -----------------------------------------------------------
open $fh, '<', "$dir/grafana-dashboard.json" or die "grafana-dashboard.json: $!";
my $json = do { local $/; <$fh> };
close $fh;
my $dashboard = eval { JSON::PP->new->decode($json) };
ok($dashboard, 'the dashboard is JSON') or diag $@;
my @panels = @{ $dashboard->{panels} // [] };
ok(@panels >= 8, scalar(@panels) . ' panels');

# the metric names of a PromQL expression: evbus_... identifiers
sub metric_names
{
	my ($expr) = @_;
	return $expr =~ /\b(evbus_\w+)/g;
}

my %used;
for my $panel (@panels)
{
	my @targets = @{ $panel->{targets} // [] };
	ok(@targets, "panel \"$panel->{title}\" has queries");
	for my $t (@targets)
	{
		my @names = metric_names($t->{expr} // '');
		ok(@names, "panel \"$panel->{title}\" $t->{refId}: its query names a metric");
		for my $name (@names)
		{
			ok($series{$name}, "panel \"$panel->{title}\": $name is an exporter series");
			$used{$name} = 1;
		}
	}
}
for my $var (@{ $dashboard->{templating}{list} // [] })
{
	my $q = ref $var->{query} ? $var->{query}{query} : $var->{query};
	ok($series{$_}, "variable $var->{name}: $_ is an exporter series")
	  for metric_names($q // '');
}

# --- the alert rules ---------------------------------------------------------
open $fh, '<', "$dir/evbus-alerts.yml" or die "evbus-alerts.yml: $!";
my @alert_metrics;
while (my $line = <$fh>)
{
	push @alert_metrics, metric_names($1) if $line =~ /^\s+expr:\s*(.*)$/;
}
close $fh;
ok(@alert_metrics, 'the alert rules name metrics');
ok($series{$_}, "alert rules: $_ is an exporter series") for @alert_metrics;

# --- evbus.metrics() returns each of them ------------------------------------
kafka_bootstrap();
my $prefix = "t292.$$.";
my $node = new_node('dashboard', kafka => 1, conf => ["evbus.topic_prefix = '$prefix'"]);
$node->safe_psql('postgres', 'CREATE EXTENSION evbus');
subscribe_recorder($node, 'Shown');
$node->safe_psql('postgres', q{SELECT evbus.publish('Shown', '{"n": 1}')});
ok(wait_for_sql($node, 'postgres', 'SELECT count(*) FROM received', '1', 120), 'an event went round');
ok(wait_for_sql($node, 'postgres',
		q{SELECT count(*) > 0 FROM evbus.metrics() WHERE metric = 'evbus_consumer_lag'}, 't', 30),
	'the consumer reported its lag');
ok(wait_for_sql($node, 'postgres',
		q{SELECT count(*) > 0 FROM evbus.metrics() WHERE metric = 'evbus_outbox_depth'}, 't', 30),
	'the publisher counted the outbox');
my %returned = map { $_ => 1 } split /\n/,
  $node->safe_psql('postgres', 'SELECT DISTINCT metric FROM evbus.metrics()');
for my $name (sort keys %series)
{
	ok($returned{$name}, "evbus.metrics() returns $name");
}

done_testing();

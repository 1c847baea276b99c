# 290_metrics_exporter.pl - the shipped monitoring files work with the real
# Debian 12 prometheus-postgres-exporter and Prometheus.  The exporter,
# run with monitoring/postgres_exporter.yaml as a role that has only
# pg_monitor, shows evbus's series on its /metrics (a histogram's buckets
# included); Prometheus scrapes them (its HTTP API returns the published
# counter); `promtool check rules` accepts monitoring/evbus-alerts.yml;
# and once the brokers point at a closed port, the broker-down alert
# fires (/api/v1/alerts).  Both programs run directly, on free ports, with
# their own configuration and data directories.  The alert rules are
# loaded from a copy whose "for:" durations are 5 seconds, so that the
# alert can fire within the test; the expressions are the shipped ones.
use strict;
use warnings;

use EvbusTest;
use FindBin;
use HTTP::Tiny;
use IPC::Run;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep time);

my $dir = "$FindBin::RealBin/../../monitoring";
$dir = 'monitoring' unless -d $dir;
my $exporter_bin = '/usr/bin/prometheus-postgres-exporter';
my $prometheus_bin = '/usr/bin/prometheus';
-x $_ or die "$_ is missing: run test/install-deps.sh as root\n"
  for $exporter_bin, $prometheus_bin, '/usr/bin/promtool';

# --- promtool accepts the rules ---------------------------------------------
my ($out, $err) = ('', '');
IPC::Run::run([ 'promtool', 'check', 'rules', "$dir/evbus-alerts.yml" ], '>', \$out, '2>', \$err);
is($? >> 8, 0, 'promtool check rules accepts monitoring/evbus-alerts.yml');
like($out, qr/SUCCESS: \d+ rules found/, 'and finds its rules') or diag "$out$err";

# --- a server that publishes and consumes -------------------------------------
kafka_bootstrap();
my $prefix = "t290.$$.";
my $node = new_node('exporter', kafka => 1, conf => ["evbus.topic_prefix = '$prefix'"]);
$node->safe_psql('postgres', 'CREATE EXTENSION evbus');
$node->safe_psql('postgres', 'CREATE ROLE exporter LOGIN IN ROLE pg_monitor');
subscribe_recorder($node, 'Exported');
$node->safe_psql('postgres',
	q{SELECT evbus.publish('Exported', jsonb_build_object('n', g)) FROM generate_series(1, 5) g});
ok(wait_for_sql($node, 'postgres', 'SELECT count(*) FROM received', '5', 120),
	'five events went round');
ok(wait_for_sql($node, 'postgres',
		q{SELECT value FROM evbus.metrics() WHERE metric = 'evbus_broker_up' AND worker = 'publisher'},
		'1', 30),
	'evbus.metrics() says the broker is up');

# --- the exporter --------------------------------------------------------------
my $tmp = PostgreSQL::Test::Utils::tempdir('monitoring');
my $exporter_port = PostgreSQL::Test::Cluster::get_free_port();
my $dsn = 'host=' . $node->host . ' port=' . $node->port
  . ' user=exporter dbname=postgres sslmode=disable';
local $ENV{DATA_SOURCE_NAME} = $dsn;
my $exporter = IPC::Run::start(
	[
		$exporter_bin, "--web.listen-address=127.0.0.1:$exporter_port",
		"--extend.query-path=$dir/postgres_exporter.yaml",
		'--disable-default-metrics', '--disable-settings-metrics',
		'--no-collector.database', '--no-collector.bgwriter'
	],
	'<', \undef, '>', "$tmp/exporter.log", '2>&1');

my $http = HTTP::Tiny->new(timeout => 10);

# GET url until check(body) holds or timeout seconds passed; the last body
sub poll_http
{
	my ($url, $check, $timeout) = @_;
	my $deadline = time() + $timeout;
	my $body = '';
	while (time() < $deadline)
	{
		my $r = $http->get($url);
		$body = $r->{content} // '';
		return $body if $r->{success} && $check->($body);
		sleep 0.5;
	}
	diag "waited ${timeout}s for $url; last answer:\n" . substr($body, 0, 2000);
	return undef;
}

# the consumer records its lags every 5 s: wait for them too
my $metrics = poll_http("http://127.0.0.1:$exporter_port/metrics",
	sub { $_[0] =~ /^evbus_published_total\{/m && $_[0] =~ /^evbus_consumer_lag\{/m }, 60);
ok($metrics, "the exporter's /metrics has evbus_published_total and the consumer's lag")
  or diag slurp_file("$tmp/exporter.log");
$metrics //= '';
like($metrics, qr/^evbus_published_total\{[^}]*database="postgres"[^}]*\} 5$/m,
	'five events published, labelled with the database');
like($metrics, qr/^evbus_broker_up\{[^}]*worker="publisher"[^}]*\} 1$/m,
	'the broker is up');
like($metrics, qr/^evbus_publish_ack_milliseconds_bucket\{[^}]*le="\+Inf"[^}]*\} 5$/m,
	'the latency histogram has its +Inf bucket');
like($metrics, qr/^evbus_publish_ack_milliseconds_count\{[^}]*\} 5$/m,
	'and its count');
like($metrics, qr/^evbus_handler_milliseconds_bucket\{[^}]*le="1000"/m,
	'the handler histogram has its buckets');
like($metrics, qr/^evbus_consumer_lag\{[^}]*group_name="postgres"/m, 'the consumer lag');
like($metrics, qr/^evbus_outbox_depth\{/m, 'the outbox depth');
unlike($metrics, qr/pg_exporter_last_scrape_error 1/, 'no query of the file failed');

# --- Prometheus, scraping the exporter every second ---------------------------
my $prom_port = PostgreSQL::Test::Cluster::get_free_port();
open my $rules_in, '<', "$dir/evbus-alerts.yml" or die $!;
my $rules = do { local $/; <$rules_in> };
close $rules_in;
$rules =~ s/^(\s+for:) \S+$/$1 5s/mg;
PostgreSQL::Test::Utils::append_to_file("$tmp/alerts.yml", $rules);
PostgreSQL::Test::Utils::append_to_file(
	"$tmp/prometheus.yml", qq{global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - $tmp/alerts.yml
scrape_configs:
  - job_name: evbus
    static_configs:
      - targets: ['127.0.0.1:$exporter_port']
});
my $prometheus = IPC::Run::start(
	[
		$prometheus_bin, "--config.file=$tmp/prometheus.yml",
		"--storage.tsdb.path=$tmp/prometheus-data",
		"--web.listen-address=127.0.0.1:$prom_port"
	],
	'<', \undef, '>', "$tmp/prometheus.log", '2>&1');

my $api = "http://127.0.0.1:$prom_port/api/v1";
my $answer = poll_http("$api/query?query=evbus_published_total",
	sub { $_[0] =~ /"value":\[[\d.]+,"5"\]/ }, 60);
ok($answer, 'Prometheus scraped evbus_published_total = 5')
  or diag slurp_file("$tmp/prometheus.log");
my $loaded = poll_http("$api/rules", sub { $_[0] =~ /EvbusBrokerDown/ }, 30);
ok($loaded, 'Prometheus loaded the alert rules');

# --- the broker is gone: the alert fires ------------------------------------
my $closed = PostgreSQL::Test::Cluster::get_free_port();
$node->append_conf('postgresql.conf', "evbus.brokers = '127.0.0.1:$closed'\n");
$node->reload;
ok(wait_for_sql($node, 'postgres',
		q{SELECT value FROM evbus.metrics() WHERE metric = 'evbus_broker_up' AND worker = 'publisher'},
		'0', 60),
	'evbus.metrics() says no broker is up');
# the EvbusBrokerDown alerts of /api/v1/alerts that are firing
sub firing
{
	my ($body) = @_;
	my $doc = eval { JSON::PP->new->decode($body) } or return ();
	return grep { $_->{labels}{alertname} eq 'EvbusBrokerDown' && $_->{state} eq 'firing' }
	  @{ $doc->{data}{alerts} // [] };
}
my $alerts = poll_http("$api/alerts", sub { scalar firing($_[0]) }, 60);
ok($alerts, 'EvbusBrokerDown is firing');
my @firing = firing($alerts // '{}');
ok((grep { $_->{labels}{database} eq 'postgres' && $_->{labels}{worker} eq 'publisher' } @firing),
	"for the database's publisher");
my $error = $node->safe_psql('postgres',
	q{SELECT error FROM evbus.metrics() WHERE metric = 'evbus_broker_last_error_info' AND worker = 'publisher'});
like($error, qr/127\.0\.0\.1:$closed/, "the last error names the closed broker ($error)");

$prometheus->kill_kill;
$exporter->kill_kill;
done_testing();

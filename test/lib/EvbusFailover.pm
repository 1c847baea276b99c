# EvbusFailover.pm - a primary and its asynchronous streaming standby, for
# the failover tests (test/t/30x_*.pl).
#
# Exported functions:
#
#   failover_pair($name, $standby_name, %opts)
#                           a started primary "primary_$name" (new_node
#                           with allows_streaming and opts{conf}, Kafka
#                           unless kafka => 0) with CREATE EXTENSION evbus
#                           in database postgres, then opts{setup}->($primary)
#                           if given, then a standby named $standby_name
#                           (its application_name) made from a backup,
#                           streaming; returns ($primary, $standby)
#   crash_and_promote($primary, $standby)
#                           stop the primary in immediate mode, empty the
#                           standby's evbus.wait_for_standbys (it has no
#                           standby of its own), start it and promote it
package EvbusFailover;

use strict;
use warnings;

use Exporter 'import';
use EvbusTest;
use PostgreSQL::Test::Cluster;

our @EXPORT = qw(failover_pair crash_and_promote);

sub failover_pair
{
	my ($name, $standby_name, %opts) = @_;
	my $primary = new_node(
		"primary_$name",
		kafka => $opts{kafka} // 1,
		init => { allows_streaming => 1 },
		conf => $opts{conf} // []);
	$primary->safe_psql('postgres', 'CREATE EXTENSION evbus');
	$opts{setup}->($primary) if $opts{setup};
	$primary->backup('b');
	my $standby = PostgreSQL::Test::Cluster->new($standby_name);
	$standby->init_from_backup($primary, 'b', has_streaming => 1);
	$standby->start;
	$primary->wait_for_catchup($standby_name);
	return ($primary, $standby);
}

sub crash_and_promote
{
	my ($primary, $standby) = @_;
	$primary->stop('immediate');
	$standby->append_conf('postgresql.conf', "evbus.wait_for_standbys = ''");
	$standby->start;
	$standby->promote;
	return;
}

1;

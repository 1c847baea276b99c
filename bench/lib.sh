# bench/lib.sh - shared helpers of the evbus benchmarks (sourced, not run).
#
# Every benchmark owns everything it measures: a throwaway PostgreSQL 15
# (initdb in a temporary directory, a free port, evbus preloaded, with the
# settings BENCHMARKS.md lists under "Machine and method") and,
# where needed, a throwaway Kafka broker started with test/kafka/kafka.sh.
# Both are stopped and the temporary directory removed on exit, whatever
# the exit.
#
# PostgreSQL refuses to run as root: started as root, a benchmark makes
# sure the user $EVBUS_BENCH_USER (default evbusbench) exists, fetches the
# Kafka jars if needed, creates its results directory, and runs itself
# again as that user.
#
# What is measured: by default the committed HEAD of this repository, built
# into a private copy of the PostgreSQL 15 tree (PostgreSQL is relocatable:
# its binaries find lib/ and share/ relative to themselves), so that nobody
# else's `make install` changes the code under test in the middle of a run.
# The build is cached per commit in $EVBUS_BENCH_BUILD (default
# /tmp/evbus-bench-build/COMMIT).  The Kafka helper is taken from the same
# commit.
#
# Environment (all optional):
#   EVBUS_REF          commit to build and measure (default HEAD)
#   EVBUS_BUILD=installed  measure the evbus installed in PGBIN's PostgreSQL
#                      instead (no private build)
#   PGBIN              PostgreSQL 15 binaries (default /usr/lib/postgresql/15/bin)
#   EVBUS_BENCH_USER   unprivileged user to run as when started as root
#   RESULTS_DIR        where raw results go (default bench/results/NAME-TIMESTAMP)
#   KEEP_TMP=1         keep the temporary directory (logs) after the run
#   PG_CONF            more postgresql.conf lines for pg_start, separated
#                      by ";", e.g. "evbus.publish_linger = 2ms"
#   PG_ICU_LOCALE      the cluster's collation from ICU, e.g. en-US (default:
#                      none, the C locale); PostgreSQL 15 as Debian builds
#                      it has ICU, no operating-system locale is needed
#   PG_LOCALE          else the cluster's locale from the operating system,
#                      e.g. en_US.UTF-8 (one that `locale -a` lists; Debian:
#                      localedef -i en_US -f UTF-8 en_US.UTF-8); default C

set -euo pipefail

# this database's publisher; its backend type was 'evbus worker' before
# 0.1's rename, so that older commits can be measured too (EVBUS_REF)
PUBLISHER_PID_SQL="SELECT pid FROM pg_catalog.pg_stat_activity WHERE backend_type IN ('evbus publisher', 'evbus worker') AND datname = current_database()"

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$BENCH_DIR")
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
KAFKA_SH=${KAFKA_SH:-$REPO_DIR/test/kafka/kafka.sh}
BENCH_USER=${EVBUS_BENCH_USER:-evbusbench}
export EVBUS_KAFKA_LIBS=${EVBUS_KAFKA_LIBS:-$REPO_DIR/test/kafka/libs}

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

git_() { git -c safe.directory='*' -C "$REPO_DIR" "$@"; }

# bench_build: build EVBUS_REF into a private PostgreSQL tree (cached);
# exports PGBIN, KAFKA_SH, EVBUS_COMMIT.
bench_build() {
	local sys_bin=${PGBIN:-/usr/lib/postgresql/15/bin} commit d sys_lib sys_share
	if [[ ${EVBUS_BUILD:-} == installed ]]; then
		export EVBUS_COMMIT="installed"
		return
	fi
	if [[ -n ${EVBUS_BUILT:-} ]]; then
		return
	fi
	commit=$(git_ rev-parse --short=12 "${EVBUS_REF:-HEAD}") || die "unknown commit ${EVBUS_REF:-HEAD}"
	d=${EVBUS_BENCH_BUILD:-/tmp/evbus-bench-build}/$commit
	if [[ ! -f $d/.done ]]; then
		log "building evbus $commit into $d"
		rm -rf "$d"
		mkdir -p "$d/src" "$d/root/usr/lib/postgresql" "$d/root/usr/share/postgresql"
		git_ archive "$commit" | tar -x -C "$d/src"
		sys_lib=$(dirname "$sys_bin")
		sys_share=$("$sys_bin/pg_config" --sharedir)
		cp -a "$sys_lib" "$d/root/usr/lib/postgresql/"
		cp -a "$sys_share" "$d/root/usr/share/postgresql/"
		make -s -C "$d/src" PG_CONFIG="$sys_bin/pg_config" >"$d/build.log" 2>&1 \
			&& make -s -C "$d/src" install DESTDIR="$d/root" PG_CONFIG="$sys_bin/pg_config" >>"$d/build.log" 2>&1 \
			|| { tail -n 30 "$d/build.log" >&2; die "building evbus $commit failed"; }
		chmod -R a+rX "$d"
		touch "$d/.done"
	fi
	export PGBIN=$d/root/usr/lib/postgresql/15/bin
	[[ -x $PGBIN/postgres ]] || die "the private tree $d does not have PostgreSQL 15 where expected"
	export KAFKA_SH=$d/src/test/kafka/kafka.sh
	export EVBUS_COMMIT=$commit EVBUS_BUILT=1
}

# bench_init NAME NEEDS_KAFKA(0|1) "$@"
# Re-executes the calling script as $BENCH_USER when run as root; sets
# RESULTS_DIR and TMP_DIR and installs the cleanup trap.
bench_init() {
	local name=$1 needs_kafka=$2
	shift 2
	BENCH_NAME=$name
	bench_build
	if [[ $(id -u) -eq 0 ]]; then
		id "$BENCH_USER" >/dev/null 2>&1 \
			|| useradd --system --create-home --shell /bin/bash "$BENCH_USER"
		if [[ $needs_kafka == 1 ]]; then
			"$KAFKA_SH" fetch
		fi
		RESULTS_DIR=${RESULTS_DIR:-$BENCH_DIR/results/$name-$(date +%Y%m%d-%H%M%S)}
		mkdir -p "$RESULTS_DIR"
		chown "$BENCH_USER" "$RESULTS_DIR"
		export RESULTS_DIR
		log "running as $BENCH_USER; results in $RESULTS_DIR"
		exec runuser -u "$BENCH_USER" -- bash "$0" "$@"
	fi
	[[ -x $PGBIN/postgres ]] || die "no PostgreSQL 15 server in $PGBIN"
	[[ -f $($PGBIN/pg_config --pkglibdir)/evbus.so ]] \
		|| die "evbus is not installed: make PG_CONFIG=$PGBIN/pg_config && make install PG_CONFIG=$PGBIN/pg_config (as root)"
	RESULTS_DIR=${RESULTS_DIR:-$BENCH_DIR/results/$name-$(date +%Y%m%d-%H%M%S)}
	mkdir -p "$RESULTS_DIR"
	TMP_DIR=$(mktemp -d "/tmp/evbus-bench-$name.XXXXXX")
	PG_STARTED=0
	KAFKA_STARTED=0
	trap bench_cleanup EXIT
	trap 'exit 130' INT TERM
	export PATH="$PGBIN:$PATH"
}

bench_cleanup() {
	local rc=$?
	set +e
	if [[ ${PG_STARTED:-0} == 1 ]]; then
		cp "$TMP_DIR/pg.log" "$RESULTS_DIR/postgresql.log" 2>/dev/null
		"$PGBIN/pg_ctl" -D "$TMP_DIR/pg" -m fast -w stop >/dev/null 2>&1 \
			|| "$PGBIN/pg_ctl" -D "$TMP_DIR/pg" -m immediate -w stop >/dev/null 2>&1
	fi
	if [[ ${KAFKA_STARTED:-0} == 1 || -f $TMP_DIR/kafka/kafka.pid ]]; then
		"$KAFKA_SH" stop "$TMP_DIR/kafka" >/dev/null 2>&1
	fi
	if [[ ${KEEP_TMP:-0} == 1 ]]; then
		log "kept $TMP_DIR"
	else
		rm -rf "$TMP_DIR"
	fi
	exit $rc
}

# A free TCP port on 127.0.0.1.
free_port() {
	perl -MIO::Socket::INET -e '
		my $s = IO::Socket::INET->new(LocalAddr => "127.0.0.1", LocalPort => 0,
		                              Proto => "tcp", Listen => 1, ReuseAddr => 1)
			or die "bind: $!";
		print $s->sockport, "\n";'
}

# pg_start [EXTRA_CONF_LINES...]: initdb + start (with the lines of
# PG_CONF after the arguments); exports PGHOST, PGPORT,
# PGUSER, PGDATABASE=bench (created, with CREATE EXTENSION evbus).
pg_start() {
	local port
	port=$(free_port)
	local locale=("--locale=${PG_LOCALE:-C}")
	[[ -n ${PG_ICU_LOCALE:-} ]] \
		&& locale=(--locale=C.UTF-8 --locale-provider=icu "--icu-locale=$PG_ICU_LOCALE")
	"$PGBIN/initdb" -D "$TMP_DIR/pg" -U postgres --auth=trust -E UTF8 \
		"${locale[@]}" --no-instructions >"$TMP_DIR/initdb.log" 2>&1 \
		|| { cat "$TMP_DIR/initdb.log" >&2; die "initdb failed"; }
	cat >>"$TMP_DIR/pg/postgresql.conf" <<EOF

# ---- evbus benchmark settings (bench/lib.sh) ----
port = $port
listen_addresses = ''
unix_socket_directories = '$TMP_DIR'
max_connections = 50
shared_preload_libraries = 'evbus'
# the settings BENCHMARKS.md lists under "Machine and method"
shared_buffers = 512MB
max_wal_size = 4GB
checkpoint_timeout = 15min
synchronous_commit = on
# events stay in the outbox until a benchmark points evbus at a broker
evbus.brokers = ''
log_line_prefix = '%m [%p] %b '
log_checkpoints = on
log_autovacuum_min_duration = 0
EOF
	local line conf_lines
	IFS=';' read -r -a conf_lines <<<"${PG_CONF:-}"
	for line in "$@" "${conf_lines[@]}"; do
		echo "$line" >>"$TMP_DIR/pg/postgresql.conf"
	done
	"$PGBIN/pg_ctl" -D "$TMP_DIR/pg" -l "$TMP_DIR/pg.log" -w -t 60 start >/dev/null \
		|| { tail -n 30 "$TMP_DIR/pg.log" >&2; die "PostgreSQL did not start"; }
	PG_STARTED=1
	export PGHOST=$TMP_DIR PGPORT=$port PGUSER=postgres PGDATABASE=postgres
	psql -qX -v ON_ERROR_STOP=1 -c "CREATE DATABASE bench" >/dev/null
	export PGDATABASE=bench
	psql -qX -v ON_ERROR_STOP=1 -c "CREATE EXTENSION evbus" >/dev/null
	# the publisher starts within a second of CREATE EXTENSION
	local i
	for i in $(seq 1 50); do
		[[ -n $(q "$PUBLISHER_PID_SQL") ]] && break
		sleep 0.2
	done
	[[ -n $(q "$PUBLISHER_PID_SQL") ]] || die "the evbus publisher did not start"
	log "PostgreSQL $(q 'SHOW server_version') on port $port, evbus publisher pid $(q "$PUBLISHER_PID_SQL")"
}

# create_staging_variants: what the variants of commit_overhead.sh and
# staging_cost.sh stage through, in $PGDATABASE: (a) a hand-written outbox
# table, (b) one converter that returns the domain event as it is.
create_staging_variants() {
	psql -qX -v ON_ERROR_STOP=1 >/dev/null <<'SQL'
-- variant a: the hand-written outbox of an application without evbus
CREATE TABLE bench_outbox (
	id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	topic text,
	key text,
	payload jsonb,
	headers jsonb,
	created_at timestamptz DEFAULT now()
);
-- variant b: one converter that returns the domain event as it is
CREATE SCHEMA bench;
CREATE FUNCTION bench.account_updated(payload jsonb) RETURNS jsonb
	LANGUAGE sql IMMUTABLE AS 'SELECT payload';
SELECT evbus.register_converter('AccountUpdatedDomainEvent', 'AccountUpdated',
								'bench.account_updated(jsonb)');
SQL
}

# q SQL: one query, unaligned tuples only, stop on error.
q() { psql -qXAt -v ON_ERROR_STOP=1 -c "$1"; }

# kafka_start: start a broker in $TMP_DIR/kafka; sets BROKERS.
kafka_start() {
	[[ -x $KAFKA_SH ]] || die "no $KAFKA_SH"
	local try
	# kafka.sh makes a random cluster id; one that starts with "-" is taken
	# for an option by the storage tool and formatting fails: try again
	for try in 1 2 3; do
		if BROKERS=$("$KAFKA_SH" start "$TMP_DIR/kafka" 2>"$TMP_DIR/kafka-start.err"); then
			break
		fi
		"$KAFKA_SH" stop "$TMP_DIR/kafka" >/dev/null 2>&1 || true
		if ((try == 3)) || ! grep -q 'formatting .* failed' "$TMP_DIR/kafka-start.err"; then
			cat "$TMP_DIR/kafka-start.err" >&2
			die "the Kafka broker did not start"
		fi
		log "kafka.sh could not format the broker's storage (cluster id: $(grep -o "cluster-id.*" "$TMP_DIR/kafka-start.err" | head -1)); trying again"
		rm -rf "$TMP_DIR/kafka"
	done
	KAFKA_STARTED=1
	log "Kafka broker at $BROKERS"
}

# subscribe_noop EVENT GROUP [BODY]: the topic EVENT (3 partitions) and a
# handler public.noop(jsonb, jsonb) with the SQL body BODY (default
# 'SELECT'), owned by, subscribed by and run as the role bench_app (not a
# superuser), subscribed to EVENT in GROUP.
subscribe_noop() {
	local event=$1 group=$2 body=${3:-SELECT}
	"$KAFKA_SH" topics "$TMP_DIR/kafka" --create --topic "$event" --partitions 3 \
		--replication-factor 1 >/dev/null
	q "CREATE ROLE bench_app; GRANT USAGE ON SCHEMA evbus TO bench_app;
	   GRANT EXECUTE ON FUNCTION evbus.subscribe(text, regprocedure, text, integer) TO bench_app"
	q "CREATE FUNCTION noop(payload jsonb, headers jsonb) RETURNS void LANGUAGE sql
	     AS \$body\$ $body \$body\$;
	   ALTER FUNCTION noop(jsonb, jsonb) OWNER TO bench_app"
	q "SET ROLE bench_app; SELECT evbus.subscribe('$event', 'noop(jsonb, jsonb)', '$group')" >/dev/null
}

# insert_inbox_rows N GROUP EVENT KEYS STATE: N inbox rows of the handler
# public.noop(jsonb, jsonb) (subscribe_noop) for EVENT in GROUP, as the
# consumer writes them: id order is Kafka order on 3 partitions, keys
# k0 .. k(KEYS - 1) round robin, a 200-byte payload {"order_id": i, ...}
# and the headers a handler gets; STATE 'handled' (one attempt, handled two
# hours ago) or 'pending' (no attempt yet, due now).  Then ANALYZE.
insert_inbox_rows() {
	psql -qX -v ON_ERROR_STOP=1 -v n="$1" -v grp="$2" -v event="$3" -v keys="$4" \
		-v state="$5" >/dev/null <<'SQL'
INSERT INTO evbus.inbox (group_name, dedup_key, message_id, integration_event, topic,
		kafka_partition, kafka_offset, handler, event_key, payload, headers, state,
		attempts, next_attempt_at, handled_at)
SELECT :'grp', mid, mid, :'event', :'event', i % 3, i / 3,
	   'public.noop(pg_catalog.jsonb,pg_catalog.jsonb)', 'k' || (i % :keys),
	   jsonb_build_object('order_id', i, 'customer', 'c' || (i % 1000), 'amount', 123.45,
						  'currency', 'EUR', 'lines', jsonb_build_array(1, 2, 3),
						  'note', repeat('x', 60)),
	   jsonb_build_object('cap-msg-id', mid, 'cap-msg-name', :'event',
						  'cap-senttime', '2026-12-05T00:00:00.000000+00:00',
						  'evbus-source', 'bench', 'evbus-domain-event', :'event',
						  'evbus-topic', :'event', 'evbus-partition', i % 3,
						  'evbus-offset', i / 3, 'evbus-group', :'grp'),
	   :'state', CASE :'state' WHEN 'handled' THEN 1 ELSE 0 END,
	   CASE :'state' WHEN 'pending' THEN now() END,
	   CASE :'state' WHEN 'handled' THEN now() - interval '2 hours' + i * interval '1 microsecond' END
  FROM (SELECT i, gen_random_uuid()::text AS mid FROM generate_series(1, :n) i) s
 ORDER BY i;
ANALYZE evbus.inbox;
SQL
}

# set_brokers VALUE: ALTER SYSTEM evbus.brokers and reload.
set_brokers() {
	q "ALTER SYSTEM SET evbus.brokers = '$1'" >/dev/null
	q "SELECT pg_reload_conf()" >/dev/null
}

# Sum of the end offsets of all partitions of a topic.
kafka_end_offsets() {
	local topic=$1 parts p sum=0 off
	parts=$(kcat -b "$BROKERS" -L -t "$topic" -J 2>/dev/null \
		| perl -MJSON::PP -e 'local $/; my $j = decode_json(<STDIN>);
			print join(" ", map { $_->{partition} } @{$j->{topics}[0]{partitions}})')
	for p in $parts; do
		off=$(kcat -b "$BROKERS" -Q -t "$topic:$p:-1" 2>/dev/null | awk '{print $NF}')
		sum=$((sum + off))
	done
	echo "$sum"
}

# Facts about the software under test, for the results files.
environment_report() {
	echo "date: $(date -u +%FT%TZ)"
	echo "host: nproc=$(nproc), $(lscpu | sed -n 's/^Model name: *//p'), RAM $(free -g | awk '/^Mem:/{print $2}') GiB, kernel $(uname -r)"
	echo "postgresql: $("$PGBIN/postgres" --version), collation ${PG_ICU_LOCALE:+ICU }${PG_ICU_LOCALE:-${PG_LOCALE:-C}}"
	echo "librdkafka: $(dpkg-query -W -f='${Version}' librdkafka1 2>/dev/null || echo '?')"
	echo "kafka jars: $(ls "$REPO_DIR"/test/kafka/libs/kafka_2.13-*.jar 2>/dev/null | sed 's/.*kafka_2.13-//; s/\.jar$//' | head -1)"
	if [[ ${EVBUS_COMMIT:-installed} == installed ]]; then
		echo "evbus: as installed in $("$PGBIN/pg_config" --pkglibdir) (work tree at $(git_ rev-parse --short=12 HEAD 2>/dev/null || echo '?'))"
	else
		echo "evbus: commit $EVBUS_COMMIT ($(git_ log -1 --format='%ci %s' "$EVBUS_COMMIT" 2>/dev/null | cut -c1-100)), built privately into $PGBIN/.."
	fi
	echo "evbus.so md5: $(md5sum "$("$PGBIN/pg_config" --pkglibdir)/evbus.so" | cut -c1-12)"
}

# median of numbers on stdin
median() { sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

# variant_medians RUNS_TSV BASE "VARIANTS" HEADING: for each variant, the
# values of column 5 of RUNS_TSV (round, variant, count, ms, value), their
# median and its difference from the median of variant BASE.
variant_medians() {
	local runs=$1 base=$2 variants=$3 heading=$4 base_med v vals med
	printf '  var  %-40s  median   - (%s)\n' "$heading" "$base"
	base_med=$(awk -F'\t' -v v="$base" '$2 == v {print $5}' "$runs" | median)
	for v in $variants; do
		vals=$(awk -F'\t' -v v="$v" '$2 == v {printf "%s ", $5}' "$runs")
		med=$(awk -F'\t' -v v="$v" '$2 == v {print $5}' "$runs" | median)
		printf '  %-3s  %-40s  %6.2f  %+6.2f\n' "$v" "$vals" "$med" \
			"$(awk -v m="$med" -v b="$base_med" 'BEGIN {print m - b}')"
	done
}

# ---- CPU accounting from /proc (clock ticks of user + system time) ----
CLK_TCK=$(getconf CLK_TCK)
proc_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
# ticks of the postmaster and all its children except the evbus worker
# (children that exited during a run are not counted: pgbench's backends
# stay connected for the whole run, so nothing is lost)
pg_other_ticks() {
	local pm p sum=0 worker
	pm=$(head -1 "$TMP_DIR/pg/postmaster.pid")
	worker=$(evbus_worker_pid)
	for p in $(pgrep -P "$pm"); do
		[[ $p == "$worker" ]] && continue
		sum=$((sum + $(proc_ticks "$p")))
	done
	echo $((sum + $(proc_ticks "$pm")))
}
# the publishing worker of this benchmark's server (not of anyone else's)
evbus_worker_pid() { pgrep -P "$(head -1 "$TMP_DIR/pg/postmaster.pid")" -f "^postgres: evbus (publisher|worker) for database" | head -1; }
kafka_pid() { cat "$TMP_DIR/kafka/kafka.pid" 2>/dev/null || echo 0; }
# consumer_pid DATABASE: the pid of the database's consumer worker once it
# runs (within 10 s), else fail
consumer_pid() {
	local pid
	for _ in $(seq 1 50); do
		pid=$(psql -qXAt -d "$1" -c "SELECT pid FROM pg_stat_activity WHERE backend_type = 'evbus consumer' AND datname = current_database()")
		[[ -n $pid ]] && { echo "$pid"; return 0; }
		sleep 0.2
	done
	return 1
}
ticks_to_s() { awk -v t="$1" -v h="$CLK_TCK" 'BEGIN {printf "%.1f", t / h}'; }

# wait_outbox_settled TIMEOUT STALL [TARGET]: wait until the evbus outbox
# holds at most TARGET rows (default 0), or until its row count has not
# changed for STALL seconds (events left behind by the worker).  Prints
# "SECONDS LEFT_ROWS".
wait_outbox_settled() {
	local timeout=$1 stall=$2 target=${3:-0} t0=$EPOCHREALTIME
	local limit=$((SECONDS + timeout)) n last=-1 since=$SECONDS
	while :; do
		n=$(q "SELECT count(*) FROM evbus.outbox")
		((n <= target)) && break
		if ((n != last)); then
			last=$n
			since=$SECONDS
		elif ((SECONDS - since >= stall)); then
			break
		fi
		((SECONDS < limit)) || break
		sleep 0.1
	done
	echo "$t0 $EPOCHREALTIME $n" | awk '{printf "%.1f %d\n", $2 - $1, $3}'
}

# publish_consume_events N: publish N events of ConsumeEvent (a 200-byte
# payload, 100 keys) from database bench, in transactions of 100,000, and
# wait until Kafka has them all (the outbox empty, 300 s at most)
publish_consume_events() {
	local n=$1 i m s left
	log "staging $n events"
	for ((i = 0; i < n; i += 100000)); do
		m=$((n - i < 100000 ? n - i : 100000))
		q "SELECT count(evbus.publish('ConsumeEvent', jsonb_build_object('seq', g, 'account', g % 100, 'amount', 42.5, 'currency', 'EUR'), 'k' || (g % 100))) FROM generate_series($i + 1, $i + $m) g" >/dev/null
	done
	read -r s left < <(wait_outbox_settled 300 60)
	((left == 0)) || die "$left events not published after ${s}s"
}

# busy and total clock ticks of the whole machine (all cores), from /proc/stat
cpu_stat() { awk '/^cpu /{print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9}' /proc/stat; }

# Snapshot "pid ticks" of every process that is not this benchmark's own:
# not this script or its descendants (pgbench, psql), not this benchmark's
# postmaster or its children, not its Kafka broker.  Other people's tests,
# or another benchmark run by the same user, on a shared machine.
# foreign_cpu_s OLD NEW sums the ticks of the processes present in both
# snapshots, in seconds; processes that started and ended in between are
# missed, so this is a lower bound.
foreign_snapshot() {
	local pm
	pm=$(head -1 "$TMP_DIR/pg/postmaster.pid" 2>/dev/null || echo 0)
	perl -e '
		my %own = map { $_ => 1 } grep { $_ } @ARGV;
		my (%ppid, %ticks);
		opendir(my $d, "/proc") or die;
		for my $p (grep { /^\d+$/ } readdir $d) {
			open(my $f, "<", "/proc/$p/stat") or next; my $s = <$f>; close $f;
			$s =~ s/^.*\) //; my @x = split / /, $s;
			$ppid{$p} = $x[1]; $ticks{$p} = $x[11] + $x[12];
		}
		P: for my $p (keys %ticks) {
			for (my ($q, $n) = ($p, 0); $q > 1 && $n < 64; $q = $ppid{$q} // 0, $n++) {
				next P if $own{$q};
			}
			print "$p $ticks{$p}\n";
		}' "$$" "$pm" "$(kafka_pid)"
}
foreign_cpu_s() {
	awk -v h="$CLK_TCK" 'NR == FNR { a[$1] = $2; next } ($1 in a) { s += $2 - a[$1] } END { printf "%.1f\n", s / h }' "$1" "$2"
}

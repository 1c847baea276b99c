# evbus: PGXS build.  The library must be preloaded
# (shared_preload_libraries = 'evbus'); the tests start their own servers
# with it (see sql/evbus.conf).
#
# make installcheck runs the three layers of tests against the installed
# evbus, each even when an earlier one failed (CONTRIBUTING.md):
#   installcheck-regress  pg_regress, sql/*.sql (readable transcripts)
#   installcheck-pgtap    pgTAP, test/pgtap/*.sql with pg_prove (the SQL
#                         API's contract); PGTAP_TESTS= picks files
#   installcheck-tap      Perl TAP, test/t/*.pl with prove, as PGXS's
#                         prove_installcheck does, EVBUS_TAP_JOBS (4) at a
#                         time but for TAP_ALONE; PROVE_TESTS= picks files.
#                         Needs a Kafka broker: EVBUS_TEST_KAFKA_BOOTSTRAP,
#                         else one is started with test/kafka/kafka.sh
# Each layer runs its own temporary instances; PostgreSQL refuses to run
# as root, so run it as another user (bash test/run-tests.sh does).

MODULE_big = evbus
OBJS = \
	src/evbus.o \
	src/guc.o \
	src/event_lists.o \
	src/shmem.o \
	src/shmem_databases.o \
	src/shmem_idle.o \
	src/launcher.o \
	src/idle.o \
	src/wake_watch.o \
	src/ext_version.o \
	src/publisher_worker.o \
	src/embedded.o \
	src/kafka_conf.o \
	src/kafka_errors.o \
	src/producer.o \
	src/publisher.o \
	src/publish_keys.o \
	src/publish_cursor.o \
	src/publish_reports.o \
	src/publish_producer.o \
	src/publish_pacing.o \
	src/publish_pause.o \
	src/outbox.o \
	src/outbox_scan.o \
	src/outbox_truncate.o \
	src/outbox_write.o \
	src/outbox_published.o \
	src/staging.o \
	src/metrics.o \
	src/converters.o \
	src/converter_call.o \
	src/capture.o \
	src/json_compact.o \
	src/dead_letters.o \
	src/repair.o \
	src/subscriptions.o \
	src/consumer_worker.o \
	src/consumer.o \
	src/received_message.o \
	src/consumer_offsets.o \
	src/consumer_pause.o \
	src/consumer_positions.o \
	src/group_copies.o \
	src/pause.o \
	src/replay.o \
	src/kafka_offsets.o \
	src/inbox_decode.o \
	src/inbox.o \
	src/inbox_write.o \
	src/inbox_due.o \
	src/inbox_counts.o \
	src/attempt_marker.o \
	src/handler.o \
	src/handler_trace.o \
	src/handler_session.o \
	src/handler_timeout.o \
	src/role_settings.o \
	src/inbox_retry.o \
	src/inbox_park.o \
	src/spi_run.o \
	src/restore.o \
	src/copy_guard.o \
	src/identity_claims.o \
	src/database_guard.o \
	src/publication_warning.o \
	src/standby_wait.o \
	src/util.o

EXTENSION = evbus
DATA = evbus--0.1.sql evbus--0.2.sql evbus--0.1--0.2.sql
PGFILEDESC = "evbus - integration events between PostgreSQL and Kafka"

REGRESS = setup staging converters capture misuse security subscriptions kafka_config
# evbus needs a UTF8 database, whatever the locale of the environment.  Not
# ./tmp_check: prove_installcheck empties that one for the TAP tests.
REGRESS_OPTS = --temp-config=$(srcdir)/sql/evbus.conf --temp-instance=./tmp_check_regress \
	--encoding=UTF8

# pgTAP files to run (default: all of test/pgtap/*.sql)
PGTAP_TESTS =

# Perl TAP tests, run by PGXS's prove_installcheck with TESTDIR at the top
# of the tree (their logs go to tmp_check/log)
TAP_TESTS = 1
PROVE_TESTS = test/t/*.pl

# The TAP tests run EVBUS_TAP_JOBS at a time: most of their time is spent
# waiting for a broker, a worker or a timer, and each has its own
# instances, topics and groups (on 2 cores, 3 at a time take about 70 %
# of the time 2 do and 4 about 80 % of the time 3 do, each test about as
# long, the CPUs half busy; at 6 the tests themselves take longer).
# Those of TAP_ALONE run first, one by one
# with nothing beside them: they stop the shared broker (001), load every
# CPU on purpose (097) or run a cluster of three brokers under a schedule
# of faults, whose timeouts assume a machine of its own (400).  A test
# that stops or freezes its broker has one of its own (private_kafka in
# test/lib/EvbusTest.pm) and runs with the others.
EVBUS_TAP_JOBS ?= 4
TAP_ALONE = test/t/001_infra.pl test/t/097_saturated_cpus.pl test/t/400_fault_campaign.pl

# installcheck is defined below, with the pgTAP layer between the others
NO_INSTALLCHECK = 1
EXTRA_CLEAN = tmp_check_regress tmp_check_pgtap

PG_CPPFLAGS = -I$(srcdir)/src $(shell pkg-config --cflags rdkafka) -Wall -Wmissing-prototypes
SHLIB_LINK = $(shell pkg-config --libs rdkafka)

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# every object is built again when a header changes: PGXS tracks header
# dependencies only with --enable-depend, and a stale object that has a
# shared memory struct laid out differently misreads it
$(OBJS): $(wildcard $(srcdir)/src/*.h)

# after the include: Makefile.global empties PROVE_FLAGS
PROVE_FLAGS = -I $(srcdir)/test/lib --timer

KAFKA_SH = $(abspath $(srcdir))/test/kafka/kafka.sh

.PHONY: installcheck installcheck-regress installcheck-pgtap installcheck-tap

installcheck:
	@if [ "$$(id -u)" -eq 0 ]; then \
		echo "installcheck: PostgreSQL refuses to run as root: run it as another user, or run bash test/run-tests.sh" >&2; \
		exit 1; \
	fi; \
	rc=0; \
	$(MAKE) --no-print-directory installcheck-regress || rc=1; \
	$(MAKE) --no-print-directory installcheck-pgtap || rc=1; \
	$(MAKE) --no-print-directory installcheck-tap || rc=1; \
	exit $$rc

installcheck-regress:
	$(pg_regress_installcheck) $(REGRESS_OPTS) $(REGRESS)

installcheck-pgtap:
	bash $(srcdir)/test/pgtap/run.sh '$(bindir)' $(PGTAP_TESTS)

# Without a broker (EVBUS_TEST_KAFKA_BOOTSTRAP unset) start one for the run
# in a temporary directory and stop it afterwards, even when interrupted;
# its logs are kept when a test failed.
installcheck-tap:
ifeq ($(EVBUS_TEST_KAFKA_BOOTSTRAP),)
	@echo "installcheck-tap: EVBUS_TEST_KAFKA_BOOTSTRAP is not set: starting a Kafka broker with test/kafka/kafka.sh"
	@dir=$$(mktemp -d "$${TMPDIR:-/tmp}/evbus-kafka.XXXXXX") || exit 1; \
	trap 'bash "$(KAFKA_SH)" stop "$$dir" >/dev/null 2>&1 || true' EXIT; \
	trap 'exit 130' INT TERM; \
	if ! boot=$$(bash "$(KAFKA_SH)" start "$$dir"); then \
		echo "installcheck-tap: no Kafka broker, and the TAP tests need one: fetch its jars with 'bash test/kafka/kafka.sh fetch' (needs mvn and a JDK 17), or set EVBUS_TEST_KAFKA_BOOTSTRAP to a broker of yours (bash test/run-tests.sh does all of it)" >&2; \
		if [ -d "$$dir/logs" ]; then echo "installcheck-tap: broker logs in $$dir/logs" >&2; else rm -rf "$$dir"; fi; \
		exit 1; \
	fi; \
	echo "installcheck-tap: broker at $$boot, dir $$dir"; \
	rc=0; \
	EVBUS_TEST_KAFKA_BOOTSTRAP=$$boot EVBUS_TEST_KAFKA_DIR=$$dir EVBUS_TEST_KAFKA_SH="$(KAFKA_SH)" \
		$(MAKE) --no-print-directory installcheck-tap || rc=$$?; \
	bash "$(KAFKA_SH)" stop "$$dir" || true; \
	if [ $$rc -eq 0 ]; then rm -rf "$$dir"; else echo "installcheck-tap: broker logs kept in $$dir/logs"; fi; \
	exit $$rc
else
	@echo "+++ tap install-check in $(CURDIR) +++"
	@rm -rf '$(CURDIR)'/tmp_check && $(MKDIR_P) '$(CURDIR)'/tmp_check
	@rc=0; \
	$(if $(tap_alone),$(call evbus_prove,,$(tap_alone)) || rc=1;) \
	$(if $(tap_shared),$(call evbus_prove,-j$(EVBUS_TAP_JOBS),$(tap_shared)) || rc=1;) \
	exit $$rc
endif

# The files PROVE_TESTS names, split into those that run alone and the
# others; evbus_prove OPTIONS,FILES is PGXS's prove_installcheck without
# emptying tmp_check (both runs keep their logs there).
tap_files = $(sort $(wildcard $(PROVE_TESTS)))
tap_alone = $(filter $(TAP_ALONE),$(tap_files))
tap_shared = $(filter-out $(TAP_ALONE),$(tap_files))
define evbus_prove
(cd $(srcdir) && \
	TESTDIR='$(CURDIR)' PATH="$(bindir):$(CURDIR):$$PATH" \
	PGPORT='6$(DEF_PGPORT)' \
	PG_REGRESS='$(top_builddir)/src/test/regress/pg_regress' \
	$(PROVE) $(PG_PROVE_FLAGS) $(PROVE_FLAGS) $(1) $(2))
endef

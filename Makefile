# evbus: PGXS build.  The library must be preloaded
# (shared_preload_libraries = 'evbus'); regression tests start their own
# server with it (see sql/evbus.conf).

MODULE_big = evbus
OBJS = \
	src/evbus.o \
	src/guc.o \
	src/shmem.o \
	src/launcher.o \
	src/worker.o \
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
	src/cpu_pressure.o \
	src/outbox.o \
	src/outbox_scan.o \
	src/outbox_write.o \
	src/outbox_published.o \
	src/staging.o \
	src/converters.o \
	src/converter_call.o \
	src/capture.o \
	src/json_compact.o \
	src/subscriptions.o \
	src/consumer.o \
	src/consumer_worker.o \
	src/inbox.o \
	src/attempt_marker.o \
	src/handler.o \
	src/util.o

EXTENSION = evbus
DATA = evbus--0.1.sql
PGFILEDESC = "evbus - integration events between PostgreSQL and Kafka"

REGRESS = setup staging converters capture misuse security subscriptions kafka_config
# evbus needs a UTF8 database, whatever the locale of the environment
REGRESS_OPTS = --temp-config=$(srcdir)/sql/evbus.conf --temp-instance=./tmp_check \
	--encoding=UTF8

PG_CPPFLAGS = -I$(srcdir)/src $(shell pkg-config --cflags rdkafka) -Wall -Wmissing-prototypes
SHLIB_LINK = $(shell pkg-config --libs rdkafka)

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

#!/usr/bin/env bash
# demo/run.sh - the evbus demo (README: `bash demo/run.sh`).
#
# On a fresh Debian 12 machine it installs what it needs (Debian packages,
# the Kafka jars), builds and installs evbus, starts a Kafka broker and a
# throwaway PostgreSQL 15 server, and shows a service raising domain events
# in its transactions and those events arriving in Kafka, read back by
# Kafka's own Java console consumer.  Everything it starts is stopped at
# the end; nothing is left running.
#
# Two services, two databases on one server: orders raises
# OrderCreatedDomainEvent when an order is inserted; a converter turns it
# into OrderCreatedIntegrationEvent, published to Kafka; payments
# subscribes a handler to it, which records a payment, exactly once.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PG_BIN=/usr/lib/postgresql/15/bin
PG_CONFIG=$PG_BIN/pg_config
DEMO_USER=evbus_demo
KAFKA_SH=$ROOT/test/kafka/kafka.sh

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
say() { printf '   %s\n' "$*"; }

if [[ $(id -u) -ne 0 ]]; then
	echo "demo/run.sh installs packages and evbus itself: run it as root (sudo bash demo/run.sh)" >&2
	exit 1
fi

step "1. Installing what the demo needs (Debian packages, evbus, Kafka jars)"
bash "$ROOT/test/install-deps.sh" >/dev/null
make -s -C "$ROOT" PG_CONFIG="$PG_CONFIG" >/dev/null
make -s -C "$ROOT" PG_CONFIG="$PG_CONFIG" install >/dev/null
bash "$KAFKA_SH" fetch >/dev/null
id -u "$DEMO_USER" >/dev/null 2>&1 || useradd --system --create-home --shell /bin/bash "$DEMO_USER"
say "done"

WORK=$(mktemp -d /tmp/evbus-demo.XXXXXX)
chown "$DEMO_USER:" "$WORK"
as_demo() { runuser -u "$DEMO_USER" -- "$@"; }
PGDATA=$WORK/pg
PGPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cleanup() {
	step "Stopping everything"
	as_demo "$PG_BIN/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null 2>&1 || true
	bash "$KAFKA_SH" stop "$WORK/kafka" >/dev/null 2>&1 || true
	rm -rf "$WORK"
	say "PostgreSQL and Kafka stopped, $WORK removed"
}
trap cleanup EXIT

step "2. Starting a Kafka broker (KRaft, Apache Kafka's own jars)"
BROKER=$(bash "$KAFKA_SH" start "$WORK/kafka")
say "Kafka is listening on $BROKER"

step "3. Starting PostgreSQL 15 with evbus preloaded"
# evbus needs UTF8 databases, whatever the locale of the environment
as_demo "$PG_BIN/initdb" -D "$PGDATA" -A trust -U postgres -E UTF8 >/dev/null
cat >>"$PGDATA/postgresql.conf" <<CONF
shared_preload_libraries = 'evbus'
evbus.brokers = '$BROKER'
max_worker_processes = 16
port = $PGPORT
unix_socket_directories = '$WORK'
listen_addresses = ''
CONF
as_demo "$PG_BIN/pg_ctl" -D "$PGDATA" -l "$WORK/postgresql.log" -w start >/dev/null
say "PostgreSQL is up (log: $WORK/postgresql.log)"
sql() {
	local db=$1
	shift
	as_demo "$PG_BIN/psql" -X -q -h "$WORK" -p "$PGPORT" -U postgres -d "$db" -v ON_ERROR_STOP=1 "$@"
}
show() {
	local db=$1 query=$2
	printf '\n   %s=> %s\n' "$db" "$query"
	sql "$db" -c "$query" | sed 's/^/   /'
}

step "4. The orders service: a table, a converter, a capture trigger"
sql postgres -c 'CREATE DATABASE orders'
sql orders >/dev/null <<'SQL'
CREATE EXTENSION evbus;

CREATE TABLE orders (id int PRIMARY KEY, customer text NOT NULL, total numeric NOT NULL);

-- the converter: domain event (the row) -> integration event (the contract)
CREATE FUNCTION order_created(payload jsonb) RETURNS jsonb LANGUAGE sql AS $$
	SELECT jsonb_build_object('orderId', payload->'id',
	                          'customer', payload->'customer',
	                          'amount', payload->'total')
$$;
SELECT evbus.register_converter('OrderCreatedDomainEvent',
                                'OrderCreatedIntegrationEvent',
                                'order_created(jsonb)');

-- every INSERT raises OrderCreatedDomainEvent in the same transaction
CREATE TRIGGER orders_created AFTER INSERT ON orders
	FOR EACH ROW EXECUTE FUNCTION evbus.capture('OrderCreatedDomainEvent', 'id');
SQL
say "CREATE EXTENSION evbus started this database's worker: pid $(sql orders -Atc 'SELECT evbus.publisher_pid()')"
show orders "SELECT domain_event, integration_event, converter FROM evbus.converters"

step "5. The payments service: a handler subscribed to OrderCreatedIntegrationEvent"
sql postgres -c 'CREATE DATABASE payments'
sql payments >/dev/null <<'SQL'
CREATE EXTENSION evbus;

-- the payments service's own role: a subscription belongs to the role
-- that subscribes it, never a superuser, and that role owns its handler
CREATE ROLE payments_app;
GRANT CREATE, USAGE ON SCHEMA public TO payments_app;
GRANT USAGE ON SCHEMA evbus TO payments_app;
GRANT EXECUTE ON FUNCTION evbus.subscribe(text, regprocedure, text, integer) TO payments_app;
SET ROLE payments_app;

CREATE TABLE payments (order_id int NOT NULL, customer text NOT NULL, amount numeric NOT NULL,
                       paid_at timestamptz NOT NULL DEFAULT now());

-- a handler: runs once per event (exactly once in effect), as the role
-- that subscribed it; its search_path is pinned, so names are qualified
CREATE PROCEDURE charge_order(payload jsonb, headers jsonb) LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO public.payments (order_id, customer, amount)
	VALUES ((payload->>'orderId')::int, payload->>'customer', (payload->>'amount')::numeric);
	RAISE LOG 'payments: charged order % (message %, from %)',
		payload->>'orderId', headers->>'cap-msg-id', headers->>'evbus-source';
END $$;
SELECT evbus.subscribe('OrderCreatedIntegrationEvent', 'charge_order(jsonb, jsonb)');
SQL
show payments "SELECT integration_event, group_name, handler, run_as FROM evbus.subscriptions"

step "6. Three orders in three transactions; the second one is rolled back"
show orders "INSERT INTO orders VALUES (1, 'ada', 120.00)"
sql orders -c "BEGIN" -c "INSERT INTO orders VALUES (2, 'brian', 35.50)" -c "ROLLBACK"
say "orders=> BEGIN; INSERT INTO orders VALUES (2, 'brian', 35.50); ROLLBACK;"
show orders "INSERT INTO orders VALUES (3, 'carla', 99.90)"

step "7. orders publishes at COMMIT; payments' handler runs once per event"
for _ in $(seq 1 200); do
	[[ $(sql payments -Atc 'SELECT count(*) FROM payments') == 2 ]] && break
	sleep 0.1
done
# the demo checks what it shows (test/run-tests.sh runs it)
if [[ $(sql payments -Atc "SELECT count(*) || '|' || (SELECT handled || '|' || lag
		FROM evbus.stats WHERE side = 'consume') FROM payments") != '2|2|0' ]]; then
	say "payments did not get the two events within 20 s (expected 2 payments, 2 handled, lag 0):"
	tail -n 20 "$WORK/postgresql.log" | sed 's/^/   /'
	exit 1
fi
show orders "SELECT side, topic, staged, published, dead, pending FROM evbus.stats ORDER BY topic"
show payments "SELECT order_id, customer, amount FROM payments ORDER BY order_id"
show payments "SELECT side, topic, group_name, handled, retrying, dead, lag FROM evbus.stats"

step "8. What Kafka holds, read by Kafka's own Java console consumer"
say "(partition, offset, headers, key, value; order 2 was rolled back and is not there)"
bash "$KAFKA_SH" consume "$WORK/kafka" OrderCreatedIntegrationEvent 2 30 | sed 's/^/   /'

step "Done: two committed orders became two events on Kafka and two payments, exactly once"

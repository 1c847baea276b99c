#!/usr/bin/env bash
# bench/new_topic.sh - how long the first event to a topic takes, when the
# worker's producer has never written to that topic before (BENCHMARKS.md F6).
#
# With the worker publishing to a real Kafka broker (own, via
# test/kafka/kafka.sh), TOPICS topics are created beforehand with
# message.timestamp.type=LogAppendTime.  After a warm-up on another topic
# (so the producer has its connection and idempotence PID), one event is
# published to each new topic in turn, each after a random pause of 0-1 s
# and once the previous one has left the outbox; then a second event to each
# (the topic is known to the producer by then).  Per event:
#
#   latency = broker append time - staging time (as in bench/latency.sh)
#
# Usage (as root or any user; one command):
#   bench/new_topic.sh
# Environment: TOPICS (10), plus those of bench/lib.sh (EVBUS_REF: the
#   commit to measure, PG_CONF).
# Output: summary on stdout and in $RESULTS_DIR/summary.txt; per-event
#   values in $RESULTS_DIR/latencies.tsv.

# shellcheck source=bench/lib.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"
bench_init new_topic 1 "$@"

TOPICS=${TOPICS:-10}

environment_report >"$RESULTS_DIR/environment.txt"
echo "settings: TOPICS=$TOPICS PG_CONF='${PG_CONF:-}'" >>"$RESULTS_DIR/environment.txt"

pg_start
kafka_start
for i in $(seq 1 "$TOPICS"); do
	"$KAFKA_SH" topics "$TMP_DIR/kafka" --create --topic "NewTopic$i" --partitions 3 \
		--replication-factor 1 --config message.timestamp.type=LogAppendTime >/dev/null
done

set_brokers "$BROKERS"
log "warm-up: 20 events on topic NewTopicWarmup"
q "SELECT count(evbus.publish('NewTopicWarmup', jsonb_build_object('warmup', true), 'w' || g)) FROM generate_series(1, 20) g" >/dev/null
read -r s left < <(wait_outbox_settled 120 60)
((left == 0)) || die "warm-up events not published after ${s}s"

# publish ROUND: one event to each topic, one at a time
publish() {
	local i
	for i in $(seq 1 "$TOPICS"); do
		sleep "0.$((RANDOM % 1000))"
		q "SELECT evbus.publish('NewTopic$i', jsonb_build_object('staged_us', (extract(epoch FROM clock_timestamp()) * 1000000)::bigint, 'round', $1), 'k$i')" >/dev/null
		read -r s left < <(wait_outbox_settled 30 10)
		((left == 0)) || die "event $1 to NewTopic$i not published after ${s}s"
	done
}
log "first event to each of $TOPICS new topics"
publish 1
log "second event to each"
publish 2

# Read back: round, topic, latency (ms).
printf 'round\ttopic\tlatency_ms\n' >"$RESULTS_DIR/latencies.tsv"
for i in $(seq 1 "$TOPICS"); do
	kcat -b "$BROKERS" -C -t "NewTopic$i" -o beginning -e -q -f '%T\t%s\n' 2>/dev/null \
		| perl -ne '
			my ($ts, $v) = split /\t/;
			next unless $v =~ /"round":\s*(\d+)/;
			my $round = $1;
			next unless $v =~ /"staged_us":\s*(\d+)/;
			printf "%d\t%s\t%.1f\n", $round, "NewTopic'"$i"'", $ts - $1 / 1000.0;'
done >>"$RESULTS_DIR/latencies.tsv"

# stats ROUND: median, max of the latencies of that round
stats() {
	awk -F'\t' -v r="$1" 'NR > 1 && $1 == r {print $3}' "$RESULTS_DIR/latencies.tsv" | sort -g \
		| awk '{a[NR] = $1} END {if (NR == 0) {print "none"; exit}
			printf "n %d, min %.1f, median %.1f, max %.1f ms (", NR, a[1], (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2), a[NR]
			for (i = 1; i <= NR; i++) printf "%s%.0f", (i > 1 ? " " : ""), a[i]; printf ")"}'
}

{
	echo "new_topic: evbus $EVBUS_COMMIT, $TOPICS pre-created topics the producer had not written to"
	echo "staging -> broker append, first event per topic:  $(stats 1)"
	echo "staging -> broker append, second event per topic: $(stats 2)"
} | tee "$RESULTS_DIR/summary.txt"

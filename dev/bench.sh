#!/usr/bin/env bash
# The benchmark command (issue 6): outbox-relay against the decoding limit (pg_recvlogical) and
# Debezium (PostgreSQL connector + Outbox Event Router on Kafka Connect, exactly-once source), plus
# steady-state latency, footprint and scaling, on the dev harness's private Postgres and Kafka. The
# backlog drains are reported twice: the relay streaming (catchup.mode = "off") and catching up
# through the SQL interface (catchup.mode = "auto", min_lag_mb = 1), each beside the same limit.
#
#   dev/bench.sh                 full run: medians of 3 runs, 1M-row backlogs (~30 min on 2 cores)
#   dev/bench.sh --quick         smoke test: 1 run, small sizes
#   dev/bench.sh --catchup-only  only the streaming / catch-up / limit drains (add --quick: small)
#   extra flags go to the bench binary: --no-debezium, --out <file.json>, the other --*-only probes
#
# Prints a Markdown table; writes the same figures to target/bench/results.json (and results.md).
set -euo pipefail
cd "$(dirname "$0")/.."

dev/setup

# Kafka Connect + Debezium classpath from Maven Central, once per clone.
DEBEZIUM_VERSION=$(sed -n 's:.*<debezium.version>\(.*\)</debezium.version>.*:\1:p' dev/debezium/pom.xml)
cache=".cache/debezium-${DEBEZIUM_VERSION}"
if [ ! -f "$cache/.complete" ]; then
  echo "dev/bench.sh: fetching the Kafka Connect + Debezium ${DEBEZIUM_VERSION} classpath from Maven Central" >&2
  rm -rf "$cache/lib"
  mkdir -p "$cache/lib"
  mvn -q -B -f dev/debezium/pom.xml dependency:copy-dependencies \
    -DoutputDirectory="$PWD/$cache/lib" -DincludeScope=runtime
  touch "$cache/.complete"
fi

cargo build --release --bin outbox-relay -p outbox-relay
cargo build --release -p outbox-relay-bench
target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
exec "$target_dir/release/outbox-relay-bench" --relay-bin "$target_dir/release/outbox-relay" \
  --out "$target_dir/bench/results.json" "$@"

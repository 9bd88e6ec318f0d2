#!/usr/bin/env bash
# The whole test suite against a real Kafka-protocol broker (tansu) on 127.0.0.1, installed and
# started here and stopped at the end. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=target/test-broker
trap 'scripts/test-broker.sh stop "$dir"' EXIT
addr=$(scripts/test-broker.sh start "$dir")
export TILLBRIDGE_TEST_KAFKA="$addr"
echo "broker: tansu on $addr (log: $dir/broker.log)"
cargo test --workspace "$@"

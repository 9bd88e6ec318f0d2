#!/usr/bin/env bash
# The whole test suite against Apache Kafka (a single KRaft node, jars from Maven Central) on
# 127.0.0.1, installed and started here and stopped at the end. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=target/test-broker
# The HTML report is tested in a real headless browser: Debian's chromium.
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing chromium for the browser test"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "no chromium and no root to install it: the browser test will be skipped"
  fi
fi
# The TLS and SASL tests make their certificates with the openssl command.
if ! command -v openssl >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing openssl for the TLS tests"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null
  else
    echo "no openssl and no root to install it: the TLS tests will fail" >&2
  fi
fi
trap 'scripts/test-broker.sh stop "$dir"' EXIT
# A broker left over from an interrupted run is stopped; every run starts from an empty log.
scripts/test-broker.sh stop "$dir"
rm -rf "$dir"
addr=$(scripts/test-broker.sh start "$dir")
export TILLBRIDGE_TEST_KAFKA="$addr"
echo "broker: Apache Kafka $(scripts/test-broker.sh version) (KRaft) on $addr (log: $dir/broker.log)"
cargo test --workspace "$@"

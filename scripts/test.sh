#!/usr/bin/env bash
# The whole test suite against Apache Kafka (a single KRaft node, jars from Maven Central) on
# 127.0.0.1, installed and started here and stopped at the end. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=target/test-broker
# `need COMMAND WHY`: installs Debian's package of that name when the command is missing and
# this is root on an apt system; otherwise says which tests will not run.
need() {
  if ! command -v "$1" >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "installing $1 for $2"
      apt-get update -qq >/dev/null
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null
    else
      echo "no $1 and no root to install it: $2 cannot run" >&2
    fi
  fi
}
# The HTML report is tested in a real headless browser: Debian's chromium.
need chromium "the browser test"
# The TLS and SASL tests make their certificates with the openssl command.
need openssl "the TLS and SASL tests"
trap 'scripts/test-broker.sh stop "$dir"' EXIT
# A broker left over from an interrupted run is stopped; every run starts from an empty log.
scripts/test-broker.sh stop "$dir"
rm -rf "$dir"
addr=$(scripts/test-broker.sh start "$dir")
export TILLBRIDGE_TEST_KAFKA="$addr"
echo "broker: Apache Kafka $(scripts/test-broker.sh version) (KRaft) on $addr (log: $dir/broker.log)"
cargo test --workspace "$@"

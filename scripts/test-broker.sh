#!/usr/bin/env bash
# Installs (once, cached outside the clone) and runs tansu 0.6.0, a Kafka wire-compatible broker,
# on 127.0.0.1 for the integration tests.
#   scripts/test-broker.sh install        build tansu into the cache if it is not there
#   scripts/test-broker.sh start [DIR]    start it on a free port; prints the bootstrap address and
#                                         writes DIR/broker.env (TILLBRIDGE_TEST_KAFKA=...) and DIR/broker.pid
#   scripts/test-broker.sh stop [DIR]     stop it
# Storage is memory://tansu/ by default; set TANSU_STORAGE=sqlite://FILE to survive a broker restart.
set -euo pipefail

CACHE="${TILLBRIDGE_CACHE:-$HOME/.cache/tillbridge}"
TANSU_VERSION=0.6.0
TANSU_ROOT="$CACHE/tansu-$TANSU_VERSION"
TANSU="$TANSU_ROOT/bin/tansu"

install() {
  if [ -x "$TANSU" ]; then
    return 0
  fi
  echo "building tansu $TANSU_VERSION into $TANSU_ROOT (about 15 minutes on 2 cores, once)" >&2
  mkdir -p "$CACHE"
  CARGO_TARGET_DIR="$CACHE/tansu-target" cargo install tansu --version "$TANSU_VERSION" --locked \
    --features dynostore,libsql --root "$TANSU_ROOT" >&2
  rm -rf "$CACHE/tansu-target"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

start() {
  local dir="${1:-target/test-broker}"
  mkdir -p "$dir"
  install
  local port
  port=$(free_port)
  local storage="${TANSU_STORAGE:-memory://tansu/}"
  nohup "$TANSU" broker \
    --listener-url "tcp://127.0.0.1:$port" \
    --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine "$storage" >"$dir/broker.log" 2>&1 &
  echo $! >"$dir/broker.pid"
  for _ in $(seq 1 300); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "TILLBRIDGE_TEST_KAFKA=127.0.0.1:$port" >"$dir/broker.env"
      echo "127.0.0.1:$port"
      return 0
    fi
    if ! kill -0 "$(cat "$dir/broker.pid")" 2>/dev/null; then
      echo "tansu exited; its log:" >&2
      cat "$dir/broker.log" >&2
      return 1
    fi
    sleep 0.1
  done
  echo "tansu did not listen on 127.0.0.1:$port within 30 s" >&2
  return 1
}

stop() {
  local dir="${1:-target/test-broker}"
  if [ -f "$dir/broker.pid" ]; then
    kill "$(cat "$dir/broker.pid")" 2>/dev/null || true
    rm -f "$dir/broker.pid" "$dir/broker.env"
  fi
}

case "${1:-}" in
  install) install ;;
  start) start "${2:-}" ;;
  stop) stop "${2:-}" ;;
  *) echo "usage: $0 install|start [DIR]|stop [DIR]" >&2; exit 2 ;;
esac

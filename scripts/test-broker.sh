#!/usr/bin/env bash
# Installs (once, cached outside the clone) and runs Apache Kafka as a single KRaft node (broker and
# controller in one JVM) on 127.0.0.1 for the integration tests. The jars come from Maven Central
# through tests/kafka-broker/pom.xml, which pins the version.
#
#   scripts/test-broker.sh install          resolve the jars into the cache if they are not there
#   scripts/test-broker.sh start [DIR]      start a broker whose files live in DIR (default
#                                           target/test-broker). A new DIR gets two free ports and a
#                                           freshly formatted log directory; a DIR that already
#                                           holds one is started again on the same ports and data,
#                                           so broker-restart tests are real restarts. Prints the
#                                           bootstrap address once the broker serves requests and
#                                           writes DIR/broker.env (TILLBRIDGE_TEST_KAFKA=...).
#   scripts/test-broker.sh stop [DIR]       SIGTERM (a controlled shutdown) and wait for the exit
#   scripts/test-broker.sh kill [DIR]       SIGKILL, as a crash would
#   scripts/test-broker.sh version          print the pinned Kafka version
#
# Environment: TILLBRIDGE_CACHE (default ~/.cache/tillbridge), KAFKA_HEAP_OPTS (default 1 GiB),
# TILLBRIDGE_BROKER_EXTRA: a file of broker properties appended to server.properties when a new DIR
# is set up (a key given again overrides the one above; @PORT@ and @CONTROLLER_PORT@ are replaced
# by the broker's ports), for a test's own broker with TLS or SASL listeners besides PLAINTEXT.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
POM="$here/../tests/kafka-broker/pom.xml"
CACHE="${TILLBRIDGE_CACHE:-$HOME/.cache/tillbridge}"
KAFKA_VERSION=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$POM")
KAFKA_HOME="$CACHE/kafka-$KAFKA_VERSION"
LIBS="$KAFKA_HOME/libs"

install() {
  if [ -f "$KAFKA_HOME/.complete" ]; then
    return 0
  fi
  command -v java >/dev/null || { echo "java (17 or later) is needed to run the test broker" >&2; exit 1; }
  command -v mvn >/dev/null || { echo "mvn is needed to fetch the test broker's jars" >&2; exit 1; }
  echo "fetching Apache Kafka $KAFKA_VERSION from Maven Central into $LIBS (once)" >&2
  rm -rf "$KAFKA_HOME"
  mkdir -p "$LIBS"
  if ! mvn -B --no-transfer-progress -f "$POM" dependency:copy-dependencies -DincludeScope=runtime \
    -DoutputDirectory="$LIBS" >"$KAFKA_HOME/mvn.log" 2>&1; then
    tail -n 40 "$KAFKA_HOME/mvn.log" >&2
    return 1
  fi
  touch "$KAFKA_HOME/.complete"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# The JVM's arguments for a broker living in DIR, into the array JVM.
jvm_args() {
  local dir="$1"
  # shellcheck disable=SC2206
  JVM=(${KAFKA_HEAP_OPTS:--Xms1g -Xmx1g} -XX:+UseG1GC -XX:MaxGCPauseMillis=20
    -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true
    "-Dlog4j2.configurationFile=$dir/log4j2.properties" -cp "$LIBS/*")
}

write_config() {
  local dir="$1" port="$2" cport="$3"
  cat >"$dir/server.properties" <<EOF
# Written by scripts/test-broker.sh: one KRaft node for tests, sized for a 2-core machine.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$dir/data
# One replica of everything: a single node.
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# Tests create groups by the hundred: no 3 s wait for more members before the first assignment.
group.initial.rebalance.delay.ms=0
# Threads, segments and the cleaner sized for 2 cores and many small test topics.
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
background.threads=4
log.segment.bytes=67108864
log.cleaner.threads=1
log.cleaner.dedupe.buffer.size=16777216
log.retention.check.interval.ms=60000
EOF
  cat >"$dir/log4j2.properties" <<EOF
status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.out.ref = out
# The start-up line the script waits for, and broker lifecycle messages.
logger.server.name = kafka.server
logger.server.level = info
logger.raftserver.name = kafka.server.KafkaRaftServer
logger.raftserver.level = info
EOF
  if [ -n "${TILLBRIDGE_BROKER_EXTRA:-}" ]; then
    { echo "# From $TILLBRIDGE_BROKER_EXTRA (TILLBRIDGE_BROKER_EXTRA)."
      sed -e "s/@PORT@/$port/g" -e "s/@CONTROLLER_PORT@/$cport/g" "$TILLBRIDGE_BROKER_EXTRA"
    } >>"$dir/server.properties"
  fi
  echo "$port" >"$dir/port"
}

running() {
  local dir="$1"
  [ -f "$dir/broker.pid" ] && kill -0 "$(cat "$dir/broker.pid")" 2>/dev/null
}

start() {
  local dir="${1:-target/test-broker}"
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  install
  if running "$dir"; then
    echo "a broker already runs from $dir (pid $(cat "$dir/broker.pid"))" >&2
    return 1
  fi
  if [ ! -f "$dir/data/meta.properties" ]; then
    rm -rf "$dir/data"
    write_config "$dir" "$(free_port)" "$(free_port)"
    jvm_args "$dir"
    local cluster
    cluster=$(java "${JVM[@]}" kafka.tools.StorageTool random-uuid)
    java "${JVM[@]}" kafka.tools.StorageTool format -t "$cluster" -c "$dir/server.properties" \
      >"$dir/format.log" 2>&1 || { cat "$dir/format.log" >&2; return 1; }
  fi
  local port
  port=$(cat "$dir/port")
  # Each start appends to the log; the readiness check reads only what this start wrote.
  local mark=0
  [ -f "$dir/broker.log" ] && mark=$(wc -l <"$dir/broker.log")
  jvm_args "$dir"
  nohup java "${JVM[@]}" kafka.Kafka "$dir/server.properties" >>"$dir/broker.log" 2>&1 &
  echo $! >"$dir/broker.pid"
  for _ in $(seq 1 1200); do
    if tail -n +"$((mark + 1))" "$dir/broker.log" | grep -q "Kafka Server started"; then
      echo "TILLBRIDGE_TEST_KAFKA=127.0.0.1:$port" >"$dir/broker.env"
      echo "127.0.0.1:$port"
      return 0
    fi
    if ! running "$dir"; then
      echo "the Kafka broker exited; its log:" >&2
      tail -n +"$((mark + 1))" "$dir/broker.log" >&2
      return 1
    fi
    sleep 0.1
  done
  echo "the Kafka broker did not start within 120 s; see $dir/broker.log" >&2
  return 1
}

stop_with() {
  local signal="$1" dir="${2:-target/test-broker}"
  if running "$dir"; then
    local pid
    pid=$(cat "$dir/broker.pid")
    kill "-$signal" "$pid" 2>/dev/null || true
    # A controlled shutdown takes a few seconds; after 60 s it is killed.
    for _ in $(seq 1 600); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$dir/broker.pid" "$dir/broker.env"
}

case "${1:-}" in
  install) install ;;
  start) start "${2:-}" ;;
  stop) stop_with TERM "${2:-}" ;;
  kill) stop_with KILL "${2:-}" ;;
  version) echo "$KAFKA_VERSION" ;;
  *) echo "usage: $0 install|start [DIR]|stop [DIR]|kill [DIR]|version" >&2; exit 2 ;;
esac

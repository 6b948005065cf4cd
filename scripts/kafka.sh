#!/usr/bin/env bash
# Run a real single-node Apache Kafka broker (KRaft, broker+controller) on loopback.
#
#   scripts/kafka.sh start | stop | status | restart | logs
#
# Kafka's jars come from Maven Central through Maven and are cached outside the
# repository (FLAGSTREAM_CACHE, default ~/.cache/flagstream). Idempotent: `start`
# on a running broker and `stop` on a stopped one both succeed.
#
# Settings (environment):
#   KAFKA_VERSION     Apache Kafka release            (default 4.1.1)
#   KAFKA_PORT        client listener on 127.0.0.1     (default 19092)
#   KAFKA_CONTROLLER_PORT                              (default KAFKA_PORT+1)
#   KAFKA_DATA_DIR    broker state and log file        (default $FLAGSTREAM_CACHE/kafka-data-$KAFKA_PORT)
#   KAFKA_HEAP        JVM heap                         (default 512m)
set -euo pipefail

KAFKA_VERSION=${KAFKA_VERSION:-4.1.1}
LOG4J_VERSION=2.24.3
KAFKA_PORT=${KAFKA_PORT:-19092}
KAFKA_CONTROLLER_PORT=${KAFKA_CONTROLLER_PORT:-$((KAFKA_PORT + 1))}
CACHE=${FLAGSTREAM_CACHE:-$HOME/.cache/flagstream}
DIST="$CACHE/kafka-$KAFKA_VERSION"
DATA=${KAFKA_DATA_DIR:-$CACHE/kafka-data-$KAFKA_PORT}
PIDFILE="$DATA/broker.pid"
LOGFILE="$DATA/broker.log"
HEAP=${KAFKA_HEAP:-512m}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

log() { printf '[kafka.sh] %s\n' "$*" >&2; }

fetch() {
  [ -f "$DIST/.complete" ] && return 0
  log "fetching Apache Kafka $KAFKA_VERSION from Maven Central into $DIST"
  mkdir -p "$DIST"
  sed -e "s/@KAFKA_VERSION@/$KAFKA_VERSION/" -e "s/@LOG4J_VERSION@/$LOG4J_VERSION/" \
    "$HERE/kafka-pom.xml" > "$DIST/pom.xml"
  mvn -q -B -f "$DIST/pom.xml" dependency:copy-dependencies \
    -DoutputDirectory="$DIST/libs" -DincludeScope=runtime >"$DIST/maven.log" 2>&1 \
    || { cat "$DIST/maven.log" >&2; log "maven failed"; return 1; }
  touch "$DIST/.complete"
}

running() { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

java_run() {
  java -Xms"$HEAP" -Xmx"$HEAP" -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$DATA/log4j2.properties" \
    -cp "$DIST/libs/*" "$@"
}

configure() {
  mkdir -p "$DATA/logs"
  cat > "$DATA/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$DATA/logs
num.partitions=4
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
log.retention.hours=168
log.segment.bytes=268435456
PROPS
  cat > "$DATA/log4j2.properties" <<PROPS
rootLogger.level=INFO
rootLogger.appenderRef.file.ref=FILE
appender.file.type=File
appender.file.name=FILE
appender.file.fileName=$LOGFILE
appender.file.layout.type=PatternLayout
appender.file.layout.pattern=[%d] %p %m (%c)%n
PROPS
  if [ ! -f "$DATA/logs/meta.properties" ]; then
    local cluster_id
    cluster_id=$(python3 -c 'import base64,uuid;print(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))')
    java_run kafka.tools.StorageTool format -t "$cluster_id" \
      -c "$DATA/server.properties" >>"$LOGFILE" 2>&1 \
      || { tail -50 "$LOGFILE" >&2; log "storage format failed"; return 1; }
  fi
}

ready() {
  # A real metadata round trip through the client listener, not a port probe.

  python3 - "$KAFKA_PORT" <<'PY'
import socket, struct, sys
port = int(sys.argv[1])
# Metadata request v1 (all topics), correlation id 7.
client = b"ready"
body = struct.pack(">hhih", 3, 1, 7, len(client)) + client + struct.pack(">i", -1)
try:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(struct.pack(">i", len(body)) + body)
        size = struct.unpack(">i", s.recv(4))[0]
        data = b""
        while len(data) < size:
            chunk = s.recv(size - len(data))
            if not chunk:
                sys.exit(1)
            data += chunk
        corr, n_brokers = struct.unpack(">ii", data[:8])
        sys.exit(0 if corr == 7 and n_brokers >= 1 else 1)
except OSError:
    sys.exit(1)
PY
}

start() {
  if running && ready; then log "already running on 127.0.0.1:$KAFKA_PORT"; return 0; fi
  fetch
  configure
  log "starting Kafka $KAFKA_VERSION on 127.0.0.1:$KAFKA_PORT (log: $LOGFILE)"
  nohup java -Xms"$HEAP" -Xmx"$HEAP" -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$DATA/log4j2.properties" \
    -cp "$DIST/libs/*" kafka.Kafka "$DATA/server.properties" >>"$DATA/stdout.log" 2>&1 &
  echo $! > "$PIDFILE"
  for _ in $(seq 1 "${KAFKA_START_TIMEOUT_S:-180}"); do
    if ready; then log "ready on 127.0.0.1:$KAFKA_PORT"; return 0; fi
    if ! running; then tail -60 "$LOGFILE" "$DATA/stdout.log" >&2 || true; log "broker exited"; return 1; fi
    sleep 1
  done
  tail -60 "$LOGFILE" >&2 || true
  log "broker did not answer a metadata request within ${KAFKA_START_TIMEOUT_S:-180} s"
  return 1
}

stop() {
  if ! running; then rm -f "$PIDFILE"; log "not running"; return 0; fi
  local pid; pid=$(cat "$PIDFILE")
  kill "$pid"
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -0 "$pid" 2>/dev/null && { log "forcing stop"; kill -9 "$pid"; }
  rm -f "$PIDFILE"
  log "stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  status) if running && ready; then echo "running on 127.0.0.1:$KAFKA_PORT"; else echo "stopped"; exit 1; fi ;;
  logs) cat "$LOGFILE" ;;
  fetch) fetch ;;
  reset) stop; rm -rf "$DATA"; log "removed $DATA" ;;
  *) echo "usage: $0 start|stop|restart|status|logs|fetch|reset" >&2; exit 2 ;;
esac

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
#
# SASL mode: another single node whose only client listener is SASL_PLAINTEXT with
# SCRAM-SHA-512 (no anonymous door: the broker reaches itself through it as user
# "admin"). The users are created when the storage is formatted (kafka-storage
# --add-scram); `sasl reset` forgets them. Readiness is an ApiVersions round trip, the
# one request a SASL listener answers before a login.
#
#   scripts/kafka.sh sasl start | stop | status | logs | reset
#
#   KAFKA_SASL_PORT      its client listener            (default 19094; controller +1)
#   KAFKA_SASL_USER      the client user created        (default flagstream)
#   KAFKA_SASL_PASSWORD  its password                   (default flagstream-secret)
#   KAFKA_SASL_DATA_DIR                                 (default $FLAGSTREAM_CACHE/kafka-sasl-$KAFKA_SASL_PORT)
#   KAFKA_TLS_KEYSTORE   a PEM file with the broker's private key (PKCS#8, unencrypted) and
#                        its certificate chain; when set, a second listener speaks SASL_SSL
#                        (SCRAM-SHA-512 over TLS) on KAFKA_SASL_TLS_PORT (default KAFKA_SASL_PORT+2)
#
# Cluster mode: three KRaft nodes on loopback for the fault tests, each a combined
# broker+controller in its own JVM with its own data dir and log; one controller
# quorum of three voters, one cluster id; replication factor 3, min.insync.replicas 2.
#
#   scripts/kafka.sh cluster start | stop [N] | status | servers | kill N | restart N | logs N | reset
#
#   start      start the nodes not running (idempotent); waits until every node answers a
#              metadata request listing all three brokers
#   stop [N]   SIGTERM every node, SIGKILL what is left after 20 s (a node in controlled
#              shutdown can wait forever once the other voters are gone); or stop node N
#              alone (SIGTERM, SIGKILL after 60 s: the quorum is still there)
#   kill N     SIGKILL node N: no controlled shutdown, no flush
#   restart N  stop node N if it runs, start it, wait until it is back in the cluster
#   servers    print the bootstrap list, host:port,host:port,host:port
#   status     one line per node; exit 0 only if all three run and see three brokers
#   reset      stop every node and remove the cluster's data
#
# Cluster settings (environment):
#   KAFKA_CLUSTER_PORT  client port of node 1; node N listens on PORT+2(N-1), its
#                       controller on the port above it (default 29192: clients
#                       29192/29194/29196, controllers 29193/29195/29197)
#   KAFKA_CLUSTER_DIR   data dirs node-1..node-3  (default $FLAGSTREAM_CACHE/kafka-cluster-$KAFKA_CLUSTER_PORT)
#   KAFKA_CLUSTER_HEAP  JVM heap of each node     (default 384m)
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

MODE=plain
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

# A broker's log4j2 configuration: everything at INFO into one file.
write_log_config() {  # <data dir> <log file>
  cat > "$1/log4j2.properties" <<PROPS
rootLogger.level=INFO
rootLogger.appenderRef.file.ref=FILE
appender.file.type=File
appender.file.name=FILE
appender.file.fileName=$2
appender.file.layout.type=PatternLayout
appender.file.layout.pattern=[%d] %p %m (%c)%n
PROPS
}

configure() {
  mkdir -p "$DATA/logs"
  cat > "$DATA/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
$(listener_properties)
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
  write_log_config "$DATA" "$LOGFILE"
  if [ ! -f "$DATA/logs/meta.properties" ]; then
    local cluster_id
    cluster_id=$(python3 -c 'import base64,uuid;print(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))')
    local users=()
    [ "$MODE" = sasl ] && users=(--add-scram "SCRAM-SHA-512=[name=admin,password=$(sasl_admin_password)]"
                                 --add-scram "SCRAM-SHA-512=[name=$SASL_USER,password=$SASL_PASSWORD]")
    java_run kafka.tools.StorageTool format -t "$cluster_id" \
      -c "$DATA/server.properties" "${users[@]}" >>"$LOGFILE" 2>&1 \
      || { tail -n 50 "$LOGFILE" >&2; log "storage format failed"; return 1; }
  fi
}

listener_properties() {
  if [ "$MODE" = sasl ]; then
    local jaas tls="" tls_map=""
    jaas="org.apache.kafka.common.security.scram.ScramLoginModule required username=\"admin\" password=\"$(sasl_admin_password)\";"
    if [ -n "$TLS_KEYSTORE" ]; then
      tls=",SASL_TLS://127.0.0.1:$TLS_PORT"
      tls_map=",SASL_TLS:SASL_SSL"
    fi
    cat <<PROPS
listeners=SASL://127.0.0.1:$KAFKA_PORT$tls,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=SASL://127.0.0.1:$KAFKA_PORT$tls
controller.listener.names=CONTROLLER
listener.security.protocol.map=SASL:SASL_PLAINTEXT,CONTROLLER:PLAINTEXT$tls_map
inter.broker.listener.name=SASL
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl.scram-sha-512.sasl.jaas.config=$jaas
PROPS
    if [ -n "$TLS_KEYSTORE" ]; then
      cat <<PROPS
listener.name.sasl_tls.scram-sha-512.sasl.jaas.config=$jaas
listener.name.sasl_tls.ssl.keystore.type=PEM
listener.name.sasl_tls.ssl.keystore.location=$TLS_KEYSTORE
PROPS
    fi
  else
    cat <<PROPS
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
PROPS
  fi
}

ready() {
  # A real round trip through the client listener, not a port probe: metadata on the
  # plain listener, ApiVersions on the SASL one (the only request allowed before a login).
  if [ "$MODE" = sasl ]; then api_versions "$KAFKA_PORT"; else metadata_brokers "$KAFKA_PORT" 1 >/dev/null; fi
}

api_versions() {
  python3 - "$1" <<'PY'
import socket, struct, sys
client = b"ready"
body = struct.pack(">hhih", 18, 0, 9, len(client)) + client  # ApiVersions v0, correlation id 9
try:
    with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2) as s:
        s.sendall(struct.pack(">i", len(body)) + body)
        head = b""
        while len(head) < 10:
            chunk = s.recv(10 - len(head))
            if not chunk:
                sys.exit(1)
            head += chunk
        _size, corr, error = struct.unpack(">iih", head)
        sys.exit(0 if corr == 9 and error == 0 else 1)
except (OSError, struct.error):
    sys.exit(1)
PY
}

# --- SASL mode ---------------------------------------------------------------------------

SASL_PORT=${KAFKA_SASL_PORT:-19094}
SASL_USER=${KAFKA_SASL_USER:-flagstream}
SASL_PASSWORD=${KAFKA_SASL_PASSWORD:-flagstream-secret}
TLS_KEYSTORE=${KAFKA_TLS_KEYSTORE:-}
TLS_PORT=${KAFKA_SASL_TLS_PORT:-$((SASL_PORT + 2))}

use_sasl() {
  MODE=sasl
  KAFKA_PORT=$SASL_PORT
  KAFKA_CONTROLLER_PORT=$((SASL_PORT + 1))
  DATA=${KAFKA_SASL_DATA_DIR:-$CACHE/kafka-sasl-$SASL_PORT}
  PIDFILE="$DATA/broker.pid"
  LOGFILE="$DATA/broker.log"
}

sasl_admin_password() {
  # The broker's own SCRAM password: made once per data dir, kept owner-only.
  local file="$DATA/admin.password"
  if [ ! -s "$file" ]; then
    mkdir -p "$DATA"
    (umask 077; python3 -c 'import secrets;print(secrets.token_urlsafe(24))' >"$file")
  fi
  cat "$file"
}

metadata_brokers() {
  # Send a Metadata request to 127.0.0.1:PORT; print the broker ids it lists and
  # succeed if it lists at least MIN brokers.
  python3 - "$1" "$2" <<'PY'
import socket, struct, sys
port, least = int(sys.argv[1]), int(sys.argv[2])
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
        ids, at = [], 8
        for _ in range(max(n_brokers, 0)):  # node_id, host, port, rack (nullable)
            node, host_len = struct.unpack(">ih", data[at:at + 6])
            at += 6 + host_len + 4
            rack_len = struct.unpack(">h", data[at:at + 2])[0]
            at += 2 + max(rack_len, 0)
            ids.append(node)
        print(",".join(map(str, sorted(ids))))
        sys.exit(0 if corr == 7 and n_brokers >= least else 1)
except (OSError, struct.error):
    sys.exit(1)
PY
}

start() {
  if running && ready; then log "already running on 127.0.0.1:$KAFKA_PORT"; return 0; fi
  if ! running && ready; then  # another data directory's broker (a demo's): use it as it is
    log "a broker already answers on 127.0.0.1:$KAFKA_PORT (not this data directory's): using it"
    return 0
  fi
  fetch
  configure
  log "starting Kafka $KAFKA_VERSION on 127.0.0.1:$KAFKA_PORT (log: $LOGFILE)"
  nohup java -Xms"$HEAP" -Xmx"$HEAP" -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$DATA/log4j2.properties" \
    -cp "$DIST/libs/*" kafka.Kafka "$DATA/server.properties" >>"$DATA/stdout.log" 2>&1 &
  echo $! > "$PIDFILE"
  for _ in $(seq 1 "${KAFKA_START_TIMEOUT_S:-180}"); do
    if ready; then log "ready on 127.0.0.1:$KAFKA_PORT"; return 0; fi
    if ! running; then tail -n 60 "$LOGFILE" "$DATA/stdout.log" >&2 || true; log "broker exited"; return 1; fi
    sleep 1
  done
  tail -n 60 "$LOGFILE" >&2 || true
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

# --- cluster mode ------------------------------------------------------------------------

CLUSTER_NODES=3
CLUSTER_PORT=${KAFKA_CLUSTER_PORT:-29192}
CLUSTER_DIR=${KAFKA_CLUSTER_DIR:-$CACHE/kafka-cluster-$CLUSTER_PORT}
CLUSTER_HEAP=${KAFKA_CLUSTER_HEAP:-384m}

SLF4J_VERSION=2.0.16

fetch_cluster_logging() {
  # Maven resolves Kafka's slf4j-api 1.7, which does not find log4j-slf4j2-impl, so a
  # broker started from $DIST/libs alone logs nothing. Cluster nodes put slf4j-api 2
  # first on their classpath so that their broker.log has Kafka's own log.
  local dir="$DIST/slf4j2"
  compgen -G "$dir/slf4j-api-*.jar" >/dev/null && return 0
  mkdir -p "$dir"
  mvn -q -B dependency:copy -Dartifact="org.slf4j:slf4j-api:$SLF4J_VERSION" \
    -DoutputDirectory="$dir" >"$DIST/maven-slf4j2.log" 2>&1 \
    || log "warning: could not fetch slf4j-api $SLF4J_VERSION (see $DIST/maven-slf4j2.log); brokers will not log"
}

node_port() { echo $((CLUSTER_PORT + 2 * ($1 - 1))); }
node_controller_port() { echo $((CLUSTER_PORT + 2 * ($1 - 1) + 1)); }
node_dir() { echo "$CLUSTER_DIR/node-$1"; }
cluster_servers() {
  local n out=""
  for n in $(seq 1 $CLUSTER_NODES); do out+="${out:+,}127.0.0.1:$(node_port "$n")"; done
  echo "$out"
}

alive() {
  # The process exists and is not a zombie waiting to be reaped.
  kill -0 "$1" 2>/dev/null || return 1
  [ -r "/proc/$1/stat" ] || return 0
  local state; state=$(sed 's/^.*) //' "/proc/$1/stat" | cut -d' ' -f1)
  [ "$state" != Z ] && [ "$state" != X ]
}

node_pid() {
  # The pid of node N's JVM if it runs (checked against its command line, so a
  # recycled pid is never taken for the broker).
  local file pid; file="$(node_dir "$1")/broker.pid"
  [ -f "$file" ] || return 1
  pid=$(cat "$file")
  [ -n "$pid" ] && alive "$pid" || return 1
  if [ -r "/proc/$pid/cmdline" ]; then
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "$(node_dir "$1")/server.properties" || return 1
  fi
  echo "$pid"
}

node_arg() {
  case "${1:-}" in
    [1-9]) [ "$1" -le $CLUSTER_NODES ] && return 0 ;;
  esac
  echo "node must be 1..$CLUSTER_NODES, not '${1:-}'" >&2
  exit 2
}

cluster_id() {
  # One id for every node: kept in cluster.id, or read back from a formatted node.
  local file="$CLUSTER_DIR/cluster.id" meta id=""
  if [ ! -s "$file" ]; then
    mkdir -p "$CLUSTER_DIR"
    for meta in "$CLUSTER_DIR"/node-*/logs/meta.properties; do
      if [ -f "$meta" ]; then id=$(sed -n 's/^cluster\.id=//p' "$meta"); break; fi
    done
    if [ -z "$id" ]; then
      id=$(python3 -c 'import base64,uuid;print(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))')
    fi
    echo "$id" >"$file"
  fi
  cat "$file"
}

configure_node() {
  local n=$1 DATA LOGFILE HEAP=$CLUSTER_HEAP voters="" i
  DATA=$(node_dir "$n")
  LOGFILE="$DATA/broker.log"
  for i in $(seq 1 $CLUSTER_NODES); do voters+="${voters:+,}$i@127.0.0.1:$(node_controller_port "$i")"; done
  mkdir -p "$DATA/logs"
  cat > "$DATA/server.properties" <<PROPS
process.roles=broker,controller
node.id=$n
controller.quorum.voters=$voters
listeners=PLAINTEXT://127.0.0.1:$(node_port "$n"),CONTROLLER://127.0.0.1:$(node_controller_port "$n")
advertised.listeners=PLAINTEXT://127.0.0.1:$(node_port "$n")
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$DATA/logs
num.partitions=4
default.replication.factor=3
min.insync.replicas=2
unclean.leader.election.enable=false
offsets.topic.replication.factor=3
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
share.coordinator.state.topic.replication.factor=3
share.coordinator.state.topic.min.isr=2
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
num.network.threads=2
num.io.threads=4
log.retention.hours=168
log.segment.bytes=268435456
PROPS
  write_log_config "$DATA" "$LOGFILE"
  if [ ! -f "$DATA/logs/meta.properties" ]; then
    java_run kafka.tools.StorageTool format -t "$(cluster_id)" \
      -c "$DATA/server.properties" >>"$LOGFILE" 2>&1 \
      || { tail -n 50 "$LOGFILE" >&2; log "node $n: storage format failed"; return 1; }
  fi
}

launch_node() {
  local n=$1 DATA; DATA=$(node_dir "$n")
  log "node $n: starting on 127.0.0.1:$(node_port "$n"), controller :$(node_controller_port "$n") (log: $DATA/broker.log)"
  nohup java -Xms"$CLUSTER_HEAP" -Xmx"$CLUSTER_HEAP" -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$DATA/log4j2.properties" \
    -cp "$DIST/slf4j2/*:$DIST/libs/*" kafka.Kafka "$DATA/server.properties" >>"$DATA/stdout.log" 2>&1 &
  echo $! > "$DATA/broker.pid"
}

wait_nodes() {
  # Wait until each given node answers a metadata request that lists every broker.
  local n pending=("$@") left
  for _ in $(seq 1 "${KAFKA_START_TIMEOUT_S:-180}"); do
    left=()
    for n in "${pending[@]}"; do
      if ! node_pid "$n" >/dev/null; then
        tail -n 60 "$(node_dir "$n")/broker.log" "$(node_dir "$n")/stdout.log" >&2 || true
        log "node $n exited"
        return 1
      fi
      metadata_brokers "$(node_port "$n")" $CLUSTER_NODES >/dev/null || left+=("$n")
    done
    if [ ${#left[@]} -eq 0 ]; then
      local joined="$*"; log "ready: $(cluster_servers) (answering with all $CLUSTER_NODES brokers: node ${joined// /, })"
      return 0
    fi
    pending=("${left[@]}")
    sleep 1
  done
  for n in "${pending[@]}"; do tail -n 30 "$(node_dir "$n")/broker.log" >&2 || true; done
  log "nodes ${pending[*]} did not list $CLUSTER_NODES brokers within ${KAFKA_START_TIMEOUT_S:-180} s"
  return 1
}

cluster_start() {
  local n all=()
  fetch
  fetch_cluster_logging
  for n in $(seq 1 $CLUSTER_NODES); do
    all+=("$n")
    node_pid "$n" >/dev/null && continue
    configure_node "$n"
  done
  for n in "${all[@]}"; do
    if node_pid "$n" >/dev/null; then log "node $n: already running"; else launch_node "$n"; fi
  done
  wait_nodes "${all[@]}"
}

stop_nodes() {
  # stop_nodes SECONDS N...: SIGTERM the nodes together, SIGKILL what is left after SECONDS.
  local wait_s=$1 n pid pids=(); shift
  for n in "$@"; do
    if pid=$(node_pid "$n"); then kill "$pid"; pids+=("$pid"); fi
  done
  [ ${#pids[@]} -eq 0 ] && { log "nodes $*: not running"; for n in "$@"; do rm -f "$(node_dir "$n")/broker.pid"; done; return 0; }
  for _ in $(seq 1 $((wait_s * 2))); do
    local any=0
    for pid in "${pids[@]}"; do alive "$pid" && any=1; done
    [ $any -eq 0 ] && break
    sleep 0.5
  done
  for pid in "${pids[@]}"; do
    if alive "$pid"; then log "pid $pid still shutting down after ${wait_s} s: SIGKILL"; kill -9 "$pid" 2>/dev/null || true; fi
  done
  for n in "$@"; do rm -f "$(node_dir "$n")/broker.pid"; done
  log "stopped nodes $*"
}

cluster_kill() {
  local n=$1 pid
  if ! pid=$(node_pid "$n"); then log "node $n: not running"; return 0; fi
  kill -9 "$pid"
  for _ in $(seq 1 100); do alive "$pid" || break; sleep 0.1; done
  alive "$pid" && { log "node $n (pid $pid) survived SIGKILL"; return 1; }
  rm -f "$(node_dir "$n")/broker.pid"
  log "node $n: SIGKILLed (pid $pid)"
}

cluster_restart() {
  local n=$1
  node_pid "$n" >/dev/null && stop_nodes 60 "$n"
  fetch
  fetch_cluster_logging
  configure_node "$n"
  launch_node "$n"
  wait_nodes "$n"
}

cluster_status() {
  local n pid seen ok=0
  for n in $(seq 1 $CLUSTER_NODES); do
    if pid=$(node_pid "$n"); then
      if seen=$(metadata_brokers "$(node_port "$n")" $CLUSTER_NODES); then
        echo "node $n: running (pid $pid) on 127.0.0.1:$(node_port "$n"), sees brokers $seen"
      else
        echo "node $n: running (pid $pid) on 127.0.0.1:$(node_port "$n"), not ready${seen:+ (sees brokers $seen)}"
        ok=1
      fi
    else
      echo "node $n: stopped"
      ok=1
    fi
  done
  return $ok
}

cluster() {
  local all; all=$(seq 1 $CLUSTER_NODES)
  case "${1:-}" in
    start) cluster_start ;;
    stop) if [ -n "${2:-}" ]; then node_arg "$2"; stop_nodes 60 "$2"; else stop_nodes 20 $all; fi ;;
    kill) node_arg "${2:-}"; cluster_kill "$2" ;;
    restart) node_arg "${2:-}"; cluster_restart "$2" ;;
    status) cluster_status ;;
    servers) cluster_servers ;;
    logs) node_arg "${2:-}"; cat "$(node_dir "$2")/broker.log" ;;
    reset) stop_nodes 20 $all; rm -rf "$CLUSTER_DIR"; log "removed $CLUSTER_DIR" ;;
    *) echo "usage: $0 cluster start|stop [N]|status|servers|kill N|restart N|logs N|reset" >&2; exit 2 ;;
  esac
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  status) if running && ready; then echo "running on 127.0.0.1:$KAFKA_PORT"; else echo "stopped"; exit 1; fi ;;
  logs) cat "$LOGFILE" ;;
  fetch) fetch ;;
  reset) stop; rm -rf "$DATA"; log "removed $DATA" ;;
  cluster) shift; cluster "$@" ;;
  sasl)
    use_sasl
    case "${2:-}" in
      start) start ;;
      stop) stop ;;
      status) if running && ready; then echo "running on 127.0.0.1:$KAFKA_PORT (SASL_PLAINTEXT, SCRAM-SHA-512)${TLS_KEYSTORE:+ and 127.0.0.1:$TLS_PORT (SASL_SSL)}"; else echo "stopped"; exit 1; fi ;;
      logs) cat "$LOGFILE" ;;
      reset) stop; rm -rf "$DATA"; log "removed $DATA" ;;
      *) echo "usage: $0 sasl start|stop|status|logs|reset" >&2; exit 2 ;;
    esac ;;
  *) echo "usage: $0 start|stop|restart|status|logs|fetch|reset | sasl start|stop|status|logs|reset | cluster start|stop [N]|status|servers|kill N|restart N|logs N|reset" >&2; exit 2 ;;
esac

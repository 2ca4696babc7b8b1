#!/usr/bin/env bash
# A local chat cluster on loopback, everything started by the project's own scripts:
#   MariaDB primary + replica (scripts/mariadb.sh, 3307/3308), Redis (scripts/redis.sh, 6390),
#   three chat-server nodes on 127.0.0.1:8081-8083 (broker and membership cache in Redis,
#   metadata in MariaDB, messages in MariaDB or Cassandra) and nginx on 127.0.0.1:8090
#   (scripts/nginx.sh, deploy/nginx.conf.template) in front of them.
#
#   scripts/cluster.sh start [--cassandra] [--release] [--tls]
#                                                        build, start everything, wait until healthy
#   scripts/cluster.sh stop                              stop nodes and nginx (then Redis, MariaDB
#                                                        and Cassandra with --all)
#   scripts/cluster.sh status                            each part, and each node's /v1/health
#   scripts/cluster.sh logs [N] [LINES]                  tail of node N's log (every node by default)
#   scripts/cluster.sh restart-node N | kill-node N      graceful restart / kill -9 of one node
#
# --tls makes nginx terminate TLS too: HTTPS and WSS on 127.0.0.1:CHAT_LB_TLS_PORT (8453) with
# the PEM pair in CHAT_TLS_CERT/CHAT_TLS_KEY, or else a self-signed certificate for 127.0.0.1
# and localhost made with openssl under .services/cluster/tls/ (give its cert.pem to clients as
# their root: `ClientBuilder::add_root_certificate_pem`, `curl --cacert`). Plain HTTP stays on
# CHAT_LB_PORT. The nodes themselves speak plain HTTP behind nginx.
# --cassandra keeps messages in Cassandra (scripts/cassandra.sh start 1; its first start fetches
# jars with Maven and takes minutes). Environment: CHAT_CLUSTER_DB (database name, chat_cluster),
# CHAT_LB_PORT (8090), CHAT_NODE_BASE_PORT (8080: nodes on +1..+3).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

DIR="$SERVICES/cluster"
DB="${CHAT_CLUSTER_DB:-chat_cluster}"
LB_PORT="${CHAT_LB_PORT:-8090}"
LB_TLS_PORT="${CHAT_LB_TLS_PORT:-8453}"
BASE_PORT="${CHAT_NODE_BASE_PORT:-8080}"
NODES=(1 2 3)

node_port() { echo $((BASE_PORT + $1)); }

start() {
  local cassandra=0 profile=debug cargo_profile=() tls=0
  for a in "$@"; do
    case "$a" in
      --cassandra) cassandra=1 ;;
      --tls) tls=1 ;;
      --release) profile=release; cargo_profile=(--release) ;;
      *) die "unknown flag $a" ;;
    esac
  done
  mkdir -p "$DIR"

  local features="redis,mysql"
  [ "$cassandra" = 1 ] && features+=",cassandra"
  log "building chat-server ($profile, features $features)"
  (cd "$ROOT" && cargo build -q "${cargo_profile[@]}" -p chat-server --features "$features")
  local bin="${CARGO_TARGET_DIR:-$ROOT/target}/$profile/chat-server"
  [ -x "$bin" ] || die "no binary at $bin"

  "$ROOT/scripts/mariadb.sh" start
  "$ROOT/scripts/redis.sh" start
  eval "$("$ROOT/scripts/mariadb.sh" env)"
  eval "$("$ROOT/scripts/redis.sh" env)"
  local metadata="$CHAT_TEST_MYSQL_URL/$DB"
  local replica="$CHAT_TEST_MYSQL_REPLICA_URL/$DB"
  local messages="$metadata"
  if [ "$cassandra" = 1 ]; then
    "$ROOT/scripts/cassandra.sh" start 1
    messages="$("$ROOT/scripts/cassandra.sh" url)"
  fi

  # The first node creates and migrates the database; the others then open it.
  local upstreams=()
  for n in "${NODES[@]}"; do
    start_node "$n" "$bin" "$metadata" "$replica" "$messages" "$CHAT_TEST_REDIS_URL"
    upstreams+=("127.0.0.1:$(node_port "$n")")
  done
  if [ "$tls" = 1 ]; then
    tls_pair
    CHAT_NGINX_TLS_PORT="$LB_TLS_PORT" "$ROOT/scripts/nginx.sh" start "$LB_PORT" "${upstreams[@]}"
  else
    CHAT_NGINX_TLS_CERT="" CHAT_NGINX_TLS_KEY="" "$ROOT/scripts/nginx.sh" start "$LB_PORT" "${upstreams[@]}"
  fi
  wait_healthy "127.0.0.1:$LB_PORT" || die "nginx does not reach a healthy node"
  log "cluster up: http://127.0.0.1:$LB_PORT (nodes ${upstreams[*]}; messages in ${messages%%:*})"
  [ "$tls" = 1 ] && log "TLS: https://127.0.0.1:$LB_TLS_PORT, wss://127.0.0.1:$LB_TLS_PORT/v1/ws (root: $CHAT_NGINX_TLS_CERT)"
  return 0
}

# tls_pair: sets CHAT_NGINX_TLS_CERT/KEY from CHAT_TLS_CERT/KEY, or makes a self-signed pair.
tls_pair() {
  if [ -n "${CHAT_TLS_CERT:-}" ] || [ -n "${CHAT_TLS_KEY:-}" ]; then
    export CHAT_NGINX_TLS_CERT="${CHAT_TLS_CERT:-}" CHAT_NGINX_TLS_KEY="${CHAT_TLS_KEY:-}"
    return
  fi
  local t="$DIR/tls"
  if [ ! -s "$t/cert.pem" ] || [ ! -s "$t/key.pem" ]; then
    mkdir -p "$t"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 365 \
      -subj "/CN=chat cluster (self-signed)" \
      -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" \
      -addext "basicConstraints=critical,CA:FALSE" \
      -keyout "$t/key.pem" -out "$t/cert.pem" 2>"$t/openssl.log" \
      || { cat "$t/openssl.log" >&2; die "making a self-signed certificate failed"; }
    chmod 600 "$t/key.pem"
    log "made a self-signed certificate: $t/cert.pem"
  fi
  export CHAT_NGINX_TLS_CERT="$t/cert.pem" CHAT_NGINX_TLS_KEY="$t/key.pem"
}

# start_node N BIN METADATA REPLICA MESSAGES REDIS
start_node() {
  local n=$1 bin=$2 port pid="$DIR/node$1.pid"
  port=$(node_port "$n")
  if pid_alive "$pid"; then log "node $n already running on $port"; return 0; fi
  # Remember how it was started, for restart-node.
  printf '%q ' "$@" > "$DIR/node$n.cmd"
  mkdir -p "$DIR/node$n"
  NO_COLOR=1 nohup "$bin" \
    --listen "127.0.0.1:$port" --node-id "node$n" --data-dir "$DIR/node$n" \
    --metadata "$3" --metadata-replica "$4" --messages "$5" \
    --broker "$6" --cache-redis --trusted-proxy 127.0.0.1 \
    >>"$DIR/node$n.log" 2>&1 </dev/null &
  echo $! > "$pid"
  wait_healthy "127.0.0.1:$port" || { tail -n 40 "$DIR/node$n.log" >&2; die "node $n did not become healthy"; }
  log "node $n on 127.0.0.1:$port"
}

# wait_healthy HOST:PORT : waits up to 60 s for GET /v1/health to answer 200.
wait_healthy() {
  local i
  for ((i = 0; i < 600; i++)); do
    curl -fsS -o /dev/null "http://$1/v1/health" 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

stop_node() {
  local pid="$DIR/node$1.pid"
  if pid_alive "$pid"; then
    kill "$(cat "$pid")"   # SIGTERM: graceful drain, WebSockets told to reconnect (1012)
    for _ in $(seq 150); do pid_alive "$pid" || break; sleep 0.1; done
    pid_alive "$pid" && kill -9 "$(cat "$pid")"
  fi
  rm -f "$pid"
}

stop() {
  "$ROOT/scripts/nginx.sh" stop
  for n in "${NODES[@]}"; do stop_node "$n"; done
  if [ "${1:-}" = "--all" ]; then
    "$ROOT/scripts/redis.sh" stop
    "$ROOT/scripts/mariadb.sh" stop
    [ -x "$ROOT/scripts/cassandra.sh" ] && "$ROOT/scripts/cassandra.sh" stop || true
  fi
  log "cluster stopped"
}

status() {
  local rc=0
  "$ROOT/scripts/redis.sh" status || rc=1
  "$ROOT/scripts/nginx.sh" status || rc=1
  for n in "${NODES[@]}"; do
    local port; port=$(node_port "$n")
    if pid_alive "$DIR/node$n.pid"; then
      echo "node $n (pid $(cat "$DIR/node$n.pid")) on $port: $(curl -sS "http://127.0.0.1:$port/v1/health" 2>&1 || true)"
    else
      echo "node $n stopped"; rc=1
    fi
  done
  echo "through nginx: $(curl -sS "http://127.0.0.1:$LB_PORT/v1/health" 2>&1 || true)"
  return $rc
}

logs() {
  local only="${1:-}" lines="${2:-50}"
  for n in "${NODES[@]}"; do
    [ -n "$only" ] && [ "$only" != "$n" ] && continue
    echo "----- node $n ($DIR/node$n.log) -----"
    tail -n "$lines" "$DIR/node$n.log" 2>/dev/null || true
  done
}

case "${1:-}" in
  start) shift; start "$@" ;;
  stop) shift; stop "$@" ;;
  status) status ;;
  logs) shift; logs "$@" ;;
  restart-node)
    [ -n "${2:-}" ] && [ -f "$DIR/node$2.cmd" ] || die "usage: $0 restart-node N (after start)"
    stop_node "$2"
    eval "start_node $(cat "$DIR/node$2.cmd")" ;;
  kill-node)
    [ -n "${2:-}" ] || die "usage: $0 kill-node N"
    pid_alive "$DIR/node$2.pid" && kill -9 "$(cat "$DIR/node$2.pid")"
    rm -f "$DIR/node$2.pid" ;;
  *) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac

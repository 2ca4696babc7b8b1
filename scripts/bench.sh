#!/usr/bin/env bash
# One command per benchmark scenario of docs/benchmarks.md.
#
#   scripts/bench.sh fanout        # fan-out latency and deliveries/s (open loop)
#   scripts/bench.sh ack           # send->ack latency at 10,000 msg/s on SQLite
#   scripts/bench.sh changes       # edits and reactions/s over REST, change->update latency
#   scripts/bench.sh chat-list     # GET /v1/chats for a user in 500 chats; read-marker writes/s
#   scripts/bench.sh typing        # fan-out without and with typing mixed in, interleaved A/B/A/B
#   scripts/bench.sh connections   # server RSS per idle WebSocket
#   scripts/bench.sh history-seed  # write 10M messages into a fresh data dir (once)
#   scripts/bench.sh history       # page back through them, latency per page
#   scripts/bench.sh writes        # sustained acked sends/s through the server (WebSocket)
#   scripts/bench.sh writes-rest   # the same over POST /v1/send
#   scripts/bench.sh writes-sdk    # the SDK's send: over its subscription's WebSocket, then REST
#   scripts/bench.sh writes-store  # appends/s straight into SQLite (no server)
#   scripts/bench.sh criterion     # cargo bench: frames, hub fan-out, SQLite append batches
#   scripts/bench.sh search        # SQLite: appends/s with the search index, search p50/p99
#                                  # (args: CHATS MESSAGES USER_CHATS SEARCHES, default 200 1000 50 300)
#   scripts/bench.sh peers         # side by side with Centrifugo v6.9.1 (see below)
#
# Arguments after the scenario replace its default load-generator flags (shown below), e.g.
# `scripts/bench.sh fanout --users 200 --groups 10 --group-size 20 --rate 500 --duration 5`.
# Each run starts its own server (`loadgen serve`: the chat-server library with the rate limits
# off; see examples/src/loadgen/serve.rs) on 127.0.0.1:$BENCH_PORT with `ulimit -n` raised to
# the hard limit, passes its PID to the generator (for CPU and RSS), and stops it afterwards.
# BENCH_MESSAGES / BENCH_METADATA (e.g. a mysql:// or cassandra:// URL) put the server of the
# fanout, ack, changes, chat-list, typing and writes scenarios on another backend than SQLite.
# Results: $BENCH_OUT/<scenario>.json and .png (default target/bench/). BENCH_LOADGEN=PATH uses
# an already built load generator (e.g. another commit's) instead of building this tree.
# BENCH_PIN=1 pins the server to core 0 and the load generator to core 1 (`taskset`), so the
# two never compete for a core and a lag can be told apart: the server's or the generator's.
#
# `peers`: chat-server and Centrifugo side by side, driven by the same load-generator code
# (`loadgen peer-idle` / `peer-publish`, examples/src/loadgen/peers.rs). It installs Centrifugo
# v6.9.1 once with `GOBIN=$TARGET/centrifugo-bin go install
# github.com/centrifugal/centrifugo/v6@v6.9.1` (needs Go and the Go module proxy; kept under the
# target dir, not in git), writes its config to $OUT/peers/centrifugo.json (a random HMAC token
# secret and API key, a `chat` namespace that lets authenticated users subscribe, no history, no
# presence, no join/leave), and for every scenario runs chat-server, Centrifugo, chat-server,
# Centrifugo (A/B/A/B), each on a fresh server pinned to CPU $BENCH_PEERS_SERVER_CPU (0) with
# `taskset`, the generator pinned to CPU $BENCH_PEERS_LOADGEN_CPU (1):
#   - idle: $BENCH_PEERS_IDLE (15000) authenticated WebSockets subscribed to a group each of 100
#     users in groups of 5; server RSS per connection;
#   - fan-out: $BENCH_PEERS_SUBSCRIBERS (1000) subscribers of one chat, messages sent over HTTP at
#     each rate of $BENCH_PEERS_RATES ("50 100 200") msg/s for $BENCH_PEERS_DURATION (30) s;
#   - small chats: $BENCH_PEERS_CHATS (2000) chats of $BENCH_PEERS_CHAT_SIZE (5), $BENCH_PEERS_SEND_RATE
#     (1000) sends/s over HTTP for $BENCH_PEERS_DURATION s;
# chat-server sends with POST /v1/send (stored in SQLite, fsynced), Centrifugo publishes with
# POST /api/publish (kept nowhere). Reports: $OUT/peers/*.json; the side-by-side table
# (delivered/s, send->deliver p50/p99/p99.9, server CPU-s, deliveries per server CPU-second,
# server RSS per connection, ratios chat-server / Centrifugo) goes to $OUT/peers.md and stdout.
# The full run takes about 12 minutes (20 runs; the first time add the release build and about 8
# minutes of `go install`). BENCH_PEERS_SHORT=1 makes a ~3-minute check (2,000 idle connections,
# 5 s per step, 400 chats); each BENCH_PEERS_* variable above overrides its figure,
# BENCH_PEERS_ROUNDS (2) the number of A/B pairs, BENCH_CENTRIFUGO_PORT ($BENCH_PORT + 70) its port,
# BENCH_PEERS_SCENARIOS ("idle fanout small") which of the three steps run (e.g. "fanout").
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
OUT="${BENCH_OUT:-$TARGET/bench}"
PORT="${BENCH_PORT:-18080}"
DATA="${BENCH_DATA:-$OUT/data}"
# BENCH_LOADGEN=/path/to/loadgen runs a given build instead of building this tree (A/B runs of
# two commits, interleaved).
LOADGEN="${BENCH_LOADGEN:-$TARGET/release/examples/loadgen}"
SERVER_PID=""
# Command prefixes for the server and the generator (BENCH_PIN=1, and the peers scenario, pin
# them to a CPU each with taskset).
SERVER_PREFIX=()
PIN_CLIENT=(env)
if [ "${BENCH_PIN:-0}" = 1 ]; then SERVER_PREFIX=(taskset -c 0); PIN_CLIENT=(taskset -c 1); fi

log() { printf '[bench] %s\n' "$*" >&2; }

build() {
  if [ -n "${BENCH_LOADGEN:-}" ]; then log "using $BENCH_LOADGEN"; return 0; fi
  log "building the load generator (release)"
  # A server on MySQL or Cassandra needs the store features.
  local features=()
  [ ${#STORES[@]} -gt 0 ] && features=(--features mysql,cassandra)
  (cd "$ROOT" && cargo build --release -q -p examples --example loadgen "${features[@]}")
}

# start_server DATA_DIR [serve flags...]: starts `loadgen serve` and waits for /v1/health.
start_server() {
  local dir=$1; shift
  mkdir -p "$dir"
  (
    ulimit -n "$(ulimit -Hn)"
    exec ${SERVER_PREFIX[@]+"${SERVER_PREFIX[@]}"} "$LOADGEN" serve \
      --listen "127.0.0.1:$PORT" --data-dir "$dir" "$@"
  ) >"$OUT/server.log" 2>&1 &
  SERVER_PID=$!
  wait_healthy "http://127.0.0.1:$PORT/v1/health" "$OUT/server.log" \
    "server pid $SERVER_PID on port $PORT (data: $dir)"
}

# wait_healthy URL LOG MESSAGE: waits (30 s at most) until URL answers, then logs MESSAGE; if
# $SERVER_PID dies or never gets healthy, shows LOG and exits.
wait_healthy() {
  for _ in $(seq 1 300); do
    if curl -sf "$1" >/dev/null 2>&1; then
      log "$3"
      return 0
    fi
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$2" >&2; exit 1; }
    sleep 0.1
  done
  log "not healthy: $1"; cat "$2" >&2; exit 1
}

stop_server() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID"
    # A server that has not stopped after 20 s is killed.
    for _ in $(seq 1 200); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$SERVER_PID" 2>/dev/null && kill -KILL "$SERVER_PID"
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  SERVER_PID=""
}
trap stop_server EXIT

# fresh_data NAME: an empty data directory for one run.
fresh_data() { rm -rf "$OUT/$1-data"; mkdir -p "$OUT/$1-data"; echo "$OUT/$1-data"; }

lg() {
  local name=$1; shift
  "${PIN_CLIENT[@]}" "$LOADGEN" "$@" --server "http://127.0.0.1:$PORT" --server-pid "$SERVER_PID" \
    --out "$OUT/$name.json" --plot "$OUT/$name.png"
}

# The server's stores: SQLite in the run's data directory unless BENCH_MESSAGES / BENCH_METADATA
# say otherwise.
STORES=()
[ -n "${BENCH_MESSAGES:-}" ] && STORES+=(--messages "$BENCH_MESSAGES")
[ -n "${BENCH_METADATA:-}" ] && STORES+=(--metadata "$BENCH_METADATA")

# ---- peers: chat-server and Centrifugo side by side -------------------------------------------
CENTRIFUGO_VERSION=v6.9.1
CENTRIFUGO="$TARGET/centrifugo-bin/centrifugo"
CENT_PORT="${BENCH_CENTRIFUGO_PORT:-$((PORT + 70))}"

# install_centrifugo: `go install` of the pinned version into $TARGET/centrifugo-bin, once.
install_centrifugo() {
  if [ -x "$CENTRIFUGO" ] && go version -m "$CENTRIFUGO" 2>/dev/null \
      | grep -q "mod[[:space:]]*github.com/centrifugal/centrifugo/v6[[:space:]]*$CENTRIFUGO_VERSION"; then
    log "Centrifugo $CENTRIFUGO_VERSION: $CENTRIFUGO"
    return 0
  fi
  command -v go >/dev/null || { log "the peers scenario needs Go to install Centrifugo"; exit 1; }
  log "installing Centrifugo $CENTRIFUGO_VERSION into $(dirname "$CENTRIFUGO") (go install)"
  mkdir -p "$(dirname "$CENTRIFUGO")"
  (cd "$(dirname "$CENTRIFUGO")" && GOBIN="$(dirname "$CENTRIFUGO")" GOFLAGS=-buildvcs=false \
    go install "github.com/centrifugal/centrifugo/v6@$CENTRIFUGO_VERSION")
}

# write_centrifugo_config FILE: HMAC token secret, API key (random per run), one namespace `chat`
# that authenticated users may subscribe to, no history, presence or join/leave messages.
write_centrifugo_config() {
  CENT_SECRET=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
  CENT_API_KEY=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
  cat >"$1" <<JSON
{
  "http_server": { "address": "127.0.0.1", "port": $CENT_PORT },
  "log": { "level": "warn" },
  "client": { "token": { "hmac_secret_key": "$CENT_SECRET" } },
  "http_api": { "key": "$CENT_API_KEY" },
  "channel": {
    "namespaces": [
      { "name": "chat", "allow_subscribe_for_client": true, "presence": false,
        "join_leave": false, "history_size": 0, "history_ttl": "0s" }
    ]
  },
  "health": { "enabled": true },
  "usage_stats": { "disabled": true },
  "shutdown": { "timeout": "5s" }
}
JSON
}

# start_centrifugo CONFIG: starts it (pinned like chat-server) and waits for /health.
start_centrifugo() {
  (
    ulimit -n "$(ulimit -Hn)"
    exec ${SERVER_PREFIX[@]+"${SERVER_PREFIX[@]}"} "$CENTRIFUGO" -c "$1"
  ) >"$OUT/centrifugo.log" 2>&1 &
  SERVER_PID=$!
  wait_healthy "http://127.0.0.1:$CENT_PORT/health" "$OUT/centrifugo.log" \
    "centrifugo pid $SERVER_PID on port $CENT_PORT"
}

# peer_run PEER NAME LOADGEN-ARGS...: a fresh server of PEER, one generator run, the server
# stopped; the report goes to $OUT/peers/NAME.json.
peer_run() {
  local peer=$1 name=$2; shift 2
  local url
  if [ "$peer" = chat-server ]; then
    start_server "$(fresh_data "peers-$name")" --fast-passwords
    url="http://127.0.0.1:$PORT"
  else
    start_centrifugo "$OUT/peers/centrifugo.json"
    url="http://127.0.0.1:$CENT_PORT"
  fi
  CENTRIFUGO_API_KEY="$CENT_API_KEY" CENTRIFUGO_HMAC_SECRET="$CENT_SECRET" \
    ${LOADGEN_PREFIX[@]+"${LOADGEN_PREFIX[@]}"} "$LOADGEN" "$@" --peer "$peer" --server "$url" \
    --server-pid "$SERVER_PID" --no-progress --out "$OUT/peers/$name.json" >/dev/null
  stop_server
  [ "$peer" = chat-server ] && rm -rf "$OUT/peers-$name-data"
  REPORTS+=("$OUT/peers/$name.json")
}

peers() {
  local short=${BENCH_PEERS_SHORT:-0}
  local idle=${BENCH_PEERS_IDLE:-$([ "$short" = 1 ] && echo 2000 || echo 15000)}
  local subscribers=${BENCH_PEERS_SUBSCRIBERS:-1000}
  local rates=${BENCH_PEERS_RATES:-50 100 200}
  local duration=${BENCH_PEERS_DURATION:-$([ "$short" = 1 ] && echo 5 || echo 30)}
  local chats=${BENCH_PEERS_CHATS:-$([ "$short" = 1 ] && echo 400 || echo 2000)}
  local chat_size=${BENCH_PEERS_CHAT_SIZE:-5}
  local send_rate=${BENCH_PEERS_SEND_RATE:-1000}
  local rounds=${BENCH_PEERS_ROUNDS:-2}
  local server_cpu=${BENCH_PEERS_SERVER_CPU:-0} loadgen_cpu=${BENCH_PEERS_LOADGEN_CPU:-1}
  local scenarios=" ${BENCH_PEERS_SCENARIOS:-idle fanout small} "
  install_centrifugo
  build
  if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
    SERVER_PREFIX=(taskset -c "$server_cpu")
    LOADGEN_PREFIX=(taskset -c "$loadgen_cpu")
  else
    log "no taskset or one CPU: server and generator run unpinned"
    LOADGEN_PREFIX=()
  fi
  rm -rf "$OUT/peers"; mkdir -p "$OUT/peers"
  write_centrifugo_config "$OUT/peers/centrifugo.json"
  REPORTS=()
  local started load_before
  started=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  load_before=$(cut -d' ' -f1-3 /proc/loadavg)
  local round peer
  for round in $(seq 1 "$rounds"); do
    [[ $scenarios == *" idle "* ]] || break
    for peer in chat-server centrifugo; do
      log "idle $idle: $peer, round $round"
      peer_run "$peer" "idle-$peer-$round" peer-idle --connections "$idle"
    done
  done
  local rate
  for rate in $rates; do
    [[ $scenarios == *" fanout "* ]] || break
    for round in $(seq 1 "$rounds"); do
      for peer in chat-server centrifugo; do
        log "fan-out to $subscribers at $rate msg/s: $peer, round $round"
        peer_run "$peer" "fanout-$rate-$peer-$round" peer-publish --groups 1 \
          --group-size "$subscribers" --rate "$rate" --duration "$duration"
      done
    done
  done
  for round in $(seq 1 "$rounds"); do
    [[ $scenarios == *" small "* ]] || break
    for peer in chat-server centrifugo; do
      log "small chats $chats x $chat_size at $send_rate sends/s: $peer, round $round"
      peer_run "$peer" "small-$peer-$round" peer-publish --groups "$chats" \
        --group-size "$chat_size" --rate "$send_rate" --duration "$duration"
    done
  done
  {
    echo "Side by side with Centrifugo $CENTRIFUGO_VERSION, $started to $(date -u +%H:%M:%SZ)"
    echo "(\`scripts/bench.sh peers\`: idle $idle, fan-out to $subscribers at $rates msg/s and"
    echo "$chats chats of $chat_size at $send_rate sends/s, $duration s each, $rounds rounds A/B;"
    echo "server on CPU $server_cpu, generator on CPU $loadgen_cpu; load average before:"
    echo "$load_before, after: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) CPUs)."
    echo
    "$LOADGEN" peers-table "${REPORTS[@]}"
  } >"$OUT/peers.md"
  cat "$OUT/peers.md"
  log "table: $OUT/peers.md, reports: $OUT/peers/"
}

scenario="${1:-}"; shift || true
mkdir -p "$OUT"
# flags DEFAULT...: the caller's flags if any were given, else the defaults.
EXTRA=("$@")
flags() { if [ ${#EXTRA[@]} -gt 0 ]; then printf '%s\n' "${EXTRA[@]}"; else printf '%s\n' "$@"; fi; }
case "$scenario" in
  fanout)
    build
    start_server "$(fresh_data fanout)" --fast-passwords "${STORES[@]}"
    mapfile -t F < <(flags --users 2000 --groups 40 --group-size 50 --rate 2000 --duration 30)
    lg fanout fanout "${F[@]}"
    ;;
  ack)
    build
    start_server "$(fresh_data ack)" --fast-passwords "${STORES[@]}"
    mapfile -t F < <(flags --users 1000 --groups 500 --group-size 2 --rate 10000 --duration 30)
    lg ack fanout "${F[@]}"
    ;;
  changes)
    build
    start_server "$(fresh_data changes)" --fast-passwords "${STORES[@]}"
    mapfile -t F < <(flags --users 200 --groups 20 --group-size 10 --messages 50 --rate 1000 --duration 20)
    lg changes changes "${F[@]}"
    ;;
  chat-list)
    build
    start_server "$(fresh_data chat-list)" --fast-passwords "${STORES[@]}"
    mapfile -t F < <(flags --chats 500 --messages 20 --concurrency 4 --duration 20)
    lg chat-list chat-list "${F[@]}"
    ;;
  typing)
    # The same fan-out run without and with a typing frame before every send, twice each,
    # interleaved, each on a fresh server: compare deliveries per server CPU-second.
    build
    mapfile -t F < <(flags --users 1000 --groups 100 --group-size 10 --rate 1000 --duration 20)
    for round in 1 2; do
      for mode in off on; do
        start_server "$(fresh_data "typing-$mode-$round")" --fast-passwords "${STORES[@]}"
        extra=(); [ "$mode" = on ] && extra=(--typing)
        lg "typing-$mode-$round" fanout "${F[@]}" "${extra[@]}"
        stop_server
      done
    done
    ;;
  connections)
    build
    start_server "$(fresh_data connections)" --fast-passwords
    # Both processes are bounded by the hard open-file limit (ulimit -Hn).
    n=$(( $(ulimit -Hn) - 500 ))
    mapfile -t F < <(flags --connections "$n" --users 100 --per-source 10000)
    "$LOADGEN" connections --server "http://127.0.0.1:$PORT" --server-pid "$SERVER_PID" \
      --out "$OUT/connections.json" "${F[@]}"
    ;;
  history-seed)
    build
    rm -rf "$DATA"
    mapfile -t F < <(flags --messages 10000000 --concurrency 1024)
    "$LOADGEN" seed-history --data-dir "$DATA" --out "$OUT/history-seed.json" "${F[@]}"
    ;;
  history)
    build
    [ -e "$DATA/chat.db" ] || { log "run 'scripts/bench.sh history-seed' first"; exit 1; }
    start_server "$DATA"
    mapfile -t F < <(flags --page-size 50 --max-pages 20000)
    lg history history "${F[@]}"
    ;;
  writes)
    build
    start_server "$(fresh_data writes)" --fast-passwords "${STORES[@]}"
    mapfile -t F < <(flags --senders 64 --window 32 --duration 20)
    lg writes writes --via ws "${F[@]}"
    ;;
  writes-sdk)
    # The SDK's two send paths under the same load, each on a fresh server: over a connected
    # subscription's WebSocket, then over REST (no subscription).
    build
    mapfile -t F < <(flags --senders 64 --window 4 --duration 15)
    for via in sdk-ws sdk-rest; do
      start_server "$(fresh_data "writes-$via")" --fast-passwords "${STORES[@]}"
      lg "writes-$via" writes --via "$via" "${F[@]}"
      stop_server
    done
    ;;
  writes-rest)
    build
    start_server "$(fresh_data writes-rest)" --fast-passwords "${STORES[@]}"
    mapfile -t F < <(flags --senders 64 --window 4 --duration 20)
    lg writes-rest writes --via rest "${F[@]}"
    ;;
  writes-store)
    build
    dir=$(fresh_data writes-store)
    mapfile -t F < <(flags --concurrency 1024 --duration 20)
    "$LOADGEN" writes-store --data-dir "$dir" \
      --out "$OUT/writes-store.json" --plot "$OUT/writes-store.png" "${F[@]}"
    ;;
  search)
    # Store level, no server: chat-storage/examples/search_timing.rs. Its output goes to
    # $OUT/search.txt too. Append cost before search: `writes-store` on the parent commit.
    mapfile -t F < <(flags 200 1000 50 300)
    (cd "$ROOT" && cargo run --release -q -p chat-storage --features sqlite,testing \
      --example search_timing -- "${F[@]}") | tee "$OUT/search.txt"
    ;;
  peers)
    peers
    ;;
  criterion)
    (cd "$ROOT" && cargo bench -p chat-server --bench frames --bench fanout \
      && cargo bench -p chat-storage --features sqlite --bench sqlite_append)
    ;;
  *)
    sed -n '2,/^set -euo/{/^#/p}' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac

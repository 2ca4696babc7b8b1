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
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
OUT="${BENCH_OUT:-$TARGET/bench}"
PORT="${BENCH_PORT:-18080}"
DATA="${BENCH_DATA:-$OUT/data}"
# BENCH_LOADGEN=/path/to/loadgen runs a given build instead of building this tree (A/B runs of
# two commits, interleaved).
LOADGEN="${BENCH_LOADGEN:-$TARGET/release/examples/loadgen}"
PIN_SERVER=(env)
PIN_CLIENT=(env)
if [ "${BENCH_PIN:-0}" = 1 ]; then PIN_SERVER=(taskset -c 0); PIN_CLIENT=(taskset -c 1); fi
SERVER_PID=""

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
    exec "${PIN_SERVER[@]}" "$LOADGEN" serve --listen "127.0.0.1:$PORT" --data-dir "$dir" "$@"
  ) >"$OUT/server.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1 300); do
    if curl -sf "http://127.0.0.1:$PORT/v1/health" >/dev/null 2>&1; then
      log "server pid $SERVER_PID on port $PORT (data: $dir)"
      return 0
    fi
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$OUT/server.log" >&2; exit 1; }
    sleep 0.1
  done
  log "server did not become healthy"; cat "$OUT/server.log" >&2; exit 1
}

stop_server() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID"
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
  criterion)
    (cd "$ROOT" && cargo bench -p chat-server --bench frames --bench fanout \
      && cargo bench -p chat-storage --features sqlite --bench sqlite_append)
    ;;
  *)
    sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac

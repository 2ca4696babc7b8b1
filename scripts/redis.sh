#!/usr/bin/env bash
# Runs a Redis for the broker and the membership cache, on 127.0.0.1:${CHAT_REDIS_PORT:-6390}
# with its own directory under .services/redis. Installs Debian's redis-server if missing.
#
#   scripts/redis.sh install|start|stop|kill|restart|status|env|logs
#
# No persistence: Redis here carries only wake-ups and a cache; the record is the message store.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

PORT="${CHAT_REDIS_PORT:-6390}"
DIR="$SERVICES/redis"
PID="$DIR/redis.pid"
LOG="$DIR/redis.log"

start() {
  apt_install redis-server
  if pid_alive "$PID"; then log "redis already running on $PORT"; return 0; fi
  mkdir -p "$DIR"
  redis-server --port "$PORT" --bind 127.0.0.1 --dir "$DIR" --pidfile "$PID" --logfile "$LOG" \
    --daemonize yes --save "" --appendonly no --protected-mode yes \
    --client-output-buffer-limit "pubsub 32mb 8mb 60"
  wait_port 127.0.0.1 "$PORT" 30 || { tail -n 50 "$LOG" >&2; die "redis did not start"; }
  log "redis on 127.0.0.1:$PORT"
}

stop() {
  if pid_alive "$PID"; then
    kill "$(cat "$PID")"
    for _ in $(seq 50); do pid_alive "$PID" || break; sleep 0.1; done
  fi
  rm -f "$PID"
}

case "${1:-}" in
  install) apt_install redis-server ;;
  start) start ;;
  stop) stop ;;
  kill) pid_alive "$PID" && kill -9 "$(cat "$PID")"; rm -f "$PID" ;;
  restart) stop; start ;;
  status) pid_alive "$PID" && echo "redis running on $PORT" || { echo "redis stopped"; exit 1; } ;;
  env) echo "export CHAT_TEST_REDIS_URL=redis://127.0.0.1:$PORT" ;;
  logs) tail -n "${2:-100}" "$LOG" 2>/dev/null || true ;;
  *) echo "usage: $0 install|start|stop|kill|restart|status|env|logs" >&2; exit 2 ;;
esac

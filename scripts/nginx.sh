#!/usr/bin/env bash
# Runs nginx as the load balancer in front of chat-server nodes (deploy/nginx.conf.template).
#
#   scripts/nginx.sh start LISTEN_PORT NODE_ADDR...   e.g. start 8090 127.0.0.1:8081 127.0.0.1:8082
#   scripts/nginx.sh stop|status|logs
set -euo pipefail
source "$(dirname "$0")/lib.sh"

DIR="$SERVICES/nginx"
PID="$DIR/nginx.pid"

start() {
  local listen=$1; shift
  [ $# -gt 0 ] || die "give at least one node address"
  apt_install nginx
  mkdir -p "$DIR"
  local ups=""
  for n in "$@"; do ups+="        server $n max_fails=1 fail_timeout=5s;"$'\n'; done
  local conf="$DIR/nginx.conf"
  awk -v ups="$ups" -v dir="$DIR" -v listen="127.0.0.1:$listen" '
    { gsub(/@DIR@/, dir); gsub(/@LISTEN@/, listen) }
    /^@UPSTREAMS@$/ { printf "%s", ups; next }
    { print }' "$ROOT/deploy/nginx.conf.template" > "$conf"
  nginx -t -c "$conf" -p "$DIR" 2>"$DIR/test.log" || { cat "$DIR/test.log" >&2; die "bad nginx config"; }
  if pid_alive "$PID"; then
    nginx -c "$conf" -p "$DIR" -s reload
  else
    nginx -c "$conf" -p "$DIR"
  fi
  wait_port 127.0.0.1 "$listen" 20 || { tail -n 50 "$DIR/error.log" >&2; die "nginx did not start"; }
  log "nginx on 127.0.0.1:$listen -> $*"
}

case "${1:-}" in
  install) apt_install nginx ;;
  start) shift; start "$@" ;;
  stop)
    if pid_alive "$PID"; then kill "$(cat "$PID")"; for _ in $(seq 50); do pid_alive "$PID" || break; sleep 0.1; done; fi
    rm -f "$PID" ;;
  status) pid_alive "$PID" && echo "nginx running" || { echo "nginx stopped"; exit 1; } ;;
  logs) tail -n "${2:-100}" "$DIR/error.log" 2>/dev/null || true ;;
  *) echo "usage: $0 start PORT NODE...|stop|status|logs" >&2; exit 2 ;;
esac

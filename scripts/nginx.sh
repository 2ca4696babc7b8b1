#!/usr/bin/env bash
# Runs nginx as the load balancer in front of chat-server nodes (deploy/nginx.conf.template).
#
#   scripts/nginx.sh start LISTEN_PORT NODE_ADDR...   e.g. start 8090 127.0.0.1:8081 127.0.0.1:8082
#   scripts/nginx.sh stop|status|logs
#
# TLS: with CHAT_NGINX_TLS_CERT and CHAT_NGINX_TLS_KEY (PEM paths) set, nginx also serves HTTPS
# and WSS on 127.0.0.1:CHAT_NGINX_TLS_PORT (default LISTEN_PORT+363, e.g. 8453 for 8090) and
# terminates TLS there; without them only plain HTTP is served (local development).
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
  local tls=0 tls_listen="" cert="${CHAT_NGINX_TLS_CERT:-}" key="${CHAT_NGINX_TLS_KEY:-}"
  if [ -n "$cert$key" ]; then
    [ -r "$cert" ] && [ -r "$key" ] || die "CHAT_NGINX_TLS_CERT and CHAT_NGINX_TLS_KEY must both name readable PEM files"
    tls=1
    tls_listen="127.0.0.1:${CHAT_NGINX_TLS_PORT:-$((listen + 363))}"
  fi
  # Lines between @TLS_BEGIN@ and @TLS_END@ are kept (markers dropped) only with a certificate.
  awk -v ups="$ups" -v dir="$DIR" -v listen="127.0.0.1:$listen" -v tls="$tls" \
      -v tls_listen="$tls_listen" -v cert="$cert" -v key="$key" '
    /@TLS_BEGIN@/ { in_tls = 1; next }
    /@TLS_END@/ { in_tls = 0; next }
    in_tls && tls != 1 { next }
    { gsub(/@DIR@/, dir); gsub(/@TLS_LISTEN@/, tls_listen); gsub(/@LISTEN@/, listen)
      gsub(/@TLS_CERT@/, cert); gsub(/@TLS_KEY@/, key) }
    /^@UPSTREAMS@$/ { printf "%s", ups; next }
    { print }' "$ROOT/deploy/nginx.conf.template" > "$conf"
  nginx -t -c "$conf" -p "$DIR" 2>"$DIR/test.log" || { cat "$DIR/test.log" >&2; die "bad nginx config"; }
  if pid_alive "$PID"; then
    nginx -c "$conf" -p "$DIR" -s reload
  else
    nginx -c "$conf" -p "$DIR"
  fi
  wait_port 127.0.0.1 "$listen" 20 || { tail -n 50 "$DIR/error.log" >&2; die "nginx did not start"; }
  if [ $tls = 1 ]; then
    wait_port 127.0.0.1 "${tls_listen#*:}" 20 || { tail -n 50 "$DIR/error.log" >&2; die "nginx TLS port did not open"; }
    log "nginx on 127.0.0.1:$listen and https://$tls_listen -> $*"
  else
    log "nginx on 127.0.0.1:$listen -> $*"
  fi
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

# Shared helpers for the service scripts (sourced, not run).
# Every service runs on loopback, on a port and data directory of its own under $ROOT/.services.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SERVICES="${CHAT_SERVICES_DIR:-$ROOT/.services}"

log() { printf '[%s] %s\n' "$(basename "$0")" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# apt_install PKG... : installs Debian packages that are missing (runs `apt-get update` once first).
apt_install() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing ${missing[*]}"
  local sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  # Keep the packages' own init scripts from starting system-wide services on default ports.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
    $sudo chmod +x /usr/sbin/policy-rc.d
  fi
  if [ ! -e "$SERVICES/.apt-updated" ]; then
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    mkdir -p "$SERVICES" && touch "$SERVICES/.apt-updated"
  fi
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# wait_port HOST PORT SECONDS : waits until a TCP port accepts connections.
wait_port() {
  local host=$1 port=$2 secs=$3 i
  for ((i = 0; i < secs * 10; i++)); do
    (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

# pid_alive FILE : whether the pid in FILE is a running process.
pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

#!/usr/bin/env bash
# MariaDB for development, tests and CI: a primary on 127.0.0.1:3307 with the binary log on and a
# replica of it on 127.0.0.1:3308 (GTID binlog replication), each with its own data directory,
# socket, pid file and error log under $ROOT/.services/mariadb/{primary,replica} (gitignored).
# No Docker, no system service: the servers run as the current user (root on CI machines).
#
# Usage: scripts/mariadb.sh <command>
#   install        apt-get install mariadb-server/-client if no mariadbd/mysqld is found
#   start          install if needed, then start primary + replica and set up replication
#                  (a no-op for whatever is already running)
#   stop           stop both servers
#   start-primary  start only the primary (the outage test uses this)
#   stop-primary   stop only the primary (the outage test uses this)
#   crash-primary  SIGKILL the primary, as a crash would (the outage test uses this)
#   status         show whether each server answers and the replica's thread states
#   env            print `export CHAT_TEST_MYSQL_URL=...` and `CHAT_TEST_MYSQL_REPLICA_URL=...`
#   logs           tail both error logs (CI prints them when a test fails)
#   reset          stop both servers and delete their data directories
#
# Environment (all optional): CHAT_MARIADB_PRIMARY_PORT (3307), CHAT_MARIADB_REPLICA_PORT (3308),
# CHAT_MARIADB_PASSWORD (password of the `chat` user), CHAT_MARIADB_TIMEOUT (readiness timeout in
# seconds, 60).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BASE="$ROOT/.services/mariadb"
PRIMARY_PORT="${CHAT_MARIADB_PRIMARY_PORT:-3307}"
REPLICA_PORT="${CHAT_MARIADB_REPLICA_PORT:-3308}"
CHAT_PASSWORD="${CHAT_MARIADB_PASSWORD:-chat-dev-pw}"
# Replication credentials never leave loopback; a fixed value keeps restarts idempotent.
REPL_PASSWORD="chat-repl-pw"
TIMEOUT="${CHAT_MARIADB_TIMEOUT:-60}"
# mariadbd and friends live in /usr/sbin on Debian, which a non-login shell may not have on PATH.
export PATH="$PATH:/usr/sbin:/sbin"

log() { echo "mariadb.sh: $*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# First program of the list that exists (MariaDB renamed its binaries; old names are symlinks).
find_bin() {
    local b
    for b in "$@"; do
        if command -v "$b" >/dev/null 2>&1; then
            command -v "$b"
            return 0
        fi
    done
    return 1
}

server_bin() { find_bin mariadbd mysqld; }
client_bin() { find_bin mariadb mysql || die "no mariadb client; run: $0 install"; }
admin_bin() { find_bin mariadb-admin mysqladmin || die "no mariadb-admin; run: $0 install"; }
install_db_bin() { find_bin mariadb-install-db mysql_install_db || die "no mariadb-install-db; run: $0 install"; }

cmd_install() {
    if server_bin >/dev/null; then
        log "MariaDB server already installed: $(server_bin)"
        return 0
    fi
    [ "$(id -u)" = 0 ] || die "installing needs root (apt-get)"
    # The Debian package would start a system-wide server on 3306 from its postinst; these scripts
    # run their own instances, so forbid service starts during the install (policy-rc.d, exit 101)
    # unless the machine already has a policy of its own.
    local policy=/usr/sbin/policy-rc.d own_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod +x "$policy"
        own_policy=1
    fi
    local rc=0
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y mariadb-server mariadb-client; then
        log "apt-get install failed; refreshing the package lists once and retrying"
        apt-get update && apt-get install -y mariadb-server mariadb-client || rc=$?
    fi
    if [ "$own_policy" = 1 ]; then rm -f "$policy"; fi
    [ "$rc" = 0 ] || die "apt-get install mariadb-server mariadb-client failed"
    server_bin >/dev/null || die "installed, but no mariadbd/mysqld found"
    log "installed $(server_bin)"
}

# --- per-instance paths ------------------------------------------------------------------------

dir_of() { echo "$BASE/$1"; }
port_of() { if [ "$1" = primary ]; then echo "$PRIMARY_PORT"; else echo "$REPLICA_PORT"; fi; }
cnf_of() { echo "$(dir_of "$1")/my.cnf"; }
pidfile_of() { echo "$(dir_of "$1")/mariadbd.pid"; }
errlog_of() { echo "$(dir_of "$1")/error.log"; }
# Unix socket paths are limited to ~107 bytes; fall back to /tmp for deep checkouts.
socket_of() {
    local s
    s="$(dir_of "$1")/mariadbd.sock"
    if [ "${#s}" -gt 100 ]; then
        s="/tmp/chat-mariadb-$(echo "$ROOT" | cksum | cut -d' ' -f1)-$1.sock"
    fi
    echo "$s"
}

write_cnf() {
    local name=$1 dir port server_id role_lines
    dir="$(dir_of "$name")"
    port="$(port_of "$name")"
    if [ "$name" = primary ]; then
        server_id=1
        # ROW format replicates exactly what was written; sync_binlog=1 with the InnoDB default
        # innodb_flush_log_at_trx_commit=1 means an acked commit survives a crash, binlog included.
        role_lines="log-bin=mariadb-bin
binlog_format=ROW
sync_binlog=1"
    else
        server_id=2
        # Only the replication thread writes here: the application must never write to a replica.
        role_lines="read_only=1
relay-log=relay-bin
log-slave-updates=0"
    fi
    mkdir -p "$dir"
    cat >"$(cnf_of "$name")" <<EOF
# Written by scripts/mariadb.sh; regenerated on every start.
[mariadbd]
user=root
datadir=$dir/data
port=$port
bind-address=127.0.0.1
socket=$(socket_of "$name")
pid-file=$(pidfile_of "$name")
log-error=$(errlog_of "$name")
server-id=$server_id
$role_lines
skip-name-resolve
character-set-server=utf8mb4
collation-server=utf8mb4_unicode_ci
innodb_buffer_pool_size=128M
innodb_log_file_size=48M
innodb_flush_log_at_trx_commit=1
performance_schema=off
max_connections=1000
# Fail lock waits in seconds, not minutes; the store retries them.
innodb_lock_wait_timeout=10
EOF
}

# Runs SQL as root over the instance's socket (root has no password and exists only on loopback).
sql() {
    local name=$1
    shift
    "$(client_bin)" --no-defaults --protocol=socket --socket="$(socket_of "$name")" -uroot -N -B "$@"
}

is_up() {
    "$(admin_bin)" --no-defaults --protocol=socket --socket="$(socket_of "$1")" -uroot \
        --connect-timeout=2 ping >/dev/null 2>&1
}

pid_of() {
    local f
    f="$(pidfile_of "$1")"
    [ -s "$f" ] || return 1
    local pid
    pid="$(cat "$f")"
    kill -0 "$pid" 2>/dev/null || return 1
    echo "$pid"
}

show_log_and_die() {
    local name=$1
    shift
    log "$* -- last lines of $(errlog_of "$name"):"
    tail -n 60 "$(errlog_of "$name")" >&2 2>/dev/null || true
    exit 1
}

start_instance() {
    local name=$1 dir fresh=0
    dir="$(dir_of "$name")"
    if is_up "$name"; then
        log "$name already running on 127.0.0.1:$(port_of "$name")"
        return 0
    fi
    if pid_of "$name" >/dev/null; then
        # A process exists but does not answer yet (starting or shutting down): wait for it below.
        log "$name process $(pid_of "$name") exists; waiting for it"
    else
        write_cnf "$name"
        if [ ! -d "$dir/data/mysql" ]; then
            log "initialising $name data directory $dir/data"
            rm -rf "$dir/data"
            mkdir -p "$dir/data"
            "$(install_db_bin)" --defaults-file="$(cnf_of "$name")" --user=root \
                --auth-root-authentication-method=normal --skip-test-db \
                >"$dir/install-db.log" 2>&1 ||
                {
                    cat "$dir/install-db.log" >&2
                    die "mariadb-install-db failed for $name"
                }
            fresh=1
        fi
        log "starting $name on 127.0.0.1:$(port_of "$name")"
        # setsid + nohup: the server outlives this shell and the job that ran it.
        setsid nohup "$(server_bin)" --defaults-file="$(cnf_of "$name")" --user=root \
            >>"$dir/stdout.log" 2>&1 </dev/null &
    fi
    local waited=0
    until is_up "$name"; do
        if [ "$waited" -ge $((TIMEOUT * 2)) ]; then
            show_log_and_die "$name" "$name did not answer ping within ${TIMEOUT}s"
        fi
        sleep 0.5
        waited=$((waited + 1))
    done
    log "$name is up"
    if [ "$fresh" = 1 ]; then echo "fresh"; fi
}

# Users are created on the primary only: the replica receives them through replication (creating
# them on both would make the replica's SQL thread fail on a duplicate CREATE USER).
bootstrap_primary() {
    sql primary <<EOF
CREATE USER IF NOT EXISTS 'chat'@'127.0.0.1' IDENTIFIED BY '$CHAT_PASSWORD';
CREATE USER IF NOT EXISTS 'chat'@'localhost' IDENTIFIED BY '$CHAT_PASSWORD';
GRANT ALL PRIVILEGES ON *.* TO 'chat'@'127.0.0.1' WITH GRANT OPTION;
GRANT ALL PRIVILEGES ON *.* TO 'chat'@'localhost' WITH GRANT OPTION;
CREATE USER IF NOT EXISTS 'repl'@'127.0.0.1' IDENTIFIED BY '$REPL_PASSWORD';
GRANT REPLICATION SLAVE ON *.* TO 'repl'@'127.0.0.1';
EOF
}

slave_field() {
    # SHOW SLAVE STATUS\G prints "  Field: value" lines (with column names, hence --column-names).
    sql replica --column-names -e 'SHOW SLAVE STATUS\G' | sed -n "s/^ *$1: //p" | head -n 1
}

setup_replication() {
    if [ -z "$(sql replica -e 'SHOW SLAVE STATUS')" ]; then
        log "configuring replica of 127.0.0.1:$PRIMARY_PORT (GTID, slave_pos)"
        sql replica <<EOF
CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT=$PRIMARY_PORT, MASTER_USER='repl',
  MASTER_PASSWORD='$REPL_PASSWORD', MASTER_CONNECT_RETRY=1, MASTER_USE_GTID=slave_pos;
EOF
    fi
    # START SLAVE is a no-op (with a note) for threads already running.
    sql replica -e 'START SLAVE'
    local waited=0 io sqlt
    while :; do
        io="$(slave_field Slave_IO_Running)"
        sqlt="$(slave_field Slave_SQL_Running)"
        if [ "$io" = Yes ] && [ "$sqlt" = Yes ]; then break; fi
        if [ "$waited" -ge $((TIMEOUT * 2)) ]; then
            sql replica -e 'SHOW SLAVE STATUS\G' >&2 || true
            show_log_and_die replica "replication threads not running (IO=$io SQL=$sqlt)"
        fi
        sleep 0.5
        waited=$((waited + 1))
    done
    # Wait until the replica has applied everything the primary has so far (the chat user
    # included), so a test that connects to the replica right away can log in.
    local pos ok
    pos="$(sql primary -e 'SELECT @@gtid_binlog_pos')"
    ok="$(sql replica -e "SELECT MASTER_GTID_WAIT('$pos', $TIMEOUT)")"
    [ "$ok" = 0 ] || show_log_and_die replica "replica did not catch up with primary GTID $pos"
    log "replication running (IO=Yes SQL=Yes), replica at GTID $pos"
}

cmd_start() {
    server_bin >/dev/null || cmd_install
    local fresh
    fresh="$(start_instance primary)"
    if [ "$fresh" = fresh ] && [ -d "$(dir_of replica)/data" ]; then
        # A new primary has a new history: an old replica would wait for GTIDs that never come.
        log "primary is new; discarding the old replica"
        stop_instance replica
        rm -rf "$(dir_of replica)/data"
    fi
    bootstrap_primary
    start_instance replica >/dev/null
    setup_replication
    cmd_env
}

stop_instance() {
    local name=$1 pid
    if ! pid="$(pid_of "$name")"; then
        log "$name not running"
        return 0
    fi
    log "stopping $name (pid $pid)"
    "$(admin_bin)" --no-defaults --protocol=socket --socket="$(socket_of "$name")" -uroot \
        --connect-timeout=2 shutdown >/dev/null 2>&1 || kill "$pid" 2>/dev/null || true
    local waited=0
    while kill -0 "$pid" 2>/dev/null; do
        if [ "$waited" -ge $((TIMEOUT * 2)) ]; then
            log "$name (pid $pid) ignored shutdown for ${TIMEOUT}s; killing it"
            kill -9 "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.5
        waited=$((waited + 1))
    done
    log "$name stopped"
}

# A crash, not a shutdown: InnoDB and the binlog recover on the next start, and every commit that
# was acknowledged must still be there.
cmd_crash_primary() {
    local pid
    if ! pid="$(pid_of primary)"; then
        log "primary not running"
        return 0
    fi
    log "killing primary (pid $pid) with SIGKILL"
    kill -9 "$pid"
    local waited=0
    while kill -0 "$pid" 2>/dev/null; do
        [ "$waited" -lt $((TIMEOUT * 2)) ] || die "primary (pid $pid) survived SIGKILL"
        sleep 0.5
        waited=$((waited + 1))
    done
    rm -f "$(pidfile_of primary)"
}

cmd_stop() {
    stop_instance replica
    stop_instance primary
}

cmd_start_primary() {
    server_bin >/dev/null || die "MariaDB is not installed; run: $0 start"
    start_instance primary >/dev/null
    bootstrap_primary
}

cmd_status() {
    local name rc=0
    for name in primary replica; do
        if is_up "$name"; then
            echo "$name: up on 127.0.0.1:$(port_of "$name") (pid $(pid_of "$name" || echo '?'))"
        else
            echo "$name: down"
            rc=1
        fi
    done
    if is_up replica; then
        echo "replica: IO=$(slave_field Slave_IO_Running) SQL=$(slave_field Slave_SQL_Running)" \
            "lag=$(slave_field Seconds_Behind_Master)s gtid_io_pos=$(slave_field Gtid_IO_Pos)"
    fi
    return $rc
}

cmd_env() {
    echo "export CHAT_TEST_MYSQL_URL=mysql://chat:$CHAT_PASSWORD@127.0.0.1:$PRIMARY_PORT"
    echo "export CHAT_TEST_MYSQL_REPLICA_URL=mysql://chat:$CHAT_PASSWORD@127.0.0.1:$REPLICA_PORT"
}

cmd_logs() {
    local name
    for name in primary replica; do
        echo "===== $name: $(errlog_of "$name")"
        tail -n "${LINES_TO_SHOW:-100}" "$(errlog_of "$name")" 2>/dev/null || echo "(no log)"
    done
}

cmd_reset() {
    cmd_stop
    rm -rf "$BASE"
    log "removed $BASE"
}

case "${1:-}" in
install) cmd_install ;;
start) cmd_start ;;
stop) cmd_stop ;;
start-primary) cmd_start_primary ;;
stop-primary) stop_instance primary ;;
crash-primary) cmd_crash_primary ;;
status) cmd_status ;;
env) cmd_env ;;
logs) cmd_logs ;;
reset) cmd_reset ;;
*)
    sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac

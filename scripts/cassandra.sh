#!/usr/bin/env bash
# Runs a real Apache Cassandra 5.0 (cassandra-all from Maven Central, no Docker) on this machine
# for the chat system's tests, benchmarks and local development.
#
#   scripts/cassandra.sh fetch            fetch cassandra-all + runtime jars with Maven (cached)
#   scripts/cassandra.sh start [1|3]      start 1 node (127.0.0.1) or 3 (127.0.0.1/.2/.3); waits
#                                         until CQL answers on 9042 of each node
#   scripts/cassandra.sh stop             stop every node
#   scripts/cassandra.sh stop-node N      stop node N (fault tests); start-node N starts it again
#   scripts/cassandra.sh status           which nodes run and answer CQL
#   scripts/cassandra.sh logs [N] [LINES] tail of each node's (or node N's) system log
#   scripts/cassandra.sh wipe             stop every node and delete all data
#   scripts/cassandra.sh url              the test URL for the running cluster
#
# Jars live in ${CHAT_CACHE_DIR:-$ROOT/.cache}/cassandra/lib, node state in
# $ROOT/.services/cassandra/nodeN (both gitignored). Every command is idempotent. A node that
# does not answer CQL within CASSANDRA_START_TIMEOUT seconds (default 180) fails the command with
# the tail of its log.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HERE="$ROOT/scripts/cassandra"
CACHE="${CHAT_CACHE_DIR:-$ROOT/.cache}/cassandra"
LIB="$CACHE/lib"
SERVICES="$ROOT/.services/cassandra"
START_TIMEOUT="${CASSANDRA_START_TIMEOUT:-180}"
# Every test makes a keyspace (tables and their metadata stay on the heap until the node
# stops), and the README's test command makes a few hundred: 768 MB ran out once the change
# feed added a table per keyspace, and 1536 MB once search added an SAI index per keyspace.
HEAP="${CASSANDRA_HEAP:-2560m}"
CQL_PORT=9042
# Balanced Murmur3 tokens for a 3-node ring (a 1-node ring uses the first).
TOKENS=(-9223372036854775808 -3074457345618258603 3074457345618258602)

log() { printf '[cassandra] %s\n' "$*" >&2; }
die() {
    printf '[cassandra] ERROR: %s\n' "$*" >&2
    exit 1
}

cassandra_version() {
    sed -n 's:.*<cassandra.version>\(.*\)</cassandra.version>.*:\1:p' "$HERE/pom.xml"
}

node_dir() { echo "$SERVICES/node$1"; }
node_addr() { echo "127.0.0.$1"; }
node_pid() {
    local f
    f="$(node_dir "$1")/cassandra.pid"
    [[ -f $f ]] && cat "$f" || true
}
node_running() {
    local pid
    pid="$(node_pid "$1")"
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null
}
cql_answers() {
    # A TCP connect to the native port; Cassandra opens it only once it serves CQL.
    (exec 3<>"/dev/tcp/$(node_addr "$1")/$CQL_PORT") 2>/dev/null
}
cluster_size() {
    if [[ -f $SERVICES/cluster_size ]]; then cat "$SERVICES/cluster_size"; else echo 0; fi
}

cmd_fetch() {
    local version marker
    version="$(cassandra_version)"
    [[ -n $version ]] || die "no <cassandra.version> in $HERE/pom.xml"
    marker="$CACHE/fetched-$version"
    if [[ -f $marker ]] && compgen -G "$LIB/cassandra-all-$version.jar" >/dev/null; then
        log "cassandra-all $version already fetched into $LIB"
        return
    fi
    command -v mvn >/dev/null || die "mvn not found (apt-get install -y maven openjdk-17-jdk-headless)"
    log "fetching cassandra-all $version and its runtime into $LIB"
    rm -rf "$LIB" "$CACHE"/fetched-*
    mkdir -p "$LIB"
    mvn -B -q -f "$HERE/pom.xml" dependency:copy-dependencies -DoutputDirectory="$LIB" ||
        die "mvn failed to fetch cassandra-all $version"
    compgen -G "$LIB/cassandra-all-$version.jar" >/dev/null || die "cassandra-all-$version.jar missing after fetch"
    touch "$marker"
    log "fetched $(find "$LIB" -name '*.jar' | wc -l) jars"
}

java_bin() {
    local j="${JAVA_HOME:+$JAVA_HOME/bin/}java"
    if [[ -x /usr/lib/jvm/java-17-openjdk-amd64/bin/java && -z ${JAVA_HOME:-} ]]; then
        j=/usr/lib/jvm/java-17-openjdk-amd64/bin/java
    fi
    command -v "$j" >/dev/null || die "java not found (JDK 17 required)"
    echo "$j"
}

write_config() {
    local n=$1 dir addr
    dir="$(node_dir "$n")"
    addr="$(node_addr "$n")"
    mkdir -p "$dir"/{conf,data,commitlog,saved_caches,hints,cdc_raw,logs}
    sed -e "s|@@INITIAL_TOKEN@@|${TOKENS[$((n - 1))]}|" \
        -e "s|@@ADDRESS@@|$addr|" \
        -e "s|@@NODE_DIR@@|$dir|" \
        "$HERE/cassandra.yaml.template" >"$dir/conf/cassandra.yaml"
    cp "$HERE/logback.xml" "$dir/conf/logback.xml"
}

launch_node() {
    local n=$1 dir addr java
    dir="$(node_dir "$n")"
    addr="$(node_addr "$n")"
    java="$(java_bin)"
    if node_running "$n"; then
        log "node $n ($addr) already running (pid $(node_pid "$n"))"
        return
    fi
    [[ -f $dir/conf/cassandra.yaml ]] || write_config "$n"
    local -a opts
    mapfile -t opts < <(sed -e 's/#.*//' -e 's/[[:space:]]*$//' -e '/^$/d' "$HERE/jvm17.options")
    opts+=(
        "-Xms256m" "-Xmx$HEAP"
        "-XX:MaxDirectMemorySize=512m"
        "-Dcassandra-foreground=yes"
        "-Dcassandra.config=file://$dir/conf/cassandra.yaml"
        "-Dcassandra.logdir=$dir/logs"
        "-Dcassandra.storagedir=$dir/data"
        "-Dlogback.configurationFile=file://$dir/conf/logback.xml"
        "-Dcassandra.available_processors=2"
        "-Dcassandra.ring_delay_ms=5000"
        "-Dcassandra.skip_wait_for_gossip_to_settle=0"
        "-Dcassandra.superuser_setup_delay_ms=0"
        # Test clusters only: system tables skip fsync, which makes the many schema changes of
        # a test run (a keyspace per test) much cheaper. User data keeps the commit log.
        "-Dcassandra.unsafesystem=true"
        # No JMX: nothing here uses nodetool, and three nodes would fight over port 7199.
        "-Dcom.sun.management.jmxremote=false"
    )
    log "starting node $n on $addr (heap $HEAP)"
    : >"$dir/logs/stdout.log"
    # setsid: the node outlives this script and is not killed by the caller's Ctrl-C.
    setsid "$java" "${opts[@]}" -cp "$LIB/*" org.apache.cassandra.service.CassandraDaemon \
        >>"$dir/logs/stdout.log" 2>&1 </dev/null &
    echo $! >"$dir/cassandra.pid"
}

wait_for_node() {
    local n=$1 dir addr start
    dir="$(node_dir "$n")"
    addr="$(node_addr "$n")"
    start=$SECONDS
    while ((SECONDS - start < START_TIMEOUT)); do
        if ! node_running "$n"; then
            show_logs "$n" 80
            die "node $n ($addr) exited during startup (log above)"
        fi
        if cql_answers "$n"; then
            log "node $n ($addr) answers CQL on $CQL_PORT after $((SECONDS - start)) s"
            return
        fi
        sleep 1
    done
    show_logs "$n" 80
    die "node $n ($addr) did not answer CQL on $CQL_PORT within $START_TIMEOUT s (log above)"
}

cmd_start() {
    local size=${1:-1}
    [[ $size == 1 || $size == 3 ]] || die "start takes 1 or 3 nodes, not '$size'"
    cmd_fetch
    local current
    current="$(cluster_size)"
    if [[ $current != 0 && $current != "$size" ]]; then
        # A node's data remembers its ring; a 1-node ring cannot become a 3-node one in place.
        log "existing data is a $current-node cluster; wiping it for a $size-node one"
        cmd_wipe
    fi
    mkdir -p "$SERVICES"
    echo "$size" >"$SERVICES/cluster_size"
    local n
    # One after another: node 1 is the seed, and nodes join a ring one at a time.
    for ((n = 1; n <= size; n++)); do
        write_config "$n"
        launch_node "$n"
        wait_for_node "$n"
    done
    log "cluster of $size up: $(cmd_url)"
}

cmd_start_node() {
    local n=${1:?start-node N}
    local size
    size="$(cluster_size)"
    ((n >= 1 && n <= size)) || die "node $n is not part of the configured $size-node cluster"
    launch_node "$n"
    wait_for_node "$n"
}

stop_node() {
    local n=$1 pid i
    pid="$(node_pid "$n")"
    if [[ -z $pid ]] || ! kill -0 "$pid" 2>/dev/null; then
        rm -f "$(node_dir "$n")/cassandra.pid"
        return
    fi
    log "stopping node $n (pid $pid)"
    # SIGTERM runs Cassandra's shutdown hook (drains and flushes); kill hard only if it hangs.
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 60; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "node $n did not stop in 60 s; killing it"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 1
    fi
    rm -f "$(node_dir "$n")/cassandra.pid"
}

cmd_stop() {
    local n
    for ((n = 3; n >= 1; n--)); do stop_node "$n"; done
}

cmd_stop_node() {
    local n=${1:?stop-node N}
    stop_node "$n"
}

cmd_status() {
    local size n
    size="$(cluster_size)"
    echo "cassandra $(cassandra_version), configured nodes: $size"
    for ((n = 1; n <= 3; n++)); do
        [[ -d $(node_dir "$n") ]] || continue
        if node_running "$n"; then
            if cql_answers "$n"; then
                echo "node $n $(node_addr "$n"): up (pid $(node_pid "$n")), CQL answers"
            else
                echo "node $n $(node_addr "$n"): running (pid $(node_pid "$n")), CQL not answering"
            fi
        else
            echo "node $n $(node_addr "$n"): down"
        fi
    done
}

show_logs() {
    local n=$1 lines=${2:-100} dir
    dir="$(node_dir "$n")"
    echo "===== cassandra node $n: $dir/logs/system.log (last $lines lines) =====" >&2
    tail -n "$lines" "$dir/logs/system.log" >&2 2>/dev/null || echo "(no system.log)" >&2
    echo "===== cassandra node $n: stdout/stderr (last 30 lines) =====" >&2
    tail -n 30 "$dir/logs/stdout.log" >&2 2>/dev/null || echo "(no stdout.log)" >&2
}

cmd_logs() {
    local only=${1:-} lines=${2:-100} n
    for ((n = 1; n <= 3; n++)); do
        [[ -z $only || $only == "$n" ]] || continue
        [[ -d $(node_dir "$n") ]] && show_logs "$n" "$lines"
    done
    return 0
}

cmd_wipe() {
    cmd_stop
    rm -rf "$SERVICES"
    log "wiped $SERVICES"
}

cmd_url() {
    local size n hosts="" rf
    size="$(cluster_size)"
    ((size > 0)) || size=1
    for ((n = 1; n <= size; n++)); do hosts+="${hosts:+,}$(node_addr "$n")"; done
    rf=$size
    echo "cassandra://$hosts:$CQL_PORT/chat?replication_factor=$rf"
}

main() {
    local cmd=${1:-}
    shift || true
    case $cmd in
    fetch) cmd_fetch ;;
    start) cmd_start "$@" ;;
    stop) cmd_stop ;;
    stop-node) cmd_stop_node "$@" ;;
    start-node) cmd_start_node "$@" ;;
    status) cmd_status ;;
    logs) cmd_logs "$@" ;;
    wipe) cmd_wipe ;;
    url) cmd_url ;;
    *)
        awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
        [[ -z $cmd ]] || die "unknown command '$cmd'"
        exit 2
        ;;
    esac
}

main "$@"

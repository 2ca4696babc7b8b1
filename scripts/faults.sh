#!/usr/bin/env bash
# The fault run (issue 13): a randomized, seeded nemesis against a whole cluster, then an
# independent check of everything the clients saw.
#
#   scripts/faults.sh [SECONDS] [SEED]     run for SECONDS (default 150) with SEED (default 1)
#
# Starts what the run needs and is not already up: MariaDB primary + replica, a three-node
# Cassandra (RF 3, QUORUM), and checks that redis-server and nginx are installed (the run starts
# its own Redis and nginx on free ports, so it can kill and pause them). Then builds and runs the
# harness (chat-server/tests/faults.rs: three nodes behind nginx, SDK clients, the nemesis),
# which writes a JSON Lines history, and the checker (tools/faults/check_history.py, no code
# shared with the server), which exits non-zero on any violation.
#
# Output in ${CHAT_FAULTS_DIR:-.services/faults}/run-SEED/: history.jsonl, summary.json,
# report.txt, harness.log, node-N.log. The Cassandra cluster is left running with three nodes.
source "$(dirname "$0")/lib.sh"
set -euo pipefail
cd "$ROOT"

SECONDS_TO_RUN="${1:-150}"
SEED="${2:-1}"
OUT="${CHAT_FAULTS_DIR:-$SERVICES/faults}/run-$SEED"
mkdir -p "$OUT"

scripts/redis.sh install >/dev/null
scripts/nginx.sh install >/dev/null
scripts/mariadb.sh start
eval "$(scripts/mariadb.sh env)"
if [ "$(scripts/cassandra.sh status 2>/dev/null | grep -c 'CQL answers' || true)" -ne 3 ]; then
  scripts/cassandra.sh stop
  scripts/cassandra.sh start 3
fi
CASSANDRA_URL="$(scripts/cassandra.sh url)"

log "building the harness"
cargo test -q -p chat-server --all-features --test faults --no-run

log "running for ${SECONDS_TO_RUN}s with seed $SEED (history in $OUT)"
set +e
CHAT_FAULTS_SECONDS="$SECONDS_TO_RUN" CHAT_FAULTS_SEED="$SEED" \
  CHAT_FAULTS_OUT="$OUT/history.jsonl" \
  CHAT_FAULTS_REPLICA_PID="$SERVICES/mariadb/replica/mariadbd.pid" \
  CHAT_TEST_CASSANDRA_CLUSTER_URL="$CASSANDRA_URL" \
  cargo test -q -p chat-server --all-features --test faults 2>&1 | tee "$OUT/harness.log"
harness=${PIPESTATUS[0]}
set -e
[ "$harness" -eq 0 ] || die "the harness failed (exit $harness); see $OUT/harness.log"

python3 tools/faults/check_history.py "$OUT/history.jsonl" --summary-json "$OUT/summary.json" \
  | tee "$OUT/report.txt"
status=${PIPESTATUS[0]}
if [ "$status" -ne 0 ]; then
  for f in "$OUT"/node-*.log; do
    [ -f "$f" ] || continue
    echo "----- $f: last warnings and errors -----" >&2
    grep -E ' (WARN|ERROR) ' "$f" | tail -n 30 >&2 || true
  done
  die "the checker found violations (exit $status); see $OUT/report.txt"
fi
log "fault run passed: $OUT/report.txt"

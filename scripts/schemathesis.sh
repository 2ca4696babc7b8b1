#!/usr/bin/env bash
# API fuzzing from the OpenAPI document: runs schemathesis (from PyPI, in a venv under .cache/)
# against a real chat-server binary on a free loopback port with a fresh data directory, as a
# registered and logged-in user, and fails on any finding: a 5xx, a response that does not match
# docs/openapi.yaml (schema, status code, content type).
#
#   scripts/schemathesis.sh [MAX_EXAMPLES]   examples per operation (default 40)
#
# Environment: CHAT_SERVER_BIN (default target/debug/chat-server, built if missing),
# SCHEMATHESIS_MAX_TIME (seconds for the whole run, default 150).
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

MAX_EXAMPLES="${1:-40}"
MAX_TIME="${SCHEMATHESIS_MAX_TIME:-150}"
VENV="$ROOT/.cache/schemathesis-venv"
# Pinned to the major version the script's flags are written for.
SCHEMATHESIS_SPEC="schemathesis>=4,<5"

if [ ! -x "$VENV/bin/schemathesis" ]; then
  log "installing schemathesis into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "$SCHEMATHESIS_SPEC"
fi

BIN="${CHAT_SERVER_BIN:-$ROOT/target/debug/chat-server}"
if [ ! -x "$BIN" ]; then
  log "building chat-server"
  cargo build -q -p chat-server --bin chat-server
fi

WORK="$(mktemp -d)"
SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# Rate limits off: schemathesis is one client sending thousands of requests from one address.
# Real (default) password hashing stays on.
"$BIN" --listen 127.0.0.1:0 --data-dir "$WORK/data" --log warn \
  --send-rate 0 --login-rate 0 --login-account-rate 0 --register-rate 0 --send-addr-rate 0 \
  >"$WORK/stdout" 2>"$WORK/server.log" &
SERVER_PID=$!
URL=""
for _ in $(seq 1 300); do
  URL="$(sed -n 's/^chat-server listening on //p' "$WORK/stdout" | head -n1)"
  [ -n "$URL" ] && break
  kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/server.log" >&2; die "chat-server exited"; }
  sleep 0.1
done
[ -n "$URL" ] || die "chat-server did not start"
log "chat-server at $URL"

# A user with a token, and a chat it owns, so authenticated operations get past 401.
curl -fsS -X POST "$URL/v1/users" -H 'content-type: application/json' \
  -d '{"email":"schemathesis@example.test","password":"schemathesis-password"}' >/dev/null
TOKEN="$(curl -fsS -X POST "$URL/v1/sessions" -H 'content-type: application/json' \
  -d '{"email":"schemathesis@example.test","password":"schemathesis-password"}' \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')"
curl -fsS -X POST "$URL/v1/chats" -H 'content-type: application/json' -H "authorization: Bearer $TOKEN" \
  -d '{"chat_name":"schemathesis","member_ids":[]}' >/dev/null

set +e
# Run from the scratch directory: schemathesis keeps a cache (.schemathesis/) in its working
# directory, which must not land in the repository.
(cd "$WORK" && "$VENV/bin/schemathesis" run "$ROOT/docs/openapi.yaml" \
  --url "$URL" \
  --header "Authorization: Bearer $TOKEN" \
  --checks not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance \
  --max-examples "$MAX_EXAMPLES" \
  --max-time "$MAX_TIME" \
  --seed 7 \
  --workers 2 \
  --request-timeout 30 \
  --generation-database none \
  --no-color \
  --suppress-health-check all \
  --exclude-path /v1/sessions/current \
  --continue-on-failure) 2>&1 | tee "$WORK/schemathesis.out"
status=${PIPESTATUS[0]}
set -e
if ! kill -0 "$SERVER_PID" 2>/dev/null; then
  tail -n 50 "$WORK/server.log" >&2
  die "chat-server died during the run"
fi
if grep -q '"internal"' "$WORK/server.log" || grep -qi 'panicked' "$WORK/server.log"; then
  tail -n 50 "$WORK/server.log" >&2
  die "chat-server logged a panic or an internal error"
fi
if [ "$status" -ne 0 ]; then
  # CI shows the tail of the output: repeat the findings and errors there, with the server's log.
  echo "----- schemathesis findings and errors (repeated) -----" >&2
  sed -n '/^=* \(FAILURES\|ERRORS\) =*$/,/^=* WARNINGS =*$/p' "$WORK/schemathesis.out" | head -n 150 >&2
  echo "----- chat-server log (last 30 lines) -----" >&2
  tail -n 30 "$WORK/server.log" >&2
  die "schemathesis reported findings (exit $status)"
fi
log "schemathesis: no findings"

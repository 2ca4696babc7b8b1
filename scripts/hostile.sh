#!/usr/bin/env bash
# The hostile-input checks of the test command that are not `cargo test`: every fuzz target for a
# bounded time (scripts/fuzz.sh), then schemathesis from docs/openapi.yaml against a running
# server (scripts/schemathesis.sh). The property, crash, abuse and authorization tests run with
# the rest of `cargo test`.
#
#   scripts/hostile.sh [FUZZ_SECONDS_PER_TARGET]   (default 20)
#
# Environment: SCHEMATHESIS_MAX_EXAMPLES (default 25), SCHEMATHESIS_MAX_TIME (default 150).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

FUZZ_SECS="${1:-20}"
start=$SECONDS
scripts/fuzz.sh run "$FUZZ_SECS"
log "fuzzing done in $((SECONDS - start))s"
start=$SECONDS
scripts/schemathesis.sh "${SCHEMATHESIS_MAX_EXAMPLES:-25}"
log "schemathesis done in $((SECONDS - start))s"

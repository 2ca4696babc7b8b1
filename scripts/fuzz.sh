#!/usr/bin/env bash
# Coverage-guided fuzzing of everything that parses outside input (fuzz/fuzz_targets/*.rs), with
# cargo-fuzz (libFuzzer) on a nightly toolchain.
#
#   scripts/fuzz.sh run [SECONDS] [TARGET...]  build, then fuzz each target for SECONDS (default 30)
#   scripts/fuzz.sh build                      build every target
#   scripts/fuzz.sh list                       name the targets
#
# Installs what is missing: the nightly toolchain (rustup, minimal profile) and cargo-fuzz (from
# crates.io, --locked). Each run starts from the committed seeds in fuzz/corpus/<target>/ plus
# what earlier runs on this machine found (fuzz/target/corpus/<target>/, not committed), so the
# committed corpus stays small. A crash leaves its input in fuzz/artifacts/<target>/ and fails
# the script; turn it into a regression test and add it to the seeds.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

TARGETS=(ws_frame rest_body page_token config search_query)

ensure_tools() {
  if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    log "installing the nightly toolchain"
    rustup toolchain install nightly --profile minimal >&2
  fi
  if ! cargo fuzz --version >/dev/null 2>&1; then
    log "installing cargo-fuzz"
    cargo install cargo-fuzz --locked >&2
  fi
}

# The Rust code forbids `unsafe`, so AddressSanitizer would mostly watch the bundled SQLite;
# without it the build is several times faster and runs more inputs per second. Debug
# assertions stay on so integer overflows panic (and are found) as in a debug build.
FUZZ_FLAGS=(--sanitizer none --debug-assertions)

build() {
  ensure_tools
  cargo +nightly fuzz build "${FUZZ_FLAGS[@]}" >&2
}

run() {
  local secs="${1:-30}"; shift || true
  local targets=("$@"); [ ${#targets[@]} -eq 0 ] && targets=("${TARGETS[@]}")
  build
  local failed=()
  for t in "${targets[@]}"; do
    local work="fuzz/target/corpus/$t"
    mkdir -p "$work" "fuzz/artifacts/$t"
    log "fuzzing $t for ${secs}s"
    if ! cargo +nightly fuzz run "${FUZZ_FLAGS[@]}" "$t" "$work" "fuzz/corpus/$t" -- \
        -max_total_time="$secs" -timeout=20 -rss_limit_mb=4096 -max_len=8192 \
        -print_final_stats=1 >"fuzz/target/$t.log" 2>&1; then
      log "FAILED: $t (log: fuzz/target/$t.log, input in fuzz/artifacts/$t/)"
      tail -n 40 "fuzz/target/$t.log" >&2
      failed+=("$t")
    else
      grep -E '^stat::number_of_executed_runs|^stat::new_units_added' "fuzz/target/$t.log" \
        | sed "s/^/[$t] /" >&2 || true
    fi
  done
  if [ ${#failed[@]} -gt 0 ]; then
    die "fuzz targets failed: ${failed[*]}"
  fi
  log "all fuzz targets ran ${secs}s without a failure"
}

case "${1:-run}" in
  run) shift || true; run "$@" ;;
  build) build ;;
  list) printf '%s\n' "${TARGETS[@]}" ;;
  *) die "usage: $0 run [SECONDS] [TARGET...] | build | list" ;;
esac

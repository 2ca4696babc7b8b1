#!/usr/bin/env bash
# Chromium and its WebDriver (chromedriver) from Debian's packages, for the web client's tests
# in a real browser (chat-server/tests/browser.rs).
#
#   scripts/browser.sh install   # installs chromium and chromium-driver if missing
#   scripts/browser.sh env       # prints CHAT_TEST_CHROMEDRIVER=... for eval
set -euo pipefail
source "$(dirname "$0")/lib.sh"

driver() {
  command -v chromedriver 2>/dev/null || { [ -x /usr/bin/chromedriver ] && echo /usr/bin/chromedriver; } || true
}

case "${1:-}" in
  install)
    # The emoji font only for the screenshots (reactions would be empty boxes without it).
    apt_install chromium chromium-driver fonts-noto-color-emoji
    d="$(driver)"
    [ -n "$d" ] || die "chromium-driver is installed but chromedriver is not on PATH"
    log "chromedriver: $("$d" --version 2>/dev/null | head -1)"
    ;;
  env)
    d="$(driver)"
    [ -n "$d" ] || die "no chromedriver: run scripts/browser.sh install"
    echo "export CHAT_TEST_CHROMEDRIVER=$d"
    ;;
  *) die "usage: scripts/browser.sh install|env" ;;
esac

#!/usr/bin/env bash
# The whole test suite, as CI runs it: provisions a real Elasticsearch (cached, sha512-verified) and a
# second node with security on (agent authentication), installs the Node.js OpAMP client used by the
# interop test and headless Chromium with its WebDriver for the console's browser test, then runs
# every Rust test.
#
#   scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

export OPAMPD_TEST_ES_URL
OPAMPD_TEST_ES_URL=$(scripts/elasticsearch.sh start)
echo "test.sh: elasticsearch at $OPAMPD_TEST_ES_URL" >&2

# A second node with security on, for agent authentication (service token, API keys, enrollment keys).
export OPAMPD_TEST_ES_SECURE_URL OPAMPD_TEST_ES_SECURE_PASSWORD
OPAMPD_TEST_ES_SECURE_URL=$(scripts/elasticsearch.sh start --secure)
OPAMPD_TEST_ES_SECURE_PASSWORD=$(scripts/elasticsearch.sh password --secure)
echo "test.sh: elasticsearch with security on at $OPAMPD_TEST_ES_SECURE_URL" >&2

# Every crate of the lock file, whatever the platform: the layering test reads the whole
# dependency graph with `cargo metadata --offline`, which a build alone does not download.
cargo fetch --locked

echo "test.sh: installing the node opamp client for the interop test" >&2
npm ci --prefix crates/opampd/tests/interop --no-audit --no-fund --silent

# The console test drives Debian's Chromium through chromedriver (crates/opampd/tests/it/console.rs).
have_browser() {
  { [ -n "${OPAMPD_TEST_CHROMIUM:-}" ] || command -v chromium >/dev/null; } &&
    { [ -n "${OPAMPD_TEST_CHROMEDRIVER:-}" ] || command -v chromedriver >/dev/null; }
}
if ! have_browser; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "test.sh: installing chromium and chromium-driver for the console browser test" >&2
    apt_log=$(mktemp)
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } \
      >"$apt_log" 2>&1; then
      cat "$apt_log" >&2
      echo "test.sh: apt-get could not install chromium and chromium-driver" >&2
      exit 1
    fi
    rm -f "$apt_log"
  elif [ "${CI:-}" = true ]; then
    echo "test.sh: chromium and chromedriver are missing, and installing them needs root and apt-get;" \
      "install Debian's chromium and chromium-driver (or set OPAMPD_TEST_CHROMIUM/OPAMPD_TEST_CHROMEDRIVER)" >&2
    exit 1
  else
    echo "test.sh: no chromium/chromedriver (and not root): the console browser test will be skipped" >&2
  fi
fi

cargo test --workspace --locked "$@"

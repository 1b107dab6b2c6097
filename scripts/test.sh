#!/usr/bin/env bash
# The whole test suite, as CI runs it: provisions a real Elasticsearch (cached, sha512-verified),
# installs the Node.js OpAMP client used by the interop test, then runs every Rust test.
#
#   scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

export OPAMPD_TEST_ES_URL
OPAMPD_TEST_ES_URL=$(scripts/elasticsearch.sh start)
echo "test.sh: elasticsearch at $OPAMPD_TEST_ES_URL" >&2

echo "test.sh: installing the node opamp client for the interop test" >&2
npm ci --prefix crates/opampd/tests/interop --no-audit --no-fund --silent

cargo test --workspace --locked "$@"

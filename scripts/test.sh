#!/usr/bin/env bash
# The whole test suite, as CI runs it: provisions a real Elasticsearch (cached, sha512-verified) and a
# second node with security on (agent authentication), installs the Node.js OpAMP client used by the
# interop test, then runs every Rust test.
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

echo "test.sh: installing the node opamp client for the interop test" >&2
npm ci --prefix crates/opampd/tests/interop --no-audit --no-fund --silent

cargo test --workspace --locked "$@"

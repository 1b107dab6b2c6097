#!/usr/bin/env bash
# What agent authentication costs: the fleet scenario (BENCH_AGENTS agents at a BENCH_HEARTBEAT s
# heartbeat) through opampd on a security-enabled Elasticsearch, run with `--auth none` and with
# `--auth elasticsearch` (every agent sending `Authorization: ApiKey <enrollment key>`), alternated
# BENCH_AUTH_ROUNDS times in one run so both see the same machine. Reports msg/s, p50/p99, errors
# and the Elasticsearch authentication calls opampd made (bounded by --auth-cache-ttl per key).
#
#   loadtest/bench-auth.sh                 # 100K agents, 30 s heartbeat, 120 s per run (~12 min)
#   BENCH_SHORT=1 loadtest/bench-auth.sh   # 20K agents, 6 s heartbeat, 20 s per run
#
# Needs: the secured test node (`scripts/elasticsearch.sh start --secure`, started here if it is
# not running), jq, curl. Everything it creates (service token, API key, enrollment document,
# the agents it wrote to the node's `.fleet-agents`) is deleted on exit.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=bench-lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"

BENCH_AUTH_ROUNDS=${BENCH_AUTH_ROUNDS:-1}
BENCH_AUTH_TTL=${BENCH_AUTH_TTL:-60s}
ES=$("$ROOT/scripts/elasticsearch.sh" start --secure)
require_loopback "$ES"
ES=${ES%/}
PW=$("$ROOT/scripts/elasticsearch.sh" password --secure)
SECRETS=$(mktemp -d)
chmod 700 "$SECRETS"
TOKEN_NAME=bench-$TS
KEY_ID=

# es METHOD PATH [BODY]: as `elastic`, credentials from a file (never on the command line).
es() {
  local method=$1 path=$2 body=${3:-}
  printf 'user = "elastic:%s"\n' "$PW" | curl -fsS --max-time 30 -K - -X "$method" \
    -H 'content-type: application/json' "$ES$path" ${body:+--data "$body"}
}
# fleet METHOD PATH [BODY]: as the fleet-server service account, on the .fleet-* system indices.
fleet() {
  local method=$1 path=$2 body=${3:-}
  printf 'header = "Authorization: Bearer %s"\n' "$(cat "$SECRETS/token")" |
    curl -fsS --max-time 30 -K - -X "$method" -H 'content-type: application/json' \
      -H 'x-elastic-product-origin: fleet' "$ES$path" ${body:+--data "$body"}
}

cleanup() {
  stop_opampd
  pin_restore
  # the bench's agents: every document of this test node's .fleet-agents (the secured node is a
  # test node; its tests use uids of their own and recreate what they need)
  if [ -s "$SECRETS/token" ]; then
    fleet POST "/.fleet-agents/_delete_by_query?conflicts=proceed" '{"query": {"match_all": {}}}' \
      >/dev/null 2>&1 || log "could not delete the bench agents from .fleet-agents"
  fi
  if [ -n "$KEY_ID" ]; then
    fleet DELETE "/.fleet-enrollment-api-keys/_doc/$KEY_ID?refresh=true" >/dev/null 2>&1 || true
    es DELETE /_security/api_key "{\"ids\": [\"$KEY_ID\"]}" >/dev/null 2>&1 || true
  fi
  es DELETE "/_security/service/elastic/fleet-server/credential/token/$TOKEN_NAME" >/dev/null 2>&1 || true
  rm -rf "$SECRETS"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$BENCH_OUT"
log "secured elasticsearch at $ES; creating a service token, an API key and its enrollment document"
es POST "/_security/service/elastic/fleet-server/credential/token/$TOKEN_NAME" | jq -r .token.value >"$SECRETS/token"
KEY=$(es POST /_security/api_key "{\"name\": \"opampd-bench-$TS\"}")
KEY_ID=$(jq -r .id <<<"$KEY")
jq -r .encoded <<<"$KEY" >"$SECRETS/agent-key"
unset KEY
fleet PUT "/.fleet-enrollment-api-keys/_doc/$KEY_ID?refresh=true" "$(jq -n --arg id "$KEY_ID" \
  --arg key "$(cat "$SECRETS/agent-key")" --arg ts "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
  '{api_key_id: $id, api_key: $key, active: true, policy_id: "bench-policy",
    namespaces: ["default"], name: "opampd bench", created_at: $ts}')" >/dev/null

build
pin_setup "$ES"

# run MODE ROUND: one opampd with --auth MODE on `.fleet-agents` (the only agents index the
# fleet-server service account may write; each run's agents are new uids), the fleet scenario
# through it.
run() {
  local mode=$1 round=$2
  local index=.fleet-agents out_name=scenario-$mode-$round
  export OPAMPD_ES_SERVICE_TOKEN_FILE=$SECRETS/token
  start_opampd --store elasticsearch --es-url "$ES" \
    --es-index "$index" --auth "$mode" --auth-cache-ttl "$BENCH_AUTH_TTL"
  unset OPAMPD_ES_SERVICE_TOKEN_FILE
  local cpu0
  cpu0=$(opampd_cpu_s)
  if [ "$mode" = elasticsearch ]; then
    OPAMPD_LOADTEST_API_KEY=$(cat "$SECRETS/agent-key")
    export OPAMPD_LOADTEST_API_KEY
  fi
  scenario
  unset OPAMPD_LOADTEST_API_KEY
  mv "$BENCH_OUT/scenario.json" "$BENCH_OUT/$out_name.json"
  local cpu1
  cpu1=$(opampd_cpu_s)
  opampd_metrics "$out_name"
  stop_opampd
  local calls
  calls=$({ grep -E '^opampd_es_auth_requests_total' "$BENCH_OUT/metrics-$out_name.txt" || true; } |
    awk '{ s += $2 } END { print s + 0 }')
  jq -c --arg mode "$mode" --argjson round "$round" --argjson calls "$calls" \
    --argjson cpu "$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN { print b - a }')" \
    '{mode: $mode, round: $round, achieved_rate, errors, false_full_state, missed_full_state,
      p50_ms: .latency.p50_ms, p90_ms: .latency.p90_ms, p99_ms: .latency.p99_ms,
      max_ms: .latency.max_ms, sent, es_auth_requests: $calls, opampd_cpu_s: $cpu}' \
    "$BENCH_OUT/$out_name.json" | tee -a "$BENCH_OUT/auth-runs.jsonl" >&2
}

for round in $(seq 1 "$BENCH_AUTH_ROUNDS"); do
  run none "$round"
  run elasticsearch "$round"
done

jq -s -c --arg commit "$BENCH_COMMIT" --arg ttl "$BENCH_AUTH_TTL" \
  '{bench: "auth", commit: $commit, auth_cache_ttl: $ttl, runs: .}' "$BENCH_OUT/auth-runs.jsonl"
log "results in $BENCH_OUT"

#!/usr/bin/env bash
# Remote configuration at fleet scale (issue 10), in one run on this machine: BENCH_AGENTS agents
# at a BENCH_HEARTBEAT s heartbeat through one opampd on Elasticsearch, all accepting remote
# config (they report APPLYING, then APPLIED, as a collector does; ROLLOUT_FAIL_RATE of them
# FAILED). The load generator itself PUTs a new config at ROLLOUT_PUSH_AT s and measures the time
# until 50/90/99/100 % of the agents had their APPLIED (or FAILED) status acknowledged, and that
# every agent was sent it exactly once. The run is cut into phases:
#   enroll  [0, heartbeat)              the enrollment wave (not judged for latency)
#   before  [heartbeat, push)           steady state, no config exists
#   rollout [push, push + ROLLOUT_SECS) the config spreads
#   after   [push + ROLLOUT_SECS, end)  steady state, every agent up to date with the config
# "before" against "after" is the cost of an up-to-date heartbeat with remote config in force:
# msg/s, p50/p99 and Elasticsearch items and reads per message (from opampd's metrics at the
# phase marks), side by side in one run.
#
#   loadtest/bench-rollout.sh                  # 100K agents, 30 s heartbeat, ~7 min
#   BENCH_SHORT=1 loadtest/bench-rollout.sh    # 20K agents, 6 s heartbeat, ~2 min
#   ES=http://127.0.0.1:9250 BENCH_OUT=/tmp/x loadtest/bench-rollout.sh
#   ROLLOUT_CONTROL=1 loadtest/bench-rollout.sh  # the same run and phases, no config pushed: what
#                                                # the phases cost without remote config (control)
#
# Needs the plain test node (`scripts/elasticsearch.sh start`), jq, curl. Deletes its indices.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=bench-lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"

ES=${ES:-http://127.0.0.1:9250}
require_loopback "$ES"
ES=${ES%/}
INDEX=opampd-rollout-$TS
ROLLOUT_FAIL_RATE=${ROLLOUT_FAIL_RATE:-0}
if [ "${BENCH_SHORT:-0}" = 1 ]; then
  ROLLOUT_PUSH_AT=${ROLLOUT_PUSH_AT:-18}
  ROLLOUT_SECS=${ROLLOUT_SECS:-30}
  ROLLOUT_AFTER_SECS=${ROLLOUT_AFTER_SECS:-18}
else
  ROLLOUT_PUSH_AT=${ROLLOUT_PUSH_AT:-90}
  ROLLOUT_SECS=${ROLLOUT_SECS:-120}
  ROLLOUT_AFTER_SECS=${ROLLOUT_AFTER_SECS:-90}
fi
DURATION=$((ROLLOUT_PUSH_AT + ROLLOUT_SECS + ROLLOUT_AFTER_SECS))
MARKS=$BENCH_OUT/marks.txt
MARKER_PID=

cleanup() {
  [ -z "$MARKER_PID" ] || kill "$MARKER_PID" 2>/dev/null || true
  stop_opampd
  pin_restore
  if [ "${KEEP_INDEX:-0}" != 1 ]; then
    curl -fsS --max-time 30 -X DELETE "$ES/$INDEX,$INDEX-opampd-configs" >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The sum of one counter (all label sets) in a metrics snapshot.
counter() {
  { grep -E "^$1(\{[^}]*\})? " "$2" || true; } | awk '{ s += $NF } END { printf "%d", s + 0 }'
}
ok_messages() {
  { grep -E '^opampd_messages_total\{[^}]*outcome="ok"' "$1" || true; } | awk '{ s += $NF } END { printf "%d", s + 0 }'
}

# mark AT_S KIND NAME: at AT_S seconds after T0, appends the phase mark and snapshots metrics.
mark_at() {
  local at=$1 kind=$2 name=$3
  local wake=$((T0_MS + at * 1000))
  local now
  now=$(date +%s%3N)
  if [ "$wake" -gt "$now" ]; then sleep "$(awk -v d=$((wake - now)) 'BEGIN { printf "%.3f", d / 1000 }')"; fi
  echo "$(date +%s%3N) $kind $name" >>"$MARKS"
  opampd_metrics "$name"
}

mkdir -p "$BENCH_OUT"
build
pin_setup "$ES"
start_opampd --store elasticsearch --es-url "$ES" --es-index "$INDEX" --auth none
: >"$MARKS"

T0_MS=$(date +%s%3N)
(
  mark_at 0 normal enroll
  mark_at "$BENCH_HEARTBEAT" normal before
  mark_at "$ROLLOUT_PUSH_AT" normal rollout
  mark_at $((ROLLOUT_PUSH_AT + ROLLOUT_SECS)) normal after
) &
MARKER_PID=$!
cpu0=$(opampd_cpu_s)
PUSH=(--push-config-at "$ROLLOUT_PUSH_AT" --admin-url "$ADMIN_URL")
if [ "${ROLLOUT_CONTROL:-0}" = 1 ]; then PUSH=(); fi
loadtest rollout --agents "$BENCH_AGENTS" --heartbeat "$BENCH_HEARTBEAT" --duration "$DURATION" \
  --warmup "$BENCH_HEARTBEAT" --progress 10 --phase-marks "$MARKS" \
  --remote-config-agents 1 --remote-config-fail-rate "$ROLLOUT_FAIL_RATE" \
  "${PUSH[@]}" --verify-admin "$ADMIN_URL" --verify-settle 5
cpu1=$(opampd_cpu_s)
opampd_metrics end
wait "$MARKER_PID" 2>/dev/null || true
MARKER_PID=

# Per phase, from the metrics snapshots at its start and end: messages opampd answered ok, and
# Elasticsearch write items, _mget requests and GETs per message.
phase_costs() {
  local from=$BENCH_OUT/metrics-$1.txt to=$BENCH_OUT/metrics-$2.txt
  local msgs items mgets gets
  msgs=$(($(ok_messages "$to") - $(ok_messages "$from")))
  items=$(($(counter opampd_es_bulk_items_total "$to") - $(counter opampd_es_bulk_items_total "$from")))
  mgets=$(($(counter opampd_es_mget_requests_total "$to") - $(counter opampd_es_mget_requests_total "$from")))
  gets=$(($(counter opampd_es_get_requests_total "$to") - $(counter opampd_es_get_requests_total "$from")))
  jq -n -c --arg phase "$1" --argjson msgs "$msgs" --argjson items "$items" --argjson mgets "$mgets" \
    --argjson gets "$gets" \
    '{phase: $phase, messages: $msgs, es_items_per_msg: (if $msgs > 0 then $items / $msgs else null end),
      es_mget_requests_per_msg: (if $msgs > 0 then $mgets / $msgs else null end),
      es_gets_per_msg: (if $msgs > 0 then $gets / $msgs else null end)}'
}
{
  phase_costs before rollout
  phase_costs rollout after
  phase_costs after end
} >"$BENCH_OUT/costs.jsonl"
sent_total=$(counter opampd_remote_config_sent_total "$BENCH_OUT/metrics-end.txt")

jq -c -s --arg commit "$BENCH_COMMIT" --argjson agents "$BENCH_AGENTS" \
  --argjson heartbeat "$BENCH_HEARTBEAT" --argjson cpu "$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN { print b - a }')" \
  --argjson sent "$sent_total" --slurpfile run "$BENCH_OUT/rollout.json" \
  '{bench: "rollout", commit: $commit, agents: $agents, heartbeat_s: $heartbeat,
    opampd_cpu_s: $cpu, server_configs_sent: $sent,
    errors: $run[0].errors, false_full_state: $run[0].false_full_state,
    missed_full_state: $run[0].missed_full_state,
    push: ($run[0].remote_config_pushes[0] // null),
    remote_config: {received: $run[0].remote_config_received, duplicates: $run[0].remote_config_duplicates,
                    unexpected: $run[0].remote_config_unexpected, applied: $run[0].remote_config_applied,
                    failed: $run[0].remote_config_failed, server: $run[0].remote_config_server},
    phases: [ $run[0].phases[]? | {name, sent_in_phase, errors, false_full_state, missed_full_state,
              start_s, end_s, p50_ms: .latency.p50_ms, p99_ms: .latency.p99_ms, max_ms: .latency.max_ms} ],
    costs: .}' "$BENCH_OUT/costs.jsonl" | tee "$BENCH_OUT/summary.json"
log "results in $BENCH_OUT"

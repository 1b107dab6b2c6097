#!/usr/bin/env bash
# End-to-end benchmark of opampd on its embedded store: the same loadtest as bench-es.sh (rate
# sweep for the max sustained msg/s with p99 <= 100 ms and 0 errors, then 100K agents at a 30 s
# heartbeat), against `opampd --store embedded` on a fresh temporary data dir that is removed at
# the end. Stops the opampd it started.
#
#   loadtest/bench-embedded.sh                 # full run (~8 min)
#   BENCH_SHORT=1 loadtest/bench-embedded.sh   # quick run (~2 min)
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=bench-lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"

DATA_DIR=$(mktemp -d /tmp/opampd-bench-data.XXXXXX)
cleanup() {
  stop_opampd
  rm -rf "$DATA_DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$BENCH_OUT"
build
start_opampd --store embedded --data-dir "$DATA_DIR"
log "rate sweep: $BENCH_RATES msg/s, ${BENCH_STEP_SECS}s each, agents = rate x ${BENCH_SWEEP_CYCLE}s"
opampd_metrics before; C0=$(opampd_cpu_s)
sweep
C1=$(opampd_cpu_s)
log "scenario: $BENCH_AGENTS agents, ${BENCH_HEARTBEAT}s heartbeat, ${BENCH_SCENARIO_SECS}s"
scenario || true
opampd_metrics after; C2=$(opampd_cpu_s)
DISK=$(du -sh "$DATA_DIR" | cut -f1)
stop_opampd

SCEN=$BENCH_OUT/scenario.json
[ -s "$SCEN" ] || echo '{}' >"$SCEN"
jq -n --argjson best "$BEST_RATE" --arg best_file "$BEST_FILE" --slurpfile scen "$SCEN" --arg disk "$DISK" \
  --argjson max "$MAX_RATE" --arg max_file "$MAX_FILE" --argjson c0 "$C0" --argjson c1 "$C1" --argjson c2 "$C2" \
  --arg load "$(cut -d' ' -f1-3 /proc/loadavg)" --arg nproc "$(nproc)" --arg commit "$BENCH_COMMIT" '
  { store: "embedded", commit: $commit, cores: ($nproc | tonumber), loadavg_at_end: $load, data_dir_size: $disk,
    max_sustained_msg_per_s: $best, best_step: $best_file,
    max_throughput_msg_per_s: $max, max_step: $max_file,
    opampd_cpu_s: { sweep: ($c1 - $c0), scenario: ($c2 - $c1) },
    scenario: ($scen[0] | { agents, target_rate, achieved_rate, sent, errors, error_kinds, unavailable,
      false_full_state, missed_full_state, injected, expected_requests_honoured, latency, passed }) }' \
  | tee "$BENCH_OUT/summary.json"
log "results in $BENCH_OUT"

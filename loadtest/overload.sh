#!/usr/bin/env bash
# Overload test (issue 9, point 5). One opampd on its own Elasticsearch node, default limits
# (`--max-in-flight 1024`, `--es-write-queue 20000`):
#   (1) capacity, after a 30 s es-ceiling warm-up of the fresh node: opampd-loadtest offers far
#       more than the box can do (OVERLOAD_PROBE_RATE) with fewer requests in flight than
#       --max-in-flight, so nothing is shed: what it achieves after its warm-up is the capacity C;
#   (2) one run, one fleet, a rate schedule (`--rate-steps`): OVERLOAD_ENROLL x C until every
#       agent enrolled (enroll), OVERLOAD_BASE x C for OVERLOAD_BASE_SECS (baseline);
#       OVERLOAD_FACTOR x C for OVERLOAD_SECS (overload); OVERLOAD_BASE x C again: for
#       OVERLOAD_RECOVERY_SECS plus one heartbeat cycle (recovering: the requests already sent
#       finish, and the agents whose messages were shed send their full state), then for
#       OVERLOAD_AFTER_SECS (after). Up to OVERLOAD_CLIENT_IN_FLIGHT requests are in flight, so
#       the excess meets opampd's limit.
# opampd's resident memory is sampled every second (/proc/PID/status VmRSS) and its high-water
# mark (VmHWM) read before and after the run; its /metrics are read before the run, when the
# overload starts and ends, and after. After the run every agent's stored sequence_num is checked
# against the last acknowledged one (`--verify-admin`).
#
# Pass (correctness, must hold on any box): the generator offered at least 95 % of
# OVERLOAD_FACTOR x C in the overload (on a small box it runs out of CPU before twice a high C:
# measure a smaller server with OVERLOAD_PIN=1, see docs/benchmarks.md "Overload");
# the overload phase really shed load (503s); overload and recovering errors are only 503 +
# Retry-After; enroll, baseline and after have no error and no false ReportFullState; no phase a
# missed one; 0 acknowledged writes lost; opampd's peak RSS in the overload stays within
# OVERLOAD_RSS_GROWTH_MIB of the baseline's and does not grow from its first half to its second.
# Reported, indicative on a shared box: each phase's p99, the 503s' latency (client side, and
# opampd's own `opampd_request_duration_seconds`, admitted and shed apart by its `outcome`), the
# admitted msg/s, the offered load over C, when the last 503 came.
# Prints a per-phase table and one JSON summary line ($BENCH_OUT/summary.json); exits 0 on a pass.
# Stops everything it started (watchdog: OVERLOAD_MAX_SECS). Loopback only.
#
#   loadtest/overload.sh                 # ~6 min once built (the ES start included)
#   OVERLOAD_PIN=1 OVERLOAD_PROBE_SECS=90 loadtest/overload.sh   # ~7 min: the 2-core run documented
#
# Needs: jq, curl, root (scripts/elasticsearch.sh). Env (defaults): OVERLOAD_ES_PORT (9280; never
# the shared 9250/9260 nodes), OVERLOAD_PORT (4380, admin +1), OVERLOAD_AGENTS (20000),
# OVERLOAD_ES_WARMUP_SECS (30), OVERLOAD_PROBE_RATE (30000), OVERLOAD_PROBE_SECS (40; the first
# half is warm-up), OVERLOAD_FACTOR (2), OVERLOAD_ENROLL (0.25), OVERLOAD_BASE (0.4), OVERLOAD_BASE_SECS (30),
# OVERLOAD_SECS (60), OVERLOAD_RECOVERY_SECS (5), OVERLOAD_AFTER_SECS (20),
# OVERLOAD_CLIENT_IN_FLIGHT (4000), OVERLOAD_RSS_GROWTH_MIB (256), OVERLOAD_MAX_SECS (1500),
# OVERLOAD_KEEP_ES=1 (leave the ES node running), OVERLOAD_OPAMPD_ARGS (extra opampd flags),
# OVERLOAD_PIN (0; 1: Elasticsearch and opampd share CPU 0, the load generator has the other
# CPUs to itself, for the probe and the run alike: a smaller server and a generator that can
# offer twice its capacity; needs taskset and 2 CPUs),
# BENCH_OUT, BENCH_FROM_HEAD, CARGO_TARGET_DIR (see bench-lib.sh).
set -euo pipefail
BENCH_OUT=${BENCH_OUT:-/tmp/opampd-overload-$(date +%Y%m%d%H%M%S)}
OVERLOAD_PORT=${OVERLOAD_PORT:-4380}
BENCH_PORT=$OVERLOAD_PORT
BENCH_ADMIN_PORT=$((OVERLOAD_PORT + 1))
# shellcheck source-path=SCRIPTDIR source=bench-lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"

OVERLOAD_ES_PORT=${OVERLOAD_ES_PORT:-9280}
OVERLOAD_AGENTS=${OVERLOAD_AGENTS:-20000}
OVERLOAD_PROBE_RATE=${OVERLOAD_PROBE_RATE:-30000}
OVERLOAD_PROBE_SECS=${OVERLOAD_PROBE_SECS:-40}
OVERLOAD_ES_WARMUP_SECS=${OVERLOAD_ES_WARMUP_SECS:-30}
OVERLOAD_FACTOR=${OVERLOAD_FACTOR:-2}
OVERLOAD_ENROLL=${OVERLOAD_ENROLL:-0.25}
OVERLOAD_BASE=${OVERLOAD_BASE:-0.4}
OVERLOAD_BASE_SECS=${OVERLOAD_BASE_SECS:-30}
OVERLOAD_SECS=${OVERLOAD_SECS:-60}
OVERLOAD_RECOVERY_SECS=${OVERLOAD_RECOVERY_SECS:-5}
OVERLOAD_AFTER_SECS=${OVERLOAD_AFTER_SECS:-20}
OVERLOAD_CLIENT_IN_FLIGHT=${OVERLOAD_CLIENT_IN_FLIGHT:-4000}
OVERLOAD_RSS_GROWTH_MIB=${OVERLOAD_RSS_GROWTH_MIB:-256}
OVERLOAD_MAX_SECS=${OVERLOAD_MAX_SECS:-1500}
OVERLOAD_PIN=${OVERLOAD_PIN:-0}
own_es_init "$OVERLOAD_ES_PORT" OVERLOAD_ES_PORT
INDEX=opampd-overload-$TS
require_tools jq curl

SAMPLER_PID=
SNAPSHOT_PID=
cleanup() {
  stop_watchdog
  if [ -n "$SAMPLER_PID" ]; then kill "$SAMPLER_PID" 2>/dev/null || true; fi
  if [ -n "$SNAPSHOT_PID" ]; then kill "$SNAPSHOT_PID" 2>/dev/null || true; fi
  stop_opampd
  pin_restore
  own_es_cleanup "${OVERLOAD_KEEP_ES:-0}" "$INDEX"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$BENCH_OUT"
start_watchdog "$OVERLOAD_MAX_SECS" overload
build
own_es_start
# shellcheck disable=SC2086 # OVERLOAD_OPAMPD_ARGS is a list of flags
start_opampd --store elasticsearch --es-url "$ES" --es-index "$INDEX" --auth none ${OVERLOAD_OPAMPD_ARGS:-}
PID=$OPAMPD_PID
if [ "$OVERLOAD_PIN" = 1 ]; then
  # Elasticsearch on CPU 0 and PIN (the load generator's prefix) on the others; then opampd too
  BENCH_PIN=1 pin_setup "$ES" "the load generator"
  taskset -a -p -c 0 "$PID" >/dev/null
  log "cpu pinning: opampd (pid $PID) on cpu 0 with elasticsearch"
fi

rss_kib() { awk -v k="$1:" '$1 == k { print $2 }' "/proc/$PID/status" 2>/dev/null || echo 0; }
(
  while kill -0 "$PID" 2>/dev/null; do
    echo "$(now_ms) $(rss_kib VmRSS) $(rss_kib VmHWM)"
    sleep 1
  done
) >"$BENCH_OUT/rss.txt" &
SAMPLER_PID=$!

# A freshly started node runs its first minute or so interpreted (JIT warm-up, see bench-es.sh):
# warm it on a scratch index first, or the capacity reads low.
log "(1) warming elasticsearch up for ${OVERLOAD_ES_WARMUP_SECS}s (not measured)"
timeout --signal=KILL 600 "$BIN/es-ceiling" --es-url "$ES" --bulk 500 --concurrency 4 \
  --duration "$OVERLOAD_ES_WARMUP_SECS" >"$BENCH_OUT/es-warmup.txt" 2>&1 || log "es warm-up failed (continuing)"
log "(1) capacity: $OVERLOAD_PROBE_RATE msg/s offered to $OVERLOAD_AGENTS agents for ${OVERLOAD_PROBE_SECS}s, at most $BENCH_IN_FLIGHT in flight (below --max-in-flight: nothing shed)"
BENCH_DRIFT=0.01
loadtest probe --agents "$OVERLOAD_AGENTS" --rate "$OVERLOAD_PROBE_RATE" --duration "$OVERLOAD_PROBE_SECS" \
  --warmup $((OVERLOAD_PROBE_SECS / 2)) --progress 5 --max-error-rate 1 || exit 1
CAPACITY=$(jq '.achieved_rate | floor' "$BENCH_OUT/probe.json")
PROBE_ERRORS=$(jq .errors "$BENCH_OUT/probe.json")
[ "$CAPACITY" -gt 0 ] || { log "the capacity probe achieved nothing"; exit 1; }
BASE_RATE=$(awk -v c="$CAPACITY" -v f="$OVERLOAD_BASE" 'BEGIN { printf "%d", c * f }')
ENROLL_RATE=$(awk -v c="$CAPACITY" -v f="$OVERLOAD_ENROLL" 'BEGIN { printf "%d", c * f }')
OVER_RATE=$(awk -v c="$CAPACITY" -v f="$OVERLOAD_FACTOR" 'BEGIN { printf "%d", c * f }')
log "capacity $CAPACITY msg/s (probe errors: $PROBE_ERRORS); enroll $ENROLL_RATE, baseline $BASE_RATE, overload $OVER_RATE msg/s"
HWM_BEFORE_RUN=$(rss_kib VmHWM)

# (2) enroll, baseline, overload, recovering, after: one fleet, one run. The enrollment (every
# agent's first full status: a create) gets a phase of its own, so the baseline is heartbeats as
# the overload is, and runs slower: a create costs more than a heartbeat. When the load drops, the requests the generator already sent (up to its in-flight
# limit) still meet a full server until they are done, and every agent whose message was shed
# is asked for its full state at its next turn (its sequence moved on past a message the server
# never applied): the first heartbeat cycle carries those full statuses on top of the normal
# rate. That is the recovering phase (OVERLOAD_RECOVERY_SECS + one cycle), judged as overload:
# 503 + Retry-After only; how long its last 503 came after the drop is reported.
CYCLE_SECS=$(awk -v a="$OVERLOAD_AGENTS" -v r="$BASE_RATE" 'BEGIN { printf "%d", a / r + 1 }')
ENROLL_SECS=$(awk -v a="$OVERLOAD_AGENTS" -v r="$ENROLL_RATE" 'BEGIN { printf "%d", a / r + 6 }')
RECOVERING_SECS=$((OVERLOAD_RECOVERY_SECS + CYCLE_SECS))
STEPS="$ENROLL_RATE:$ENROLL_SECS:normal:enroll,$BASE_RATE:$OVERLOAD_BASE_SECS:normal:baseline"
STEPS="$STEPS,$OVER_RATE:$OVERLOAD_SECS:overload:overload"
STEPS="$STEPS,$BASE_RATE:$RECOVERING_SECS:overload:recovering,$BASE_RATE:$OVERLOAD_AFTER_SECS:normal:after"
opampd_metrics before
log "(2) $OVERLOAD_AGENTS new agents, --rate-steps $STEPS, up to $OVERLOAD_CLIENT_IN_FLIGHT in flight"
T0=$(now_ms)
# phase windows from the schedule (for the memory samples and opampd's own view of the overload)
B_START=$((T0 + ENROLL_SECS * 1000))
B_END=$((B_START + OVERLOAD_BASE_SECS * 1000))
O_END=$((B_END + OVERLOAD_SECS * 1000))
A_END=$((O_END + (RECOVERING_SECS + OVERLOAD_AFTER_SECS) * 1000))
# /metrics when the overload starts and when it ends: opampd's latency of the overload alone
(
  for at in "$B_END overload-start" "$O_END overload-end"; do
    interruptible_sleep "$(secs_until_ms "${at%% *}")"
    opampd_metrics "${at#* }"
  done
) &
SNAPSHOT_PID=$!
BENCH_CONNECTIONS=$OVERLOAD_CLIENT_IN_FLIGHT BENCH_IN_FLIGHT=$OVERLOAD_CLIENT_IN_FLIGHT \
  loadtest run --agents "$OVERLOAD_AGENTS" --rate-steps "$STEPS" --warmup 5 --progress 5 \
  --verify-admin "$ADMIN_URL" --verify-settle 2 || true
RUN=$BENCH_OUT/run.json
[ -s "$RUN" ] || { log "the run wrote no summary"; exit 1; }
opampd_metrics end
# metric NAME: its value at the end minus before the run (summed over matching series)
metric() {
  local now before
  now=$(awk -v m="$1" 'index($0, m) == 1 { s += $NF } END { printf "%d", s }' "$BENCH_OUT/metrics-end.txt")
  before=$(awk -v m="$1" 'index($0, m) == 1 { s += $NF } END { printf "%d", s }' "$BENCH_OUT/metrics-before.txt")
  echo $((now - before))
}
# latency OUTCOME FROM TO: opampd's own opampd_request_duration_seconds{transport="http"} of one
# outcome (ok: admitted; overloaded: shed with 503) between the snapshots metrics-FROM and
# metrics-TO, as JSON: the count, how many within 0.5 ms, and the bucket bounds that p50 and p99
# lie under (null when a snapshot is missing).
latency() {
  local from=$BENCH_OUT/metrics-$2.txt to=$BENCH_OUT/metrics-$3.txt
  if [ ! -s "$from" ] || [ ! -s "$to" ]; then echo null; return 0; fi
  awk -v o="outcome=\"$1\"" '
    index($0, "opampd_request_duration_seconds_bucket{") == 1 && index($0, "transport=\"http\"") && index($0, o) {
      match($0, /le="[^"]*"/); le = substr($0, RSTART + 4, RLENGTH - 5)
      if (!(le in d)) order[n++] = le
      d[le] += (FILENAME == ARGV[2] ? $NF : -$NF)
    }
    function under(q,   i) {
      for (i = 0; i < n; i++) if (d[order[i]] >= q * d["+Inf"]) return order[i] == "+Inf" ? "null" : order[i] * 1000
      return "null"
    }
    END {
      if (d["+Inf"] + 0 == 0) { printf "{\"requests\":0}"; exit }
      printf "{\"requests\":%d,\"within_0_5_ms\":%d,\"p50_ms_under\":%s,\"p99_ms_under\":%s}",
        d["+Inf"], d["0.0005"], under(0.5), under(0.99)
    }' "$from" "$to"
}
wait "$SNAPSHOT_PID" 2>/dev/null || true
SNAPSHOT_PID=

# peak RSS per phase from the samples
peak() { awk -v a="$1" -v b="$2" '$1 >= a && $1 < b && $2 > m { m = $2 } END { printf "%d", m }' "$BENCH_OUT/rss.txt"; }
O_MID=$(((B_END + O_END) / 2))
RSS_BASE=$(peak "$B_START" "$B_END"); RSS_AFTER=$(peak "$O_END" "$A_END")
RSS_OVER=$(peak "$B_END" "$O_END"); RSS_OVER1=$(peak "$B_END" "$O_MID"); RSS_OVER2=$(peak "$O_MID" "$O_END")
HWM_END=$(rss_kib VmHWM)

jq -n --slurpfile r "$RUN" --slurpfile p "$BENCH_OUT/probe.json" --argjson cap "$CAPACITY" \
  --argjson base "$BASE_RATE" --argjson over "$OVER_RATE" --argjson hwm0 "$HWM_BEFORE_RUN" --argjson hwm1 "$HWM_END" \
  --argjson rb "$RSS_BASE" --argjson ro "$RSS_OVER" --argjson ra "$RSS_AFTER" --argjson growth "$OVERLOAD_RSS_GROWTH_MIB" \
  --argjson ro1 "$RSS_OVER1" --argjson ro2 "$RSS_OVER2" \
  --argjson factor "$OVERLOAD_FACTOR" \
  --argjson admitted_run "$(latency ok before end)" --argjson shed_run "$(latency overloaded before end)" \
  --argjson admitted_over "$(latency ok overload-start overload-end)" \
  --argjson shed_over "$(latency overloaded overload-start overload-end)" \
  --argjson overloaded "$(metric 'opampd_messages_total{transport="http",outcome="overloaded"}')" \
  --argjson unavailable "$(metric 'opampd_messages_total{transport="http",outcome="unavailable"}')" \
  --argjson shed "$(metric 'opampd_es_shed_total')" \
  --arg load "$(cut -d' ' -f1-3 /proc/loadavg)" --arg commit "$BENCH_COMMIT" --arg steps "$STEPS" '
  ($r[0]) as $r | ($r.phases // []) as $ph
  | ($ph | map({ (.name): . }) | add // {}) as $by
  | def mib: . / 1024 | floor;
  { tool: "overload.sh", commit: $commit, loadavg_at_end: $load, agents: $r.agents, rate_steps: $steps,
    capacity_msg_per_s: $cap, capacity_probe: { achieved_rate: $p[0].achieved_rate, errors: $p[0].errors,
      p99_ms: $p[0].latency.p99_ms },
    phases: [ $ph[] | { name, kind, duration_s, offered_per_s, replies_per_s, errors, error_classes,
      false_full_state, missed_full_state, last_error_s, p50_ms: .latency.p50_ms, p99_ms: .latency.p99_ms,
      max_ms: .latency.max_ms, error_p50_ms: .error_latency.p50_ms, error_p99_ms: .error_latency.p99_ms,
      error_max_ms: .error_latency.max_ms, passed } ],
    opampd: { overloaded_503: $overloaded, unavailable_503: $unavailable, es_shed: $shed,
      request_duration: { run: { admitted: $admitted_run, shed: $shed_run },
        overload: { admitted: $admitted_over, shed: $shed_over } },
      peak_rss_mib: { baseline: ($rb | mib), overload: ($ro | mib), overload_first_half: ($ro1 | mib),
        overload_second_half: ($ro2 | mib), after: ($ra | mib) },
      vmhwm_mib: { before_run: ($hwm0 | mib), end: ($hwm1 | mib) } },
    verify: ($r.verify | { checked, matched, applied_unacknowledged, acknowledged_lost, lost, error }),
    checks: {
      # the generator really offered the overload (at least 95 % of FACTOR x C): on a small box a
      # high C can be more than it can send (then lower C, see docs/benchmarks.md)
      offered_the_overload: (($by.overload.offered_per_s // 0) >= 0.95 * $factor * $cap),
      overloaded: (($by.overload.error_classes.retry_after // 0) > 0),
      overload_errors_only_503_retry_after: (($by.overload.errors // 1) == ($by.overload.error_classes.retry_after // -1)),
      normal_phases_clean: ([$by.enroll, $by.baseline, $by.after]
        | all(. != null and .errors == 0 and .false_full_state == 0)),
      no_missed_full_state: ($r.missed_full_state == 0),
      no_acknowledged_write_lost: ($r.verify.acknowledged_lost == 0 and $r.verify.error == null),
      # bounded: at most the allowance above the baseline, and no growth from the first half of the
      # overload to the second (16 MiB of noise)
      memory_flat: (($ro - $rb) / 1024 <= $growth and ($ro2 - $ro1) / 1024 <= 16) },
    indicative: {
      p99_ms: { baseline: $by.baseline.latency.p99_ms, overload: $by.overload.latency.p99_ms,
        recovering: $by.recovering.latency.p99_ms,
        after: $by.after.latency.p99_ms },
      last_503_after_the_drop_s: $by.recovering.last_error_s,
      "503s_after_the_drop": $by.recovering.errors,
      admitted_per_s_in_overload: $by.overload.replies_per_s, offered_per_s_in_overload: $by.overload.offered_per_s,
      offered_over_capacity: ((($by.overload.offered_per_s // 0) / $cap * 100 | round) / 100),
      "503_latency_ms": { p50: $by.overload.error_latency.p50_ms, p99: $by.overload.error_latency.p99_ms,
        max: $by.overload.error_latency.max_ms } },
    loadtest_passed: $r.passed, loadtest_failures: $r.failures }
  | .passed = ([.checks[]] | all) and .loadtest_passed' >"$BENCH_OUT/summary.json"
jq -c . "$BENCH_OUT/summary.json"
log "results in $BENCH_OUT"
[ "$(jq .passed "$BENCH_OUT/summary.json")" = true ]

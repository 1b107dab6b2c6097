#!/usr/bin/env bash
# Chaos load test (issue 9, point 4). Three opampd instances share one index on their own
# Elasticsearch node, behind HAProxy hashing `OpAMP-Instance-UID` (as deploy/haproxy.cfg does);
# opampd-loadtest runs a fleet through the balancer while this script, mid-run:
#   (a) SIGKILLs instance 1 and restarts it CHAOS_RESTART_AFTER s later;
#   (b) stops Elasticsearch (SIGTERM), keeps it down CHAOS_ES_DOWN s, starts it again on its data;
#   (c) SIGSTOPs instance 2 for CHAOS_PAUSE s, then SIGCONTs it.
# Each fault is a phase of the loadtest's report (`--phase-marks`): `fault` from the injection until
# the system is whole again (every instance's /readyz 200), `recovery` for CHAOS_SETTLE s after,
# `normal` otherwise. The run passes when
#   - fault and recovery phases hold only 503/429 with Retry-After and connection failures;
#   - normal phases hold no error and no false ReportFullState; no phase a missed one (false ones
#     in a fault are counted and shown, not failed: see docs/benchmarks.md "Faults");
#   - after the run every agent's stored sequence_num is the last one the server acknowledged, or
#     a later one whose reply was lost (`--verify-admin`): 0 acknowledged writes lost;
#   - every instance answers /readyz 200 and served replies after the last fault, instances 2 and 3
#     with the process they started with (they rode out the faults without a restart).
# It prints a per-phase table and one JSON summary line (also $BENCH_OUT/summary.json), exits 0
# on a pass and 1 otherwise, and stops everything it started (the watchdog ends it after
# CHAOS_MAX_SECS whatever happens). Loopback only.
#
#   loadtest/chaos.sh                          # ~7 min once built (the ES start included)
#   CHAOS_AGENTS=10000 loadtest/chaos.sh       # a lighter fleet
#
# Needs: haproxy (apt-get install -y haproxy), jq, curl, root (scripts/elasticsearch.sh).
# Env (defaults): CHAOS_ES_PORT (9280; transport +100; never the shared 9250/9260 nodes),
# CHAOS_LB_PORT (4360; instances on 4361-4363, admin 4371-4373), CHAOS_AGENTS (20000),
# CHAOS_HEARTBEAT (5), CHAOS_DURATION (270), CHAOS_FIRST_FAULT (25), CHAOS_STEADY (15, normal
# seconds between faults), CHAOS_SETTLE (15), CHAOS_RESTART_AFTER (3), CHAOS_ES_DOWN (20),
# CHAOS_PAUSE (10), CHAOS_MAX_SECS (1500), CHAOS_KEEP_ES=1 (leave the ES node running),
# BENCH_OUT, BENCH_FROM_HEAD, CARGO_TARGET_DIR (see bench-lib.sh).
set -euo pipefail
BENCH_OUT=${BENCH_OUT:-/tmp/opampd-chaos-$(date +%Y%m%d%H%M%S)}
# shellcheck source-path=SCRIPTDIR source=bench-lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"

CHAOS_ES_PORT=${CHAOS_ES_PORT:-9280}
CHAOS_LB_PORT=${CHAOS_LB_PORT:-4360}
CHAOS_AGENTS=${CHAOS_AGENTS:-20000}
CHAOS_HEARTBEAT=${CHAOS_HEARTBEAT:-5}
CHAOS_DURATION=${CHAOS_DURATION:-270}
CHAOS_FIRST_FAULT=${CHAOS_FIRST_FAULT:-25}
CHAOS_STEADY=${CHAOS_STEADY:-15}
CHAOS_SETTLE=${CHAOS_SETTLE:-15}
CHAOS_RESTART_AFTER=${CHAOS_RESTART_AFTER:-3}
CHAOS_ES_DOWN=${CHAOS_ES_DOWN:-20}
CHAOS_PAUSE=${CHAOS_PAUSE:-10}
CHAOS_MAX_SECS=${CHAOS_MAX_SECS:-1500}
CHAOS_CONNECTIONS=${CHAOS_CONNECTIONS:-1000}
CHAOS_IN_FLIGHT=${CHAOS_IN_FLIGHT:-1000}
own_es_init "$CHAOS_ES_PORT" CHAOS_ES_PORT
LB_URL=http://127.0.0.1:$CHAOS_LB_PORT/v1/opamp
INDEX=opampd-chaos-$TS
MARKS=$BENCH_OUT/marks.txt
require_tools haproxy jq curl

PIDS=("" "" "" "")   # opampd pid per instance (1-3)
FIRST_PIDS=("" "" "" "")
HAPROXY_PID=
LOADTEST_PID=
opamp_port() { echo $((CHAOS_LB_PORT + $1)); }
admin_port() { echo $((CHAOS_LB_PORT + 10 + $1)); }
admin_url() { echo "http://127.0.0.1:$(admin_port "$1")"; }

cleanup() {
  local i
  stop_watchdog
  if [ -n "$LOADTEST_PID" ] && kill -0 "$LOADTEST_PID" 2>/dev/null; then
    kill -TERM "$LOADTEST_PID" 2>/dev/null || true
    wait "$LOADTEST_PID" 2>/dev/null || true
  fi
  for i in 1 2 3; do stop_pid "${PIDS[$i]}"; done
  stop_pid "$HAPROXY_PID"
  own_es_cleanup "${CHAOS_KEEP_ES:-0}" "$INDEX"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$BENCH_OUT"
: >"$MARKS"
start_watchdog "$CHAOS_MAX_SECS" chaos
build
own_es_start

# start_instance I: opampd I on its ports, on the shared index; returns once it is ready (<= 90 s).
start_instance() {
  local i=$1
  "$BIN/opampd" --listen "127.0.0.1:$(opamp_port "$i")" --admin-listen "127.0.0.1:$(admin_port "$i")" \
    --store elasticsearch --es-url "$ES" --es-index "$INDEX" --auth none \
    >>"$BENCH_OUT/opampd-$i.log" 2>&1 &
  PIDS[i]=$!
  log "opampd $i started (pid ${PIDS[$i]})"
}

ready() { [ "$(curl -s --max-time 2 -o /dev/null -w '%{http_code}' "$(admin_url "$1")/readyz" || true)" = 200 ]; }

# wait_ready SECS I...: until every named instance answers /readyz 200.
wait_ready() {
  local limit=$1 i ok; shift
  local deadline=$((SECONDS + limit))
  while [ "$SECONDS" -lt "$deadline" ]; do
    ok=1
    for i in "$@"; do ready "$i" || { ok=0; break; }; done
    [ "$ok" = 1 ] && return 0
    sleep 0.25
  done
  log "instances $* not all ready after $limit s"
  return 1
}

for i in 1 2 3; do start_instance "$i"; done
wait_ready 90 1 2 3 || exit 1
for i in 1 2 3; do FIRST_PIDS[i]=${PIDS[$i]}; done

# HAProxy: route by agent like deploy/haproxy.cfg; take an instance out on /readyz. Retries only
# when the connection to an instance could not be made (`retry-on conn-failure`): the request
# never reached opampd, so sending it to another instance is safe. A request that reached an
# instance is never replayed: an OpAMP POST is not idempotent in general (a replay that was applied
# reads as a duplicate and draws a needless ReportFullState; safe, but it is the agent's call).
# Its own errors (no instance up, a reset mid-request, a timeout) become 503 + Retry-After: 30,
# what opampd itself answers when it cannot serve, so agents back off the same way (and keep their
# connection: no reconnect storm while Elasticsearch is down). Only abnormal requests are logged.
printf 'HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\nretry-after: 30\r\ncache-control: no-cache\r\ncontent-length: 40\r\n\r\nno opampd instance answered; retry later' \
  >"$BENCH_OUT/lb-503.http"
cat >"$BENCH_OUT/haproxy.cfg" <<CFG
global
    maxconn 8000
    log stdout format raw local0 info

defaults
    mode http
    log global
    option httplog
    option dontlog-normal
    timeout connect 2s
    timeout client 90s
    # above opampd's 10 s --request-timeout, so its own 503 comes first
    timeout server 15s
    # above the load generator's 60 s idle-pool timeout: the client closes an idle connection
    # first, so a request never races the balancer's close
    timeout http-keep-alive 75s
    timeout check 2s
    retries 2
    retry-on conn-failure
    option redispatch 1
    errorfile 502 $BENCH_OUT/lb-503.http
    errorfile 503 $BENCH_OUT/lb-503.http
    errorfile 504 $BENCH_OUT/lb-503.http

frontend opamp
    bind 127.0.0.1:$CHAOS_LB_PORT
    default_backend opampd

backend opampd
    balance hdr(OpAMP-Instance-UID)
    hash-type consistent
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter 1s fall 2 rise 2
    server opampd-1 127.0.0.1:$(opamp_port 1) check port $(admin_port 1)
    server opampd-2 127.0.0.1:$(opamp_port 2) check port $(admin_port 2)
    server opampd-3 127.0.0.1:$(opamp_port 3) check port $(admin_port 3)
CFG
haproxy -c -q -f "$BENCH_OUT/haproxy.cfg"
haproxy -db -f "$BENCH_OUT/haproxy.cfg" >"$BENCH_OUT/haproxy.log" 2>&1 &
HAPROXY_PID=$!
for _ in $(seq 1 40); do
  curl -s --max-time 1 -o /dev/null "http://127.0.0.1:$CHAOS_LB_PORT/" && break
  sleep 0.25
done
sleep 3 # the first health checks

mark() { # mark KIND NAME
  echo "$(now_ms) $1 $2" >>"$MARKS"
  log "phase $2 ($1)"
}
T0=
# at_offset SECS: sleeps until SECS after the loadtest started (at once if already past).
at_offset() {
  sleep "$(secs_until_ms $((T0 + $1 * 1000)))"
  loadtest_alive
}
loadtest_alive() {
  kill -0 "$LOADTEST_PID" 2>/dev/null || { log "the loadtest ended before the faults did: raise CHAOS_DURATION"; exit 1; }
}
elapsed_s() { echo $((($(now_ms) - T0) / 1000)); }
ok_replies() { # ok replies instance I has served so far (HTTP)
  curl -fsS --max-time 5 "$(admin_url "$1")/metrics" 2>/dev/null \
    | awk '/^opampd_messages_total\{/ && /outcome="ok"/ { s += $NF } END { printf "%d", s }'
}
# settle NAME: the recovery phase, then back to normal
settle() {
  mark recovery "$1"
  sleep "$CHAOS_SETTLE"
  loadtest_alive
  mark normal "after-$1"
}

LOAD_AT_START=$(cut -d' ' -f1-3 /proc/loadavg)
log "loadtest: $CHAOS_AGENTS agents, ${CHAOS_HEARTBEAT}s heartbeat, ${CHAOS_DURATION}s through $LB_URL"
ADMINS="$(admin_url 1),$(admin_url 2),$(admin_url 3)"
T0=$(now_ms)
timeout --signal=KILL $((CHAOS_DURATION + 900)) "$BIN/opampd-loadtest" --target "$LB_URL" \
  --agents "$CHAOS_AGENTS" --heartbeat "$CHAOS_HEARTBEAT" --duration "$CHAOS_DURATION" \
  --warmup "$CHAOS_HEARTBEAT" --connections "$CHAOS_CONNECTIONS" --max-in-flight "$CHAOS_IN_FLIGHT" \
  --progress 5 --phase-marks "$MARKS" --verify-admin "$ADMINS" --verify-settle 5 \
  --json-out "$BENCH_OUT/loadtest.json" >"$BENCH_OUT/loadtest.txt" 2>"$BENCH_OUT/loadtest.progress" &
LOADTEST_PID=$!

# (a) SIGKILL instance 1, restart it
at_offset "$CHAOS_FIRST_FAULT"
mark fault kill-instance-1
kill -KILL "${PIDS[1]}"
wait "${PIDS[1]}" 2>/dev/null || true
sleep "$CHAOS_RESTART_AFTER"
start_instance 1
wait_ready 90 1 2 3 || exit 1
log "instance 1 back after $(($(elapsed_s) - CHAOS_FIRST_FAULT)) s"
settle kill-instance-1
sleep "$CHAOS_STEADY"
loadtest_alive

# (b) Elasticsearch down for CHAOS_ES_DOWN s, then started again on its data
mark fault es-stop
F=$(elapsed_s)
es_script stop
log "elasticsearch stopped ($(($(elapsed_s) - F)) s after the signal)"
sleep "$CHAOS_ES_DOWN"
log "starting elasticsearch again"
es_script resume >/dev/null
wait_ready 120 1 2 3 || exit 1
ES_OUTAGE_S=$(($(elapsed_s) - F))
log "elasticsearch back and every instance ready, $ES_OUTAGE_S s after the stop"
settle es-stop
sleep "$CHAOS_STEADY"
loadtest_alive

# (c) SIGSTOP instance 2 for CHAOS_PAUSE s
mark fault pause-instance-2
kill -STOP "${PIDS[2]}"
sleep "$CHAOS_PAUSE"
kill -CONT "${PIDS[2]}"
wait_ready 60 1 2 3 || exit 1
settle pause-instance-2
declare -a OK_AFTER
for i in 1 2 3; do OK_AFTER[i]=$(ok_replies "$i"); done
LAST_FAULT_END=$(elapsed_s)
log "all faults done at ${LAST_FAULT_END}s; the loadtest runs to ${CHAOS_DURATION}s, then checks the store"

wait "$LOADTEST_PID" && LT_RC=0 || LT_RC=$?
LOADTEST_PID=
show_summary "$BENCH_OUT/loadtest.txt"

# every instance serving again, 2 and 3 without a restart of their own
INSTANCES=()
for i in 1 2 3; do
  alive=false; same=false; is_ready=false
  kill -0 "${PIDS[$i]}" 2>/dev/null && alive=true
  [ "${PIDS[$i]}" = "${FIRST_PIDS[$i]}" ] && same=true
  ready "$i" && is_ready=true
  served=$(($(ok_replies "$i") - ${OK_AFTER[$i]:-0}))
  INSTANCES+=("$(jq -cn --argjson i "$i" --argjson pid "${PIDS[$i]}" --argjson alive "$alive" --argjson same "$same" \
    --argjson ready "$is_ready" --argjson served "$served" \
    '{instance: $i, pid: $pid, alive: $alive, restarted_by_the_test: ($same | not), ready: $ready,
      ok_replies_after_last_fault: $served}')")
done
opampd_metrics 1 "$(admin_url 1)"

LT=$BENCH_OUT/loadtest.json
[ -s "$LT" ] || { log "the loadtest wrote no summary (exit $LT_RC):"; tail -n 20 "$BENCH_OUT/loadtest.progress" >&2; exit 1; }
printf '%s\n' "${INSTANCES[@]}" | jq -s --slurpfile lt "$LT" --arg load "$(cut -d' ' -f1-3 /proc/loadavg)" --arg load0 "$LOAD_AT_START" \
  --arg commit "$BENCH_COMMIT" --argjson es_outage "$ES_OUTAGE_S" --argjson rc "$LT_RC" \
  --arg cfg "agents=$CHAOS_AGENTS heartbeat=${CHAOS_HEARTBEAT}s duration=${CHAOS_DURATION}s es_down=${CHAOS_ES_DOWN}s pause=${CHAOS_PAUSE}s" '
  ($lt[0]) as $r
  | [ .[] | select(.alive and .ready and .ok_replies_after_last_fault > 0
        and (.instance == 1 or (.restarted_by_the_test | not))) ] as $serving
  | { tool: "chaos.sh", commit: $commit, config: $cfg, loadavg_at_start: $load0, loadavg_at_end: $load,
      sent: $r.sent, achieved_rate: $r.achieved_rate, errors: $r.errors, error_classes: $r.error_classes,
      false_full_state: $r.false_full_state, missed_full_state: $r.missed_full_state,
      injected: $r.injected, expected_requests_honoured: $r.expected_requests_honoured,
      es_outage_s: $es_outage,
      phases: [ $r.phases[]? | { name, kind, duration_s, sent_in_phase, replies, errors, error_classes,
        false_full_state, missed_full_state, unjudged_not_asked, p99_ms: .latency.p99_ms,
        error_p99_ms: .error_latency.p99_ms, passed } ],
      verify: ($r.verify | { checked, matched, applied_unacknowledged, never_acknowledged,
        acknowledged_lost, lost, unverifiable_in_flight, error }),
      instances: .,
      loadtest_passed: $r.passed, loadtest_failures: $r.failures,
      passed: ($r.passed and $rc == 0 and ($serving | length) == 3
        and $r.verify.acknowledged_lost == 0 and $r.verify.error == null and $r.missed_full_state == 0) }' \
  >"$BENCH_OUT/summary.json"
jq -c . "$BENCH_OUT/summary.json"
log "results in $BENCH_OUT"
[ "$(jq .passed "$BENCH_OUT/summary.json")" = true ]

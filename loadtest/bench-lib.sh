#!/usr/bin/env bash
# Shared functions of the loadtest scripts (sourced, not run): the benchmarks (bench-*.sh) and
# the fault tests (chaos.sh, overload.sh). Everything here is loopback-only and time-bounded; the
# only processes it stops are those the sourcing script started itself (its opampd, its own
# Elasticsearch node, its watchdog).
# shellcheck disable=SC2034 # some of its variables are read by the scripts that source it only

# Tunables (env): BENCH_PORT, BENCH_ADMIN_PORT, BENCH_OUT, BENCH_SHORT=1 (quick run),
# BENCH_RATES, BENCH_STEP_SECS, BENCH_SWEEP_CYCLE, BENCH_AGENTS, BENCH_HEARTBEAT,
# BENCH_SCENARIO_SECS, BENCH_CONNECTIONS, BENCH_IN_FLIGHT, BENCH_P99_MS, BENCH_DRIFT,
# BENCH_ES_WARMUP_SECS, BENCH_CEILING_SECS, BENCH_PIN (bench-es.sh).
BENCH_PORT=${BENCH_PORT:-4330}
BENCH_ADMIN_PORT=${BENCH_ADMIN_PORT:-4331}
TS=$(date +%Y%m%d%H%M%S)
BENCH_OUT=${BENCH_OUT:-/tmp/opampd-bench-$TS}
if [ "${BENCH_SHORT:-0}" = 1 ]; then
  BENCH_RATES=${BENCH_RATES:-"500 1000 2000 4000"}
  BENCH_STEP_SECS=${BENCH_STEP_SECS:-12}
  BENCH_AGENTS=${BENCH_AGENTS:-20000}
  BENCH_SCENARIO_SECS=${BENCH_SCENARIO_SECS:-20}
  BENCH_HEARTBEAT=${BENCH_HEARTBEAT:-6}
  BENCH_CEILING_SECS=${BENCH_CEILING_SECS:-8}
  BENCH_ES_WARMUP_SECS=${BENCH_ES_WARMUP_SECS:-10}
else
  BENCH_RATES=${BENCH_RATES:-"1000 2000 3000 4000 5000 6000 8000 10000"}
  BENCH_STEP_SECS=${BENCH_STEP_SECS:-30}
  BENCH_AGENTS=${BENCH_AGENTS:-100000}
  BENCH_SCENARIO_SECS=${BENCH_SCENARIO_SECS:-120}
  BENCH_HEARTBEAT=${BENCH_HEARTBEAT:-30}
  BENCH_CEILING_SECS=${BENCH_CEILING_SECS:-20}
  BENCH_ES_WARMUP_SECS=${BENCH_ES_WARMUP_SECS:-30}
fi
# Sweep agents = rate x cycle, so each agent heartbeats every BENCH_SWEEP_CYCLE seconds and the
# enrollment wave (the first cycle) fits in the warm-up of every step.
BENCH_SWEEP_CYCLE=${BENCH_SWEEP_CYCLE:-3}
BENCH_CONNECTIONS=${BENCH_CONNECTIONS:-1000}
# Below opampd's default --max-in-flight 1024, so its limit never answers 503; high enough that
# group commit can fill bulks (Little's law: in flight = rate x latency).
BENCH_IN_FLIGHT=${BENCH_IN_FLIGHT:-1000}
BENCH_P99_MS=${BENCH_P99_MS:-100}
BENCH_DRIFT=${BENCH_DRIFT:-0.01}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET_DIR/release
TARGET_URL=http://127.0.0.1:$BENCH_PORT/v1/opamp
ADMIN_URL=http://127.0.0.1:$BENCH_ADMIN_PORT
OPAMPD_PID=

log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

# CPU pinning (bench-es.sh). On a small box Elasticsearch, opampd and the load generator fight for
# the same cores, and the raw ceiling (whose client is idle) gets all of them: the ratio then
# measures the CPU the generator and opampd take from ES, not what opampd gets out of ES. With
# BENCH_PIN=1 (the default with >= 2 CPUs) ES runs on CPU 0 only, for the ceilings and the opampd
# runs alike, and everything this script starts runs on the other CPUs, as on separate machines.
# BENCH_PIN=0 shares every CPU. ES's own affinity is restored on exit. pin_setup ES_URL [WHO]: WHO
# names what runs on the other CPUs (for the log line).
PIN=()
ES_PIN_PID=
pin_setup() {
  local es_url=$1 who=${2:-opampd, load generator and ceiling client} ncpu port
  ncpu=$(nproc)
  BENCH_PIN=${BENCH_PIN:-$([ "$ncpu" -ge 2 ] && echo 1 || echo 0)}
  [ "$BENCH_PIN" = 1 ] || { log "cpu pinning off: everything shares $ncpu cpus"; return 0; }
  [ "$ncpu" -ge 2 ] || { log "BENCH_PIN=1 needs at least 2 cpus"; exit 2; }
  command -v taskset >/dev/null || { log "BENCH_PIN=1 needs taskset (util-linux)"; exit 2; }
  port=$(echo "$es_url" | sed -E 's#^[a-z]+://[^/:]+:([0-9]+).*#\1#')
  ES_PIN_PID=$(ss -Htlnp "sport = :$port" 2>/dev/null | grep -o 'pid=[0-9]*' | head -n 1 | cut -d= -f2)
  [ -n "$ES_PIN_PID" ] || { log "BENCH_PIN=1: no process listens on port $port (run as root, or BENCH_PIN=0)"; exit 2; }
  taskset -a -p -c 0 "$ES_PIN_PID" >/dev/null
  PIN=(taskset -c "1-$((ncpu - 1))")
  log "cpu pinning: elasticsearch (pid $ES_PIN_PID) on cpu 0; $who on cpus 1-$((ncpu - 1))"
}
pin_restore() {
  [ -n "$ES_PIN_PID" ] || return 0
  taskset -a -p -c "0-$(($(nproc) - 1))" "$ES_PIN_PID" >/dev/null 2>&1 || true
  ES_PIN_PID=
}

require_loopback() {
  case "$1" in
    http://127.*|http://localhost[:/]*|http://localhost|http://\[::1\]*) ;;
    *) log "refusing non-loopback url $1"; exit 2 ;;
  esac
}

# Builds from the working tree, or with BENCH_FROM_HEAD=1 from a `git archive HEAD` snapshot
# (a checkout that others are editing may not compile at any given moment), or of BENCH_REF.
build() {
  local src=$ROOT
  BENCH_COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
  if [ "${BENCH_FROM_HEAD:-0}" = 1 ]; then
    # BENCH_REF: another commit to build instead (a before/after pair with the same script)
    BENCH_COMMIT=$(git -C "$ROOT" rev-parse --short "${BENCH_REF:-HEAD}")
    src=$BENCH_OUT/src
    rm -rf "$src"; mkdir -p "$src"
    git -C "$ROOT" archive "${BENCH_REF:-HEAD}" | tar -x -C "$src"
    # the archive's files carry the commit's time: older than the artifacts of a later
    # commit's build in a shared CARGO_TARGET_DIR, cargo would take them as up to date
    find "$src" -type f -exec touch {} +
  else
    BENCH_COMMIT="$BENCH_COMMIT+worktree"
  fi
  log "building opampd and opampd-loadtest (release) from $src ($BENCH_COMMIT) into $TARGET_DIR"
  (cd "$src" && CARGO_TARGET_DIR=$TARGET_DIR cargo build --release -p opampd -p opampd-loadtest) >&2
}

# start_opampd ARGS...: starts the server on the bench ports, waits (<= 90 s) for /readyz.
start_opampd() {
  mkdir -p "$BENCH_OUT"
  log "starting opampd $*"
  "${PIN[@]}" "$BIN/opampd" --listen "127.0.0.1:$BENCH_PORT" --admin-listen "127.0.0.1:$BENCH_ADMIN_PORT" "$@" \
    >"$BENCH_OUT/opampd.log" 2>&1 &
  OPAMPD_PID=$!
  for _ in $(seq 1 180); do
    if curl -fsS --max-time 2 "$ADMIN_URL/readyz" >/dev/null 2>&1; then
      log "opampd ready (pid $OPAMPD_PID)"
      return 0
    fi
    if ! kill -0 "$OPAMPD_PID" 2>/dev/null; then
      log "opampd exited; log:"; tail -n 30 "$BENCH_OUT/opampd.log" >&2; exit 1
    fi
    sleep 0.5
  done
  log "opampd not ready after 90 s"; tail -n 30 "$BENCH_OUT/opampd.log" >&2; exit 1
}

# stop_pid PID [GRACE_S]: stops one process this script started: SIGCONT (it may be paused),
# SIGTERM, up to GRACE_S (30) s to exit, then SIGKILL; reaps it. Nothing when PID is empty.
stop_pid() {
  local pid=$1 grace=${2:-30}
  [ -n "$pid" ] || return 0
  if kill -0 "$pid" 2>/dev/null; then
    kill -CONT "$pid" 2>/dev/null || true
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 $((grace * 2))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

# Stops only the opampd this script started (start_opampd), with 40 s of grace.
stop_opampd() {
  [ -n "$OPAMPD_PID" ] || return 0
  if kill -0 "$OPAMPD_PID" 2>/dev/null; then log "stopping opampd (pid $OPAMPD_PID)"; fi
  stop_pid "$OPAMPD_PID" 40
  OPAMPD_PID=
}

# opampd_metrics NAME [ADMIN_URL]: a /metrics snapshot of the started opampd (or of the admin
# listener given) into $BENCH_OUT/metrics-NAME.txt; an unreachable one leaves it empty.
opampd_metrics() {
  curl -fsS --max-time 5 "${2:-$ADMIN_URL}/metrics" >"$BENCH_OUT/metrics-$1.txt" 2>/dev/null || true
}

# nginx_http_private NG: the lines of an nginx `http` block that keep a private nginx (one a
# script starts with `-p NG`) off the system's log and temp dirs; NG/tmp must exist.
nginx_http_private() {
  local ng=$1 kind
  echo "    access_log off;"
  echo "    client_body_temp_path $ng/tmp/body;"
  for kind in proxy fastcgi uwsgi scgi; do
    echo "    ${kind}_temp_path $ng/tmp/$kind;"
  done
}

# start_private_nginx NG READY_URL: checks and starts the nginx configured in NG/nginx.conf
# (`daemon off`, its files under NG; pinned like the rest when PIN is set) and waits (<= 10 s)
# until READY_URL answers; sets NGINX_PID. The caller stops it (stop_pid).
NGINX_PID=
start_private_nginx() {
  local ng=$1 ready=$2
  mkdir -p "$ng/tmp"
  : >"$ng/error.log"
  nginx -t -q -p "$ng" -c "$ng/nginx.conf" -e "$ng/error.log" >"$ng/config-test.log" 2>&1 \
    || { log "nginx rejects $ng/nginx.conf:"; cat "$ng/config-test.log" >&2; exit 1; }
  "${PIN[@]}" nginx -p "$ng" -c "$ng/nginx.conf" -e "$ng/error.log" >"$ng/stdout.log" 2>&1 &
  NGINX_PID=$!
  for _ in $(seq 1 40); do
    kill -0 "$NGINX_PID" 2>/dev/null || { log "nginx exited:"; tail -n 10 "$ng/error.log" >&2; exit 1; }
    curl -s --max-time 1 -o /dev/null "$ready" && return 0
    sleep 0.25
  done
  log "nginx did not answer $ready in 10 s"; exit 1
}

# show_summary FILE: the summary block of a loadtest's stdout, on stderr.
show_summary() { sed -n '/== opampd-loadtest summary ==/,/^PASS\|^FAIL/p' "$1" >&2; }

# loadtest NAME ARGS...: one bounded loadtest run; its JSON summary goes to $BENCH_OUT/NAME.json.
loadtest() {
  local name=$1; shift
  local out=$BENCH_OUT/$name.json
  log "loadtest $name: $*"
  # The tool stops itself; the outer timeout only guards against a wedged process.
  timeout --signal=KILL 1800 "${PIN[@]}" "$BIN/opampd-loadtest" --target "$TARGET_URL" --json-out "$out" \
    --connections "$BENCH_CONNECTIONS" --max-in-flight "$BENCH_IN_FLIGHT" --drift-rate "$BENCH_DRIFT" \
    "$@" >"$BENCH_OUT/$name.txt" 2>"$BENCH_OUT/$name.progress" || true
  show_summary "$BENCH_OUT/$name.txt"
  [ -s "$out" ] || { log "loadtest $name produced no summary"; tail -n 5 "$BENCH_OUT/$name.progress" >&2; return 1; }
}

# Open-loop rate sweep. A step is "sustained" when it achieves >= 97 % of its target with 0 errors,
# p99 <= BENCH_P99_MS and no false/missed full state; BEST_RATE is the highest sustained achieved
# rate. The sweep goes on past a p99 miss (latency on a shared box is noisy) and stops at
# saturation (achieved < 90 % of target), at any error, or at a correctness failure. MAX_RATE is
# the highest achieved rate of an error-free, correct step whatever its p99.
sweep() {
  BEST_RATE=0; BEST_FILE=; MAX_RATE=0; MAX_FILE=
  for rate in $BENCH_RATES; do
    local agents warm
    agents=$(awk -v r="$rate" -v c="$BENCH_SWEEP_CYCLE" 'BEGIN { a = int(r * c); if (a < 100) a = 100; print a }')
    warm=$(awk -v a="$agents" -v r="$rate" -v s="$BENCH_STEP_SECS" \
      'BEGIN { w = a / r + 1; if (w > s / 2) w = s / 2; printf "%.1f", w }')
    loadtest "sweep-$rate" --agents "$agents" --rate "$rate" --duration "$BENCH_STEP_SECS" \
      --warmup "$warm" --progress 5 || break
    local f=$BENCH_OUT/sweep-$rate.json
    local correct ok saturated
    correct=$(jq '.errors == 0 and .false_full_state == 0 and .missed_full_state == 0' "$f")
    ok=$(jq --argjson r "$rate" --argjson p "$BENCH_P99_MS" \
      '(.achieved_rate >= 0.97 * $r) and .errors == 0 and .latency.p99_ms <= $p
       and .false_full_state == 0 and .missed_full_state == 0' "$f")
    saturated=$(jq --argjson r "$rate" '.achieved_rate < 0.9 * $r' "$f")
    log "rate $rate: achieved $(jq .achieved_rate "$f") msg/s, p99 $(jq .latency.p99_ms "$f") ms, errors $(jq .errors "$f"), load $(cut -d' ' -f1 /proc/loadavg) -> sustained=$ok"
    if [ "$ok" = true ]; then BEST_RATE=$(jq .achieved_rate "$f"); BEST_FILE=$f; fi
    if [ "$correct" = true ] && awk -v a="$(jq .achieved_rate "$f")" -v m="$MAX_RATE" 'BEGIN { exit !(a > m) }'; then
      MAX_RATE=$(jq .achieved_rate "$f"); MAX_FILE=$f
    fi
    if [ "$correct" != true ] || [ "$saturated" = true ]; then break; fi
  done
}

# CPU seconds (user + system) the started opampd has used so far.
opampd_cpu_s() {
  awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$OPAMPD_PID/stat" 2>/dev/null || echo 0
}

# The fleet scenario: BENCH_AGENTS agents at a BENCH_HEARTBEAT s heartbeat; the first heartbeat
# interval (the enrollment wave) is the warm-up.
scenario() {
  local warm=$BENCH_HEARTBEAT
  if awk -v w="$warm" -v d="$BENCH_SCENARIO_SECS" 'BEGIN { exit !(w >= d) }'; then warm=0; fi
  loadtest scenario --agents "$BENCH_AGENTS" --heartbeat "$BENCH_HEARTBEAT" --duration "$BENCH_SCENARIO_SECS" \
    --warmup "$warm" --progress 10
}

# Sum of sent messages over the given loadtest JSON files.
messages_in() {
  local f total=0
  for f in "$@"; do
    if [ -s "$f" ]; then total=$((total + $(jq '.sent // 0' "$f"))); fi
  done
  echo "$total"
}


# ---- Fault tests (chaos.sh, overload.sh): their own Elasticsearch node, a watchdog, cleanup ----

# Wall-clock milliseconds (phase marks, rate schedules, memory samples).
now_ms() { date +%s%3N; }

# secs_until_ms MS: the seconds (3 decimals) from now to the wall-clock millisecond MS, 0 if past;
# for `sleep`.
secs_until_ms() {
  awk -v m="$(($1 - $(now_ms)))" 'BEGIN { if (m < 0) m = 0; printf "%.3f", m / 1000 }'
}

# require_tools TOOL...: exits 2 naming the first one missing (each is a Debian package's name).
require_tools() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { log "$tool is needed (apt-get install -y $tool)"; exit 2; }
  done
}

# interruptible_sleep SECS: sleeps in a child and waits for it, so a SIGTERM to the (sub)shell
# ends the sleep too instead of leaving it behind, and exits 0. Only for background subshells:
# it replaces their TERM trap.
interruptible_sleep() {
  local sleeper
  trap 'kill "$sleeper" 2>/dev/null; exit 0' TERM
  sleep "$1" &
  sleeper=$!
  wait "$sleeper"
}

# start_watchdog SECS NAME: bounds the whole run. After SECS it sends SIGTERM to this script
# (whose `trap 'exit 130' TERM` then runs the EXIT trap's cleanup), whatever hangs. stop_watchdog
# belongs in that cleanup. ($$ is this script's pid in the subshell too.)
WATCHDOG_PID=
start_watchdog() {
  local secs=$1 name=$2
  (
    interruptible_sleep "$secs"
    echo "[$name] watchdog: $secs s are up, stopping" >&2
    kill -TERM $$
  ) &
  WATCHDOG_PID=$!
}
stop_watchdog() {
  if [ -n "$WATCHDOG_PID" ]; then kill "$WATCHDOG_PID" 2>/dev/null || true; fi
  WATCHDOG_PID=
}

# A fault test stops (or restarts) Elasticsearch, so it runs a plain node of its own
# (scripts/elasticsearch.sh with OPAMPD_ES_PORT: HTTP on that port, transport on port + 100, data
# in its own run dir), never one of the shared test nodes (9250 plain, 9260 secured) that other
# tests on this machine use.
OWN_ES_PORT=
OWN_ES_STARTED=0

# own_es_init PORT VAR: the own node's port (VAR: the setting that chose it, for the refusal of a
# shared node's port, exit 64); sets ES to its URL. Call it before the EXIT trap is set.
own_es_init() {
  OWN_ES_PORT=$1
  case "$OWN_ES_PORT" in
    9250 | 9260) log "$2 $OWN_ES_PORT is a shared test node; this script stops its node: use a port of its own"; exit 64 ;;
  esac
  ES=http://127.0.0.1:$OWN_ES_PORT
}

# es_script CMD: scripts/elasticsearch.sh CMD (start, stop, resume) on the own node.
es_script() { OPAMPD_ES_SECURE=0 OPAMPD_ES_PORT=$OWN_ES_PORT "$ROOT/scripts/elasticsearch.sh" "$@"; }

# own_es_start: starts the own node on fresh data and waits until it is healthy.
own_es_start() {
  log "elasticsearch on $ES (a node of its own: this script stops it)"
  es_script start >/dev/null
  OWN_ES_STARTED=1
}

# own_es_cleanup KEEP INDEX: for the EXIT trap. Stops the own node when this script started it
# and KEEP is not 1; otherwise, if a node answers there, deletes the script's INDEX from it.
own_es_cleanup() {
  local keep=$1 index=$2
  if [ "$OWN_ES_STARTED" = 1 ] && [ "$keep" != 1 ]; then
    log "stopping the elasticsearch node on $OWN_ES_PORT"
    es_script stop || true
    OWN_ES_STARTED=0
  elif curl -fsS --max-time 5 "$ES/_cluster/health" >/dev/null 2>&1; then
    curl -fsS --max-time 30 -X DELETE "$ES/$index" >/dev/null 2>&1 || true
  fi
}

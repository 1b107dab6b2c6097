#!/usr/bin/env bash
# Transport floor (issue 12, target 3): what one HTTP/1.1 keep-alive request costs a server
# process on this box before any OpAMP work, at the rate one instance of the deployed shape
# serves (bench-cluster.sh: 3,333 msg/s over three instances, ~1,100 each) and at the whole
# rate. loadtest/transport_floor_probe.py (Python 3, standard library only) sends paced
# requests over FLOOR_CONNECTIONS keep-alive connections and reads the server's user and system
# CPU from /proc around them, for three servers, one at a time:
#   nginx          `return 200` from one nginx worker (its own config in $BENCH_OUT/nginx, never
#                  the system nginx): a C event loop that does nothing per request
#   opampd_health  GET /healthz on a release opampd's admin listener: the HTTP stack opampd
#                  serves OpAMP with (tokio, hyper, axum, its connection handling), no handler work
#   opampd_opamp   POST /v1/opamp with an empty body on the same opampd: the OpAMP transport up
#                  to the message's validation (a 400, refused before any store call)
# and prints CPU per request (user + system) for each at each rate, plus one JSON summary line
# on stdout (also $BENCH_OUT/summary.json). Loopback only; bounded (FLOOR_MAX_SECS); stops what
# it started.
#
#   loadtest/transport-floor.sh                       # ~3 min built
#   FLOOR_RATES="1100" FLOOR_SECS=10 loadtest/transport-floor.sh
#
# Env (defaults): FLOOR_RATES ("1100 3300" requests/s), FLOOR_SECS (20 measured per rate),
# FLOOR_CONNECTIONS (300), FLOOR_WORKER_THREADS (unset: opampd's default; N: --worker-threads N),
# FLOOR_PORT (4470: opampd's OpAMP listener; admin +1, nginx +2), FLOOR_MAX_SECS (900),
# FLOOR_NO_BUILD=1 (use the binary already in $CARGO_TARGET_DIR/release), BENCH_OUT,
# CARGO_TARGET_DIR.
set -euo pipefail
BENCH_OUT=${BENCH_OUT:-/tmp/opampd-transport-floor-$(date +%Y%m%d%H%M%S)}
FLOOR_PORT=${FLOOR_PORT:-4470}
BENCH_PORT=$FLOOR_PORT
BENCH_ADMIN_PORT=$((FLOOR_PORT + 1))
NGINX_PORT=$((FLOOR_PORT + 2))
# shellcheck source-path=SCRIPTDIR source=bench-lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"

FLOOR_RATES=${FLOOR_RATES:-1100 3300}
FLOOR_SECS=${FLOOR_SECS:-20}
FLOOR_CONNECTIONS=${FLOOR_CONNECTIONS:-300}
FLOOR_MAX_SECS=${FLOOR_MAX_SECS:-900}
require_tools nginx python3 jq curl

cleanup() {
  stop_watchdog
  stop_opampd
  stop_pid "$NGINX_PID" 10
}
trap cleanup EXIT
trap 'exit 130' INT TERM
start_watchdog "$FLOOR_MAX_SECS" transport-floor
mkdir -p "$BENCH_OUT"

if [ "${FLOOR_NO_BUILD:-0}" != 1 ]; then
  log "building opampd (release) into $TARGET_DIR"
  (cd "$ROOT" && CARGO_TARGET_DIR=$TARGET_DIR cargo build --release -p opampd) >&2
fi
[ -x "$BIN/opampd" ] || { log "no $BIN/opampd"; exit 2; }
COMMIT="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)+worktree"
NOFILE=$((2 * FLOOR_CONNECTIONS + 500))
ulimit -n "$NOFILE" 2>/dev/null || { log "need $NOFILE open files, the limit is $(ulimit -Hn)"; exit 2; }

# probe NAME PORT PID ARGS...: one probe run per rate into $BENCH_OUT/NAME-RATE.json
probe() {
  local name=$1 port=$2 pid=$3 rate
  shift 3
  for rate in $FLOOR_RATES; do
    log "$name: $rate requests/s for $FLOOR_SECS s over $FLOOR_CONNECTIONS connections"
    python3 "$ROOT/loadtest/transport_floor_probe.py" --port "$port" --pid "$pid" --rate "$rate" \
      --seconds "$FLOOR_SECS" --connections "$FLOOR_CONNECTIONS" "$@" >"$BENCH_OUT/$name-$rate.json"
  done
}

# ---- nginx: return 200 ----
NG=$BENCH_OUT/nginx
mkdir -p "$NG"
cat >"$NG/nginx.conf" <<CFG
# written by loadtest/transport-floor.sh
daemon off;
master_process on;
worker_processes 1;
pid $NG/nginx.pid;
error_log $NG/error.log warn;
events { worker_connections 4096; }
http {
$(nginx_http_private "$NG")
    server {
        listen 127.0.0.1:$NGINX_PORT backlog=4096;
        keepalive_timeout 75s;
        keepalive_requests 1000000;
        location / { return 200 "ok"; }
    }
}
CFG
start_private_nginx "$NG" "http://127.0.0.1:$NGINX_PORT/"
NGINX_WORKER=$(pgrep -P "$NGINX_PID" | head -n 1)
[ -n "$NGINX_WORKER" ] || { log "no nginx worker"; exit 1; }
probe nginx "$NGINX_PORT" "$NGINX_WORKER" --path /
stop_pid "$NGINX_PID" 10
NGINX_PID=

# ---- opampd: /healthz and a refused OpAMP message ----
OPAMPD_ARGS=(--store embedded --data-dir "$BENCH_OUT/data" --auth none)
if [ -n "${FLOOR_WORKER_THREADS:-}" ]; then OPAMPD_ARGS+=(--worker-threads "$FLOOR_WORKER_THREADS"); fi
rm -rf "$BENCH_OUT/data"
start_opampd "${OPAMPD_ARGS[@]}"
probe opampd_health "$BENCH_ADMIN_PORT" "$OPAMPD_PID" --path /healthz
probe opampd_opamp "$BENCH_PORT" "$OPAMPD_PID" --path /v1/opamp --method POST
stop_opampd

# ---- summary ----
echo "transport floor ($COMMIT), CPU per request of one server process, $FLOOR_CONNECTIONS keep-alive connections:" >&2
printf '%-15s %8s %10s %12s %10s %10s %s\n' server rate achieved us/request user_us sys_us statuses >&2
for name in nginx opampd_health opampd_opamp; do
  for rate in $FLOOR_RATES; do
    jq -r --arg n "$name" --arg r "$rate" \
      '[$n, $r, .rate, .us_per_request, .user_us_per_request, .sys_us_per_request, (.statuses | tostring)] | @tsv' \
      "$BENCH_OUT/$name-$rate.json" |
      awk -F'\t' '{ printf "%-15s %8s %10s %12s %10s %10s %s\n", $1, $2, $3, $4, $5, $6, $7 }' >&2
  done
done
jq -cn --arg commit "$COMMIT" --arg out "$BENCH_OUT" --argjson secs "$FLOOR_SECS" \
  --argjson conns "$FLOOR_CONNECTIONS" --arg rates "$FLOOR_RATES" \
  --arg threads "${FLOOR_WORKER_THREADS:-default}" \
  '{tool: "transport-floor.sh", commit: $commit, seconds: $secs, connections: $conns,
    opampd_worker_threads: $threads, rates: ($rates | split(" ") | map(select(. != ""))), out: $out}' \
  >"$BENCH_OUT/meta.json"
jq -cs '.[0] + {results: (.[1:] | map({(.name): .}) | add)}' "$BENCH_OUT/meta.json" \
  <(for name in nginx opampd_health opampd_opamp; do
      for rate in $FLOOR_RATES; do
        jq -c --arg n "$name-$rate" '{name: $n} + .' "$BENCH_OUT/$name-$rate.json"
      done
    done) | tee "$BENCH_OUT/summary.json"
log "details in $BENCH_OUT"

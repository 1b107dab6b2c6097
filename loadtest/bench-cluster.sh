#!/usr/bin/env bash
# opampd's deployed shape, end to end, on this machine, in one run:
#   - its own Elasticsearch node (started fresh on CLUSTER_ES_PORT; never the shared 9250/9260),
#     warmed up for CLUSTER_ES_WARMUP_SECS on a scratch index (es-ceiling, not measured: a fresh
#     JVM runs its first minute or so interpreted);
#   - CLUSTER_INSTANCES opampd instances on one index opampd-cluster-<ts> (--auth none);
#   - nginx as the load balancer (its own config, pid, logs and temp dirs in $BENCH_OUT/nginx;
#     never the system nginx): `hash $http_opamp_instance_uid consistent`, keep-alive to the
#     instances, HTTP/1.1 and the WebSocket upgrade passed through, so one balancer serves both
#     transports;
#   - opampd-loadtest through nginx, by default the fleet of the issue's run: 100K agents, 30 s
#     heartbeat, 120 s, 500 connections, 1000 in flight, drift rate 0.01, HTTP.
# It measures, over the loadtest's measured window (after its --warmup, to its scheduled end):
#   - msg/s, p50/p90/p99/p99.9/max latency, errors, false and missed ReportFullState (the
#     loadtest's JSON);
#   - CPU of every process it started (/proc/<pid>/stat utime+stime, all threads): % of one core
#     and microseconds per message for Elasticsearch (the JVM), nginx (master + workers), each
#     opampd and the generator;
#   - Elasticsearch's cost: the index's `_stats` deltas (indexing, get, search, refresh, flush,
#     merge, bulk: counts and times) per message, and the node's JVM GC counts and times;
# then, after the loadtest, with the instances and nginx stopped:
#   - the index size per agent (store.size_in_bytes / docs.count after a refresh) and each
#     opampd's RSS at the end (taken before they stop);
#   - the raw CAS `_bulk` ceiling on copies of the same documents (es-ceiling --like-index, bulks
#     of 500, 4 in flight, as opampd's group commit) for CLUSTER_CEILING_SECS, and the JVM's CPU
#     over its measured part per item written: es_us_per_ceiling_item, against es_us_per_msg.
# Prints one JSON summary line on stdout (also $BENCH_OUT/summary.json) and a table on stderr.
# Exits 0 when the run had no error and no false or missed ReportFullState, 1 otherwise (also
# when a part failed to start); the p99 target is the field p99_ok, not a failure. Loopback only;
# stops everything it started on exit (its Elasticsearch node too unless CLUSTER_KEEP_ES=1), and
# the watchdog ends it after CLUSTER_MAX_SECS whatever happens.
#
#   loadtest/bench-cluster.sh                          # ~7 min once built (ES start included)
#   BENCH_SHORT=1 loadtest/bench-cluster.sh            # smoke run: 10K agents, 5 s, 30 s (~3 min)
#   CLUSTER_TRANSPORT=ws CLUSTER_INSTANCES=2 loadtest/bench-cluster.sh
#
# Needs: nginx (apt-get install -y nginx; installed when missing and run as root), jq, curl, ss,
# root (scripts/elasticsearch.sh runs the node as its own user).
# Env (defaults; BENCH_SHORT=1 ones in brackets):
#   CLUSTER_AGENTS (100000 [10000]), CLUSTER_HEARTBEAT (30 [5] s), CLUSTER_DURATION (120 [30] s),
#   CLUSTER_WARMUP (0 s: as the issue's run, the measured window is the whole run; the
#     heartbeat interval leaves the enrollment wave out), CLUSTER_CONNECTIONS (500),
#   CLUSTER_IN_FLIGHT (1000), CLUSTER_DRIFT (0.01), CLUSTER_TRANSPORT (http | ws),
#   CLUSTER_LOADTEST_ARGS (extra generator flags), CLUSTER_P99_MS (100: p99_ok),
#   CLUSTER_INSTANCES (3, at most 9), CLUSTER_OPAMPD_ARGS (extra opampd flags),
#   CLUSTER_LB_PORT (4380; instances on 4381.., admin 4391..), CLUSTER_LB_WORKERS (1 | auto),
#   CLUSTER_LB_KEEPALIVE (1024 idle upstream connections kept per worker),
#   CLUSTER_ES_PORT (9290; transport +100), CLUSTER_ES_WARMUP_SECS (30 [8]),
#   CLUSTER_CEILING_SECS (20 [8]), CLUSTER_CEILING_ARGS (--docs <agents> --random-ids), CLUSTER_PIN (0; 1: ES on cpu 0, the rest on the others),
#   CLUSTER_KEEP_ES (0; 1 leaves the node running), CLUSTER_PERF_SECS (0; N profiles opampd-1
#     with perf for N s near the window's end: perf-self.txt, perf-children.txt), CLUSTER_MAX_SECS (1800 [900]),
#   OPAMPD_ES_HEAP (2g, as the issue's run), BENCH_OUT, BENCH_FROM_HEAD, CARGO_TARGET_DIR (see bench-lib.sh).
set -euo pipefail
BENCH_OUT=${BENCH_OUT:-/tmp/opampd-cluster-$(date +%Y%m%d%H%M%S)}
# shellcheck source-path=SCRIPTDIR source=bench-lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"

if [ "${BENCH_SHORT:-0}" = 1 ]; then
  CLUSTER_AGENTS=${CLUSTER_AGENTS:-10000}
  CLUSTER_HEARTBEAT=${CLUSTER_HEARTBEAT:-5}
  CLUSTER_DURATION=${CLUSTER_DURATION:-30}
  CLUSTER_ES_WARMUP_SECS=${CLUSTER_ES_WARMUP_SECS:-8}
  CLUSTER_CEILING_SECS=${CLUSTER_CEILING_SECS:-8}
  CLUSTER_MAX_SECS=${CLUSTER_MAX_SECS:-900}
else
  CLUSTER_AGENTS=${CLUSTER_AGENTS:-100000}
  CLUSTER_HEARTBEAT=${CLUSTER_HEARTBEAT:-30}
  CLUSTER_DURATION=${CLUSTER_DURATION:-120}
  CLUSTER_ES_WARMUP_SECS=${CLUSTER_ES_WARMUP_SECS:-30}
  CLUSTER_CEILING_SECS=${CLUSTER_CEILING_SECS:-20}
  CLUSTER_MAX_SECS=${CLUSTER_MAX_SECS:-1800}
fi
CLUSTER_WARMUP=${CLUSTER_WARMUP:-0}
export OPAMPD_ES_HEAP=${OPAMPD_ES_HEAP:-2g}
CLUSTER_PERF_SECS=${CLUSTER_PERF_SECS:-0}
# The ceiling writes as many documents as the fleet has agents, at uniformly spread uuid ids
# like real agents' (a few sequential ids would be cheaper for Elasticsearch than the fleet is).
CLUSTER_CEILING_ARGS=${CLUSTER_CEILING_ARGS:---docs $CLUSTER_AGENTS --random-ids}
CLUSTER_CONNECTIONS=${CLUSTER_CONNECTIONS:-500}
CLUSTER_IN_FLIGHT=${CLUSTER_IN_FLIGHT:-1000}
CLUSTER_DRIFT=${CLUSTER_DRIFT:-0.01}
CLUSTER_TRANSPORT=${CLUSTER_TRANSPORT:-http}
CLUSTER_P99_MS=${CLUSTER_P99_MS:-100}
CLUSTER_INSTANCES=${CLUSTER_INSTANCES:-3}
CLUSTER_LB_PORT=${CLUSTER_LB_PORT:-4380}
CLUSTER_LB_WORKERS=${CLUSTER_LB_WORKERS:-1}
CLUSTER_LB_KEEPALIVE=${CLUSTER_LB_KEEPALIVE:-1024}
CLUSTER_ES_PORT=${CLUSTER_ES_PORT:-9290}
CLUSTER_PIN=${CLUSTER_PIN:-0}
read -r -a OPAMPD_EXTRA <<<"${CLUSTER_OPAMPD_ARGS:-}"
read -r -a LOADTEST_EXTRA <<<"${CLUSTER_LOADTEST_ARGS:-}"

case "$CLUSTER_TRANSPORT" in http | ws) ;; *) log "CLUSTER_TRANSPORT must be http or ws"; exit 64 ;; esac
case "$CLUSTER_LB_WORKERS" in auto | [1-9]) ;; *) log "CLUSTER_LB_WORKERS must be auto or 1-9"; exit 64 ;; esac
[[ $CLUSTER_INSTANCES =~ ^[1-9]$ ]] || { log "CLUSTER_INSTANCES must be 1-9"; exit 64; }
for v in CLUSTER_ES_PORT CLUSTER_LB_PORT CLUSTER_LB_KEEPALIVE; do
  [[ ${!v} =~ ^[0-9]+$ ]] || { log "$v must be a number"; exit 64; }
done
case "$CLUSTER_ES_PORT" in
  9260 | 9280) log "CLUSTER_ES_PORT $CLUSTER_ES_PORT is another script's node; choose a port of its own"; exit 64 ;;
esac
own_es_init "$CLUSTER_ES_PORT" CLUSTER_ES_PORT
require_loopback "$ES"
INDEX=opampd-cluster-$TS
# the agent index and the state index opampd derives from its name: Elasticsearch's cost is both's
STATE_INDEX=$INDEX-opampd-state
STATS_INDICES=$INDEX,$STATE_INDEX
LB_URL=http://127.0.0.1:$CLUSTER_LB_PORT/v1/opamp
NG=$BENCH_OUT/nginx
HZ=$(getconf CLK_TCK)

if ! command -v nginx >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    log "installing nginx (apt-get install -y nginx)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx >&2 \
      || { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx >&2; }
  fi
fi
require_tools nginx jq curl ss

opamp_port() { echo $((CLUSTER_LB_PORT + $1)); }
admin_port() { echo $((CLUSTER_LB_PORT + 10 + $1)); }
admin_url() { echo "http://127.0.0.1:$(admin_port "$1")"; }

PIDS=()
NGINX_PID=
LOADTEST_PID=
CEILING_PID=
ES_PID=

cleanup() {
  local i
  stop_watchdog
  for pid in "$LOADTEST_PID" "$CEILING_PID"; do
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
    fi
  done
  stop_pid "$NGINX_PID" 10
  for i in "${!PIDS[@]}"; do stop_pid "${PIDS[$i]}" 40; done
  pin_restore
  own_es_cleanup "${CLUSTER_KEEP_ES:-0}" "$INDEX"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$BENCH_OUT" "$NG"
# a reused BENCH_OUT: no stale output may pass for this run's
rm -f "$BENCH_OUT"/{loadtest,ceiling,es-warmup}.* "$BENCH_OUT"/snap-*.json "$BENCH_OUT"/metrics-*.txt \
  "$BENCH_OUT"/opampd-*.log "$BENCH_OUT/summary.json"
start_watchdog "$CLUSTER_MAX_SECS" bench-cluster
LOAD_AT_START=$(cut -d' ' -f1-3 /proc/loadavg)
build

# ---- measuring helpers ----

# proc_ticks PID...: utime + stime (clock ticks, every thread) summed over the live processes;
# null when none of them is alive.
proc_ticks() {
  local pid stat total=0 f seen=0
  for pid in "$@"; do
    [ -n "$pid" ] || continue
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
    stat=${stat##*) }   # past "pid (comm) ": f[0] is field 3 (state), utime field 14, stime 15
    read -r -a f <<<"$stat"
    total=$((total + f[11] + f[12])); seen=1
  done
  if [ "$seen" = 1 ]; then echo "$total"; else echo null; fi
}
rss_kb() { awk '/^VmRSS:/ { print $2; f = 1 } END { if (!f) print 0 }' "/proc/$1/status" 2>/dev/null || echo 0; }
nginx_pids() { [ -z "$NGINX_PID" ] || { echo "$NGINX_PID"; pgrep -P "$NGINX_PID" || true; }; }
# listener_pid PORT: the process listening on 127.0.0.1:PORT (root sees every owner).
listener_pid() { ss -Htlnp "sport = :$1" 2>/dev/null | grep -o 'pid=[0-9]*' | head -n 1 | cut -d= -f2; }

# snapshot NAME: time, every process's CPU ticks, the index's and the JVM's counters, as
# $BENCH_OUT/snap-NAME.json.
snapshot() {
  local i t ticks idx jvm
  t=$(now_ms)
  # shellcheck disable=SC2046 # nginx_pids is a list of pids
  ticks=$(
    {
      echo "es $(proc_ticks "$ES_PID")"
      echo "nginx $(proc_ticks $(nginx_pids))"
      for i in "${!PIDS[@]}"; do echo "opampd-$i $(proc_ticks "${PIDS[$i]}")"; done
      echo "loadtest $(proc_ticks "$LOADTEST_PID")"
    } | jq -Rn '[inputs | split(" ") | { key: .[0], value: (.[1] | fromjson) }] | from_entries'
  )
  idx=$(curl -fsS --max-time 10 "$ES/$STATS_INDICES/_stats/indexing,get,search,refresh,flush,merge,bulk?ignore_unavailable=true" 2>/dev/null \
    | jq -c '._all.total | {
        index_total: .indexing.index_total, index_ms: .indexing.index_time_in_millis,
        index_failed: .indexing.index_failed,
        get_total: .get.total, get_ms: .get.time_in_millis,
        query_total: .search.query_total, query_ms: .search.query_time_in_millis,
        refresh_total: .refresh.total, refresh_ms: .refresh.total_time_in_millis,
        flush_total: .flush.total, flush_ms: .flush.total_time_in_millis,
        merge_total: .merges.total, merge_ms: .merges.total_time_in_millis,
        bulk_total: (.bulk.total_operations // 0), bulk_ms: (.bulk.total_time_in_millis // 0) }' 2>/dev/null) \
    || idx=null
  jvm=$(curl -fsS --max-time 10 "$ES/_nodes/_local/stats/jvm" 2>/dev/null \
    | jq -c '.nodes | to_entries[0].value.jvm | {
        young_count: .gc.collectors.young.collection_count, young_ms: .gc.collectors.young.collection_time_in_millis,
        old_count: .gc.collectors.old.collection_count, old_ms: .gc.collectors.old.collection_time_in_millis,
        heap_used_pct: .mem.heap_used_percent }' 2>/dev/null) \
    || jvm=null
  jq -n --argjson t "$t" --argjson ticks "$ticks" --argjson idx "${idx:-null}" --argjson jvm "${jvm:-null}" \
    '{ t_ms: $t, ticks: $ticks, index: $idx, jvm: $jvm }' >"$BENCH_OUT/snap-$1.json"
}

# until_ms MS PID: sleeps until wall-clock MS; returns 1 early if PID has ended.
until_ms() {
  while [ "$(now_ms)" -lt "$1" ]; do
    kill -0 "$2" 2>/dev/null || return 1
    sleep "$(awk -v m="$(($1 - $(now_ms)))" 'BEGIN { if (m > 500) m = 500; if (m < 0) m = 0; printf "%.3f", m / 1000 }')"
  done
}

# wait_line PATTERN FILE PID: until FILE has a line matching PATTERN; 1 if PID ends first.
wait_line() {
  until grep -q -- "$1" "$2" 2>/dev/null; do
    kill -0 "$3" 2>/dev/null || { grep -q -- "$1" "$2" 2>/dev/null; return; }
    sleep 0.1
  done
}

# ---- Elasticsearch, fresh ----

es_script stop >/dev/null 2>&1 || true   # a node this script's port kept (CLUSTER_KEEP_ES=1): start anew
own_es_start
ES_PID=$(listener_pid "$CLUSTER_ES_PORT")
if [ -z "$ES_PID" ] || ! grep -q org.elasticsearch "/proc/$ES_PID/cmdline" 2>/dev/null; then
  log "cannot find the Elasticsearch JVM listening on $CLUSTER_ES_PORT (run as root)"; exit 1
fi
log "elasticsearch JVM pid $ES_PID"
if [ "$CLUSTER_PIN" = 1 ]; then
  BENCH_PIN=1 pin_setup "$ES" "opampd, nginx, load generator and ceiling client"
fi

if awk -v s="$CLUSTER_ES_WARMUP_SECS" 'BEGIN { exit !(s > 0) }'; then
  log "warming elasticsearch up: es-ceiling on a scratch index for ${CLUSTER_ES_WARMUP_SECS}s (not measured)"
  timeout --signal=KILL 600 "${PIN[@]}" "$BIN/es-ceiling" --es-url "$ES" --bulk 500 --concurrency 4 \
    --duration "$CLUSTER_ES_WARMUP_SECS" >"$BENCH_OUT/es-warmup.txt" 2>"$BENCH_OUT/es-warmup.progress" \
    || { log "the warm-up failed:"; tail -n 5 "$BENCH_OUT/es-warmup.progress" >&2; exit 1; }
fi

# ---- opampd instances ----

for i in $(seq 1 "$CLUSTER_INSTANCES"); do
  "${PIN[@]}" "$BIN/opampd" --listen "127.0.0.1:$(opamp_port "$i")" --admin-listen "127.0.0.1:$(admin_port "$i")" \
    --store elasticsearch --es-url "$ES" --es-index "$INDEX" --auth none "${OPAMPD_EXTRA[@]}" \
    >"$BENCH_OUT/opampd-$i.log" 2>&1 &
  PIDS[i]=$!
  log "opampd $i started (pid ${PIDS[$i]}) on $(opamp_port "$i"), admin $(admin_port "$i")"
done
deadline=$((SECONDS + 90))
for i in "${!PIDS[@]}"; do
  until [ "$(curl -s --max-time 2 -o /dev/null -w '%{http_code}' "$(admin_url "$i")/readyz" || true)" = 200 ]; do
    if ! kill -0 "${PIDS[$i]}" 2>/dev/null; then
      log "opampd $i exited; log:"; tail -n 20 "$BENCH_OUT/opampd-$i.log" >&2; exit 1
    fi
    [ "$SECONDS" -lt "$deadline" ] || { log "opampd $i not ready after 90 s"; tail -n 20 "$BENCH_OUT/opampd-$i.log" >&2; exit 1; }
    sleep 0.25
  done
done
log "all $CLUSTER_INSTANCES instances ready"

# ---- nginx ----

# WebSocket upgrades carry no OpAMP-Instance-UID (one socket carries many agents), and an empty
# key would hash every socket onto one instance: those are spread by client address and port.
# Every HTTP request has the header, so for HTTP the key is exactly $http_opamp_instance_uid.
# Connection: "upgrade" only on an upgrade, else empty, so upstream connections stay kept alive.
UPSTREAMS=
for i in "${!PIDS[@]}"; do
  UPSTREAMS+="        server 127.0.0.1:$(opamp_port "$i");"$'\n'
done
# a worker runs as an unprivileged user: it cannot raise its limit above the hard one
NOFILE=$(ulimit -Hn)
case "$NOFILE" in unlimited) NOFILE=65536 ;; esac
[ "$NOFILE" -le 65536 ] || NOFILE=65536
cat >"$NG/nginx.conf" <<CFG
# written by loadtest/bench-cluster.sh
daemon off;
master_process on;
worker_processes $CLUSTER_LB_WORKERS;
worker_rlimit_nofile $NOFILE;
pid $NG/nginx.pid;
error_log $NG/error.log warn;

events {
    worker_connections 8192;
}

http {
$(nginx_http_private "$NG")

    map \$http_opamp_instance_uid \$opamp_lb_key {
        ""      \$remote_addr:\$remote_port;
        default \$http_opamp_instance_uid;
    }
    map \$http_upgrade \$connection_upgrade {
        default upgrade;
        ""      "";
    }

    upstream opampd {
        hash \$opamp_lb_key consistent;
$UPSTREAMS
        keepalive $CLUSTER_LB_KEEPALIVE;
        keepalive_requests 1000000;
        # below opampd's 90 s idle timeout: the balancer closes an idle connection first
        keepalive_timeout 60s;
    }

    server {
        listen 127.0.0.1:$CLUSTER_LB_PORT backlog=4096;
        # above the generator's 60 s idle pool timeout: the client closes first
        keepalive_timeout 75s;
        keepalive_requests 1000000;
        client_max_body_size 4m;

        location / {
            proxy_pass http://opampd;
            proxy_http_version 1.1;
            proxy_set_header Host \$host;
            proxy_set_header Upgrade \$http_upgrade;
            proxy_set_header Connection \$connection_upgrade;
            proxy_connect_timeout 2s;
            # above opampd's 10 s --request-timeout for HTTP; a WebSocket session stays open
            # while frames flow (opampd closes it after 5 min of silence)
            proxy_read_timeout 330s;
            proxy_send_timeout 330s;
        }
    }
}
CFG
start_private_nginx "$NG" "http://127.0.0.1:$CLUSTER_LB_PORT/readyz"
sleep 0.5
NGINX_WORKERS=$(pgrep -P "$NGINX_PID" | wc -l)
log "nginx (pid $NGINX_PID, $NGINX_WORKERS worker(s), worker_processes $CLUSTER_LB_WORKERS) on $LB_URL"

# ---- the loadtest, measured ----

WARM_MS=$(awk -v w="$CLUSTER_WARMUP" 'BEGIN { printf "%d", w * 1000 }')
DUR_MS=$(awk -v d="$CLUSTER_DURATION" 'BEGIN { printf "%d", d * 1000 }')
[ "$WARM_MS" -lt "$DUR_MS" ] || { log "CLUSTER_WARMUP must be below CLUSTER_DURATION"; exit 64; }
log "loadtest ($CLUSTER_TRANSPORT): $CLUSTER_AGENTS agents, ${CLUSTER_HEARTBEAT}s heartbeat, ${CLUSTER_DURATION}s (warm-up ${CLUSTER_WARMUP}s), $CLUSTER_CONNECTIONS connections, $CLUSTER_IN_FLIGHT in flight, drift $CLUSTER_DRIFT, through $LB_URL"
LT_T0=$(now_ms)
"${PIN[@]}" "$BIN/opampd-loadtest" --target "$LB_URL" --transport "$CLUSTER_TRANSPORT" \
  --agents "$CLUSTER_AGENTS" --heartbeat "$CLUSTER_HEARTBEAT" --duration "$CLUSTER_DURATION" \
  --warmup "$CLUSTER_WARMUP" --connections "$CLUSTER_CONNECTIONS" --max-in-flight "$CLUSTER_IN_FLIGHT" \
  --drift-rate "$CLUSTER_DRIFT" --progress "$( [ "${BENCH_SHORT:-0}" = 1 ] && echo 5 || echo 10 )" \
  "${LOADTEST_EXTRA[@]}" --json-out "$BENCH_OUT/loadtest.json" \
  >"$BENCH_OUT/loadtest.txt" 2>"$BENCH_OUT/loadtest.progress" &
LOADTEST_PID=$!
# The window: from the warm-up's end to 1 s before the scheduled end (so the generator is still
# there to be read, and the drain after the end is left out). Per-message figures divide by
# the loadtest's steady-state rate times the window, not by a count.
END_MS=$((DUR_MS - 1000))
[ "$END_MS" -gt $((WARM_MS + 1000)) ] || END_MS=$DUR_MS
until_ms $((LT_T0 + WARM_MS)) "$LOADTEST_PID" || true
snapshot start
PERF_PID=
if [ "$CLUSTER_PERF_SECS" -gt 0 ]; then
  # a CPU profile of instance 1 in the second half of the window (after the enrollment wave)
  until_ms $((LT_T0 + END_MS - CLUSTER_PERF_SECS * 1000 - 5000)) "$LOADTEST_PID" || true
  log "profiling opampd-1 for ${CLUSTER_PERF_SECS}s (perf, $BENCH_OUT/perf.data)"
  perf record -e cpu-clock -F 499 --call-graph dwarf,32768 -p "${PIDS[1]}" -o "$BENCH_OUT/perf.data" \
    -- sleep "$CLUSTER_PERF_SECS" >"$BENCH_OUT/perf-record.log" 2>&1 &
  PERF_PID=$!
fi
until_ms $((LT_T0 + END_MS)) "$LOADTEST_PID" || log "the loadtest ended before its scheduled end"
snapshot end
if [ -n "$PERF_PID" ]; then
  wait "$PERF_PID" || log "perf record failed: $(tail -n 2 "$BENCH_OUT/perf-record.log")"
  # self time (flat) and time with children (the flame graph's widest frames)
  perf report -i "$BENCH_OUT/perf.data" --stdio --no-children --sort symbol --percent-limit 0.5 -g none \
    2>/dev/null | grep '%' | cut -c1-160 | head -40 >"$BENCH_OUT/perf-self.txt" || true
  # with children: the project's own frames and the libraries doing its work (the runtime's
  # and the server framework's frames above them cover everything and say nothing)
  perf report -i "$BENCH_OUT/perf.data" --stdio --children --sort symbol --percent-limit 0.5 -g none \
    2>/dev/null | grep '%' | grep -v '(inlined)' \
    | grep -E 'opamp|moka|serde|prost|base64|elasticsearch|reqwest|tungstenite|mi_|sys_(sendto|recvfrom|write|read|epoll|futex)' \
    | cut -c1-160 | head -50 >"$BENCH_OUT/perf-children.txt" || true
fi
wait "$LOADTEST_PID" && LT_RC=0 || LT_RC=$?
LOADTEST_PID=
show_summary "$BENCH_OUT/loadtest.txt"
LT=$BENCH_OUT/loadtest.json
if [ ! -s "$LT" ]; then
  log "the loadtest wrote no summary (exit $LT_RC):"; tail -n 20 "$BENCH_OUT/loadtest.progress" >&2; exit 1
fi

# ---- after the run: RSS, index size; then the instances stop and the ceiling runs ----

RSS=$(
  {
    for i in "${!PIDS[@]}"; do echo "opampd-$i $(rss_kb "${PIDS[$i]}")"; done
    echo "es $(rss_kb "$ES_PID")"
    n=0
    for p in $(nginx_pids); do n=$((n + $(rss_kb "$p"))); done
    echo "nginx $n"
  } | jq -Rn '[inputs | split(" ") | { key: .[0], value: (.[1] | tonumber) }] | from_entries'
)
for i in "${!PIDS[@]}"; do opampd_metrics "$i" "$(admin_url "$i")"; done
# Each instance's own counters since it started (enrollment included) from its /metrics: the
# read cache (hits, misses, entries, the weight --cache-max-bytes is held against), what a miss
# cost (GETs, _mget requests and ids), the writes and their CAS conflicts; and its RSS per
# cached agent.
OPAMPD_STATS=$(
  for i in "${!PIDS[@]}"; do
    awk -v name="opampd-$i" -v rss_kb="$(jq -r --arg k "opampd-$i" '.[$k]' <<<"$RSS")" '
      function v(k) { return (k in m) ? m[k] : "null" }
      !/^#/ && NF == 2 { m[$1] = $2 }
      END {
        e = v("opampd_cache_entries")
        printf "{\"key\":\"%s\",\"value\":{\"cache_hits\":%s,\"cache_misses\":%s,\"cache_entries\":%s,", name, v("opampd_cache_hits_total"), v("opampd_cache_misses_total"), e
        printf "\"cache_weighted_bytes\":%s,\"es_get_requests\":%s,\"es_mget_requests\":%s,\"es_mget_ids\":%s,", v("opampd_cache_weighted_bytes"), v("opampd_es_get_requests_total"), v("opampd_es_mget_requests_total"), v("opampd_es_mget_size_sum")
        printf "\"es_bulk_items\":%s,\"es_conflicts\":%s,", v("opampd_es_bulk_items_total"), v("opampd_es_conflicts_total")
        printf "\"rss_bytes_per_cached_agent\":%s}}\n", (e != "null" && e > 0 && rss_kb > 0) ? sprintf("%.0f", rss_kb * 1024 / e) : "null"
      }' "$BENCH_OUT/metrics-$i.txt" 2>/dev/null || true
  done | jq -s 'from_entries'
) || OPAMPD_STATS=null
[ -n "$OPAMPD_STATS" ] || OPAMPD_STATS=null
NGINX_LOG_LINES=$(grep -c -E '\[(warn|error|crit|alert|emerg)\]' "$NG/error.log" 2>/dev/null || true)
curl -fsS --max-time 60 -X POST "$ES/$STATS_INDICES/_refresh?ignore_unavailable=true" >/dev/null || true
# bytes per agent: both indices' store over the agent documents
SIZE=$(curl -fsS --max-time 10 "$ES/$STATS_INDICES/_stats/store,docs?ignore_unavailable=true" \
  | jq -c --arg a "$INDEX" --arg s "$STATE_INDEX" '.indices as $i
      | ($i[$a].primaries.docs.count // 0) as $docs
      | (($i[$a].primaries.store.size_in_bytes // 0) + ($i[$s].primaries.store.size_in_bytes // 0)) as $bytes
      | { docs: $docs, store_bytes: $bytes,
          agent_index_bytes: ($i[$a].primaries.store.size_in_bytes // 0),
          state_index_bytes: ($i[$s].primaries.store.size_in_bytes // 0),
          bytes_per_agent: (if $docs > 0 then ($bytes / $docs * 10 | round / 10) else null end) }' 2>/dev/null) \
  || SIZE=null
stop_pid "$NGINX_PID" 10; NGINX_PID=
for i in "${!PIDS[@]}"; do stop_pid "${PIDS[$i]}" 40; done
PIDS=()

log "raw CAS ceiling on copies of $INDEX's documents: es-ceiling bulk 500 x4 for ${CLUSTER_CEILING_SECS}s"
CEIL=$BENCH_OUT/ceiling
# (no `timeout` wrapper: its pid must be es-ceiling's own; the watchdog bounds it)
# shellcheck disable=SC2086 # CLUSTER_CEILING_ARGS is a list of flags
"${PIN[@]}" "$BIN/es-ceiling" --es-url "$ES" --bulk 500 --concurrency 4 \
  --duration "$CLUSTER_CEILING_SECS" --like-index "$INDEX" --json-out "$CEIL.json" $CLUSTER_CEILING_ARGS \
  >"$CEIL.txt" 2>"$CEIL.progress" &
CEILING_PID=$!
# The JVM's CPU over the measured part only: from the end of seeding to the measurement's line.
CEIL_T0=0 CEIL_T1=0 CEIL_ES0=0 CEIL_ES1=0 CEIL_CL0=0 CEIL_CL1=0
if wait_line 'seeded' "$CEIL.progress" "$CEILING_PID"; then
  CEIL_T0=$(now_ms); CEIL_ES0=$(proc_ticks "$ES_PID"); CEIL_CL0=$(proc_ticks "$CEILING_PID")
  if wait_line 'bulk 500 x4:' "$CEIL.progress" "$CEILING_PID"; then
    CEIL_T1=$(now_ms); CEIL_ES1=$(proc_ticks "$ES_PID"); CEIL_CL1=$(proc_ticks "$CEILING_PID")
  fi
fi
wait "$CEILING_PID" && CEIL_RC=0 || CEIL_RC=$?
CEILING_PID=
[ -s "$CEIL.json" ] || { log "es-ceiling wrote no summary (exit $CEIL_RC):"; tail -n 5 "$CEIL.progress" >&2; echo '{}' >"$CEIL.json"; }
CEILING=$(jq -c --argjson t0 "$CEIL_T0" --argjson t1 "$CEIL_T1" --argjson e0 "$CEIL_ES0" --argjson e1 "$CEIL_ES1" \
  --argjson c0 "$CEIL_CL0" --argjson c1 "$CEIL_CL1" --argjson hz "$HZ" --argjson rc "$CEIL_RC" '
  def r1: if . == null then null else (. * 10 | round) / 10 end;
  ((.measurements // []) | map(select(.mode == "bulk")) | first) as $m
  | (($t1 - $t0) / 1000) as $secs
  | { items_per_s: .best_bulk_items_per_s, items: $m.items_ok, seconds: $m.seconds,
      avg_doc_bytes, conflicts: $m.conflicts, item_errors: $m.item_errors, request_errors: $m.request_errors,
      request_p99_ms: $m.request_latency.p99_ms, passed: (.passed and $rc == 0),
      cpu_window_s: $secs,
      es_cpu_pct_core: (if $secs > 0 then (($e1 - $e0) / $hz / $secs * 100 | r1) else null end),
      es_us_per_item: (if ($m.items_ok // 0) > 0 and $t1 > 0 then (($e1 - $e0) / $hz * 1e6 / $m.items_ok | r1) else null end),
      client_us_per_item: (if ($m.items_ok // 0) > 0 and $t1 > 0 then (($c1 - $c0) / $hz * 1e6 / $m.items_ok | r1) else null end) }' \
  "$CEIL.json")

# ---- the summary ----

jq -n --slurpfile lt "$LT" --slurpfile s0 "$BENCH_OUT/snap-start.json" --slurpfile s1 "$BENCH_OUT/snap-end.json" \
  --argjson ceiling "$CEILING" --argjson rss "$RSS" --argjson size "${SIZE:-null}" --argjson hz "$HZ" \
  --argjson opampd_stats "$OPAMPD_STATS" \
  --argjson p99_target "$CLUSTER_P99_MS" --argjson lt_rc "$LT_RC" --argjson nginx_workers "$NGINX_WORKERS" \
  --argjson nginx_log_lines "${NGINX_LOG_LINES:-0}" \
  --arg commit "$BENCH_COMMIT" --arg load0 "$LOAD_AT_START" --arg load "$(cut -d' ' -f1-3 /proc/loadavg)" \
  --argjson cores "$(nproc)" --arg short "${BENCH_SHORT:-0}" --arg out "$BENCH_OUT" --arg index "$INDEX" \
  --arg transport "$CLUSTER_TRANSPORT" --argjson instances "$CLUSTER_INSTANCES" \
  --arg opampd_args "${CLUSTER_OPAMPD_ARGS:-}" --arg lt_args "${CLUSTER_LOADTEST_ARGS:-}" \
  --arg lb_workers "$CLUSTER_LB_WORKERS" --argjson lb_keepalive "$CLUSTER_LB_KEEPALIVE" \
  --arg nginx_version "$(nginx -v 2>&1 | sed 's#.*/##')" --arg pin "$CLUSTER_PIN" \
  --argjson agents "$CLUSTER_AGENTS" --argjson heartbeat "$CLUSTER_HEARTBEAT" --argjson duration "$CLUSTER_DURATION" \
  --argjson warmup "$CLUSTER_WARMUP" --argjson connections "$CLUSTER_CONNECTIONS" --argjson in_flight "$CLUSTER_IN_FLIGHT" \
  --argjson drift "$CLUSTER_DRIFT" --argjson es_warmup "$CLUSTER_ES_WARMUP_SECS" --argjson ceiling_s "$CLUSTER_CEILING_SECS" '
  def r3: if . == null then null else (. * 1000 | round) / 1000 end;
  def r1: if . == null then null else (. * 10 | round) / 10 end;
  $lt[0] as $r | $s0[0] as $a | $s1[0] as $b
  | (($b.t_ms - $a.t_ms) / 1000) as $win
  | ($r.achieved_rate * $win) as $msgs
  | ($b.ticks | with_entries(.value = (if .value == null or $a.ticks[.key] == null then null
      else (.value - $a.ticks[.key]) / $hz end))) as $cpu_s
  | ($cpu_s | with_entries(.value = (if .value == null then { pct_core: null, us_per_msg: null }
      else { pct_core: ((.value / $win * 100) | r1),
        us_per_msg: (if $msgs > 0 then (.value * 1e6 / $msgs | r1) else null end) } end))) as $cpu
  | ([$cpu_s[] | select(. != null)] | add // 0) as $cpu_total
  | (if $a.index != null and $b.index != null
      then ($b.index | with_entries(.value = (.value - $a.index[.key]))) else null end) as $es_ops
  | (if $es_ops != null and $msgs > 0 then {
        writes: ($es_ops.index_total / $msgs | r3), write_ms: ($es_ops.index_ms / $msgs | r3),
        write_failed: ($es_ops.index_failed / $msgs | r3),
        gets: ($es_ops.get_total / $msgs | r3), get_ms: ($es_ops.get_ms / $msgs | r3),
        searches: ($es_ops.query_total / $msgs | r3),
        bulk_requests: ($es_ops.bulk_total / $msgs | r3),
        items_per_bulk: (if $es_ops.bulk_total > 0 then ($es_ops.index_total / $es_ops.bulk_total | r1) else null end),
        refresh_ms: ($es_ops.refresh_ms / $msgs | r3), merge_ms: ($es_ops.merge_ms / $msgs | r3),
        flush_ms: ($es_ops.flush_ms / $msgs | r3) } else null end) as $per_msg
  | (if $a.jvm != null and $b.jvm != null then {
        young_gcs: ($b.jvm.young_count - $a.jvm.young_count), young_gc_ms: ($b.jvm.young_ms - $a.jvm.young_ms),
        old_gcs: ($b.jvm.old_count - $a.jvm.old_count), old_gc_ms: ($b.jvm.old_ms - $a.jvm.old_ms),
        gc_ms_per_s: ((($b.jvm.young_ms - $a.jvm.young_ms) + ($b.jvm.old_ms - $a.jvm.old_ms)) / $win | r1),
        heap_used_pct_end: $b.jvm.heap_used_pct } else null end) as $gc
  | ($cpu.es.us_per_msg) as $es_us
  | { tool: "bench-cluster.sh", commit: $commit, short: ($short == "1"), cores: $cores,
      loadavg_at_start: $load0, loadavg_at_end: $load,
      cpu_pinning: (if $pin == "1" then "elasticsearch on cpu 0; the rest on the others" else "none" end),
      config: { transport: $transport, agents: $agents, heartbeat_s: $heartbeat, duration_s: $duration,
        warmup_s: $warmup, connections: $connections, max_in_flight: $in_flight, drift_rate: $drift,
        loadtest_args: $lt_args, instances: $instances, opampd_args: $opampd_args, index: $index,
        es_warmup_s: $es_warmup, ceiling_s: $ceiling_s },
      lb: { kind: "nginx", version: $nginx_version, worker_processes: $lb_workers, workers: $nginx_workers,
        hash: "$http_opamp_instance_uid consistent (ws: client address:port)", upstream_keepalive: $lb_keepalive,
        error_log_warnings: $nginx_log_lines },
      msg_per_s: $r.achieved_rate, target_rate: $r.target_rate, sent: $r.sent,
      latency_ms: ($r.latency | { p50: .p50_ms, p90: .p90_ms, p99: .p99_ms, p999: .p999_ms, max: .max_ms, count }),
      p99_target_ms: $p99_target, p99_ok: ($r.latency.p99_ms <= $p99_target),
      errors: $r.errors, error_classes: $r.error_classes, error_samples: ($r.error_samples // {} | to_entries | .[:3] | from_entries),
      false_full_state: $r.false_full_state, missed_full_state: $r.missed_full_state,
      injected: $r.injected, expected_requests_honoured: $r.expected_requests_honoured,
      loadtest_exit: $lt_rc, loadtest_passed: $r.passed,
      window_s: ($win | r3), window_msgs: ($msgs | round),
      cpu: ($cpu + { total: { pct_core: (($cpu_total / $win * 100) | r1),
        us_per_msg: (if $msgs > 0 then ($cpu_total * 1e6 / $msgs | r1) else null end) } }),
      es_per_msg: $per_msg, es_ops: $es_ops, jvm_gc: $gc,
      ceiling: $ceiling,
      es_us_per_msg: $es_us, es_us_per_ceiling_item: ($ceiling.es_us_per_item | r1),
      es_us_ratio_msg_to_ceiling_item: (if $es_us != null and ($ceiling.es_us_per_item // 0) > 0
        then ($es_us / $ceiling.es_us_per_item | r3) else null end),
      index_size: $size, rss_mb: ($rss | with_entries(.value = (.value / 1024 | r1))),
      opampd: $opampd_stats,
      out: $out,
      passed: ($r.errors == 0 and $r.false_full_state == 0 and $r.missed_full_state == 0) }' \
  >"$BENCH_OUT/summary.json"

# The table (stderr).
jq -r '
  def f: if . == null then "-" else tostring end;
  def pad(n): f as $s | $s + ([range(0; n - ($s | length))] | map(" ") | join(""));
  "",
  "== bench-cluster: \(.config.instances) x opampd behind nginx (worker_processes \(.lb.worker_processes)), \(.config.transport), \(.config.agents) agents / \(.config.heartbeat_s) s, \(.window_s) s measured ==",
  "msg/s \(.msg_per_s)   latency ms p50 \(.latency_ms.p50)  p90 \(.latency_ms.p90)  p99 \(.latency_ms.p99) (<= \(.p99_target_ms): \(.p99_ok))  p99.9 \(.latency_ms.p999)  max \(.latency_ms.max)",
  "errors \(.errors)   false full state \(.false_full_state)   missed \(.missed_full_state)   nginx warnings/errors logged \(.lb.error_log_warnings)",
  "",
  "\("process" | pad(14))\("cpu % core" | pad(12))\("us/msg" | pad(10))rss MB",
  (.rss_mb as $rss | .cpu | to_entries[]
    | "\(.key | pad(14))\(.value.pct_core | pad(12))\(.value.us_per_msg | pad(10))\($rss[.key] | f)"),
  "",
  "ES per msg: writes \(.es_per_msg.writes)  gets \(.es_per_msg.gets)  searches \(.es_per_msg.searches)  bulks \(.es_per_msg.bulk_requests) (\(.es_per_msg.items_per_bulk) items each)",
  "ES in the window: refreshes \(.es_ops.refresh_total) (\(.es_ops.refresh_ms) ms)  merges \(.es_ops.merge_total) (\(.es_ops.merge_ms) ms)  flushes \(.es_ops.flush_total) (\(.es_ops.flush_ms) ms)",
  "JVM GC: young \(.jvm_gc.young_gcs) (\(.jvm_gc.young_gc_ms) ms)  old \(.jvm_gc.old_gcs) (\(.jvm_gc.old_gc_ms) ms)  heap at end \(.jvm_gc.heap_used_pct_end) %",
  "ceiling (same docs): \(.ceiling.items_per_s) items/s, ES \(.ceiling.es_cpu_pct_core) % core, \(.es_us_per_ceiling_item) us/item;  via opampd: \(.es_us_per_msg) us/msg;  ratio \(.es_us_ratio_msg_to_ceiling_item)",
  "index: \(.index_size.docs) docs, \(.index_size.bytes_per_agent | if . == null then "-" else (round | tostring) end) bytes/agent",
  "passed: \(.passed)   results in \(.out)"' "$BENCH_OUT/summary.json" >&2 || true

jq -c . "$BENCH_OUT/summary.json"
[ "$(jq .passed "$BENCH_OUT/summary.json")" = true ]

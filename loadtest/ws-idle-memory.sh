#!/usr/bin/env bash
# Idle WebSocket memory probe (issue 12, target 5: an idle WebSocket costs <= 8 KiB of opampd's
# memory, on every store). For each store it starts a release opampd on loopback (twice, on a
# fresh store each time), and loadtest/ws_idle_probe.py (Python 3, standard library only) warms
# it up, then reads opampd's resident memory (/proc/PID/smaps_rollup) around these phases,
# WS_IDLE_CONNS (N) each:
#   bare        (first server) N sessions, each exchanging one message answered without the
#               store (an in-band BadRequest), then idle: the transport alone
#   agents      (second server) N agents stored over HTTP POST: per agent (the store; on
#               Elasticsearch the moka cache entry)
#   conn_alone  N sessions, one heartbeat each of an agent stored (and cached) above, then idle:
#               per connection, its agent already known
#   conn_agent  N sessions, each the full status of a new agent, then idle: per connection with
#               its agent
# It prints the RSS growth over N in KiB per phase and store, overall / marginal (each phase runs
# in WS_IDLE_ROUNDS parts; marginal is the growth after the first part over the rest: without the
# transient memory the phase's work leaves with the allocator once), and the peak RSS; the
# readings are in $BENCH_OUT/<store>-{bare,store}.json. Loopback only; bounded (WS_IDLE_MAX_SECS);
# stops what it started (opampd, and the Elasticsearch node when it started one).
#
#   loadtest/ws-idle-memory.sh                              # both stores, N = 9000, ~10 min built
#   WS_IDLE_STORES=embedded WS_IDLE_CONNS=2000 loadtest/ws-idle-memory.sh
#   WS_IDLE_ES_URL=http://127.0.0.1:9295 loadtest/ws-idle-memory.sh   # an Elasticsearch already up
#
# Env (defaults): WS_IDLE_CONNS (9000: opampd and the probe each hold 2 N sockets, and the
# open-files limit is often 20000), WS_IDLE_STORES ("embedded elasticsearch"), WS_IDLE_WARMUP
# (500), WS_IDLE_ROUNDS (4), WS_IDLE_SETTLE (5 s before each reading), WS_IDLE_PORT (4350, admin
# +1), WS_IDLE_ES_URL (unset: start a node of its own on WS_IDLE_ES_PORT, 9295, with
# scripts/elasticsearch.sh, which needs root, and stop it at the end; never the shared
# 9250/9260 nodes), WS_IDLE_KEEP_ES=1 (leave that node running), WS_IDLE_MAX_SECS (1800),
# WS_IDLE_NO_BUILD=1 (use the binary already in $CARGO_TARGET_DIR/release), WS_IDLE_OPAMPD_BIN
# (measure this opampd binary instead, no build; e.g. an older build to compare),
# WS_IDLE_OPAMPD_ARGS (extra opampd flags), BENCH_OUT, CARGO_TARGET_DIR.
set -euo pipefail
BENCH_OUT=${BENCH_OUT:-/tmp/opampd-ws-idle-$(date +%Y%m%d%H%M%S)}
WS_IDLE_PORT=${WS_IDLE_PORT:-4350}
BENCH_PORT=$WS_IDLE_PORT
BENCH_ADMIN_PORT=$((WS_IDLE_PORT + 1))
# shellcheck source-path=SCRIPTDIR source=bench-lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"

WS_IDLE_CONNS=${WS_IDLE_CONNS:-9000}
WS_IDLE_STORES=${WS_IDLE_STORES:-embedded elasticsearch}
WS_IDLE_WARMUP=${WS_IDLE_WARMUP:-500}
WS_IDLE_SETTLE=${WS_IDLE_SETTLE:-5}
WS_IDLE_ROUNDS=${WS_IDLE_ROUNDS:-4}
WS_IDLE_MAX_SECS=${WS_IDLE_MAX_SECS:-1800}
INDEX=opampd-ws-idle-$TS
require_tools curl jq python3
case " $WS_IDLE_STORES " in
  *" elasticsearch "*)
    if [ -n "${WS_IDLE_ES_URL:-}" ]; then
      ES=$WS_IDLE_ES_URL
      require_loopback "$ES"
    else
      own_es_init "${WS_IDLE_ES_PORT:-9295}" WS_IDLE_ES_PORT
    fi
    ;;
esac

cleanup() {
  stop_watchdog
  stop_opampd
  if [ -n "${ES:-}" ]; then
    own_es_cleanup "${WS_IDLE_KEEP_ES:-0}" "$INDEX-bare"
    own_es_cleanup "${WS_IDLE_KEEP_ES:-0}" "$INDEX-store"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
start_watchdog "$WS_IDLE_MAX_SECS" ws-idle-memory
mkdir -p "$BENCH_OUT"

if [ -n "${WS_IDLE_OPAMPD_BIN:-}" ]; then
  BIN=$(mktemp -d "$BENCH_OUT/bin.XXXXXX")
  ln -s "$(realpath "$WS_IDLE_OPAMPD_BIN")" "$BIN/opampd"
elif [ "${WS_IDLE_NO_BUILD:-0}" != 1 ]; then
  log "building opampd (release) into $TARGET_DIR"
  (cd "$ROOT" && CARGO_TARGET_DIR=$TARGET_DIR cargo build --release -p opampd) >&2
fi
[ -x "$BIN/opampd" ] || { log "no $BIN/opampd"; exit 2; }
# opampd and the probe each hold 2 N + warm-up sockets (root may raise the hard limit)
NOFILE=$((2 * WS_IDLE_CONNS + WS_IDLE_WARMUP + 500))
if [ "$(ulimit -Hn)" != unlimited ] && [ "$(ulimit -Hn)" -lt "$NOFILE" ]; then ulimit -Hn "$NOFILE" 2>/dev/null || true; fi
ulimit -n "$NOFILE" 2>/dev/null || { log "need $NOFILE open files, the limit is $(ulimit -Hn)"; exit 2; }

if [ -n "$OWN_ES_PORT" ]; then own_es_start; fi

COMMON=(--ws-idle-timeout 30m --max-ws-sessions $((2 * WS_IDLE_CONNS + WS_IDLE_WARMUP)))
# shellcheck disable=SC2206 # extra flags are split on purpose
EXTRA=(${WS_IDLE_OPAMPD_ARGS:-})
# probe RUN PHASES: one opampd of $store on a fresh store, the probe's PHASES against it
probe() {
  local run=$1 phases=$2
  case "$store" in
    embedded)
      rm -rf "$BENCH_OUT/data"
      start_opampd --store embedded --data-dir "$BENCH_OUT/data" "${COMMON[@]}" "${EXTRA[@]}"
      ;;
    elasticsearch)
      start_opampd --store elasticsearch --es-url "$ES" --es-index "$INDEX-$run" --auth none \
        "${COMMON[@]}" "${EXTRA[@]}"
      ;;
    *) log "unknown store $store (embedded, elasticsearch)"; exit 64 ;;
  esac
  mv "$BENCH_OUT/opampd.log" "$BENCH_OUT/opampd-$store-$run.log" 2>/dev/null || true
  python3 "$ROOT/loadtest/ws_idle_probe.py" --pid "$OPAMPD_PID" \
    --target "127.0.0.1:$BENCH_PORT" --admin "127.0.0.1:$BENCH_ADMIN_PORT" \
    --connections "$WS_IDLE_CONNS" --warmup "$WS_IDLE_WARMUP" --settle "$WS_IDLE_SETTLE" \
    --rounds "$WS_IDLE_ROUNDS" --phases "$phases" >"$BENCH_OUT/$store-$run.json"
  stop_opampd
  if [ "$store" = elasticsearch ]; then
    curl -fsS --max-time 30 -X DELETE "$ES/$INDEX-$run" >/dev/null 2>&1 || true
  fi
}
for store in $WS_IDLE_STORES; do
  # the transport alone on one server; the store's phases on another, so neither's sockets and
  # garbage count in the other's readings
  probe bare bare
  probe store agents,conn_alone,conn_agent
done

echo "idle WebSocket memory of opampd ($(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)+worktree), N = $WS_IDLE_CONNS per phase, RSS growth in KiB, overall / marginal:"
printf '%-14s %16s %16s %22s %26s %10s\n' store bare_connection per_agent per_connection_alone per_connection_with_agent VmHWM_MiB
for store in $WS_IDLE_STORES; do
  jq -rs --arg s "$store" \
    '(.[0].Rss) as $b | (.[1].Rss) as $r | [$s,
      "\($b.bare_kib) / \($b.bare_marginal_kib // "-")",
      "\($r.agents_kib) / \($r.agents_marginal_kib // "-")",
      "\($r.conn_alone_kib) / \($r.conn_alone_marginal_kib // "-")",
      "\($r.conn_agent_kib) / \($r.conn_agent_marginal_kib // "-")",
      ((.[1].VmHWM_kib // 0) / 1024 | floor)] | @tsv' "$BENCH_OUT/$store-bare.json" "$BENCH_OUT/$store-store.json" |
    awk -F'\t' '{ printf "%-14s %16s %16s %22s %26s %10s\n", $1, $2, $3, $4, $5, $6 }'
done
log "details in $BENCH_OUT"

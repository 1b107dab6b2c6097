#!/usr/bin/env bash
# Self-test of scripts/elasticsearch.sh. Runs its own nodes on spare ports and never touches the nodes on
# the default ports (9250 plain, 9260 secured) that other tests use:
#   - static checks (bash -n, shellcheck if installed), url/password/usage
#   - `start` fails at once, naming the port and the process, when the HTTP or transport port is taken
#   - a node killed while booting ends `start` (and a second `start` waiting on it) at once, with its log
#   - a plain and a secured node side by side; the secured one: basic auth 200/401, a fleet-server service
#     token, a write to .fleet-enrollment-api-keys with it (403 as `elastic`), restart keeps the password
#
#   scripts/test-elasticsearch-script.sh
#
# Env: OPAMPD_SELFTEST_PORT (default 9270), OPAMPD_SELFTEST_SECURE_PORT (default 9280); each node's
# transport port is its HTTP port + 100. Needs root (as elasticsearch.sh does), curl and python3.
set -euo pipefail
cd "$(dirname "$0")/.."

ES=scripts/elasticsearch.sh
P=${OPAMPD_SELFTEST_PORT:-9270}
SP=${OPAMPD_SELFTEST_SECURE_PORT:-9280}
for port in "$P" "$SP" "$((P + 100))" "$((SP + 100))"; do
  case "$port" in
    9250 | 9260 | 9350 | 9360) echo "refusing to use $port: the shared nodes live there" >&2; exit 64 ;;
  esac
done
command -v python3 >/dev/null || { echo "python3 is needed for the port listeners" >&2; exit 1; }

TMP=$(mktemp -d)
LISTENERS=()
PASS=0
FAIL=0

plain() { OPAMPD_ES_SECURE=0 OPAMPD_ES_PORT=$P OPAMPD_ES_TRANSPORT_PORT=$((P + 100)) "$ES" "$@"; }
secure() {
  OPAMPD_ES_SECURE=0 OPAMPD_ES_SECURE_PORT=$SP OPAMPD_ES_SECURE_TRANSPORT_PORT=$((SP + 100)) "$ES" "$@" --secure
}

cleanup() {
  local pid
  for pid in "${LISTENERS[@]}"; do kill "$pid" 2>/dev/null || true; done
  plain stop || true
  secure stop || true
  rm -rf "$TMP"
}
trap cleanup EXIT

ok() { PASS=$((PASS + 1)); echo "ok   $*"; }
bad() { FAIL=$((FAIL + 1)); echo "FAIL $*"; }
check() { # check DESCRIPTION COMMAND...: passes when the command succeeds
  local what=$1
  shift
  if "$@"; then ok "$what"; else bad "$what"; fi
}
contains() { grep -qF -- "$2" "$1"; }

# A listener on 127.0.0.1:PORT that accepts nothing (python3), or an HTTP server (KIND=http).
listen() {
  local port=$1 kind=${2:-silent}
  if [ "$kind" = http ]; then
    python3 -m http.server "$port" --bind 127.0.0.1 >/dev/null 2>&1 &
  else
    python3 -c 'import socket,sys,time
s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(); time.sleep(600)' "$port" &
  fi
  LISTENERS+=("$!")
  for _ in $(seq 1 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "listener on $port did not come up" >&2
  exit 1
}
unlisten() { kill "${LISTENERS[-1]}"; wait "${LISTENERS[-1]}" 2>/dev/null || true; unset 'LISTENERS[-1]'; }

# run NAME COMMAND...: runs it, keeps stdout/stderr in $TMP/NAME.{out,err}, status in RC, seconds in SECS
run() {
  local name=$1 t0=$SECONDS
  shift
  RC=0
  "$@" > "$TMP/$name.out" 2> "$TMP/$name.err" || RC=$?
  SECS=$((SECONDS - t0))
  sed 's/^/      | /' "$TMP/$name.err"
}

code() { curl -s -o /dev/null -w '%{http_code}' "$@"; }

echo "== static checks"
check "bash -n" bash -n "$ES"
if command -v shellcheck >/dev/null; then
  check "shellcheck" shellcheck "$ES" "$0"
else
  echo "skip shellcheck (not installed)"
fi
check "url" test "$(plain url)" = "http://127.0.0.1:$P"
check "url --secure" test "$(secure url)" = "http://127.0.0.1:$SP"
check "OPAMPD_ES_SECURE=1 url" test "$(OPAMPD_ES_SECURE=1 OPAMPD_ES_SECURE_PORT=$SP "$ES" url)" = "http://127.0.0.1:$SP"
run password-plain plain password
check "password without --secure is refused" test "$RC" = 64
run usage "$ES" frobnicate
check "unknown command -> usage (64)" test "$RC" = 64
run same-ports env OPAMPD_ES_SECURE=0 OPAMPD_ES_PORT="$P" OPAMPD_ES_TRANSPORT_PORT="$P" "$ES" start
check "HTTP port = transport port is refused (64)" test "$RC" = 64

echo "== leftovers of an earlier run"
plain stop
secure stop

echo "== port checks"
listen $((P + 100))
run transport-taken plain start
unlisten
check "transport port taken: fails" test "$RC" != 0
check "transport port taken: within 10 s ($SECS s)" test "$SECS" -le 10
check "transport port taken: names the port" contains "$TMP/transport-taken.err" "transport port $((P + 100))"
check "transport port taken: names the process" contains "$TMP/transport-taken.err" "python3"
check "transport port taken: names the variable" contains "$TMP/transport-taken.err" "OPAMPD_ES_TRANSPORT_PORT"
check "transport port taken: nothing on stdout" test ! -s "$TMP/transport-taken.out"

listen "$P" http
run http-taken plain start
unlisten
check "HTTP port held by a web server: fails" test "$RC" != 0
check "HTTP port held by a web server: within 10 s ($SECS s)" test "$SECS" -le 10
check "HTTP port held by a web server: names port and process" \
  bash -c "grep -qF 'HTTP port $P' '$TMP/http-taken.err' && grep -qF 'http.server' '$TMP/http-taken.err'"

listen "$P"
run http-silent plain start
unlisten
check "HTTP port held by a silent listener: fails within 15 s ($SECS s)" test "$RC" != 0 -a "$SECS" -le 15
check "HTTP port held by a silent listener: says it does not answer HTTP" \
  contains "$TMP/http-silent.err" "does not answer HTTP"

echo "== a node killed while booting"
RUN_DIR=${OPAMPD_CACHE:-$HOME/.cache/opampd}/es-run-$P
plain start > "$TMP/boot1.out" 2> "$TMP/boot1.err" &
BOOT1=$!
NODE=
for _ in $(seq 1 600); do
  pid=$(cat "$RUN_DIR/es.pid" 2>/dev/null || true)
  if [ -n "$pid" ] && tr '\0' '\n' < "/proc/$pid/environ" 2>/dev/null | grep -qxF "ES_PATH_CONF=$RUN_DIR/config"; then
    NODE=$pid
    break
  fi
  sleep 0.1
done
if [ -z "$NODE" ]; then
  bad "node pid file did not appear"
  wait "$BOOT1" || true
else
  plain start > "$TMP/boot2.out" 2> "$TMP/boot2.err" &
  BOOT2=$!
  sleep 1
  T0=$SECONDS
  kill -9 "$NODE"
  RC1=0
  wait "$BOOT1" || RC1=$?
  RC2=0
  wait "$BOOT2" || RC2=$?
  SECS=$((SECONDS - T0))
  sed 's/^/      | /' "$TMP/boot1.err" "$TMP/boot2.err" | grep -v CompileCommand | head -n 30
  check "both starts fail after the kill ($RC1, $RC2)" test "$RC1" != 0 -a "$RC2" != 0
  check "and stop waiting within 10 s ($SECS s)" test "$SECS" -le 10
  check "the second start waited on the booting node" contains "$TMP/boot2.err" "already running"
  check "both say the node died" bash -c "grep -q 'died' '$TMP/boot1.err' && grep -q 'died' '$TMP/boot2.err'"
fi

echo "== a secured and a plain node side by side"
run secure-start secure start
SECURE_SECS=$SECS
check "start --secure succeeds ($SECURE_SECS s)" test "$RC" = 0
URL=$(secure url)
check "start --secure prints only the URL on stdout" test "$(cat "$TMP/secure-start.out")" = "$URL"
PW=$(secure password)
PW_FILE=${OPAMPD_CACHE:-$HOME/.cache/opampd}/es-run-secure-$SP/elastic-password
check "password file is root's, mode 600" test "$(stat -c '%U %a' "$PW_FILE")" = "root 600"
check "the node user cannot read it" bash -c "! runuser -u opampd-es -- cat '$PW_FILE' >/dev/null 2>&1"
run plain-start plain start
check "plain start next to it succeeds ($SECS s)" test "$RC" = 0 -a "$(cat "$TMP/plain-start.out")" = "http://127.0.0.1:$P"
check "plain node answers without credentials" test "$(code "http://127.0.0.1:$P/")" = 200
check "secured node: _authenticate as elastic is 200" test "$(code -u "elastic:$PW" "$URL/_security/_authenticate")" = 200
check "secured node: without credentials 401" test "$(code "$URL/_security/_authenticate")" = 401
check "secured node: wrong password 401" test "$(code -u "elastic:wrong" "$URL/_security/_authenticate")" = 401
TOKEN=$(curl -fsS -u "elastic:$PW" -X POST "$URL/_security/service/elastic/fleet-server/credential/token/selftest" |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["token"]["value"])' || true)
check "fleet-server service token created" test -n "$TOKEN"
FLEET=(-H 'X-elastic-product-origin: fleet' -H 'Content-Type: application/json')
DOC="$URL/.fleet-enrollment-api-keys/_doc/selftest"
check "elastic may not write .fleet-enrollment-api-keys (403)" \
  test "$(code -u "elastic:$PW" "${FLEET[@]}" -X PUT "$DOC" -d '{"active":true}')" = 403
check "the service token may (201)" \
  test "$(code -H "Authorization: Bearer $TOKEN" "${FLEET[@]}" -X PUT "$DOC" -d '{"active":true,"name":"selftest"}')" = 201
check "and read it back (200)" test "$(code -H "Authorization: Bearer $TOKEN" "${FLEET[@]}" "$DOC")" = 200
check "and delete it (200)" test "$(code -H "Authorization: Bearer $TOKEN" "${FLEET[@]}" -X DELETE "$DOC")" = 200
check "token deleted" \
  test "$(code -u "elastic:$PW" -X DELETE "$URL/_security/service/elastic/fleet-server/credential/token/selftest")" = 200

run secure-again secure start
check "start --secure on a healthy node returns at once ($SECS s)" test "$RC" = 0 -a "$SECS" -le 5
run cross-plain env OPAMPD_ES_SECURE=0 OPAMPD_ES_PORT="$SP" OPAMPD_ES_TRANSPORT_PORT=$((SP + 200)) "$ES" start
check "plain start on the secured node's port: fails, says security on" \
  bash -c "[ $RC != 0 ] && grep -qF 'security on' '$TMP/cross-plain.err'"
run cross-secure env OPAMPD_ES_SECURE_PORT="$P" OPAMPD_ES_SECURE_TRANSPORT_PORT=$((P + 200)) "$ES" start --secure
check "secure start on the plain node's port: fails, says security off" \
  bash -c "[ $RC != 0 ] && grep -qF 'security off' '$TMP/cross-secure.err'"

echo "== restart keeps the password"
secure stop
check "stop --secure frees its ports" bash -c "! (exec 3<>/dev/tcp/127.0.0.1/$SP) 2>/dev/null && ! (exec 3<>/dev/tcp/127.0.0.1/$((SP + 100))) 2>/dev/null"
check "plain node still up" test "$(code "http://127.0.0.1:$P/")" = 200
run secure-restart secure start
check "start --secure again ($SECS s)" test "$RC" = 0
check "same password" test "$(secure password)" = "$PW"
check "which still works" test "$(code -u "elastic:$PW" "$URL/_security/_authenticate")" = 200

echo
echo "secured node ready in $SECURE_SECS s (first start), passed $PASS, failed $FAIL"
[ "$FAIL" = 0 ]

#!/usr/bin/env bash
# Faults under load: two replicas (A, B) gossiping on loopback in front of the
# demo upstream. wrk polls A (every answer must be a 304 from memory) while
# the upstream is killed and brought back, and B is SIGKILLed, misses
# publishes, and is restarted. Fails on any failed hit at A, if B does not
# converge on what it missed, or if B's own hits are not 304s once ready.
# Loopback only; bounded by FAULTS_SECONDS.
#
# Environment:
#   FAULTS_SECONDS=40      length of the load on A (the faults fit in 25 s)
#   FAULTS_CONNECTIONS=32  wrk connections
#   LT_POLLGATE_BIN=       run this pollgate binary instead of a fresh release build
set -euo pipefail
cd "$(dirname "$0")/.."
. loadtest/lib.sh

FAULTS_SECONDS=${FAULTS_SECONDS:-40}
FAULTS_CONNECTIONS=${FAULTS_CONNECTIONS:-32}
[ "$FAULTS_SECONDS" -ge 30 ] || die "FAULTS_SECONDS must be at least 30 (the faults take 25 s)"
KEYS=100000

need_tools cargo wrk curl python3 awk split
cargo build --release --example demo_upstream >&2
if [ -z "${LT_POLLGATE_BIN:-}" ]; then
  cargo build --release --bin pollgate >&2
fi
TARGET=$(target_dir)
PG_BIN=${LT_POLLGATE_BIN:-$TARGET/release/pollgate}
UP_BIN=$TARGET/release/examples/demo_upstream

up=$(free_port)
a=$(free_port) ai=$(free_port) b=$(free_port) bi=$(free_port)
log() { echo "faults t=$((SECONDS - T0))s: $*" >&2; }

start_upstream() {
  spawn "$LT_TMP/upstream.log" "$UP_BIN" --listen "127.0.0.1:$up" \
    --publish-url "http://127.0.0.1:$ai" --publish-token lt
  UP_PID=$SPAWNED
}
# replica NAME PUBLIC INTERNAL PEER_INTERNAL — sets PG_PID.
# max_age 10m: the keys are published once, and the whole run (load, B's
# restart and catch-up, B's own load) can pass the default 60 s; an expired
# key would be revalidated and answered 200 by the demo upstream, which is not
# the fault under test.
replica() {
  start_pollgate "$LT_TMP/$1.log" "$2" "$3" -- --upstream "http://127.0.0.1:$up" \
    --cluster-key faults --peer "127.0.0.1:$4" --node-id "$1" --max-age 10m
}
version_at() { # INTERNAL KEY → version or nothing
  curl -sf "http://127.0.0.1:$1/v1/versions/$2" | sed -n 's/.*"version": *\([0-9]*\).*/\1/p'
}
converged() { [ "$(version_at "$1" "$2")" = "$3" ]; }

T0=$SECONDS
start_upstream
replica a "$a" "$ai" "$bi"
A_PID=$PG_PID
replica b "$b" "$bi" "$ai"
B_PID=$PG_PID
publish_keys "$ai" "p%d" "$KEYS" 50000
wait_for "B converging on A's publishes" "$B_PID" "$LT_TMP/b.log" converged "$bi" "p$((KEYS - 1))" 1
log "A and B hold $KEYS keys; load on A for ${FAULTS_SECONDS}s"

wrk -t1 -c"$FAULTS_CONNECTIONS" -d"${FAULTS_SECONDS}s" -s loadtest/hit.lua \
  "http://127.0.0.1:$a" >"$LT_TMP/wrk-a.out" 2>&1 &
wrk_pid=$!
LT_PIDS+=("$wrk_pid")
L0=$SECONDS
at() { while [ $((SECONDS - L0)) -lt "$1" ]; do sleep 0.2; done; }

at 3
kill "$UP_PID"
wait "$UP_PID" 2>/dev/null || true
log "upstream killed"
at 8
start_upstream
log "upstream restarted"
at 11
kill -KILL "$B_PID"
wait "$B_PID" 2>/dev/null || true
log "replica B SIGKILLed"
body=$(for i in $(seq 0 999); do echo "r$i 5"; done)
curl -sS -f -X POST --data-binary "$body" -H 'Authorization: Bearer lt' \
  -H 'Content-Type: text/plain' "http://127.0.0.1:$ai/v1/versions" >/dev/null
log "1000 keys published to A while B is down"
at 16
replica b "$b" "$bi" "$ai"
B_PID=$PG_PID
wait_for "B ready" "$B_PID" "$LT_TMP/b.log" curl -sf "http://127.0.0.1:$bi/readyz"
wait_for "B catching up on what it missed" "$B_PID" "$LT_TMP/b.log" converged "$bi" r999 5
log "B restarted, ready, and holds what it missed"
wrk -t1 -c8 -d5s -s loadtest/hit.lua "http://127.0.0.1:$b" >"$LT_TMP/wrk-b.out" 2>&1
wait "$wrk_pid" || true

fail=0
for side in a b; do
  line=$(grep '^hit.lua:' "$LT_TMP/wrk-$side.out") || die "wrk on $side printed no summary"
  echo "replica $side: $line" >&2
  case "$line" in
    *" non304=0 "*) ;;
    *) echo "FAIL: replica $side answered hits with something other than 304" >&2; fail=1 ;;
  esac
done
kill -0 "$A_PID" || { echo "FAIL: replica A died" >&2; fail=1; }
exit "$fail"

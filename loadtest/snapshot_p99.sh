#!/usr/bin/env bash
# Hit-path latency while 1M-key snapshots are being written, against the same
# run with no data_dir, in one invocation. Loopback only, bounded in time.
#
# Usage: [KEYS=1000000] [DUR=20s] [CONNS=32] [INTERVAL=1s] [ROUNDS=2] loadtest/snapshot_p99.sh
# Every run: release binary, KEYS keys published, 1000 keys republished every
# 200 ms (so every snapshot interval has changes), wrk polling random keys
# (all hits). Runs alternate, ROUNDS times: A without data_dir, B with
# --data-dir and --snapshot-interval INTERVAL. Alternating matters on a shared
# machine, where neighbours move p99 more than anything measured here.
set -euo pipefail
cd "$(dirname "$0")/.."
KEYS=${KEYS:-1000000}
DUR=${DUR:-20s}
CONNS=${CONNS:-32}
INTERVAL=${INTERVAL:-1s}
ROUNDS=${ROUNDS:-2}
TOKEN=loadtest-token
BIN=${CARGO_TARGET_DIR:-target}/release/pollgate
cargo build --release --quiet --bin pollgate
command -v wrk >/dev/null || { echo "wrk not found (apt-get install -y wrk)" >&2; exit 1; }

# Like run.sh: the server on CPU 0, wrk on CPU 1, so they do not trade
# places; the snapshot thread then competes with the hit path for CPU 0,
# which is the cost being measured.
PIN_PG=() PIN_WRK=()
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
  PIN_PG=(taskset -c 0) PIN_WRK=(taskset -c 1)
fi

WORK=$(mktemp -d)
PG_PID=""
cleanup() {
  [ -n "$PG_PID" ] && kill "$PG_PID" 2>/dev/null && wait "$PG_PID" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

# 50k lines (~600 KB) per publish batch: under the 1 MiB body limit.
seq 0 $((KEYS - 1)) | awk '{print "p"$1" 1"}' | split -l 50000 - "$WORK/batch."

start() { # name, extra args...
  local name=$1; shift
  "${PIN_PG[@]}" "$BIN" --listen 127.0.0.1:0 --internal-listen 127.0.0.1:0 --upstream http://127.0.0.1:9 \
    --publish-token "$TOKEN" --max-age 0s "$@" 2>"$WORK/$name.log" &
  PG_PID=$!
  for _ in $(seq 200); do
    grep -q "pollgate listening" "$WORK/$name.log" 2>/dev/null && break
    sleep 0.05
  done
  PUBLIC=$(grep -o 'public=[0-9.:]*' "$WORK/$name.log" | head -1 | cut -d= -f2)
  INTERNAL=$(grep -o 'internal=[0-9.:]*' "$WORK/$name.log" | head -1 | cut -d= -f2)
  [ -n "$PUBLIC" ] || { cat "$WORK/$name.log"; exit 1; }
}

publish() { curl -sf -H "authorization: Bearer $TOKEN" --data-binary "@$1" "http://$INTERNAL/v1/versions" >/dev/null; }

# Republishes 1000 keys with a rising version every 200 ms until $1 (epoch s).
republish_until() {
  local v=2
  while [ "$(date +%s)" -lt "$1" ]; do
    seq 0 $((KEYS / 1000)) $((KEYS - 1)) | awk -v v=$v '{print "p"$1" "v}' >"$WORK/re"
    publish "$WORK/re"
    v=$((v + 1))
    sleep 0.2
  done
}

metric() { curl -s "http://$INTERNAL/metrics" | awk -v m="$1" '$1 == m {print $2}'; }

run() { # name, extra args...
  local name=$1; shift
  start "$name" "$@"
  for f in "$WORK"/batch.*; do publish "$f"; done
  local secs=${DUR%s}
  republish_until $(( $(date +%s) + secs + 1 )) &
  local re=$!
  local writes0; writes0=$(metric pollgate_snapshot_writes_total)
  "${PIN_WRK[@]}" wrk -t1 -c"$CONNS" -d"$DUR" -s loadtest/random_hit.lua "http://$PUBLIC" -- "$KEYS" | grep RESULT | sed "s/^RESULT/$name:/"
  wait $re
  echo "$name: keys=$(metric pollgate_keys) hits=$(metric 'pollgate_requests_total{outcome="hit"}')" \
    "forwarded=$(metric 'pollgate_requests_total{outcome="unknown"}') snapshot_writes=$(( $(metric pollgate_snapshot_writes_total) - writes0 ))" \
    "last_write_s=$(metric pollgate_snapshot_write_seconds) snapshot_bytes=$(metric pollgate_snapshot_bytes)"
  kill "$PG_PID"; wait "$PG_PID" 2>/dev/null || true; PG_PID=""
}

echo "load average: $(cut -d' ' -f1-3 /proc/loadavg) (results mean little on a busy machine)"
for _ in $(seq "$ROUNDS"); do
  run no_snapshots
  rm -rf "$WORK/data"
  run "snapshots_$INTERVAL" --data-dir "$WORK/data" --snapshot-interval "$INTERVAL"
done

#!/usr/bin/env bash
# Soak: N minutes of hits (wrk, every one must be a 304 from memory) while
# publishes advance other keys, sampling pollgate's RSS and open fds. Fails
# on any non-304, on pollgate dying, or on growth after the warm-up.
# Loopback only; bounded by SOAK_MINUTES.
#
# Environment:
#   SOAK_MINUTES=5          length of the soak
#   SOAK_CONNECTIONS=64     wrk connections
#   SOAK_SAMPLE_S=10        seconds between RSS/fd samples
#   SOAK_RSS_GROWTH_PCT=10  allowed RSS growth, first sample after warm-up → last
#   SOAK_FD_GROWTH=16       allowed growth in open fds over the same span
#   LT_POLLGATE_BIN=        run this pollgate binary instead of a fresh release build
set -euo pipefail
cd "$(dirname "$0")/.."
. loadtest/lib.sh

SOAK_MINUTES=${SOAK_MINUTES:-5}
SOAK_CONNECTIONS=${SOAK_CONNECTIONS:-64}
SOAK_SAMPLE_S=${SOAK_SAMPLE_S:-10}
SOAK_RSS_GROWTH_PCT=${SOAK_RSS_GROWTH_PCT:-10}
SOAK_FD_GROWTH=${SOAK_FD_GROWTH:-16}
KEYS=100000

need_tools cargo wrk curl python3 awk split
if [ -z "${LT_POLLGATE_BIN:-}" ]; then
  cargo build --release --bin pollgate >&2
fi
PG_BIN=${LT_POLLGATE_BIN:-$(target_dir)/release/pollgate}

port=$(free_port)
iport=$(free_port)
# No upstream runs here, so nothing may expire: with the default max_age
# (60 s) every key would be revalidated against a dead upstream after a
# minute, and the soak would measure 502s instead of pollgate's steady state.
start_pollgate "$LT_TMP/pollgate.log" "$port" "$iport" -- --max-age 0s
publish_keys "$iport" "p%d" "$KEYS" 50000
echo "soak: ${SOAK_MINUTES} min of hits on 127.0.0.1:$port, publishes to q*, pid $PG_PID" >&2

# Publishes: 100 keys q0..q99 advance by one version every 100 ms.
publisher() {
  local v=1 i body
  while :; do
    v=$((v + 1))
    body=$(for i in $(seq 0 99); do echo "q$i $v"; done)
    curl -sS -f -X POST --data-binary "$body" -H 'Authorization: Bearer lt' \
      -H 'Content-Type: text/plain' "http://127.0.0.1:$iport/v1/versions" >/dev/null ||
      echo "publish failed" >>"$LT_TMP/publish.errors"
    sleep 0.1
  done
}
publisher &
LT_PIDS+=("$!")

secs=$((SOAK_MINUTES * 60))
wrk -t1 -c"$SOAK_CONNECTIONS" -d"${secs}s" -s loadtest/hit.lua \
  "http://127.0.0.1:$port" >"$LT_TMP/wrk.out" 2>&1 &
wrk_pid=$!
LT_PIDS+=("$wrk_pid")

fds() { find "/proc/$PG_PID/fd" -mindepth 1 2>/dev/null | wc -l; }
warm=$((secs / 5 < 30 ? secs / 5 : 30))
first_rss="" first_fds="" rss=0 nfd=0
printf '%6s %10s %6s\n' "t_s" "rss_kib" "fds" >&2
start=$SECONDS
while kill -0 "$wrk_pid" 2>/dev/null; do
  sleep "$SOAK_SAMPLE_S"
  kill -0 "$PG_PID" 2>/dev/null || die "pollgate died during the soak (log: $LT_TMP/pollgate.log)"
  t=$((SECONDS - start))
  rss=$(rss_bytes "$PG_PID")
  nfd=$(fds)
  printf '%6d %10d %6d\n' "$t" $((rss / 1024)) "$nfd" >&2
  if [ -z "$first_rss" ] && [ "$t" -ge "$warm" ]; then
    first_rss=$rss first_fds=$nfd
  fi
done
wait "$wrk_pid" || true
cat "$LT_TMP/wrk.out"

fail=0
line=$(grep '^hit.lua:' "$LT_TMP/wrk.out") || die "wrk printed no hit.lua summary"
non304=$(echo "$line" | sed -n 's/.*non304=\([0-9]*\).*/\1/p')
requests=$(echo "$line" | sed -n 's/.*requests=\([0-9]*\).*/\1/p')
[ "$non304" = 0 ] || { echo "FAIL: $non304 of $requests hits were not 304" >&2; fail=1; }
[ ! -s "$LT_TMP/publish.errors" ] || { echo "FAIL: $(wc -l <"$LT_TMP/publish.errors") publishes failed" >&2; fail=1; }
if [ -n "$first_rss" ]; then
  limit=$((first_rss + first_rss * SOAK_RSS_GROWTH_PCT / 100))
  [ "$rss" -le "$limit" ] || { echo "FAIL: RSS grew $((first_rss / 1024)) → $((rss / 1024)) KiB" >&2; fail=1; }
  [ "$nfd" -le $((first_fds + SOAK_FD_GROWTH)) ] || { echo "FAIL: fds grew $first_fds → $nfd" >&2; fail=1; }
fi
echo "soak: ${SOAK_MINUTES} min, $requests hits, $non304 not 304, RSS $((${first_rss:-0} / 1024)) → $((rss / 1024)) KiB, fds ${first_fds:-?} → $nfd" >&2
exit "$fail"

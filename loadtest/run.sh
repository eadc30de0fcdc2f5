#!/usr/bin/env bash
# Hit-path load test: pollgate against the ceiling server (a constant 304,
# loadtest/ceiling.rs), each pinned to one CPU with wrk pinned to another.
# Target: pollgate ≥ 0.95× the ceiling's req/s and ≤ 1.1× its CPU per request.
#
# Environment:
#   LT_DURATION=10s     measured wrk run per server
#   LT_WARMUP=2s        unmeasured wrk run first (0s to skip)
#   LT_CONNECTIONS=64   wrk connections
#   LT_ONLY=            "pollgate" or "ceiling" to run one side only
#   LT_SERVER_CPU=0     CPU the server is pinned to
#   LT_CLIENT_CPU=1     CPU wrk is pinned to (0 on a single-CPU machine)
#   LT_STRICT=0         1: exit non-zero when a target is missed
#   LT_POLLGATE_BIN=    run this pollgate binary instead of the fresh build
# Exits non-zero when a run is invalid (a server died, or any response was
# not a 304), because such numbers measure the wrong thing.
set -euo pipefail
cd "$(dirname "$0")/.."
. loadtest/lib.sh

LT_DURATION=${LT_DURATION:-10s}
LT_WARMUP=${LT_WARMUP:-2s}
LT_CONNECTIONS=${LT_CONNECTIONS:-64}
LT_ONLY=${LT_ONLY:-}
LT_SERVER_CPU=${LT_SERVER_CPU:-0}
LT_CLIENT_CPU=${LT_CLIENT_CPU:-$(($(nproc) > 1 ? 1 : 0))}
LT_STRICT=${LT_STRICT:-0}
KEYS=100000

case "$LT_ONLY" in
  "" | pollgate | ceiling) ;;
  *) die "LT_ONLY must be empty, 'pollgate' or 'ceiling' (got '$LT_ONLY')" ;;
esac
want() { [ -z "$LT_ONLY" ] || [ "$LT_ONLY" = "$1" ]; }

need_tools cargo wrk taskset curl python3 getconf awk split
if [ "$(nproc)" -lt 2 ]; then
  echo "warning: fewer than 2 CPUs: server and wrk share a core; numbers are rough" >&2
fi

build() {
  local what=()
  want pollgate && what+=(--bin pollgate)
  want ceiling && what+=(--example ceiling)
  echo "building: cargo build --release ${what[*]}" >&2
  cargo build --release "${what[@]}"
}
build
TARGET=$(target_dir)
PG_BIN=${LT_POLLGATE_BIN:-$TARGET/release/pollgate}
CEIL_BIN=$TARGET/release/examples/ceiling
CLK_TCK=$(getconf CLK_TCK)
INVALID=0
declare -A R # results: R[<field>_<server>]

# Latency as printed by wrk ("152.00us", "1.20ms", "2.00s") → microseconds.
to_us() {
  awk -v v="$1" 'BEGIN {
    n = v + 0
    if (v ~ /us$/) print n; else if (v ~ /ms$/) print n * 1000;
    else if (v ~ /m$/) print n * 60e6; else if (v ~ /s$/) print n * 1e6; else print -1 }'
}

wrk_run() {
  taskset -c "$LT_CLIENT_CPU" wrk -t1 -c"$LT_CONNECTIONS" "$@" -s loadtest/hit.lua
}

# measure NAME PID URL — one wrk run against a server already up, its CPU
# time read from /proc around the run. Fills R[<field>_NAME].
measure() {
  local name=$1 pid=$2 url=$3 out="$LT_TMP/$1.wrk"
  if [ "$LT_WARMUP" != "0s" ] && [ "$LT_WARMUP" != "0" ]; then
    wrk_run -d"$LT_WARMUP" "$url" >/dev/null
  fi
  local t0 t1 s0 s1
  t0=$(cpu_ticks "$pid")
  s0=$(date +%s.%N)
  # bash's `time` keyword gives wrk's own CPU, to tell client-bound runs apart.
  local TIMEFORMAT='%U %S'
  { time wrk_run -d"$LT_DURATION" --latency "$url" >"$out"; } 2>"$LT_TMP/$name.time"
  s1=$(date +%s.%N)
  kill -0 "$pid" 2>/dev/null || die "$name died during the run"
  t1=$(cpu_ticks "$pid")
  echo "--- wrk against $name" >&2
  cat "$out" >&2

  local reqs rps p50 p99 non304 first_bad
  reqs=$(awk '/ requests in / { print $1 }' "$out")
  rps=$(awk '/^Requests\/sec:/ { print $2 }' "$out")
  p50=$(to_us "$(awk '$1 == "50%" { print $2 }' "$out")")
  p99=$(to_us "$(awk '$1 == "99%" { print $2 }' "$out")")
  non304=$(sed -n 's/.*non304=\([0-9]*\).*/\1/p' "$out")
  first_bad=$(sed -n 's/.*first_non304_status=\([0-9]*\).*/\1/p' "$out")
  if [ -z "$reqs" ] || [ -z "$rps" ] || [ -z "$non304" ]; then
    die "could not parse wrk output for $name"
  fi
  [ "$reqs" -gt 0 ] || die "no requests completed against $name"
  if [ "$non304" -ne 0 ]; then
    echo "INVALID: $name answered $non304 non-304 responses (first: $first_bad)" >&2
    INVALID=1
  fi
  local ticks=$((t1 - t0))
  R[rps_$name]=$rps
  R[p50_$name]=$p50
  R[p99_$name]=$p99
  R[non304_$name]=$non304
  R[cpu_$name]="$(awk -v t="$ticks" -v hz="$CLK_TCK" -v n="$reqs" \
    'BEGIN { printf "%.2f", t / hz * 1e6 / n }')"
  R[util_$name]="$(awk -v t="$ticks" -v hz="$CLK_TCK" -v a="$s0" -v b="$s1" \
    'BEGIN { printf "%.0f", t / hz / (b - a) * 100 }')"
  R[wrk_$name]="$(awk -v a="$s0" -v b="$s1" '{ printf "%.0f", ($1 + $2) / (b - a) * 100 }' \
    "$LT_TMP/$name.time")"
}

run_pollgate() {
  local port iport dead
  port=$(free_port)
  iport=$(free_port)
  # Nothing listens on `dead`: a poll that misses the table fails loudly as
  # a non-304 instead of quietly hitting whatever runs on :3000.
  dead=$(free_port)
  # max_age 1h: no entry expires mid-run and sends revalidations upstream.
  start_pollgate "$LT_TMP/pollgate.log" "$port" "$iport" taskset -c "$LT_SERVER_CPU" -- \
    --upstream "http://127.0.0.1:$dead" --max-age 1h
  echo "publishing $KEYS keys at version 1" >&2
  publish_keys "$iport" "p%d" "$KEYS" 20000
  local head
  head=$(curl -sS -D - -o /dev/null "http://127.0.0.1:$port/projects/p42/changes?since=1")
  printf '%s' "$head" | head -n1 | grep -q ' 304' ||
    die "expected 304 for a published key, got: $(printf '%s' "$head" | head -n1)"
  printf '%s' "$head" | grep -qi '^x-pollgate: *hit' ||
    die "304 without 'X-Pollgate: hit': not the hit path"
  measure pollgate "$PG_PID" "http://127.0.0.1:$port"
  kill "$PG_PID"
}

run_ceiling() {
  spawn "$LT_TMP/ceiling.log" taskset -c "$LT_SERVER_CPU" "$CEIL_BIN" --listen 127.0.0.1:0
  local pid=$SPAWNED
  wait_for ceiling "$pid" "$LT_TMP/ceiling.log" grep -q '^listening on ' "$LT_TMP/ceiling.log"
  local addr
  addr=$(sed -n 's/^listening on //p' "$LT_TMP/ceiling.log" | head -n1)
  measure ceiling "$pid" "http://$addr"
  kill "$pid"
}

want pollgate && run_pollgate
want ceiling && run_ceiling

row() {
  local n=$1
  printf '| %s | %.0f | %s | %s | %s | %s %% | %s %% | %s |\n' "$n" "${R[rps_$n]}" \
    "${R[p50_$n]}" "${R[p99_$n]}" "${R[cpu_$n]}" "${R[util_$n]}" "${R[wrk_$n]}" "${R[non304_$n]}"
}

echo
echo "Load average at the end: $(cut -d' ' -f1-3 /proc/loadavg) (anything near the CPU count skews this)"
echo "Hit path, $KEYS keys, wrk -t1 -c$LT_CONNECTIONS -d$LT_DURATION," \
  "server on CPU $LT_SERVER_CPU, wrk on CPU $LT_CLIENT_CPU ($(nproc) CPUs, $(uname -r))"
echo
echo "| server | req/s | p50 µs | p99 µs | server CPU µs/req | server CPU use | wrk CPU use | non-304 |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
want pollgate && row pollgate
want ceiling && row ceiling

MISSED=0
if [ -z "$LT_ONLY" ]; then
  verdict() { awk -v r="$1" -v t="$2" -v op="$3" 'BEGIN {
    ok = (op == ">=") ? r >= t : r <= t; print ok ? "met" : "MISSED" }'; }
  rps_ratio=$(awk -v a="${R[rps_pollgate]}" -v b="${R[rps_ceiling]}" 'BEGIN { printf "%.3f", a / b }')
  cpu_ratio=$(awk -v a="${R[cpu_pollgate]}" -v b="${R[cpu_ceiling]}" 'BEGIN { printf "%.3f", a / b }')
  v1=$(verdict "$rps_ratio" 0.95 ">=")
  v2=$(verdict "$cpu_ratio" 1.10 "<=")
  echo
  echo "| pollgate / ceiling | ratio | target | |"
  echo "| --- | ---: | ---: | --- |"
  echo "| req/s | $rps_ratio | ≥ 0.95 | $v1 |"
  echo "| CPU µs/req | $cpu_ratio | ≤ 1.10 | $v2 |"
  [ "$v1" = met ] && [ "$v2" = met ] || MISSED=1
fi

for n in pollgate ceiling; do
  want "$n" || continue
  util=${R[util_$n]}
  [ "$util" -lt 90 ] || continue
  echo
  if [ "${R[wrk_$n]}" -ge 90 ]; then
    why="wrk was (it used ${R[wrk_$n]} % of its CPU)"
  else
    why="neither was saturated: other processes are taking the CPUs"
  fi
  echo "note: $n used only $util % of its CPU, so it was not the bottleneck;" \
    "$why. Its req/s is a floor; CPU µs/req is the fairer comparison, though" \
    "it too is inflated by per-request wake-ups at low load."
done

[ "$INVALID" -eq 0 ] || die "invalid run: some responses were not 304 (see above)"
[ "$LT_STRICT" = 1 ] && [ "$MISSED" -eq 1 ] && die "target missed"
exit 0

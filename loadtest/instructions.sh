#!/usr/bin/env bash
# User-space instructions per hit: a number that does not move with the
# neighbours, unlike CPU time on a shared VM. Each server runs under valgrind
# (callgrind) pinned to one CPU; after a warm-up under load its counters are
# zeroed (callgrind_control -z), a bounded wrk run follows, the counters are
# dumped (callgrind_control -d) and the total is divided by wrk's request
# count. Everything the process ran in that window counts: hyper, tokio, the
# route, the table, metrics, timers. System calls are not user space and do
# not count (see `strace -c` for those).
#
# Environment:
#   LT_IR_SERVERS="pollgate naive ceiling"   which servers, in this order;
#                       pollgate-auth is pollgate with auth_jwt_secret set and
#                       every request carrying a token covering its key
#                       (Authorization: Bearer; verified once per connection);
#                       pollgate-bearer is pollgate with auth off receiving
#                       the same header: auth / bearer is verification's cost
#                       alone, without parsing the larger request;
#                       pollgate-base is pollgate run from LT_POLLGATE_BASE_BIN
#                       (e.g. a build from before a change), for a
#                       before/after pair measured in the same run;
#                       pollgate-pgo is the profile-guided build (make
#                       release-pgo, built first unless LT_NO_BUILD=1)
#   LT_IR_DURATION=5s   measured wrk run (under valgrind a server does ~1-3k req/s)
#   LT_IR_WARMUP=2s     wrk run before the counters are zeroed
#   LT_CONNECTIONS=64   wrk connections
#   LT_IR_TOP=12        functions listed per server (self cost per hit)
#   LT_IR_KEEP=         directory to keep the callgrind dumps and full
#                       per-function listings in (callgrind_annotate)
#   LT_POLLGATE_BIN=    measure this pollgate binary instead of the fresh build
#   LT_POLLGATE_BASE_BIN=  binary of the pollgate-base server
#   LT_POLLGATE_PGO_BIN=   binary of the pollgate-pgo server (no PGO build then)
#   LT_NO_BUILD=1       use the binaries already built (no cargo build)
#   LT_IR_CACHE_SIM=1   also simulate the caches and branch predictor
#                       (callgrind --cache-sim=yes --branch-sim=yes) and print
#                       instruction- and data-cache misses and mispredicted
#                       branches per hit:
#                       instructions alike can still cost different time
#   LT_SERVER_CPU=0 LT_CLIENT_CPU=1   pinning, as in run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. loadtest/lib.sh

LT_IR_SERVERS=${LT_IR_SERVERS:-pollgate naive ceiling}
LT_IR_DURATION=${LT_IR_DURATION:-5s}
LT_IR_WARMUP=${LT_IR_WARMUP:-2s}
LT_CONNECTIONS=${LT_CONNECTIONS:-64}
LT_IR_TOP=${LT_IR_TOP:-12}
LT_IR_KEEP=${LT_IR_KEEP:-}
LT_IR_CACHE_SIM=${LT_IR_CACHE_SIM:-}
CACHE_SIM=()
[ "$LT_IR_CACHE_SIM" != 1 ] || CACHE_SIM=(--cache-sim=yes --branch-sim=yes)
LT_SERVER_CPU=${LT_SERVER_CPU:-0}
LT_CLIENT_CPU=${LT_CLIENT_CPU:-$(($(nproc) > 1 ? 1 : 0))}
# valgrind slows start-up (and the 100k-key publish) by ~50x.
export LT_READY_S=${LT_READY_S:-120}
KEYS=100000

need_tools cargo wrk taskset curl python3 awk split valgrind callgrind_control callgrind_annotate

if [ "${LT_NO_BUILD:-}" != 1 ]; then
  echo "building: cargo build --release --bin pollgate --example naive --example ceiling" >&2
  cargo build --release --bin pollgate --example naive --example ceiling
fi
TARGET=$(target_dir)
PG_BIN=${LT_POLLGATE_BIN:-$TARGET/release/pollgate}
[ -z "$LT_IR_KEEP" ] || mkdir -p "$LT_IR_KEEP"
PGO_BIN=
case " $LT_IR_SERVERS " in *" pollgate-pgo "*) PGO_BIN=$(pgo_bin) ;; esac

# exec: `spawn` runs this in a subshell, and its pid must be valgrind's own.
under_callgrind() {
  local name=$1
  shift
  exec taskset -c "$LT_SERVER_CPU" valgrind --tool=callgrind --instr-atstart=no "${CACHE_SIM[@]}" \
    --callgrind-out-file="$LT_TMP/callgrind.$name" "$@"
}

# Starts NAME under callgrind with instrumentation off; sets SPID and URL.
start_server() {
  local name=$1 log="$LT_TMP/$1.log"
  unset LT_AUTHORIZATION
  case "$name" in
    pollgate | pollgate-bearer | pollgate-auth | pollgate-base | pollgate-pgo)
      local port iport dead secret auth=() PG_BIN=$PG_BIN
      if [ "$name" = pollgate-base ]; then
        [ -n "${LT_POLLGATE_BASE_BIN:-}" ] || die "pollgate-base needs LT_POLLGATE_BASE_BIN"
        PG_BIN=$LT_POLLGATE_BASE_BIN
      fi
      [ "$name" != pollgate-pgo ] || PG_BIN=$PGO_BIN
      port=$(free_port)
      iport=$(free_port)
      dead=$(free_port) # nothing listens: a miss would show as a non-304
      secret=loadtest-secret-loadtest-secret-0123
      [ "$name" != pollgate-auth ] || auth=(--auth-jwt-secret "$secret")
      start_pollgate "$log" "$port" "$iport" under_callgrind "$name" -- \
        --upstream "http://127.0.0.1:$dead" --max-age 1h "${auth[@]}"
      echo "publishing $KEYS keys at version 1 (under valgrind: slow)" >&2
      publish_keys "$iport" "p%d" "$KEYS" 20000
      if [ "$name" = pollgate-bearer ] || [ "$name" = pollgate-auth ]; then
        LT_AUTHORIZATION="Bearer $(hs256_token "$secret" '{"keys":["p*"],"exp":'$(($(date +%s) + 3600))'}')"
        export LT_AUTHORIZATION
      fi
      SPID=$PG_PID URL="http://127.0.0.1:$port"
      ;;
    naive | ceiling)
      start_example "$name" "$log" under_callgrind "$name" "$TARGET/release/examples/$name" \
        --listen 127.0.0.1:0
      SPID=$SPAWNED URL="http://$ADDR"
      ;;
    *) die "unknown server '$name' (pollgate, pollgate-base, pollgate-pgo, pollgate-bearer, pollgate-auth, naive or ceiling)" ;;
  esac
}

wrk_run() {
  taskset -c "$LT_CLIENT_CPU" wrk -t1 -c"$LT_CONNECTIONS" "$@" -s loadtest/hit.lua
}

# measure NAME — fills IR[NAME] (instructions per hit) and REQS[NAME].
declare -A IR REQS MISSES
measure() {
  local name=$1 out="$LT_TMP/$1.wrk"
  start_server "$name"
  callgrind_control -i on "$SPID" >/dev/null
  wrk_run -d"$LT_IR_WARMUP" "$URL" >/dev/null
  callgrind_control -z "$SPID" >/dev/null
  wrk_run -d"$LT_IR_DURATION" "$URL" >"$out"
  callgrind_control -d "$SPID" >/dev/null
  kill -0 "$SPID" 2>/dev/null || die "$name died during the run"
  # The dump on request is part 1 (callgrind.NAME.1); the one at exit is not used.
  local dump="$LT_TMP/callgrind.$name.1"
  wait_for "callgrind dump of $name" "$SPID" "$LT_TMP/$name.log" test -s "$dump"
  kill "$SPID"
  wait "$SPID" 2>/dev/null || true

  local reqs non304 total
  reqs=$(sed -n 's/.*hit.lua: requests=\([0-9]*\).*/\1/p' "$out")
  non304=$(sed -n 's/.*non304=\([0-9]*\).*/\1/p' "$out")
  [ -n "$reqs" ] && [ "$reqs" -gt 0 ] || die "no requests completed against $name"
  [ "$non304" -eq 0 ] || die "$name answered $non304 non-304 responses: not the hit path"
  total=$(awk '/^(summary|totals):/ { print $2; exit }' "$dump")
  [ -n "$total" ] || die "no instruction total in $dump"
  IR[$name]=$((total / reqs))
  REQS[$name]=$reqs
  echo "--- $name: $total instructions / $reqs requests = ${IR[$name]} per hit" >&2
  if [ "$LT_IR_CACHE_SIM" = 1 ]; then
    # events: Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw Bc Bcm Bi Bim
    MISSES[$name]=$(awk -v n="$reqs" '/^events:/ { for (i = 2; i <= NF; i++) col[$i] = i }
      /^(summary|totals):/ { printf "%.1f | %.1f | %.1f | %.1f", $(col["I1mr"]) / n, ($(col["D1mr"]) + $(col["D1mw"])) / n,
        ($(col["DLmr"]) + $(col["DLmw"])) / n, ($(col["Bcm"]) + $(col["Bim"])) / n; exit }' "$dump")
  fi
  local listing="$LT_TMP/$name.annotate"
  callgrind_annotate --inclusive=no --threshold=99 "$dump" >"$listing" 2>/dev/null || true
  echo "top functions of $name (self instructions per hit):"
  awk -v n="$reqs" -v top="$LT_IR_TOP" '
    /^-+$/ { sep++; next }
    sep >= 3 && $1 ~ /^[0-9,]+$/ && shown < top {
      ir = $1; gsub(",", "", ir)
      $1 = ""; if ($2 ~ /^\(/) $2 = ""
      sub(/^ +/, ""); sub(/ \[.*$/, "")
      printf "  %7.0f  %s\n", ir / n, substr($0, 1, 110); shown++ }' "$listing"
  if [ -n "$LT_IR_KEEP" ]; then
    cp "$dump" "$LT_IR_KEEP/callgrind.$name"
    cp "$listing" "$LT_IR_KEEP/$name.annotate"
  fi
}

for s in $LT_IR_SERVERS; do
  measure "$s"
done

echo
echo "User-space instructions per hit (callgrind; wrk -t1 -c$LT_CONNECTIONS -d$LT_IR_DURATION" \
  "after $LT_IR_WARMUP warm-up; $KEYS keys, random key per request)"
echo
echo "| server | instructions per hit | requests measured |"
echo "| --- | ---: | ---: |"
for s in $LT_IR_SERVERS; do
  echo "| $s | ${IR[$s]} | ${REQS[$s]} |"
done
if [ "$LT_IR_CACHE_SIM" = 1 ]; then
  echo
  echo "Simulated per hit (callgrind --cache-sim=yes --branch-sim=yes: its own model of this CPU)"
  echo
  echo "| server | L1 instruction misses | L1 data misses | last-level data misses | mispredicted branches |"
  echo "| --- | ---: | ---: | ---: | ---: |"
  for s in $LT_IR_SERVERS; do
    echo "| $s | ${MISSES[$s]} |"
  done
fi
if [ -n "${IR[pollgate-bearer]:-}" ] && [ -n "${IR[pollgate-auth]:-}" ]; then
  echo
  awk -v a="${IR[pollgate-auth]}" -v p="${IR[pollgate-bearer]}" 'BEGIN {
    r = a / p; printf "pollgate-auth / pollgate-bearer (verification alone): %.3f (target <= 1.05: %s)\n", r, r <= 1.05 ? "met" : "MISSED" }'
fi
if [ -n "${IR[pollgate]:-}" ] && [ -n "${IR[pollgate-auth]:-}" ]; then
  echo
  awk -v a="${IR[pollgate-auth]}" -v p="${IR[pollgate]}" 'BEGIN {
    r = a / p; printf "pollgate-auth / pollgate (verification and the larger request): %.3f\n", r }'
fi
if [ -n "${IR[pollgate]:-}" ] && [ -n "${IR[pollgate-base]:-}" ]; then
  echo
  awk -v p="${IR[pollgate]}" -v b="${IR[pollgate-base]}" 'BEGIN {
    printf "pollgate / pollgate-base: %.3f\n", p / b }'
fi
for pg in pollgate pollgate-pgo; do
  if [ -n "${IR[$pg]:-}" ] && [ -n "${IR[naive]:-}" ]; then
    echo
    awk -v pg="$pg" -v p="${IR[$pg]}" -v n="${IR[naive]}" 'BEGIN {
      r = p / n; printf "%s / naive: %.2f (target <= 1.10: %s)\n", pg, r, r <= 1.10 ? "met" : "MISSED" }'
  fi
done

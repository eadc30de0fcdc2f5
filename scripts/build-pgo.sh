#!/usr/bin/env bash
# The profile-guided (PGO) release build of pollgate: `make release-pgo`.
#
# 1. pollgate is built instrumented (rustc -Cprofile-generate);
# 2. that build serves a training workload on loopback, for every path a
#    production sidecar runs: publishes of 100k keys, hits from memory at 64
#    and 256 connections, polls forwarded to an upstream, SSE watchers and
#    the notices of a publish, and the internal endpoints;
# 3. the profile is merged (llvm-profdata) and pollgate is rebuilt with it
#    (rustc -Cprofile-use).
#
# LLVM then lays out and inlines the hit path by how it really runs. On this
# project's 2-core VM, the PGO build runs ~27 % fewer instructions per hit
# than the plain release build and spends 8–12 % less CPU per hit (README,
# "Performance"). Paths outside the training are not broken, only compiled
# as rarely run.
#
# Output: $TARGET/pgo/release/pollgate, and the profile it was built with,
# $TARGET/pgo/pollgate-<hash>.profdata (the hash in the name makes cargo
# rebuild everything when the profile changes: it does not look inside the
# file). Takes two release builds (~13 min on 2 cores) and ~1 min of training.
#
# Needs: rustup's llvm-tools component (llvm-profdata of rustc's own LLVM
# version; added here through rustup), wrk, taskset and curl (Debian
# packages, installed here when missing, as loadtest/peers.sh does).
#
# Environment:
#   PGO_PHASE=6s       length of each wrk training phase
#   PGO_WATCHERS=2000  SSE watchers in the push phase
#   LT_NO_INSTALL=1    fail instead of installing missing packages
set -euo pipefail
cd "$(dirname "$0")/.."
. loadtest/lib.sh

PGO_PHASE=${PGO_PHASE:-6s}
PGO_WATCHERS=${PGO_WATCHERS:-2000}
KEYS=100000

install_tools wrk:wrk taskset:util-linux curl:curl python3:python3
need_tools cargo rustc wrk taskset curl python3

# llvm-profdata must match rustc's LLVM: rustup ships that one as llvm-tools.
profdata() {
  local sysroot host
  sysroot=$(rustc --print sysroot)
  host=$(rustc -vV | sed -n 's/^host: //p')
  echo "$sysroot/lib/rustlib/$host/bin/llvm-profdata"
}
PROFDATA=$(profdata)
if [ ! -x "$PROFDATA" ]; then
  command -v rustup >/dev/null 2>&1 ||
    die "llvm-profdata of rustc's LLVM not found: install rustup's llvm-tools component (rustup component add llvm-tools)"
  echo "adding rustup's llvm-tools component (llvm-profdata)" >&2
  rustup component add llvm-tools >&2
  PROFDATA=$(profdata)
  [ -x "$PROFDATA" ] || die "rustup added llvm-tools but $PROFDATA is missing"
fi

TARGET=$(target_dir)
OUT=$TARGET/pgo
mkdir -p "$OUT"
# Whatever RUSTFLAGS the caller set are kept; the profile flags are added.
BASE_FLAGS=${RUSTFLAGS:-}

echo "building the training helpers (plain release): naive upstream, push load generator" >&2
cargo build --release --example naive --example push_load
echo "building pollgate instrumented (-Cprofile-generate) into $TARGET/pgo-gen" >&2
# Build scripts and proc macros are instrumented too and write profiles
# while cargo runs them: those go to their own directory, never merged.
RUSTFLAGS="$BASE_FLAGS -Cprofile-generate=$LT_TMP/build-profiles" \
  cargo build --release --bin pollgate --target-dir "$TARGET/pgo-gen"

RAW=$LT_TMP/raw
mkdir -p "$RAW"
PG_BIN=$TARGET/pgo-gen/release/pollgate

# The upstream for forwarded polls: the naive peer answers them with 200.
start_example naive "$LT_TMP/naive.log" "$TARGET/release/examples/naive" --keys "$KEYS"
upstream=$ADDR
port=$(free_port)
iport=$(free_port)
start_pollgate "$LT_TMP/pollgate.log" "$port" "$iport" env LLVM_PROFILE_FILE="$RAW/pollgate-%p-%m.profraw" -- \
  --upstream "http://$upstream" --max-age 1h --push-max-connections 100000 \
  --push-admission-per-s 1000000 --push-admission-burst 1000000
pg=$PG_PID
public="http://127.0.0.1:$port"

echo "training: publish $KEYS keys" >&2
publish_keys "$iport" "p%d" "$KEYS" 20000

# wrk_phase NAME EXPECT_STATUS SINCE CONNS — one wrk run of loadtest/hit.lua;
# fails when most answers are not EXPECT_STATUS (the phase trained the wrong path).
wrk_phase() {
  local name=$1 expect=$2 since=$3 conns=$4 out="$LT_TMP/wrk.out" reqs bad
  LT_EXPECT_STATUS=$expect LT_SINCE=$since wrk -t1 -c"$conns" -d"$PGO_PHASE" -s loadtest/hit.lua "$public" >"$out"
  reqs=$(sed -n 's/.*hit.lua: requests=\([0-9]*\).*/\1/p' "$out")
  bad=$(sed -n 's/.*non304=\([0-9]*\).*/\1/p' "$out")
  echo "training: $name, $conns connections: $reqs requests, $bad not $expect" >&2
  [ -n "$reqs" ] && [ "$reqs" -gt 0 ] && [ "$((bad * 2))" -lt "$reqs" ] ||
    die "training phase '$name' did not train its path (wrk output: $out)"
}
wrk_phase hits 304 1 64
wrk_phase hits 304 1 256
wrk_phase forwards 200 0 64

echo "training: $PGO_WATCHERS SSE watchers and 5 publishes" >&2
"$TARGET/release/examples/push_load" --scenario watch --conns "$PGO_WATCHERS" --publishes 5 \
  --pid "$pg" --public "127.0.0.1:$port" --internal "127.0.0.1:$iport" --token lt \
  --deadline 60s >"$LT_TMP/push.out" 2>&1 ||
  { cat "$LT_TMP/push.out" >&2; die "push training failed"; }
for path in / /metrics /healthz /readyz /v1/config; do
  curl -s -o /dev/null "http://127.0.0.1:$iport$path"
done

# The profile is written when pollgate exits: a graceful stop, not a kill.
kill -TERM "$pg"
wait "$pg" 2>/dev/null || true
shopt -s nullglob
raws=("$RAW"/*.profraw)
[ ${#raws[@]} -gt 0 ] || die "the instrumented pollgate wrote no profile (log: $LT_TMP/pollgate.log)"
"$PROFDATA" merge -o "$LT_TMP/merged.profdata" "${raws[@]}"
hash=$(sha256sum "$LT_TMP/merged.profdata" | cut -c1-12)
profile=$OUT/pollgate-$hash.profdata
rm -f "$OUT"/pollgate-*.profdata
mv "$LT_TMP/merged.profdata" "$profile"

echo "building pollgate with the profile (-Cprofile-use=$profile) into $OUT" >&2
RUSTFLAGS="$BASE_FLAGS -Cprofile-use=$profile" \
  cargo build --release --bin pollgate --target-dir "$OUT"
echo "PGO build: $OUT/release/pollgate" >&2

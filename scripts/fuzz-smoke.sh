#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ briefly over its committed corpus: a check
# that the targets build and that no committed input (nor what a short run
# finds from it) crashes. Not part of `make test` (see README, "Fuzzing").
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`, ~30 min of compiling) and a
# rustc that accepts -Z flags: on stable, RUSTC_BOOTSTRAP=1 (set here).
#
# Environment:
#   FUZZ_SECONDS=30    run time per target
#   FUZZ_TARGETS=      only these targets (space-separated); default: all
#   FUZZ_SANITIZER=    e.g. `none` if this toolchain lacks the ASan runtime
#
# New inputs a run finds go to a temporary directory, so the committed corpus
# only changes on purpose (`cargo fuzz cmin <t> -- -use_counters=0`, see
# README). A crash leaves its input in fuzz/artifacts/<target>/ and fails.
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZ_SECONDS=${FUZZ_SECONDS:-30}
command -v cargo-fuzz >/dev/null 2>&1 ||
  { echo "error: needs cargo-fuzz: cargo install cargo-fuzz" >&2; exit 1; }
export RUSTC_BOOTSTRAP=1
san=()
[ -n "${FUZZ_SANITIZER:-}" ] && san=(--sanitizer "$FUZZ_SANITIZER")
targets=${FUZZ_TARGETS:-$(cargo fuzz list)}

cargo fuzz build "${san[@]}"
scratch=$(mktemp -d "${TMPDIR:-/tmp}/pollgate-fuzz.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
for t in $targets; do
  mkdir -p "$scratch/$t"
  echo "==> $t: ${FUZZ_SECONDS}s over fuzz/corpus/$t" >&2
  # One process (one core): the first directory takes new inputs, the
  # committed corpus is read only.
  cargo fuzz run "${san[@]}" "$t" "$scratch/$t" "fuzz/corpus/$t" -- \
    -max_total_time="$FUZZ_SECONDS" -print_final_stats=1 2>"$scratch/$t.log" ||
    { tail -n 40 "$scratch/$t.log" >&2; echo "FAIL: $t crashed" >&2; exit 1; }
  grep -E '^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)|cov: ' "$scratch/$t.log" |
    tail -n 4 >&2
done
echo "fuzz-smoke: every target ran ${FUZZ_SECONDS}s without a crash" >&2

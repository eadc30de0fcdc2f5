# shellcheck shell=bash
# Shared helpers for loadtest/run.sh and loadtest/mem.sh. Source it; it
# expects `set -euo pipefail` and sets up a temp dir and an exit trap that
# kills every process started through `spawn`.

LT_TMP=$(mktemp -d "${TMPDIR:-/tmp}/pollgate-lt.XXXXXX")
LT_PIDS=()

lt_cleanup() {
  local pid
  for pid in "${LT_PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${LT_PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$LT_TMP"
}
trap lt_cleanup EXIT
trap 'exit 130' INT TERM

die() {
  echo "error: $*" >&2
  exit 1
}

# need_tools TOOL... — fail with an install hint naming every missing tool.
need_tools() {
  local missing=() t
  for t in "$@"; do
    command -v "$t" >/dev/null 2>&1 || missing+=("$t")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "error: missing tools: ${missing[*]}" >&2
  echo "install them with: apt-get install wrk util-linux curl python3" >&2
  echo "(wrk: the load generator; util-linux: taskset, to pin processes to CPUs)" >&2
  exit 1
}

# install_tools TOOL:PACKAGE... — apt-get install the Debian package of each
# missing tool (LT_NO_INSTALL=1: fail naming the packages instead).
install_tools() {
  local missing=() t
  for t in "$@"; do
    command -v "${t%%:*}" >/dev/null 2>&1 || missing+=("${t#*:}")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  [ "${LT_NO_INSTALL:-}" != 1 ] || die "missing packages: ${missing[*]}"
  echo "installing: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 ||
    { apt-get update -q >&2 && apt-get install -y -q --no-install-recommends "${missing[@]}" >&2; }
}

# free_port — a port the kernel just handed out; racy in theory, fine on loopback.
free_port() {
  python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'
}

# target_dir — where cargo puts binaries (honours CARGO_TARGET_DIR and config).
target_dir() {
  cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json,sys;print(json.load(sys.stdin)["target_directory"])'
}

# spawn LOG CMD... — start CMD in the background, remember its pid in SPAWNED.
# taskset execs its command, so the pid is the server's own (for /proc).
spawn() {
  local log=$1
  shift
  "$@" >"$log" 2>&1 &
  SPAWNED=$!
  LT_PIDS+=("$SPAWNED")
}

# wait_for DESC PID LOG CMD... — retry CMD for up to LT_READY_S (20) s; fail
# early, with the server's log, if the server exits. A deadline, never a fixed sleep.
wait_for() {
  local desc=$1 pid=$2 log=$3
  shift 3
  local limit=${LT_READY_S:-20}
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "--- $log" >&2
      tail -n 30 "$log" >&2 || true
      die "$desc exited during start-up"
    fi
    [ $SECONDS -lt $deadline ] || die "$desc not ready after $limit s (log: $log)"
    sleep 0.1
  done
}

# start_pollgate LOG PUBLIC_PORT INTERNAL_PORT [taskset args...] [-- extra flags]
# Sets PG_PID. Waits until /healthz answers.
start_pollgate() {
  local log=$1 port=$2 iport=$3
  shift 3
  local pin=()
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do
    pin+=("$1")
    shift
  done
  [ $# -gt 0 ] && shift
  spawn "$log" "${pin[@]}" "$PG_BIN" \
    --listen "127.0.0.1:$port" --internal-listen "127.0.0.1:$iport" \
    --publish-token lt "$@"
  PG_PID=$SPAWNED
  wait_for pollgate "$PG_PID" "$log" curl -sf "http://127.0.0.1:$iport/healthz"
}

# publish_keys INTERNAL_PORT FORMAT COUNT BATCH — publish COUNT keys at
# version 1 (key i = printf FORMAT i), BATCH lines per POST so each body
# stays well under pollgate's 1 MiB publish limit. Checks `accepted`.
publish_keys() {
  local iport=$1 fmt=$2 count=$3 batch=$4
  rm -f "$LT_TMP"/batch.*
  awk -v n="$count" -v f="$fmt" 'BEGIN { for (i = 0; i < n; i++) printf f " 1\n", i }' |
    split -l "$batch" - "$LT_TMP/batch."
  local f answer accepted total=0
  for f in "$LT_TMP"/batch.*; do
    [ "$(stat -c %s "$f")" -lt 1048576 ] || die "publish batch $f is over 1 MiB"
    answer=$(curl -sS -f -X POST --data-binary "@$f" \
      -H 'Content-Type: text/plain' -H 'Authorization: Bearer lt' \
      "http://127.0.0.1:$iport/v1/versions") || die "publish failed"
    accepted=$(printf '%s' "$answer" | sed -n 's/.*"accepted": *\([0-9]*\).*/\1/p')
    [ -n "$accepted" ] || die "unexpected publish answer: $answer"
    total=$((total + accepted))
  done
  [ "$total" -eq "$count" ] || die "published $count keys but pollgate accepted $total"
}

# pgo_bin — the profile-guided build of pollgate (LT_POLLGATE_PGO_BIN, else
# scripts/build-pgo.sh's output), built first unless LT_NO_BUILD=1.
pgo_bin() {
  local bin=${LT_POLLGATE_PGO_BIN:-$(target_dir)/pgo/release/pollgate}
  if [ -z "${LT_POLLGATE_PGO_BIN:-}" ] && [ "${LT_NO_BUILD:-}" != 1 ]; then
    ./scripts/build-pgo.sh >&2
  fi
  [ -x "$bin" ] || die "no PGO build at $bin: run make release-pgo (or set LT_POLLGATE_PGO_BIN)"
  echo "$bin"
}

# cpu_ticks PID — utime + stime (fields 14 and 15 of /proc/PID/stat) in
# clock ticks, for all threads. Fields are counted after the ")" closing the
# command name, which may itself contain spaces.
cpu_ticks() {
  sed 's/.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'
}

# rss_bytes PID — resident set size from /proc/PID/status.
rss_bytes() {
  awk '/^VmRSS:/ { print $2 * 1024 }' "/proc/$1/status"
}

# start_example NAME LOG CMD... — start a server that prints "listening on
# ADDR" as its first line (ceiling, naive); sets SPAWNED and ADDR.
start_example() {
  local name=$1 log=$2
  shift 2
  spawn "$log" "$@"
  wait_for "$name" "$SPAWNED" "$log" grep -q '^listening on ' "$log"
  ADDR=$(sed -n 's/^listening on //p' "$log" | head -n1)
}

# tree_pids PID — PID and all its descendants (nginx workers, varnish's child).
tree_pids() {
  local p
  echo "$1"
  for p in $(cat "/proc/$1/task/"*/children 2>/dev/null); do
    tree_pids "$p"
  done
}

# tree_ticks PID — cpu_ticks summed over PID and its descendants.
tree_ticks() {
  local p sum=0
  for p in $(tree_pids "$1"); do
    sum=$((sum + $(cpu_ticks "$p" 2>/dev/null || echo 0)))
  done
  echo "$sum"
}

# hs256_token SECRET CLAIMS_JSON — a JWT signed with SECRET (HS256), as an
# app would issue one; for load tests of the authorized hit path.
hs256_token() {
  python3 - "$1" "$2" <<'PY'
import base64, hashlib, hmac, sys
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
head = b64(b'{"alg":"HS256","typ":"JWT"}') + "." + b64(sys.argv[2].encode())
sig = hmac.new(sys.argv[1].encode(), head.encode(), hashlib.sha256).digest()
print(head + "." + b64(sig))
PY
}

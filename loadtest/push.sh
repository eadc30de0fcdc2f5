#!/usr/bin/env bash
# Push load scenarios (not in CI). Usage:
#   loadtest/push.sh watch N      # N idle SSE watchers of one key: RSS/watcher, then fan-out latency
#   loadtest/push.sh storm N      # N watchers drop and reconnect within 1 s, wrk on the hit path meanwhile
# Extra pollgate flags can be passed in PG_FLAGS. PG_BIN=path runs that pollgate
# binary (e.g. a saved build, for before/after) and LT_NO_BUILD=1 skips the
# cargo build (the push_load example must then be built). Everything runs on
# loopback and stops by itself.
set -euo pipefail
scenario=${1:-watch}
conns=${2:-10000}
cd "$(dirname "$0")/.."

# Each watcher is one fd on each side; raise the soft limit as far as allowed.
ulimit -n "$(ulimit -Hn)"
echo "ulimit -n: $(ulimit -n)"

if [ "${LT_NO_BUILD:-}" != 1 ]; then
  cargo build --release --bin pollgate --example push_load
fi
target=${CARGO_TARGET_DIR:-target}/release
pg_bin=${PG_BIN:-$target/pollgate}
pub=127.0.0.1:18080
int=127.0.0.1:18081

case "$scenario" in
  # Admission is not what these measure: let the ramp through.
  watch) adm=(--push-admission-per-s 1000000 --push-admission-burst 1000000) ;;
  # The storm runs with the default admission rate (2000/s, burst 2000).
  storm) adm=() ;;
  *) echo "unknown scenario $scenario" >&2; exit 64 ;;
esac

# Nothing listens on the upstream port: any upstream request would show as an error.
"$pg_bin" --listen $pub --internal-listen $int --upstream http://127.0.0.1:9 \
  --publish-token load-token --push-max-connections 1000000 "${adm[@]}" ${PG_FLAGS:-} \
  2>/tmp/pollgate-load.log &
pg=$!
# Wait for pollgate to exit so its fixed ports are free for the next run.
trap 'kill $pg 2>/dev/null; wait $pg 2>/dev/null || true' EXIT
for _ in $(seq 100); do grep -q "pollgate listening" /tmp/pollgate-load.log && break; sleep 0.1; done
kill -0 $pg 2>/dev/null || { cat /tmp/pollgate-load.log >&2; echo "pollgate did not start" >&2; exit 1; }

extra=()
if [ "$scenario" = storm ]; then
  # A fresh key answered from memory: the hit path wrk measures during the storm.
  curl -s -H "Authorization: Bearer load-token" --data-binary $'p 1\n' http://$int/v1/versions >/dev/null
  extra=(--wrk-url "${WRK_URL:-http://$pub/projects/p/changes?since=1}")
fi

nice -n "${LOADGEN_NICE:-10}" "$target/examples/push_load" --scenario "$scenario" --conns "$conns" --pid $pg \
  --public $pub --internal $int --token load-token "${extra[@]}"

echo "--- pollgate metrics:"
curl -s http://$int/metrics | grep -E "^pollgate_(push_|upstream_requests_total)"

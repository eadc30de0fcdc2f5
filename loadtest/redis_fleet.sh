#!/usr/bin/env bash
# A fleet on loopback: 1 redis-server and 1 then 6 pollgates reading one
# stream while an app-like writer XADDs changes at 1k and 5k/s (5 s each,
# every 50th change sampled on every pollgate). Reports Redis CPU per 1k
# changes/s and each pollgate's publish→visible lag, with and without poll
# load on the pollgates: Redis's cost follows changes and readers, never
# the clients polling the pollgates. Bounded: 4 runs of 5 s.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v redis-server >/dev/null || { echo "needs redis-server (apt-get install redis-server)" >&2; exit 1; }
cargo build --release --bin pollgate --example redis_load
exec "${CARGO_TARGET_DIR:-target}/release/examples/redis_load" fleet

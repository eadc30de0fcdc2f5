#!/usr/bin/env bash
# Memory per key: RSS of an idle pollgate, then after publishing
# LT_MEM_KEYS keys (default 1M, `k0000000`…) at version 1; prints ΔRSS / keys.
# RSS includes allocator slack and the table's spare capacity: this is what
# an operator pays per key, not the size of one entry struct.
# LT_POLLGATE_BIN= runs that pollgate binary instead of the fresh build;
# LT_NO_BUILD=1 skips the cargo build.
set -euo pipefail
cd "$(dirname "$0")/.."
. loadtest/lib.sh

KEYS=${LT_MEM_KEYS:-1000000}
need_tools cargo curl python3 awk split

if [ "${LT_NO_BUILD:-}" != 1 ]; then
  echo "building: cargo build --release --bin pollgate" >&2
  cargo build --release --bin pollgate
fi
PG_BIN=${LT_POLLGATE_BIN:-$(target_dir)/release/pollgate}

port=$(free_port)
iport=$(free_port)
start_pollgate "$LT_TMP/pollgate.log" "$port" "$iport"
before=$(rss_bytes "$PG_PID")
echo "publishing $KEYS keys at version 1" >&2
# 50k lines of "k0000000 1\n" are 550 KB: under the 1 MiB publish limit.
publish_keys "$iport" "k%07d" "$KEYS" 50000
kill -0 "$PG_PID" 2>/dev/null || die "pollgate died while keys were published"
after=$(rss_bytes "$PG_PID")

echo
echo "| keys | RSS before | RSS after | Δ RSS | bytes per key |"
echo "| ---: | ---: | ---: | ---: | ---: |"
awk -v k="$KEYS" -v a="$before" -v b="$after" 'BEGIN {
  printf "| %d | %.1f MiB | %.1f MiB | %.1f MiB | %.0f |\n",
    k, a / 1048576, b / 1048576, (b - a) / 1048576, (b - a) / k }'

#!/usr/bin/env bash
# pollgate against its peers on one workload, in one run: 100k keys at
# version 1, every request polls a random key claiming version 1 (a hit).
# Every server runs pinned to LT_SERVER_CPU (all its processes: nginx's
# worker, memcached, Varnish's child), wrk -t1 to LT_CLIENT_CPU.
#
#   ceiling          constant 304, no lookup (loadtest/ceiling.rs)
#   naive            hyper + path parse + DashMap<u64,u64> (loadtest/naive.rs)
#   nginx            nginx `return 304` (no lookup either)
#   nginx-memcached  nginx `memcached_pass`, the version as the value: a hit
#                    is a 200 whose body is the version (the client compares)
#   varnish          Varnish answering 304 from cache (If-None-Match set from
#                    `since` in VCL; the cache is filled before measuring)
#   pollgate         the release build
#   pollgate-pgo     the profile-guided release build (make release-pgo,
#                    built first unless LT_NO_BUILD=1; LT_POLLGATE_PGO_BIN)
#   pollgate-base    a second pollgate binary (LT_POLLGATE_BASE_BIN), e.g. the
#                    build before a change: before/after in the same rounds
#
# All servers are started and checked first (each must answer the workload
# correctly), then measured interleaved: for each connection count, LT_ROUNDS
# rounds of (ceiling, naive, …, pollgate), so a burst of load from the
# neighbours hits one round rather than one server. Ratios to the ceiling are
# taken within a round; the tables give the median and the min–max over rounds.
#
# Environment:
#   LT_DURATION=5s LT_WARMUP=1s LT_ROUNDS=3 LT_CONNS="64 256"
#   LT_PEERS="ceiling naive nginx nginx-memcached varnish pollgate pollgate-pgo"
#   LT_SERVER_CPU=0 LT_CLIENT_CPU=1  LT_POLLGATE_BIN=  (as run.sh)
#   LT_POLLGATE_BASE_BIN=  binary of the pollgate-base peer
#   LT_POLLGATE_PGO_BIN=   binary of the pollgate-pgo peer (no PGO build then)
#   LT_NO_BUILD=1     use the binaries already built (no cargo build)
#   LT_NO_INSTALL=1   do not apt-get install missing tools, fail instead
set -euo pipefail
cd "$(dirname "$0")/.."
. loadtest/lib.sh

LT_DURATION=${LT_DURATION:-5s}
LT_WARMUP=${LT_WARMUP:-1s}
LT_ROUNDS=${LT_ROUNDS:-3}
LT_CONNS=${LT_CONNS:-64 256}
LT_PEERS=${LT_PEERS:-ceiling naive nginx nginx-memcached varnish pollgate pollgate-pgo}
LT_SERVER_CPU=${LT_SERVER_CPU:-0}
LT_CLIENT_CPU=${LT_CLIENT_CPU:-$(($(nproc) > 1 ? 1 : 0))}
KEYS=100000

install_tools wrk:wrk nginx:nginx memcached:memcached varnishd:varnish varnishstat:varnish \
  taskset:util-linux curl:curl python3:python3
need_tools cargo wrk taskset curl python3 nginx memcached varnishd varnishstat

if [ "${LT_NO_BUILD:-}" != 1 ]; then
  echo "building: cargo build --release --bin pollgate --example naive --example ceiling" >&2
  cargo build --release --bin pollgate --example naive --example ceiling
fi
TARGET=$(target_dir)
PG_BIN=${LT_POLLGATE_BIN:-$TARGET/release/pollgate}
CLK_TCK=$(getconf CLK_TCK)
# A command prefix, not a function: `spawn` backgrounds its command, and a
# backgrounded function is a subshell whose pid is not the server's, so the
# exit trap's kill would leave the server running.
PIN=(taskset -c "$LT_SERVER_CPU")

declare -A URL PIDS EXPECT # per peer: base URL, root pids whose trees are its CPU, status of a hit

# check PEER STATUS [BODY] — one hit by curl must answer STATUS (and BODY).
check() {
  local peer=$1 want=$2 body=${3:-} got
  got=$(curl -sS -o "$LT_TMP/check.body" -w '%{http_code}' "${URL[$peer]}/projects/p42/changes?since=1")
  [ "$got" = "$want" ] || die "$peer answered $got to a hit, want $want"
  if [ -n "$body" ] && [ "$(cat "$LT_TMP/check.body")" != "$body" ]; then
    die "$peer answered body '$(head -c 80 "$LT_TMP/check.body")', want '$body'"
  fi
  EXPECT[$peer]=$want
  echo "checked $peer: a hit answers $want${body:+ with body '$body'}" >&2
}

start_ceiling() {
  start_example ceiling "$LT_TMP/ceiling.log" "${PIN[@]}" "$TARGET/release/examples/ceiling" --listen 127.0.0.1:0
  URL[ceiling]="http://$ADDR" PIDS[ceiling]=$SPAWNED
  check ceiling 304
}

start_naive() {
  start_example naive "$LT_TMP/naive.log" "${PIN[@]}" "$TARGET/release/examples/naive" \
    --listen 127.0.0.1:0 --keys "$KEYS"
  URL[naive]="http://$ADDR" PIDS[naive]=$SPAWNED
  check naive 304
  local stale
  stale=$(curl -sS -o /dev/null -w '%{http_code}' "${URL[naive]}/projects/p42/changes?since=0")
  [ "$stale" = 200 ] || die "naive answered $stale to a stale poll, want 200"
}

# nginx_conf DIR PORT LOCATION_BODY [HTTP_EXTRA] — a one-worker nginx config.
nginx_conf() {
  local dir=$1 port=$2 location=$3 extra=${4:-}
  mkdir -p "$dir"
  cat >"$dir/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $dir/body;
  proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fastcgi;
  uwsgi_temp_path $dir/uwsgi;
  scgi_temp_path $dir/scgi;
  $extra
  server {
    listen 127.0.0.1:$port;
    $location
  }
}
EOF
}

start_nginx_with() {
  local peer=$1 dir="$LT_TMP/$1" port=$2
  spawn "$dir.log" "${PIN[@]}" nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log"
  PIDS[$peer]=$SPAWNED URL[$peer]="http://127.0.0.1:$port"
  wait_for "$peer" "$SPAWNED" "$dir.log" curl -s -o /dev/null "${URL[$peer]}/"
}

start_nginx() {
  local port
  port=$(free_port)
  nginx_conf "$LT_TMP/nginx" "$port" 'location / {
      add_header ETag "\"1\"";
      add_header X-Pollgate hit;
      add_header X-Poll-Interval 5;
      return 304;
    }'
  start_nginx_with nginx "$port"
  check nginx 304
}

start_nginx_memcached() {
  local mport port mpid
  mport=$(free_port)
  spawn "$LT_TMP/memcached.log" "${PIN[@]}" memcached -u nobody -l 127.0.0.1 -p "$mport" -U 0 -t 1 -m 128
  mpid=$SPAWNED
  wait_for memcached "$mpid" "$LT_TMP/memcached.log" python3 -c \
    "import socket; socket.create_connection(('127.0.0.1', $mport), 1)"
  echo "storing $KEYS keys in memcached" >&2
  python3 - "$mport" "$KEYS" <<'EOF'
import socket, sys
port, keys = int(sys.argv[1]), int(sys.argv[2])
s = socket.create_connection(("127.0.0.1", port))
for start in range(0, keys, 5000):
    s.sendall(b"".join(b"set p%d 0 0 1 noreply\r\n1\r\n" % i for i in range(start, min(keys, start + 5000))))
s.sendall(b"get p42\r\n")
got = b""
while not got.endswith(b"END\r\n"):
    got += s.recv(4096)
assert got == b"VALUE p42 0 1\r\n1\r\nEND\r\n", got
EOF
  port=$(free_port)
  nginx_conf "$LT_TMP/nginx-memcached" "$port" 'location ~ ^/projects/(?<key>[^/]+)/changes$ {
      set $memcached_key $key;
      memcached_pass memcached;
      add_header X-Pollgate hit;
      add_header X-Poll-Interval 5;
    }' "upstream memcached { server 127.0.0.1:$mport; keepalive 64; }"
  start_nginx_with nginx-memcached "$port"
  PIDS[nginx-memcached]+=" $mpid"
  check nginx-memcached 200 1
}

start_varnish() {
  local port dir="$LT_TMP/varnish" backend=${URL[naive]:-}
  [ -n "$backend" ] || die "varnish needs the naive peer as its backend (keep naive in LT_PEERS)"
  backend=${backend#http://}
  port=$(free_port)
  mkdir -p "$dir"
  cat >"$dir/pollgate.vcl" <<EOF
vcl 4.1;
backend naive { .host = "${backend%:*}"; .port = "${backend##*:}"; }
sub vcl_recv {
  if (req.url !~ "^/projects/[^/?]+/changes") { return (synth(404)); }
  # Varnish answers 304 when If-None-Match equals the cached ETag ("<version>").
  set req.http.If-None-Match = {"""} + regsub(req.url, "^.*[?&]since=([0-9]+).*$", "\1") + {"""};
  return (hash);
}
sub vcl_hash { hash_data(regsub(req.url, "\?.*$", "")); return (lookup); }
sub vcl_backend_fetch { set bereq.url = regsub(bereq.url, "\?.*$", ""); }
sub vcl_backend_response { set beresp.ttl = 1h; set beresp.grace = 0s; }
sub vcl_deliver {
  set resp.http.X-Pollgate = "hit";
  set resp.http.X-Poll-Interval = "5";
  unset resp.http.Via; unset resp.http.X-Varnish; unset resp.http.Age;
}
EOF
  spawn "$dir.log" "${PIN[@]}" varnishd -F -j none -n "$dir/work" -a "127.0.0.1:$port" \
    -f "$dir/pollgate.vcl" -s malloc,1g -p thread_pools=1
  PIDS[varnish]=$SPAWNED URL[varnish]="http://127.0.0.1:$port"
  wait_for varnish "$SPAWNED" "$dir.log" curl -sf -o /dev/null "${URL[varnish]}/projects/p0/changes"
  local attempt
  for attempt in 1 2 3; do
    echo "filling Varnish's cache with $KEYS keys (attempt $attempt)" >&2
    taskset -c "$LT_CLIENT_CPU" wrk -t1 -c16 -d60s -s loadtest/prefill.lua "${URL[varnish]}" -- "$KEYS" |
      grep "^prefill.lua:" >&2
    # Varnish publishes its counters with a delay: give them up to 5 s.
    local deadline=$((SECONDS + 5))
    until varnish_holds "$KEYS" || [ $SECONDS -ge $deadline ]; do sleep 0.2; done
    varnish_holds "$KEYS" && break
  done
  varnish_holds "$KEYS" || die "varnish holds $(varnish_stat MAIN.n_object) objects, want $KEYS"
  check varnish 304
}

varnish_holds() {
  [ "$(varnish_stat MAIN.n_object)" -ge "$1" ]
}

varnish_stat() {
  varnishstat -n "$LT_TMP/varnish/work" -1 -f "$1" | awk '{ print $2 }'
}

# start_pollgate_peer PEER BINARY
start_pollgate_peer() {
  local peer=$1 port iport dead
  port=$(free_port)
  iport=$(free_port)
  dead=$(free_port) # nothing listens: a poll that misses fails loudly
  PG_BIN=$2 start_pollgate "$LT_TMP/$peer.log" "$port" "$iport" "${PIN[@]}" -- \
    --upstream "http://127.0.0.1:$dead" --max-age 1h
  echo "publishing $KEYS keys at version 1 to $peer" >&2
  publish_keys "$iport" "p%d" "$KEYS" 20000
  PIDS[$peer]=$PG_PID URL[$peer]="http://127.0.0.1:$port"
  check "$peer" 304
}

for peer in $LT_PEERS; do
  case "$peer" in
    ceiling) start_ceiling ;;
    naive) start_naive ;;
    nginx) start_nginx ;;
    nginx-memcached) start_nginx_memcached ;;
    varnish) start_varnish ;;
    pollgate) start_pollgate_peer pollgate "$PG_BIN" ;;
    pollgate-pgo) start_pollgate_peer pollgate-pgo "$(pgo_bin)" ;;
    pollgate-base)
      [ -n "${LT_POLLGATE_BASE_BIN:-}" ] || die "pollgate-base needs LT_POLLGATE_BASE_BIN"
      start_pollgate_peer pollgate-base "$LT_POLLGATE_BASE_BIN"
      ;;
    *) die "unknown peer '$peer'" ;;
  esac
done

ticks_of() {
  local p sum=0
  for p in ${PIDS[$1]}; do
    sum=$((sum + $(tree_ticks "$p")))
  done
  echo "$sum"
}

to_us() {
  awk -v v="$1" 'BEGIN {
    n = v + 0
    if (v ~ /us$/) print n; else if (v ~ /ms$/) print n * 1000;
    else if (v ~ /s$/) print n * 1e6; else print -1 }'
}

# measure PEER CONNS ROUND — one wrk run; appends a line to $LT_TMP/results:
# peer conns round req/s p50_us p99_us cpu_us_per_req
measure() {
  local peer=$1 conns=$2 round=$3 out="$LT_TMP/wrk.out"
  local run=(taskset -c "$LT_CLIENT_CPU" env LT_EXPECT_STATUS="${EXPECT[$peer]}"
    wrk -t1 -c"$conns" -s loadtest/hit.lua)
  "${run[@]}" -d"$LT_WARMUP" "${URL[$peer]}" >/dev/null
  local t0 t1 misses0=0 misses1=0
  [ "$peer" != varnish ] || misses0=$(varnish_stat MAIN.cache_miss)
  t0=$(ticks_of "$peer")
  "${run[@]}" -d"$LT_DURATION" --latency "${URL[$peer]}" >"$out"
  t1=$(ticks_of "$peer")
  [ "$peer" != varnish ] || misses1=$(varnish_stat MAIN.cache_miss)
  local p
  for p in ${PIDS[$peer]}; do
    kill -0 "$p" 2>/dev/null || die "$peer died during the run"
  done
  local reqs rps p50 p99 bad
  reqs=$(sed -n 's/.*hit.lua: requests=\([0-9]*\).*/\1/p' "$out")
  bad=$(sed -n 's/.*non304=\([0-9]*\).*/\1/p' "$out")
  rps=$(awk '/^Requests\/sec:/ { print $2 }' "$out")
  p50=$(to_us "$(awk '$1 == "50%" { print $2 }' "$out")")
  p99=$(to_us "$(awk '$1 == "99%" { print $2 }' "$out")")
  [ -n "$reqs" ] && [ "$reqs" -gt 0 ] || die "no requests completed against $peer"
  [ "$bad" -eq 0 ] || die "$peer: $bad answers were not ${EXPECT[$peer]}"
  [ "$misses1" -eq "$misses0" ] || die "varnish missed its cache $((misses1 - misses0)) times"
  local cpu
  cpu=$(awk -v t="$((t1 - t0))" -v hz="$CLK_TCK" -v n="$reqs" 'BEGIN { printf "%.2f", t / hz * 1e6 / n }')
  echo "$peer $conns $round $rps $p50 $p99 $cpu" >>"$LT_TMP/results"
  echo "c$conns round $round $peer: $rps req/s, p99 $p99 µs, $cpu µs CPU/req" >&2
}

: >"$LT_TMP/results"
for conns in $LT_CONNS; do
  for round in $(seq "$LT_ROUNDS"); do
    for peer in $LT_PEERS; do
      measure "$peer" "$conns" "$round"
    done
  done
done

echo
echo "Load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "$KEYS keys, random key per request, all hits; wrk -t1 -d$LT_DURATION on CPU $LT_CLIENT_CPU," \
  "every server on CPU $LT_SERVER_CPU; $LT_ROUNDS interleaved rounds: median (min–max)"
python3 - "$LT_TMP/results" "$LT_PEERS" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
peers = sys.argv[2].split()
R = {}
for peer, conns, rnd, rps, p50, p99, cpu in rows:
    R[(peer, int(conns), int(rnd))] = dict(rps=float(rps), p50=float(p50), p99=float(p99), cpu=float(cpu))
conns_list = sorted({c for _, c, _ in R})
rounds = sorted({r for _, _, r in R})

def stat(vals, fmt):
    m = statistics.median(vals)
    return fmt.format(m) + (f" ({fmt.format(min(vals))}–{fmt.format(max(vals))})" if len(vals) > 1 else "")

verdicts = []
for c in conns_list:
    print(f"\n**c{c}**\n")
    print("| server | req/s | p50 µs | p99 µs | server CPU µs/req | CPU / ceiling | req/s / ceiling | p99 / ceiling |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for p in peers:
        v = [R[(p, c, r)] for r in rounds]
        def ratio(f):
            if "ceiling" not in peers:
                return "–"
            return stat([R[(p, c, r)][f] / R[("ceiling", c, r)][f] for r in rounds], "{:.2f}")
        print(f"| {p} | {stat([x['rps'] for x in v], '{:.0f}')} | {stat([x['p50'] for x in v], '{:.0f}')} "
              f"| {stat([x['p99'] for x in v], '{:.0f}')} | {stat([x['cpu'] for x in v], '{:.2f}')} "
              f"| {ratio('cpu')} | {ratio('rps')} | {ratio('p99')} |")
    for pg in [p for p in ("pollgate", "pollgate-pgo") if p in peers and "ceiling" in peers]:
        med = lambda f, other: statistics.median(R[(pg, c, r)][f] / R[(other, c, r)][f] for r in rounds)
        verdicts.append((f"{pg} c{c}: server CPU per hit / ceiling's", med("cpu", "ceiling"), "<=", 1.10))
        if "naive" in peers:
            verdicts.append((f"{pg} c{c}: server CPU per hit / naive's", med("cpu", "naive"), "<=", 1.00))
        if c == 64:
            verdicts.append((f"{pg} c64: req/s / ceiling's", med("rps", "ceiling"), ">=", 0.95))
        if c == 256:
            verdicts.append((f"{pg} c256: p99 / ceiling's", med("p99", "ceiling"), "<=", 1.20))
if verdicts:
    print("\n| target (median of per-round ratios) | ratio | target | |")
    print("| --- | ---: | ---: | --- |")
    for name, r, op, t in verdicts:
        ok = r <= t if op == "<=" else r >= t
        print(f"| {name} | {r:.2f} | {op} {t:.2f} | {'met' if ok else 'MISSED'} |")
EOF

#!/usr/bin/env bash
# Installs what the tests need beyond Rust: Debian packages (Chromium and
# Node for the browser tests) and the browser tests' npm packages. Called by
# .ci/run and by `make test`; safe to run again (installs only what is missing).
#
# As root with apt-get it installs; otherwise it prints one line naming what
# to install and exits 1. `--check` only checks (never installs).
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests need at run time. Add yours here.
DEB_PACKAGES=(
  chromium        # browser tests (tests/browser), driven by playwright-core
  fonts-liberation # readable text in the browser tests' screenshots
  nodejs          # node --test: client unit tests, browser tests
  npm             # installs playwright-core for tests/browser
  redis-server    # tests/redis.rs: a real Redis per test (the Redis feed)
  openssl         # tests/redis.rs: a CA and server certificate for the Redis TLS test
  systemd         # systemd-analyze verify/security of deploy/pollgate.service (tests/deploy.rs)
  prometheus      # promtool: check and unit-test deploy/prometheus/alerts.yml (tests/observability.rs)
  openssl         # tests/auth.rs makes its RSA and Ed25519 keys with `openssl genpkey`
  curl            # tests/make_run.rs: `make run` (scripts/run-demo.sh) waits for pollgate with curl
  bsdutils        # tests/make_run.rs: `script` gives `make run` a real terminal to press Ctrl-C in
)

# npm projects whose node_modules the tests need.
NPM_DIRS=(tests/browser docs/examples/express)

check_only=false
[ "${1:-}" = "--check" ] && check_only=true

missing_packages() {
  local p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || echo "$p"
  done
}

install_debian() {
  local missing
  mapfile -t missing < <(missing_packages "${DEB_PACKAGES[@]}")
  # npm may come with a node not from Debian; a working npm is enough.
  if command -v npm >/dev/null && command -v node >/dev/null; then
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | grep -vx -e nodejs -e npm || true)
  fi
  [ ${#missing[@]} -eq 0 ] && return 0
  if $check_only || [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "missing Debian packages: run: sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
  fi
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
}

# node_modules is current when it was installed after the lock file last changed.
install_npm() {
  local d
  for d in "${NPM_DIRS[@]}"; do
    if [ -f "$d/node_modules/.package-lock.json" ] && [ "$d/node_modules/.package-lock.json" -nt "$d/package-lock.json" ]; then
      continue
    fi
    if $check_only; then
      echo "missing npm packages: run: (cd $d && npm ci)" >&2
      exit 1
    fi
    echo "npm ci in $d"
    (cd "$d" && npm ci --no-audit --no-fund)
  done
}

install_debian
install_npm

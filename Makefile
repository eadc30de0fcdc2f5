# Entry points for humans and CI. `make run` for a local demo, `make test`
# is exactly what CI runs (.ci/run).

CARGO ?= cargo
TARGET_DIR ?= $(or $(CARGO_TARGET_DIR),target)
RELEASE := $(TARGET_DIR)/release

# The demo's ports are pollgate's built-in defaults, so pollgate itself
# runs with no config arguments at all.
DEMO_UPSTREAM := 127.0.0.1:3000
DEMO_PUBLIC := 127.0.0.1:8080
DEMO_INTERNAL := 127.0.0.1:8081
DEMO_TOKEN := demo-token

.PHONY: run test test-browser fmt clippy bench fuzz-smoke release-pgo loadtest-soak loadtest-faults loadtest loadtest-instructions loadtest-peers loadtest-mem loadtest-snapshot loadtest-cluster loadtest-redis loadtest-redis-fleet build-demo

# The profile-guided release build (scripts/build-pgo.sh): instrumented
# build, a training workload on loopback, rebuild with the profile. Output:
# $(TARGET_DIR)/pgo/release/pollgate. ~14 min here; needs wrk and rustup.
release-pgo:
	./scripts/build-pgo.sh

build-demo:
	$(CARGO) build --release --bin pollgate --example demo_upstream

# Demo upstream and pollgate until Ctrl-C (exit 0): scripts/run-demo.sh,
# which also says why Ctrl-C needs job control there. The recipe runs with
# SIGINT at its default: a shell without job control starts background jobs
# (`make run &` in a script) with SIGINT ignored, and then a Ctrl-C/SIGINT
# sent to the group would be ignored too.
run: SHELL := env --default-signal=INT /bin/sh
run: build-demo
	@RELEASE=$(RELEASE) DEMO_UPSTREAM=$(DEMO_UPSTREAM) DEMO_PUBLIC=$(DEMO_PUBLIC) \
	  DEMO_INTERNAL=$(DEMO_INTERNAL) DEMO_TOKEN=$(DEMO_TOKEN) ./scripts/run-demo.sh

# Exactly what CI runs; `cargo test` also builds the examples. The install
# script installs Chromium and the browser tests' npm packages when missing
# (or, not as root, says in one line what to install).
test:
	./scripts/install-deps.sh
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) test
	$(MAKE) --no-print-directory test-browser

# The browser client's unit tests, then the tests in real Chromium against
# the debug binaries (tests/browser/README.md).
test-browser:
	$(CARGO) build --bin pollgate --example demo_upstream
	cd client && node --test test/
	cd tests/browser && CARGO_TARGET_DIR=$(abspath $(TARGET_DIR)) node --test --test-concurrency=1 *.test.js

fmt:
	$(CARGO) fmt

clippy:
	$(CARGO) clippy --all-targets -- -D warnings

bench:
	$(CARGO) bench

# Every fuzz target 30 s over its committed corpus (FUZZ_SECONDS, FUZZ_TARGETS).
# Needs cargo-fuzz (`cargo install cargo-fuzz`); not part of `make test`: the
# sanitizer build of pollgate alone is ~12 min here. See README, "Fuzzing".
fuzz-smoke:
	./scripts/fuzz-smoke.sh

# N minutes of hits and publishes, failing on any non-304 or on RSS/fd growth
# (SOAK_MINUTES=5); and faults under load: upstream down, a replica
# SIGKILLed and restarted (FAULTS_SECONDS=40). Release build, loopback only.
loadtest-soak:
	./loadtest/soak.sh

loadtest-faults:
	./loadtest/faults.sh

# Needs wrk, taskset and valgrind (apt-get install wrk util-linux valgrind).
# Env knobs: see the top of loadtest/run.sh (LT_DURATION=10s, LT_ONLY=ceiling,
# ...) and loadtest/instructions.sh (LT_IR_SERVERS, LT_IR_DURATION, ...).
# CPU time on a shared VM is noisy; instructions per hit (callgrind) is not.
loadtest:
	./loadtest/run.sh
	./loadtest/instructions.sh

# User-space instructions per hit: pollgate, the naive peer, the ceiling.
loadtest-instructions:
	./loadtest/instructions.sh

# Every peer on one workload in one interleaved run (installs nginx,
# memcached, varnish, wrk if missing): knobs at the top of loadtest/peers.sh.
loadtest-peers:
	./loadtest/peers.sh

loadtest-mem:
	./loadtest/mem.sh

# Hit latency while 1M-key snapshots are written vs none (knobs at the top of the script).
loadtest-snapshot:
	./loadtest/snapshot_p99.sh

# Replication: three real replicas on loopback (see loadtest/README.md).
loadtest-cluster:
	$(CARGO) build --release --bin pollgate --example cluster_load
	$(RELEASE)/examples/cluster_load

# Redis feed: throughput, publish→visible latency and restart cost against
# POST /v1/versions in the same run, on a real redis-server (loopback only).
loadtest-redis:
	@command -v redis-server >/dev/null || { echo "needs redis-server (apt-get install redis-server)" >&2; exit 1; }
	$(CARGO) build --release --bin pollgate --example redis_load
	$(RELEASE)/examples/redis_load all

# 1 Redis and up to 6 pollgates on one stream: Redis CPU per 1k changes/s and lag.
loadtest-redis-fleet:
	./loadtest/redis_fleet.sh

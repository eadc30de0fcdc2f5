//! pollgate: answers "anything new since version V?" polls from memory and
//! forwards only the stale ones to the app servers.
//!
//! # Layout
//!
//! The modules follow a request through the sidecar:
//!
//! - [`app`]: wires state, background tasks and the server; stops them in order.
//! - [`server`]: binds the public and internal listeners, runs the
//!   connection loop (HTTP/1.1 + h2c) and graceful shutdown.
//! - [`route`]: turns a request into `(key, client_version)` without
//!   allocating, or says it is not a poll.
//! - [`poll`]: the hit path. Known, fresh and not behind → `304` from memory;
//!   otherwise hand the request to [`upstream`].
//! - [`upstream`]: the pooled forwarding client, the guard in front of it
//!   (in-flight cap, wait queue, shedding, circuit breaker) and per-key
//!   coalescing of cold or expired keys.
//! - [`table`]: the sharded version table; merge is `max`, so a version never
//!   goes backwards.
//! - [`cluster`]: replicas gossip versions (delta push, pull anti-entropy),
//!   readiness after catching up, and the cluster-wide config (LWW).
//! - [`snapshot`]: warm restarts: the table written to `data_dir` and loaded
//!   at start, loaded entries revalidated spread over `max_age`.
//! - [`push`]: SSE, long-poll and WebSocket "you are stale, poll now"
//!   notices for `/pollgate/v1/{watch,wait,ws}`, with admission control.
//! - [`feed`]: trusted sources of versions besides the upstream (publish API).
//! - [`internal`]: the internal listener (publish, lookup, metrics, health).
//! - [`metrics`]: Prometheus counters and histograms.
//! - [`tunables`]: cluster-wide values (max_age, heartbeats, hints), last writer wins.
//! - [`config`]: default < file < env < flags layering and validation.
//! - [`error`]: where an error came from (client, upstream, internal) and the
//!   one place that maps it to a status.
//! - [`state`]: the state every handler shares, and `learn`, the one door
//!   through which a trusted version enters the table.
//! - [`body`]: the response body type shared by every path.
//! - [`alloc`]: allocator settings applied at start-up (why: memory per key).

pub mod alloc;
pub mod app;
pub mod body;
pub mod cluster;
pub mod config;
pub mod error;
pub mod feed;
pub mod internal;
pub mod metrics;
pub mod poll;
pub mod push;
pub mod route;
pub mod server;
pub mod snapshot;
pub mod state;
pub mod table;
pub mod tunables;
pub mod upstream;

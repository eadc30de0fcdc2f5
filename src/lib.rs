//! pollgate: answers "anything new since version V?" polls from memory and
//! forwards only the stale ones to the app servers.
//!
//! # Layout
//!
//! A poll goes [`server`] → [`public`] → [`route`] → [`poll`] → [`table`],
//! each module once:
//!
//! - [`server`]: binds the public and internal listeners, runs the
//!   connection loop (HTTP/1.1 + h2c) and graceful shutdown.
//! - [`public`]: the public router. Decides once whether a request is a push
//!   transport, a poll, or pass-through.
//! - [`route`]: turns a request into `(key, client_version)` without
//!   allocating, or says it is not a poll.
//! - [`poll`]: the hit path. Known, fresh and not behind → `304` from memory;
//!   otherwise the forward decision (stale, cold and coalesced, expired).
//! - [`table`]: the sharded version table; merge is `max`, so a version never
//!   goes backwards. Advance hooks tell push, gossip and snapshots.
//! - [`upstream`]: the pooled forwarding client, the guard in front of it
//!   (in-flight cap, wait queue, shedding, circuit breaker) and per-key
//!   coalescing of cold or expired keys.
//!
//! Beside the poll path:
//!
//! - [`push`]: SSE, long-poll and WebSocket "you are stale, poll now"
//!   notices for `/pollgate/v1/{watch,wait,ws}`, over the [`hub`] (watcher
//!   registry and admission control, held by the state).
//! - [`internal`]: the internal router (publish, lookup, config, gossip,
//!   metrics, health); [`feed`]: the publish API and the Redis feed.
//! - [`gossip`]: replicas exchange deltas and pull anti-entropy over the
//!   [`cluster`] core (auth, codec, outbox, peers, held by the state).
//! - [`limit`]: per-client token buckets and upstream-slot shares
//!   (forwarded requests and new push connections; hits are not limited).
//! - [`snapshot`]: warm restarts: the table written to `data_dir` and loaded
//!   at start, loaded entries revalidated spread over `max_age`.
//! - [`app`]: wires state, advance hooks, background tasks and the server;
//!   stops them in order. [`state`]: what every handler shares, and `learn`,
//!   the one door through which a trusted version enters the table.
//!
//! Ground floor, importing nothing above it: [`config`] (default < file <
//! env < flags), [`tunables`] (cluster-wide values, their ranges, LWW),
//! [`metrics`], [`error`] (where an error came from; the one place it
//! becomes a status), [`body`] (the response body and small builders),
//! [`inbound`] (bearer tokens, bounded bodies, Host), [`shutdown`] (the
//! signal), [`notify`] (systemd's sd_notify), [`alloc`] (allocator settings applied at start-up: memory per key).

pub mod alloc;
pub mod app;
pub mod auth;
pub mod body;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod cors;
pub mod error;
pub mod feed;
pub mod gossip;
pub mod heads;
pub mod hub;
pub mod inbound;
pub mod internal;
pub mod limit;
pub mod metrics;
pub mod notify;
pub mod poll;
pub mod public;
pub mod push;
pub mod reload;
pub mod route;
pub mod server;
pub mod shutdown;
pub mod snapshot;
pub mod state;
pub mod status;
pub mod table;
#[doc(hidden)]
pub mod testkit;
pub mod tunables;
pub mod upstream;

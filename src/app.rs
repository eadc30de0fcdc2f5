//! Wires the parts into one running pollgate: state, background tasks with
//! owners, the server, and their shutdown in reverse order.

use std::future::Future;
use std::sync::Arc;

use crate::cluster::{transport, ClusterHandle};
use crate::config::Config;
use crate::feed::redis::{self as redis_feed, RedisHandle};
use crate::route::RouteError;
use crate::server::{self, Listeners};
use crate::state::State;

/// Runs pollgate on bound `listeners` until `shutdown` resolves and every
/// part has stopped. Background tasks are started here, each as a handle
/// whose `shutdown(self)` is awaited after the server has drained.
pub async fn run(
    cfg: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RouteError> {
    let state = State::new(cfg)?;
    // Loaded before serving: a poll meeting a half-loaded table would go
    // upstream as "unknown", the stampede a warm start exists to prevent.
    // Push hooks register after the load so 1M loaded keys wake nobody.
    // Stream positions: loaded with the snapshot, advanced by the Redis
    // reader, written with every snapshot.
    let positions = Arc::new(crate::snapshot::Positions::default());
    let snapshots = crate::snapshot::start(&state, positions.clone()).await;
    let push = crate::push::start(&state);
    // Gossip starts after the load, so the first pulls already see it.
    let cluster = ClusterHandle::start(state.clone(), Arc::new(transport::Http::default()));
    // After the load, so a stream resumes where the loaded table ends.
    let redis = RedisHandle::start(
        &state,
        &redis_feed::Settings::from_config(&state.cfg),
        positions,
    );
    let sighup = crate::reload::SighupHandle::start(state.clone());
    server::run(listeners, state.clone(), shutdown).await;
    sighup.shutdown().await;
    // Before the last snapshot, so it holds the last position applied.
    redis.shutdown().await;
    cluster.shutdown().await;
    push.shutdown().await;
    // Last, so the final snapshot includes what gossip brought in.
    snapshots.shutdown().await;
    Ok(())
}

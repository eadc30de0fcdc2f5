//! Wires the parts into one running pollgate: state, background tasks with
//! owners, the server, and their shutdown in reverse order.

use std::future::Future;
use std::sync::Arc;

use crate::cluster::{transport, ClusterHandle};
use crate::config::Config;
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
    let cluster = ClusterHandle::start(state.clone(), Arc::new(transport::Http::default()));
    server::run(listeners, state.clone(), shutdown).await;
    cluster.shutdown().await;
    Ok(())
}

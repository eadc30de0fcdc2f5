//! Wires the parts into one running pollgate: state, background tasks with
//! owners, the server, and their shutdown in reverse order.

use std::future::Future;
use std::sync::Arc;

use crate::auth::ReloadHandle;
use crate::cluster::transport;
use crate::config::Config;
use crate::feed::redis::{self as redis_feed, RedisHandle};
use crate::gossip::GossipHandle;
use crate::server::{self, Listeners};
use crate::snapshot::SnapshotHandle;
use crate::state::{StartError, State};

/// Runs pollgate on bound `listeners` until `shutdown` resolves and every
/// part has stopped. Background tasks are started here, each as a handle
/// whose `shutdown(self)` is awaited after the server has drained.
pub async fn run(
    mut cfg: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    cfg.name_by_bound_port(listeners.internal_addr().port());
    let state = State::new(cfg)?;
    // Loaded before serving: a poll meeting a half-loaded table would go
    // upstream as "unknown", the stampede a warm start exists to prevent.
    // Stream positions: loaded with the snapshot, advanced by the Redis
    // reader, written with every snapshot.
    let positions = Arc::new(crate::snapshot::Positions::default());
    let snapshots = crate::snapshot::start(&state, positions.clone()).await;
    register_advance_hooks(&state, &snapshots);
    let push = crate::push::start(&state);
    let jwks = ReloadHandle::start(state.auth.clone(), state.shutdown.subscribe());
    // Gossip starts after the load, so the first pulls already see it.
    let cluster = GossipHandle::start(state.clone(), Arc::new(transport::Http::default()));
    // After the load, so a stream resumes where the loaded table ends.
    let redis = RedisHandle::start(
        &state,
        &redis_feed::Settings::from_config(&state.cfg),
        positions,
    );
    let systemd = SystemdHandle::start(&state);
    let reloading = state.clone();
    let sighup = crate::reload::SighupHandle::start(move || {
        crate::reload::log(&reloading.reload());
    });
    let checking = state.clone();
    let files = crate::reload::FileCheckHandle::start(move || checking.refresh_secret_files());
    server::run(listeners, state.clone(), shutdown).await;
    systemd.shutdown().await;
    files.shutdown().await;
    sighup.shutdown().await;
    // Before the last snapshot, so it holds the last position applied.
    redis.shutdown().await;
    cluster.shutdown().await;
    push.shutdown().await;
    jwks.shutdown().await;
    // Last, so the final snapshot includes what gossip brought in.
    snapshots.shutdown().await;
    Ok(())
}

/// Tells systemd (`Type=notify`) when pollgate is ready and when it stops;
/// without `$NOTIFY_SOCKET` it starts no task.
struct SystemdHandle(Option<tokio::task::JoinHandle<()>>);

impl SystemdHandle {
    fn start(state: &Arc<State>) -> SystemdHandle {
        crate::notify::init();
        if !crate::notify::enabled() {
            return SystemdHandle(None);
        }
        let (state, mut stop) = (state.clone(), state.shutdown.subscribe());
        crate::notify::send("STATUS=waiting for peers to catch up\n");
        SystemdHandle(Some(tokio::spawn(async move {
            if state.wait_ready(&mut stop).await {
                crate::notify::ready(crate::state::READY_STATUS);
            }
            crate::shutdown::stopping(&mut stop).await;
            crate::notify::stopping();
        })))
    }

    async fn shutdown(self) {
        if let Some(t) = self.0 {
            let _ = t.await;
        }
    }
}

/// Every reaction to a version advancing, registered in one place and only
/// after the snapshot load: 1M loaded keys wake no watcher, are not sent to
/// peers, and do not count as changes to snapshot again.
fn register_advance_hooks(state: &State, snapshots: &SnapshotHandle) {
    let registry = state.hub.registry.clone();
    state
        .table
        .on_advance(Box::new(move |key, v| registry.notify(key, v)));
    let others = [snapshots.advance_hook(), state.cluster.advance_hook()];
    others
        .into_iter()
        .flatten()
        .for_each(|hook| state.table.on_advance(hook));
}

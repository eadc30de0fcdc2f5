//! Keeps the JWKS current: re-read on SIGHUP, and checked every second so
//! a file replaced by a deploy (or a Kubernetes secret update) is picked up
//! without a signal. An unchanged file is a byte compare; a broken one is
//! logged and the keys loaded before stay in use.

use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::Auth;
use crate::shutdown::stopping;

/// How often the file is looked at: key rotation is not latency-critical,
/// and reading a few KiB once a second costs nothing.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Owns the reload task; `shutdown` waits for it.
pub struct ReloadHandle {
    task: Option<JoinHandle<()>>,
}

impl ReloadHandle {
    /// Starts watching while authorization is on (a reload may add a JWKS
    /// file later); otherwise a handle with no task.
    pub fn start(auth: Option<Arc<Auth>>, stop: watch::Receiver<bool>) -> ReloadHandle {
        let task = auth.map(|a| tokio::spawn(watch_file(a, stop)));
        ReloadHandle { task }
    }

    pub async fn shutdown(self) {
        if let Some(t) = self.task {
            let _ = t.await;
        }
    }
}

async fn watch_file(auth: Arc<Auth>, mut stop: watch::Receiver<bool>) {
    let mut hup = signal(SignalKind::hangup())
        .inspect_err(
            |e| tracing::warn!(error = %e, "SIGHUP not available; JWKS checked by time only"),
        )
        .ok();
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stopping(&mut stop) => return,
            _ = tick.tick() => {}
            Some(()) = async { hup.as_mut()?.recv().await } => {
                tracing::info!("SIGHUP: re-reading the JWKS");
            }
        }
        if !auth.has_jwks() {
            continue;
        }
        match auth.reload_jwks() {
            Ok(true) => tracing::info!("JWKS changed: new keys loaded"),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "JWKS not reloaded; the previous keys stay in use")
            }
        }
    }
}

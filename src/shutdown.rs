//! The shutdown signal every long-lived task listens to: a `watch` flag that
//! flips once, when the server stops accepting and starts draining.

use tokio::sync::watch;

/// Resolves once shutdown has started (or the sender is gone).
pub async fn stopping(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

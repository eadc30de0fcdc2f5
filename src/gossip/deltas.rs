//! Deltas: every [`FLUSH_EVERY`] the keys in the outbox are sent to peers in
//! batches; to a random subset of peers when there are more than [`FANOUT`].

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use compact_str::CompactString;
use hashbrown::HashSet;
use tokio::sync::mpsc;

use super::Ctx;
use crate::cluster::codec::{self, Item, Reply, Request};
use crate::cluster::peer::Peer;
use crate::cluster::transport::{Link, Path};
use crate::cluster::{apply_config, FANOUT};

/// Batching interval: bounds publish→peer latency (the target is p99 ≤ 50 ms
/// across replicas) while a burst of publishes still goes out as one message.
pub const FLUSH_EVERY: Duration = Duration::from_millis(20);
/// Most keys in one delta message (~30 bytes each → ≤ ~256 KiB).
const BATCH: usize = 8192;

/// Every [`FLUSH_EVERY`]: drain the outbox into delta messages and queue each
/// on the chosen peers' send tasks.
pub async fn flush_loop<T: Link>(mut ctx: Ctx<T>) {
    while ctx.sleep(FLUSH_EVERY).await {
        flush(&ctx);
    }
    flush(&ctx);
}

fn flush<T: Link>(ctx: &Ctx<T>) {
    let c = ctx.cluster();
    let keys = c.outbox.take();
    let config = c.outbox.config_dirty.swap(false, Ordering::AcqRel);
    if keys.is_empty() && !config {
        return;
    }
    let items = current_items(ctx, keys);
    let batches: Vec<Bytes> = match items.is_empty() {
        true => vec![seal_deltas(ctx, Vec::new())],
        false => items
            .chunks(BATCH)
            .map(|b| seal_deltas(ctx, b.to_vec()))
            .collect(),
    };
    for peer in targets(&c.peers.read()) {
        for b in &batches {
            if peer.deltas.try_send(b.clone()).is_err() {
                c.metrics.deltas_dropped.inc();
            }
        }
    }
}

/// Each key's entry as it is now (the newest version, not the one that
/// triggered the hook), with how long ago it was confirmed.
fn current_items<T: Link>(ctx: &Ctx<T>, keys: HashSet<CompactString>) -> Vec<Item> {
    let table = &ctx.state.table;
    let now = table.now_ms();
    keys.into_iter()
        .filter_map(|k| {
            let e = table.get(&k)?;
            Some(Item {
                key: k,
                version: e.version,
                confirmed_ago_ms: (e.confirmed_ms > 0).then(|| now.saturating_sub(e.confirmed_ms)),
            })
        })
        .collect()
}

/// One body per batch, encoded once for every target; each push task seals
/// it when it sends, so the timestamp is fresh even after a queue wait.
fn seal_deltas<T: Link>(ctx: &Ctx<T>, items: Vec<Item>) -> Bytes {
    let msg = ctx.message(Request::Deltas(items));
    codec::encode_message(&msg)
}

/// Healthy peers; a random [`FANOUT`] of them when there are more.
fn targets(peers: &[Arc<Peer>]) -> Vec<Arc<Peer>> {
    let mut up: Vec<_> = peers.iter().filter(|p| p.is_up()).cloned().collect();
    if up.len() > FANOUT {
        fastrand::shuffle(&mut up);
        up.truncate(FANOUT);
    }
    up
}

/// Sends one peer's queued delta messages, one at a time, in order.
pub async fn send_loop<T: Link>(ctx: Ctx<T>, peer: Arc<Peer>, mut rx: mpsc::Receiver<Bytes>) {
    while let Some(body) = rx.recv().await {
        match ctx.exchange(&peer, Path::Deltas, &body).await {
            Ok(Reply::Ack { config }) => {
                apply_config(&ctx.state.tunables, &config);
                peer.sent_deltas();
            }
            // This replica (`is_self` is set: no more deltas go there).
            Ok(Reply::Identity(_)) => {}
            Ok(other) => tracing::debug!(peer = %peer.addr, ?other, "unexpected deltas reply"),
            Err(e) => tracing::debug!(peer = %peer.addr, error = %e, "sending deltas failed"),
        }
    }
}

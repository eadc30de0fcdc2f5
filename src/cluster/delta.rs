//! Delta push: keys that advanced are collected by the table's advance hook
//! and sent to peers in batches every [`FLUSH_EVERY`]; a random subset of
//! peers when there are more than [`FANOUT`](super::FANOUT).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use compact_str::CompactString;
use hashbrown::HashSet;
use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::codec::{self, Item, Reply, Request};
use super::membership::Peer;
use super::{apply_config, Ctx, Origin, Transport, FANOUT};

/// Batching interval: bounds publish→peer latency (the target is p99 ≤ 50 ms
/// across replicas) while a burst of publishes still goes out as one message.
pub const FLUSH_EVERY: Duration = Duration::from_millis(20);
/// Most keys in one push message (~30 bytes each → ≤ ~256 KiB).
const BATCH: usize = 8192;
/// Keys waiting beyond this are dropped from the outbox (counted): the
/// periodic pull repairs them, and memory stays bounded under a flood.
const OUTBOX_CAP: usize = 1 << 20;

/// Keys that advanced since the last flush, deduplicated.
pub struct Outbox {
    keys: Mutex<HashSet<CompactString>>,
    /// Relay versions learned from peers: only with more peer addresses
    /// than FANOUT (set by membership, as one name may resolve to many).
    pub relay: AtomicBool,
    pub config_dirty: AtomicBool,
    dropped: AtomicBool,
}

impl Outbox {
    pub fn new(relay: bool) -> Self {
        Outbox {
            keys: Mutex::new(HashSet::new()),
            relay: AtomicBool::new(relay),
            config_dirty: AtomicBool::new(false),
            dropped: AtomicBool::new(false),
        }
    }

    /// From the advance hook: runs inside every advancing merge, so it is a
    /// short lock and, for keys ≤ 24 bytes, no allocation.
    pub fn note(&self, key: &str, origin: Origin) {
        let push = match origin {
            Origin::Local => true,
            Origin::Peer => self.relay.load(Ordering::Relaxed),
            Origin::Quiet => false,
        };
        if !push {
            return;
        }
        let mut keys = self.keys.lock();
        if keys.len() < OUTBOX_CAP {
            keys.insert(CompactString::new(key));
        } else {
            self.dropped.store(true, Ordering::Relaxed);
        }
    }

    pub(super) fn take(&self) -> HashSet<CompactString> {
        std::mem::take(&mut *self.keys.lock())
    }
}

/// Every [`FLUSH_EVERY`]: drain the outbox into push messages and queue each
/// on the chosen peers' push tasks.
pub async fn flush_loop<T: Transport>(mut ctx: Ctx<T>) {
    while ctx.sleep(FLUSH_EVERY).await {
        flush(&ctx);
    }
    flush(&ctx);
}

fn flush<T: Transport>(ctx: &Ctx<T>) {
    let c = ctx.cluster();
    let keys = c.outbox.take();
    let config = c.outbox.config_dirty.swap(false, Ordering::AcqRel);
    if keys.is_empty() && !config {
        return;
    }
    let items = current_items(ctx, keys);
    let batches: Vec<Bytes> = match items.is_empty() {
        true => vec![seal_push(ctx, Vec::new())],
        false => items
            .chunks(BATCH)
            .map(|b| seal_push(ctx, b.to_vec()))
            .collect(),
    };
    for peer in targets(&c.peers.read()) {
        for b in &batches {
            if peer.push.try_send(b.clone()).is_err() {
                c.metrics.pushes_dropped.inc();
            }
        }
    }
}

/// Each key's entry as it is now (the newest version, not the one that
/// triggered the hook), with how long ago it was confirmed.
fn current_items<T: Transport>(ctx: &Ctx<T>, keys: HashSet<CompactString>) -> Vec<Item> {
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
fn seal_push<T: Transport>(ctx: &Ctx<T>, items: Vec<Item>) -> Bytes {
    let msg = ctx.message(Request::Push(items));
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

/// Sends one peer's queued push messages, one at a time, in order.
pub async fn push_loop<T: Transport>(ctx: Ctx<T>, peer: Arc<Peer>, mut rx: mpsc::Receiver<Bytes>) {
    while let Some(body) = rx.recv().await {
        let c = ctx.cluster();
        let (frame, mac) = c.auth.seal(&body);
        c.metrics.bytes_sent.add(frame.len() as u64);
        let res = ctx
            .transport
            .send(&peer.addr, super::transport::Path::Push, frame)
            .await;
        match res.map(|r| ctx.open(r, &mac)) {
            Ok(Ok(Reply::Ack { config })) => {
                apply_config(&ctx.state.tunables, &config);
                peer.pushed();
            }
            Ok(Ok(Reply::IsSelf)) => peer.is_self.store(true, Ordering::Relaxed),
            Ok(Ok(other)) => tracing::debug!(peer = %peer.addr, ?other, "unexpected push reply"),
            Ok(Err(e)) | Err(e) => tracing::debug!(peer = %peer.addr, error = %e, "push failed"),
        }
    }
}

//! Pull anti-entropy: each replica periodically asks each peer "what changed
//! in each shard since the counts I last saw from you?" and the peer answers
//! from its per-shard change counts, in pages. A restarted replica (new epoch
//! either side) gets whole shards. First complete pull → caught up (ready).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::Ctx;
use crate::cluster::codec::{self, PullReply, Reply, Request};
use crate::cluster::peer::Peer;
use crate::cluster::transport::{Link, Path, SendError};
use crate::cluster::{apply_config, blocking};

/// Pull period: bounds how long a lost push can hide a change (plus jitter
/// so replicas do not pull in lock-step).
pub const PULL_EVERY: Duration = Duration::from_secs(1);
/// Retry period until a peer has answered once.
const FIRST_RETRY: Duration = Duration::from_millis(200);
/// Pages in one round; a peer that keeps saying "more" beyond this is
/// changing faster than we can pull, and the next round continues.
const MAX_PAGES: usize = 256;

/// The epoch and per-shard counts last seen from one peer.
#[derive(Default)]
struct Cursor {
    epoch: u64,
    seqs: Vec<u64>,
}

impl Cursor {
    /// Takes in a page; returns the estimate of changes still to pull.
    fn advance(&mut self, p: &PullReply) -> u64 {
        if p.epoch != self.epoch || self.seqs.len() != p.current.len() {
            self.epoch = p.epoch;
            self.seqs = vec![0; p.current.len()];
        }
        for &(s, q) in &p.covered {
            if let Some(seen) = self.seqs.get_mut(s as usize) {
                *seen = q;
            }
        }
        self.seqs
            .iter()
            .zip(&p.current)
            .map(|(seen, cur)| cur.saturating_sub(*seen))
            .sum()
    }
}

/// One peer's pull loop: at once, then every [`PULL_EVERY`] (±20 %).
pub async fn run<T: Link>(mut ctx: Ctx<T>, peer: Arc<Peer>, answered: Arc<AtomicBool>) {
    let mut cursor = Cursor::default();
    let mut ever = false;
    loop {
        let ok = {
            let _one_at_a_time = match ctx.cluster().caught_up() {
                true => None,
                false => Some(ctx.cluster().catching_up.lock().await),
            };
            round(&ctx, &peer, &mut cursor, &answered).await
        };
        peer.probe(ok);
        ever |= ok;
        if peer.is_self.load(Ordering::Relaxed) {
            tracing::info!(peer = %peer.addr, "peer address is this replica; not gossiping with it");
            return;
        }
        // Replicas started together miss each other at first: retry soon
        // until the peer has answered once, so pushes start flowing early.
        let period = if ever { PULL_EVERY } else { FIRST_RETRY };
        let wait = period.mul_f64(0.8 + fastrand::f64() * 0.4);
        if !ctx.sleep(wait).await {
            return;
        }
    }
}

/// Pulls pages until the peer has nothing more; true when complete.
async fn round<T: Link>(
    ctx: &Ctx<T>,
    peer: &Peer,
    cursor: &mut Cursor,
    answered: &AtomicBool,
) -> bool {
    for _ in 0..MAX_PAGES {
        let started = tokio::time::Instant::now();
        let page = match fetch(ctx, peer, cursor, answered).await {
            Ok(p) => p,
            Err(complete) => return complete,
        };
        answered.store(true, Ordering::Relaxed);
        let fetched = started.elapsed();
        apply_config(&ctx.state.tunables, &page.config);
        blocking(|| ctx.cluster().merge(&ctx.state.table, &page.items));
        peer.set_behind(cursor.advance(&page));
        if !page.items.is_empty() {
            let (items, more) = (page.items.len(), page.more);
            tracing::debug!(peer = %peer.addr, items, more, ?fetched, merged = ?started.elapsed() - fetched, "pull page");
        }
        if !page.more {
            peer.pulled();
            ctx.cluster().set_caught_up();
            return true;
        }
    }
    true
}

/// The next page from `peer`; without one, `Err` carries the round's result.
async fn fetch<T: Link>(
    ctx: &Ctx<T>,
    peer: &Peer,
    cursor: &Cursor,
    answered: &AtomicBool,
) -> Result<PullReply, bool> {
    let msg = ctx.message(Request::Pull {
        epoch: cursor.epoch,
        seqs: cursor.seqs.clone(),
    });
    let body = codec::encode_message(&msg);
    match ctx.exchange(peer, Path::Pull, &body).await {
        Ok(Reply::Pull(p)) => Ok(p),
        // This replica (`is_self` is set): not an answer from a peer.
        Ok(Reply::Identity(_)) => Err(false),
        Ok(other) => {
            tracing::warn!(peer = %peer.addr, ?other, "unexpected pull reply");
            Err(false)
        }
        Err(e) => Err(failed(peer, e, answered)),
    }
}

fn failed(peer: &Peer, e: SendError, answered: &AtomicBool) -> bool {
    match e {
        SendError::Refused(why) => {
            answered.store(true, Ordering::Relaxed);
            tracing::warn!(peer = %peer.addr, %why, "peer refused our pull (same cluster_key?)");
        }
        SendError::Unreachable(why) => {
            tracing::debug!(peer = %peer.addr, %why, "pull failed");
        }
    }
    false
}

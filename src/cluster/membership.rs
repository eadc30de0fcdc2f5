//! Who the peers are: the configured `--peer` list, each name re-resolved
//! periodically (every address is a peer), each peer's health window, and the
//! tasks that serve one peer. Also the lone-replica readiness fallback.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::{Ctx, Transport};

/// How often peer names are resolved again (a scaled headless service shows up).
const RESOLVE_EVERY: Duration = Duration::from_secs(15);
/// With no peer answering at all for this long, a starting replica reports
/// ready anyway: a lone survivor must serve rather than stay out forever.
pub const LONE_AFTER: Duration = Duration::from_secs(30);
/// Queued push batches per peer; a slow peer drops beyond this (pull repairs).
const PUSH_QUEUE: usize = 64;
/// Health window (Varnish-style): a peer is up when at least `GOOD` of its
/// last 8 probes (pulls) succeeded. The window starts with `GOOD - 1`
/// successes (Varnish's `.initial`), so a new peer is down until its first
/// answer and up right after it, even if it failed while it was starting.
const GOOD: u32 = 3;
const INITIAL: u8 = (1 << (GOOD - 1)) - 1;

/// One peer address and what we know of it.
pub struct Peer {
    pub addr: String,
    /// Probe results, newest in bit 0.
    window: AtomicU8,
    /// The address turned out to be this replica: leave it alone.
    pub is_self: AtomicBool,
    last_push_ms: AtomicU64,
    last_pull_ms: AtomicU64,
    /// Changes at this peer not yet pulled, as of the last pull page.
    behind: AtomicU64,
    pub push: mpsc::Sender<Bytes>,
}

impl Peer {
    fn new(addr: String, push: mpsc::Sender<Bytes>) -> Self {
        Peer {
            addr,
            window: AtomicU8::new(INITIAL),
            is_self: AtomicBool::new(false),
            last_push_ms: AtomicU64::new(0),
            last_pull_ms: AtomicU64::new(0),
            behind: AtomicU64::new(0),
            push,
        }
    }

    /// Records one probe. Only the peer's pull task probes, so no lost update.
    pub fn probe(&self, ok: bool) {
        let w = self.window.load(Ordering::Relaxed);
        self.window
            .store((w << 1) | u8::from(ok), Ordering::Relaxed);
    }

    pub fn is_up(&self) -> bool {
        let good = self.window.load(Ordering::Relaxed).count_ones();
        good >= GOOD && !self.is_self.load(Ordering::Relaxed)
    }

    pub fn last_push(&self) -> u64 {
        self.last_push_ms.load(Ordering::Relaxed)
    }

    pub fn last_pull(&self) -> u64 {
        self.last_pull_ms.load(Ordering::Relaxed)
    }

    pub fn behind(&self) -> u64 {
        self.behind.load(Ordering::Relaxed)
    }

    pub fn set_behind(&self, n: u64) {
        self.behind.store(n, Ordering::Relaxed);
    }

    pub fn pushed(&self) {
        self.last_push_ms
            .store(super::auth::unix_ms(), Ordering::Relaxed);
    }

    pub fn pulled(&self) {
        self.last_pull_ms
            .store(super::auth::unix_ms(), Ordering::Relaxed);
    }
}

/// Resolves the configured peers, keeps one pull task and one push task per
/// address, and applies the lone-replica readiness fallback.
pub async fn run<T: Transport>(mut ctx: Ctx<T>) {
    let started = Instant::now();
    let answered = Arc::new(AtomicBool::new(false));
    let mut tasks: HashMap<String, JoinSet<()>> = HashMap::new();
    let mut next_resolve = Instant::now();
    loop {
        if Instant::now() >= next_resolve {
            resolve(&ctx, &mut tasks, &answered).await;
            next_resolve = Instant::now() + RESOLVE_EVERY;
        }
        lone_fallback(&ctx, started, &answered);
        if !ctx.sleep(Duration::from_millis(500)).await {
            break;
        }
    }
    for (_, mut set) in tasks {
        set.abort_all();
        while set.join_next().await.is_some() {}
    }
}

fn lone_fallback<T: Transport>(ctx: &Ctx<T>, started: Instant, answered: &AtomicBool) {
    let c = ctx.cluster();
    if !c.caught_up() && !answered.load(Ordering::Relaxed) && started.elapsed() >= LONE_AFTER {
        tracing::warn!(after = ?LONE_AFTER, "no peer answered: reporting ready without catching up");
        c.set_caught_up();
    }
}

async fn resolve<T: Transport>(
    ctx: &Ctx<T>,
    tasks: &mut HashMap<String, JoinSet<()>>,
    answered: &Arc<AtomicBool>,
) {
    let addrs = resolve_all(ctx).await;
    if addrs.is_empty() {
        // Resolution failed everywhere: keep the peers we had.
        return;
    }
    drop_gone(tasks, &addrs);
    let c = ctx.cluster();
    c.outbox
        .relay
        .store(addrs.len() > super::FANOUT, Ordering::Relaxed);
    let mut peers = c.peers.write();
    peers.retain(|p| addrs.contains(&p.addr));
    for addr in addrs {
        if let Entry::Vacant(slot) = tasks.entry(addr) {
            let (peer, set) = start_peer(ctx, slot.key().clone(), answered);
            peers.push(peer);
            slot.insert(set);
        }
    }
}

/// Every configured name resolved, sorted and deduplicated.
async fn resolve_all<T: Transport>(ctx: &Ctx<T>) -> Vec<String> {
    let mut addrs = Vec::new();
    for name in &ctx.state.cfg.peer {
        addrs.extend(ctx.transport.resolve(name).await);
    }
    addrs.sort();
    addrs.dedup();
    addrs
}

/// Stops the tasks of peers that no longer resolve.
fn drop_gone(tasks: &mut HashMap<String, JoinSet<()>>, addrs: &[String]) {
    tasks.retain(|addr, set| {
        let keep = addrs.contains(addr);
        if !keep {
            tracing::info!(peer = %addr, "peer no longer resolves; dropping it");
            set.abort_all();
        }
        keep
    });
}

/// A new peer and its pull and push tasks, owned by the returned set.
fn start_peer<T: Transport>(
    ctx: &Ctx<T>,
    addr: String,
    answered: &Arc<AtomicBool>,
) -> (Arc<Peer>, JoinSet<()>) {
    let (tx, rx) = mpsc::channel(PUSH_QUEUE);
    let peer = Arc::new(Peer::new(addr, tx));
    let mut set = JoinSet::new();
    set.spawn(super::pull::run(
        ctx.clone(),
        peer.clone(),
        answered.clone(),
    ));
    set.spawn(super::delta::push_loop(ctx.clone(), peer.clone(), rx));
    (peer, set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_is_three_of_the_last_eight() {
        let (tx, _rx) = mpsc::channel(1);
        let p = Peer::new("a".into(), tx);
        assert!(!p.is_up(), "no answer yet");
        p.probe(false);
        assert!(!p.is_up(), "failed while starting");
        p.probe(true);
        assert!(p.is_up(), "up at its first answer");
        (0..4).for_each(|_| p.probe(false));
        assert!(p.is_up(), "3 of the last 8 still");
        p.probe(false);
        assert!(!p.is_up(), "2 of the last 8");
        p.probe(true);
        assert!(!p.is_up(), "2 of the last 8 again");
        p.probe(true);
        assert!(p.is_up(), "3 of the last 8");
        p.is_self.store(true, Ordering::Relaxed);
        assert!(!p.is_up(), "never self");
    }
}

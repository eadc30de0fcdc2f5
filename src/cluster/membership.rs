//! Who the peers are: the configured `--peer` list, each name re-resolved
//! periodically (every address is a peer), each peer's health window, and the
//! tasks that serve one peer. Also the lone-replica readiness fallback.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use parking_lot::Mutex;
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
/// last `WINDOW` probes (pulls) succeeded. Until it has `GOOD` probes, every
/// one of them must have succeeded, so a fresh peer is up after one answer.
const WINDOW: u32 = 8;
const GOOD: u32 = 3;

/// One peer address and what we know of it.
pub struct Peer {
    pub addr: String,
    /// Probe results, newest in bit 0.
    window: Mutex<(u8, u32)>,
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
            window: Mutex::new((0, 0)),
            is_self: AtomicBool::new(false),
            last_push_ms: AtomicU64::new(0),
            last_pull_ms: AtomicU64::new(0),
            behind: AtomicU64::new(0),
            push,
        }
    }

    pub fn probe(&self, ok: bool) {
        let mut w = self.window.lock();
        w.0 = (w.0 << 1) | u8::from(ok);
        w.1 = (w.1 + 1).min(WINDOW);
    }

    pub fn is_up(&self) -> bool {
        let (bits, n) = *self.window.lock();
        n > 0 && bits.count_ones() >= GOOD.min(n) && !self.is_self.load(Ordering::Relaxed)
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
    let mut addrs = Vec::new();
    for name in &ctx.state.cfg.peer {
        addrs.extend(ctx.transport.resolve(name).await);
    }
    addrs.sort();
    addrs.dedup();
    if addrs.is_empty() {
        // Resolution failed everywhere: keep the peers we had.
        return;
    }
    tasks.retain(|addr, set| {
        let keep = addrs.contains(addr);
        if !keep {
            tracing::info!(peer = %addr, "peer no longer resolves; dropping it");
            set.abort_all();
        }
        keep
    });
    let c = ctx.cluster();
    let mut peers = c.peers.write();
    peers.retain(|p| addrs.contains(&p.addr));
    for addr in addrs {
        if tasks.contains_key(&addr) {
            continue;
        }
        let (tx, rx) = mpsc::channel(PUSH_QUEUE);
        let peer = Arc::new(Peer::new(addr.clone(), tx));
        peers.push(peer.clone());
        let mut set = JoinSet::new();
        set.spawn(super::pull::run(
            ctx.clone(),
            peer.clone(),
            answered.clone(),
        ));
        set.spawn(super::delta::push_loop(ctx.clone(), peer, rx));
        tasks.insert(addr, set);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_needs_three_of_eight_once_full() {
        let (tx, _rx) = mpsc::channel(1);
        let p = Peer::new("a".into(), tx);
        assert!(!p.is_up(), "no probe yet");
        p.probe(true);
        assert!(p.is_up(), "one good probe of one");
        p.probe(false);
        assert!(!p.is_up(), "1 of 2 < min(3, 2)");
        p.probe(true);
        p.probe(true);
        assert!(p.is_up(), "3 of 4");
        (0..5).for_each(|_| p.probe(false));
        assert!(!p.is_up(), "2 of the last 8");
        (0..3).for_each(|_| p.probe(true));
        assert!(p.is_up(), "3 of the last 8");
        p.is_self.store(true, Ordering::Relaxed);
        assert!(!p.is_up(), "never self");
    }
}

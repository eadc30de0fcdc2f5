//! Who the peers are: the configured `--peer` list, each name re-resolved
//! periodically (every address is a peer), and the tasks that serve one
//! peer. Also the lone-replica readiness fallback.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::Ctx;
use crate::cluster::peer::Peer;
use crate::cluster::transport::Link;

/// How often peer names are resolved again (a scaled headless service shows up).
const RESOLVE_EVERY: Duration = Duration::from_secs(15);
/// With no peer answering at all for this long, a starting replica reports
/// ready anyway: a lone survivor must serve rather than stay out forever.
pub const LONE_AFTER: Duration = Duration::from_secs(30);
/// Queued delta batches per peer; a slow peer drops beyond this (pull repairs).
const DELTA_QUEUE: usize = 64;

/// Resolves the configured peers, keeps one pull task and one send task per
/// address, and applies the lone-replica readiness fallback.
pub async fn run<T: Link>(mut ctx: Ctx<T>) {
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

fn lone_fallback<T: Link>(ctx: &Ctx<T>, started: Instant, answered: &AtomicBool) {
    let c = ctx.cluster();
    if !c.caught_up() && !answered.load(Ordering::Relaxed) && started.elapsed() >= LONE_AFTER {
        tracing::warn!(after = ?LONE_AFTER, "no peer answered: reporting ready without catching up");
        c.set_caught_up();
    }
}

async fn resolve<T: Link>(
    ctx: &Ctx<T>,
    tasks: &mut HashMap<String, JoinSet<()>>,
    answered: &Arc<AtomicBool>,
) {
    let found = resolve_all(ctx).await;
    if found.is_empty() {
        // Resolution failed everywhere: keep the peers we had.
        return;
    }
    let addrs: Vec<String> = found.iter().map(|(addr, _)| addr.clone()).collect();
    drop_gone(tasks, &addrs);
    let c = ctx.cluster();
    c.outbox
        .relay
        .store(addrs.len() > crate::cluster::FANOUT, Ordering::Relaxed);
    let mut peers = c.peers.write();
    peers.retain(|p| addrs.contains(&p.addr));
    for (addr, name) in found {
        if let Entry::Vacant(slot) = tasks.entry(addr) {
            let (peer, set) = start_peer(ctx, slot.key().clone(), name, answered);
            peers.push(peer);
            slot.insert(set);
        }
    }
}

/// Every configured name resolved: `(address, name it came from)`, sorted
/// by address, each address once (behind two names it keeps the first).
async fn resolve_all<T: Link>(ctx: &Ctx<T>) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for name in &ctx.state.cfg.peer {
        let addrs = ctx.link.resolve(name).await;
        found.extend(addrs.into_iter().map(|a| (a, name.clone())));
    }
    found.sort();
    found.dedup_by(|a, b| a.0 == b.0);
    found
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

/// A new peer and its pull and send tasks, owned by the returned set.
fn start_peer<T: Link>(
    ctx: &Ctx<T>,
    addr: String,
    name: String,
    answered: &Arc<AtomicBool>,
) -> (Arc<Peer>, JoinSet<()>) {
    let (tx, rx) = mpsc::channel(DELTA_QUEUE);
    let peer = Arc::new(Peer::new(addr, name, tx));
    let mut set = JoinSet::new();
    set.spawn(super::pull::run(
        ctx.clone(),
        peer.clone(),
        answered.clone(),
    ));
    set.spawn(super::deltas::send_loop(ctx.clone(), peer.clone(), rx));
    (peer, set)
}

//! Replication between pollgate replicas: delta push, pull anti-entropy,
//! readiness and the LWW cluster config, all over authenticated gossip.
//! The protocol is written down in `PROTOCOL.md` beside this file.
//!
//! [`Cluster`] is the shared part that lives in [`State`] (inbound handling,
//! outbox, metrics, readiness gate); [`ClusterHandle`] owns every task.

pub mod api;
pub mod auth;
pub mod codec;
mod delta;
mod membership;
mod metrics;
mod pull;
pub mod transport;

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::RwLock;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::state::State;
use crate::table::Table;
use crate::tunables::Tunables;

use auth::{Auth, Reject};
use codec::{Item, Message, Reply, Request};
use delta::Outbox;
use membership::Peer;
pub use metrics::ClusterMetrics;
pub use transport::Transport;

/// Pushes go to at most this many peers per round; more peers get a random
/// subset and relay what they learn (epidemic spread), fewer get everything.
pub const FANOUT: usize = 8;

/// Where the merges running on this thread come from, so the advance hook
/// can tell a local change (always pushed) from one learned from a peer
/// (relayed only past FANOUT) or a bulk load that must not be pushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    Local,
    Peer,
    Quiet,
}

thread_local! {
    static ORIGIN: Cell<Origin> = const { Cell::new(Origin::Local) };
}

/// Runs `f` with its merges marked `origin` (restored after, even on panic).
fn merging_as<R>(origin: Origin, f: impl FnOnce() -> R) -> R {
    struct Restore(Origin);
    impl Drop for Restore {
        fn drop(&mut self) {
            ORIGIN.with(|o| o.set(self.0));
        }
    }
    let _restore = Restore(ORIGIN.with(|o| o.replace(origin)));
    f()
}

/// Runs `f` (on this thread) without pushing the keys its merges advance.
/// For bulk loads such as a snapshot at start-up: peers already have those
/// versions or will pull them, and pushing a million keys to every peer at
/// each restart would be pure waste.
pub fn without_push<R>(f: impl FnOnce() -> R) -> R {
    merging_as(Origin::Quiet, f)
}

/// The gossip state every request handler can reach through [`State`].
pub struct Cluster {
    node_id: String,
    /// Peers configured: gossip runs and readiness waits for a first pull.
    pub enabled: bool,
    auth: Auth,
    outbox: Arc<Outbox>,
    /// False until a first complete pull from a peer (or no peer was reachable
    /// for [`membership::LONE_AFTER`]); `/readyz` needs it and `State::ready`.
    caught_up: AtomicBool,
    /// Held by a pull round while not caught up: the first full transfer
    /// comes from one peer at a time instead of all of them at once
    /// (each would bring the whole table), so readiness comes sooner.
    catching_up: tokio::sync::Mutex<()>,
    peers: RwLock<Vec<Arc<Peer>>>,
    pub metrics: ClusterMetrics,
}

impl Cluster {
    pub fn new(cfg: &Config) -> Self {
        let enabled = !cfg.peer.is_empty();
        Cluster {
            node_id: cfg.node_id.clone(),
            enabled,
            auth: Auth::new(cfg.cluster_key.as_deref()),
            outbox: Arc::new(Outbox::new(cfg.peer.len() > FANOUT)),
            caught_up: AtomicBool::new(!enabled),
            catching_up: tokio::sync::Mutex::new(()),
            peers: RwLock::new(Vec::new()),
            metrics: ClusterMetrics::default(),
        }
    }

    /// Feeds the outbox from every advancing merge. Called once by `State::new`.
    pub fn hook_into(&self, table: &Table) {
        if self.enabled {
            let outbox = self.outbox.clone();
            table.on_advance(Box::new(move |k, _| {
                outbox.note(k, ORIGIN.with(Cell::get));
            }));
        }
    }

    pub fn caught_up(&self) -> bool {
        self.caught_up.load(Ordering::Acquire)
    }

    fn set_caught_up(&self) {
        if !self.caught_up.swap(true, Ordering::AcqRel) {
            tracing::info!("caught up with peers: ready as far as the cluster goes");
        }
    }

    /// Sends the config with the next push round (after `PUT /v1/config`).
    pub fn config_changed(&self) {
        self.outbox.config_dirty.store(true, Ordering::Release);
    }

    fn reject(&self, r: Reject) -> Reject {
        self.metrics.rejected[r as usize].inc();
        r
    }

    /// Handles one inbound frame: verify, decode, merge, answer (sealed).
    pub fn handle(&self, state: &State, frame: Bytes) -> Result<Bytes, Reject> {
        self.metrics.bytes_received.add(frame.len() as u64);
        let opened = self.auth.open(frame).map_err(|r| self.reject(r))?;
        let msg = codec::decode_message(&opened.body).map_err(|e| {
            tracing::warn!(error = %e, "malformed gossip message");
            self.reject(Reject::Malformed)
        })?;
        let body = self.answer(state, msg);
        let sealed = self.auth.seal_reply(&opened.mac, &body);
        self.metrics.bytes_sent.add(sealed.len() as u64);
        Ok(sealed)
    }

    /// The encoded reply to a verified message.
    fn answer(&self, state: &State, msg: Message) -> Bytes {
        if msg.from == self.node_id {
            return codec::encode_reply(&Reply::IsSelf);
        }
        apply_config(&state.tunables, &msg.config);
        match msg.body {
            Request::Push(items) => {
                self.merge(&state.table, &items);
                let config = current_config(&state.tunables);
                codec::encode_reply(&Reply::Ack { config })
            }
            Request::Pull { epoch, seqs } => pull::serve(state, epoch, &seqs),
        }
    }

    /// Max-merges items learned from a peer (a trusted source: they confirm).
    fn merge(&self, table: &Table, items: &[Item]) {
        self.metrics.versions_received.add(items.len() as u64);
        let now = table.now_ms();
        merging_as(Origin::Peer, || {
            for i in items {
                match i.confirmed_ago_ms {
                    Some(ago) => table.merge_at(&i.key, i.version, now.saturating_sub(ago)),
                    None => table.merge(&i.key, i.version, false),
                };
            }
        });
    }

    fn render(&self, o: &mut String) {
        metrics::render(self, &self.peers.read(), o);
    }
}

/// Runs CPU-heavy gossip work (serving or merging a pull page of up to
/// 4 MiB) without stalling the other tasks of this worker thread, when the
/// runtime can hand them to another worker; inline otherwise (simulator).
pub fn blocking<R>(f: impl FnOnce() -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

fn current_config(t: &Tunables) -> codec::Config {
    codec::Config {
        stamp: t.stamp(),
        values: t.get(),
    }
}

fn apply_config(t: &Tunables, c: &codec::Config) {
    if c.stamp > t.stamp() && api::sane(&c.values).is_ok() && t.apply(&c.values, c.stamp.clone()) {
        tracing::info!(stamp = ?c.stamp, values = ?c.values, "cluster config applied from a peer");
    }
}

/// Owns every gossip task; `shutdown` stops and awaits them.
pub struct ClusterHandle {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl ClusterHandle {
    /// Starts gossip for `state` over `transport`. Without peers it starts
    /// nothing (a lone replica) but still registers its metrics.
    pub fn start<T: Transport>(state: Arc<State>, transport: Arc<T>) -> ClusterHandle {
        let weak = Arc::downgrade(&state);
        state.metrics.register(Box::new(move |o| {
            if let Some(s) = weak.upgrade() {
                s.cluster.render(o);
            }
        }));
        let (stop, _) = watch::channel(false);
        let mut tasks = Vec::new();
        if state.cluster.enabled {
            let ctx = Ctx {
                state,
                transport,
                stop: stop.subscribe(),
            };
            tasks.push(tokio::spawn(membership::run(ctx.clone())));
            tasks.push(tokio::spawn(delta::flush_loop(ctx)));
        }
        ClusterHandle { stop, tasks }
    }

    pub async fn shutdown(self) {
        self.stop.send_replace(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// What every gossip task needs.
struct Ctx<T> {
    state: Arc<State>,
    transport: Arc<T>,
    stop: watch::Receiver<bool>,
}

impl<T> Clone for Ctx<T> {
    fn clone(&self) -> Self {
        Ctx {
            state: self.state.clone(),
            transport: self.transport.clone(),
            stop: self.stop.clone(),
        }
    }
}

impl<T: Transport> Ctx<T> {
    fn cluster(&self) -> &Cluster {
        &self.state.cluster
    }

    /// Sleeps `d`; false when shutdown started meanwhile.
    async fn sleep(&mut self, d: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => !*self.stop.borrow(),
            _ = crate::shutdown::stopping(&mut self.stop) => false,
        }
    }

    /// Seals, sends and opens the reply of one exchange.
    async fn exchange(&self, peer: &str, msg: &Message) -> Result<Reply, transport::SendError> {
        use transport::Path;
        let path = match msg.body {
            Request::Push(_) => Path::Push,
            Request::Pull { .. } => Path::Pull,
        };
        let c = self.cluster();
        let (frame, mac) = c.auth.seal(&codec::encode_message(msg));
        c.metrics.bytes_sent.add(frame.len() as u64);
        let reply = self.transport.send(peer, path, frame).await?;
        self.open(reply, &mac)
    }

    /// Verifies and decodes the reply to the request whose MAC is `mac`.
    fn open(&self, reply: Bytes, mac: &[u8; auth::MAC_LEN]) -> Result<Reply, transport::SendError> {
        use transport::SendError;
        let c = self.cluster();
        c.metrics.bytes_received.add(reply.len() as u64);
        let body = c.auth.open_reply(reply, mac).map_err(|r| {
            c.reject(r);
            SendError::Refused(format!("reply: {r}"))
        })?;
        codec::decode_reply(&body).map_err(|e| {
            c.reject(Reject::Malformed);
            SendError::Refused(format!("reply: {e}"))
        })
    }

    fn message(&self, body: Request) -> Message {
        Message {
            from: self.cluster().node_id.clone(),
            config: current_config(&self.state.tunables),
            body,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(peers: usize) -> (Cluster, Table) {
        let cfg = Config {
            peer: (0..peers).map(|i| format!("p{i}:1")).collect(),
            cluster_key: Some("k".into()),
            ..Config::default()
        };
        let (c, t) = (Cluster::new(&cfg), Table::new());
        c.hook_into(&t);
        (c, t)
    }

    fn pushed(c: &Cluster) -> Vec<String> {
        let mut v: Vec<String> = c.outbox.take().into_iter().map(Into::into).collect();
        v.sort();
        v
    }

    #[test]
    fn only_local_advances_are_pushed_below_fanout() {
        let (c, t) = cluster(2);
        t.merge("local", 1, true);
        t.merge("local", 1, true);
        without_push(|| t.merge("snapshot", 1, false));
        c.merge(
            &t,
            &[codec::Item {
                key: "from-peer".into(),
                version: 1,
                confirmed_ago_ms: None,
            }],
        );
        t.merge("after", 1, true);
        assert_eq!(pushed(&c), ["after", "local"]);
    }

    #[test]
    fn peer_versions_are_relayed_beyond_fanout() {
        let (c, t) = cluster(FANOUT + 1);
        let item = codec::Item {
            key: "from-peer".into(),
            version: 1,
            confirmed_ago_ms: Some(5),
        };
        c.merge(&t, std::slice::from_ref(&item));
        c.merge(&t, &[item]);
        without_push(|| t.merge("snapshot", 1, false));
        assert_eq!(pushed(&c), ["from-peer"]);
        assert!(
            t.get("from-peer").unwrap().confirmed_ms > 0,
            "peers confirm"
        );
    }

    #[test]
    fn a_lone_replica_has_no_hook_and_is_caught_up() {
        let (c, t) = cluster(0);
        t.merge("a", 1, true);
        assert!(pushed(&c).is_empty());
        assert!(c.caught_up());
        assert!(!cluster(1).0.caught_up());
    }
}

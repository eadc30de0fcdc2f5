//! Replication's shared core, held by the state: inbound gossip handling,
//! the outbox of deltas, peers, readiness and metrics. The tasks that use it
//! (sending deltas, pulling, membership) and its HTTP endpoints live in
//! `gossip`. The protocol is written down in `PROTOCOL.md` beside this file.

pub mod auth;
pub mod codec;
mod metrics;
pub mod outbox;
pub mod page;
pub mod peer;
pub mod transport;

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::RwLock;

use crate::config::Config;
use crate::table::{AdvanceHook, Table};
use crate::tunables::Tunables;

use auth::{Auth, Reject};
use codec::{Identity, Item, Message, Reply, Request};
pub use metrics::ClusterMetrics;
use outbox::Outbox;
use peer::Peer;
pub use transport::Link;

/// Deltas go to at most this many peers per round; more peers get a random
/// subset and relay what they learn (epidemic spread), fewer get everything.
pub const FANOUT: usize = 8;

/// Where the merges running on this thread come from, so the advance hook
/// can tell a local change (always sent) from one learned from a peer
/// (relayed only past FANOUT). Bulk loads stay quiet another way: they run
/// before the hooks are registered (see `app::run`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    Local,
    Peer,
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

/// The gossip state every request handler can reach through [`State`].
pub struct Cluster {
    pub(crate) node_id: String,
    /// Random per process: a peer answering with our `node_id` is this
    /// replica when it also has our instance, and a clash when it does not.
    pub(crate) instance: u64,
    /// Peers configured: gossip runs and readiness waits for a first pull.
    pub enabled: bool,
    /// Whether the gossip endpoints exist at all: only with a `cluster_key`,
    /// or `insecure_cluster` together with `peer`. Without it anyone who
    /// reaches the internal listener could forge frames with the empty key.
    pub serves_gossip: bool,
    pub(crate) auth: Auth,
    pub(crate) outbox: Arc<Outbox>,
    /// False until a first complete pull from a peer (or no peer was reachable
    /// for [`membership::LONE_AFTER`]); `/readyz` needs it and `State::ready`.
    pub(crate) caught_up: AtomicBool,
    /// Woken when `caught_up` turns true (sd_notify's READY=1 waits on it).
    pub caught_up_changed: tokio::sync::Notify,
    /// Held by a pull round while not caught up: the first full transfer
    /// comes from one peer at a time instead of all of them at once
    /// (each would bring the whole table), so readiness comes sooner.
    pub(crate) catching_up: tokio::sync::Mutex<()>,
    pub(crate) peers: RwLock<Vec<Arc<Peer>>>,
    pub metrics: ClusterMetrics,
}

impl Cluster {
    pub fn new(cfg: &Config) -> Self {
        let enabled = !cfg.peer.is_empty();
        Cluster {
            node_id: cfg.node_id.clone(),
            instance: fastrand::u64(..),
            enabled,
            serves_gossip: !cfg.cluster_key.is_empty() || (enabled && cfg.insecure_cluster),
            auth: Auth::new(&cfg.cluster_key),
            outbox: Arc::new(Outbox::new(cfg.peer.len() > FANOUT)),
            caught_up: AtomicBool::new(!enabled),
            caught_up_changed: tokio::sync::Notify::new(),
            catching_up: tokio::sync::Mutex::new(()),
            peers: RwLock::new(Vec::new()),
            metrics: ClusterMetrics::default(),
        }
    }

    /// The advance hook that feeds the outbox (`None` without peers: a lone
    /// replica has nobody to tell). Registered by `app::run` after the
    /// snapshot load, so a bulk load is never sent to peers.
    pub fn advance_hook(&self) -> Option<AdvanceHook> {
        let outbox = self.outbox.clone();
        self.enabled.then(|| -> AdvanceHook {
            Box::new(move |k, _| outbox.note(k, ORIGIN.with(Cell::get)))
        })
    }

    /// A reload's `cluster_key` list (see [`Auth::set_keys`]).
    pub fn set_keys(&self, keys: &[String]) {
        if self.serves_gossip {
            self.auth.set_keys(keys);
        }
    }

    pub fn caught_up(&self) -> bool {
        self.caught_up.load(Ordering::Acquire)
    }

    pub(crate) fn set_caught_up(&self) {
        if !self.caught_up.swap(true, Ordering::AcqRel) {
            self.caught_up_changed.notify_waiters();
            tracing::info!("caught up with peers: ready as far as the cluster goes");
        }
    }

    /// Sends the config with the next round of deltas (after `PUT /v1/config`).
    pub fn config_changed(&self) {
        self.outbox.config_dirty.store(true, Ordering::Release);
    }

    pub(crate) fn reject(&self, r: Reject) -> Reject {
        self.metrics.rejected[r as usize].inc();
        r
    }

    /// Handles one inbound frame: verify, decode, check it is addressed to
    /// this replica, merge, answer (sealed).
    pub fn handle(
        &self,
        table: &Table,
        tunables: &Tunables,
        frame: Bytes,
    ) -> Result<Bytes, Reject> {
        self.metrics.bytes_received.add(frame.len() as u64);
        let opened = self.auth.open(frame).map_err(|r| self.reject(r))?;
        let msg = codec::decode_message(&opened.body).map_err(|e| {
            tracing::warn!(error = %e, "malformed gossip message");
            self.reject(Reject::Malformed)
        })?;
        let body = match self.addressed(&opened.to, &msg.from) {
            true => self.answer(table, tunables, msg),
            false => codec::encode_reply(&Reply::Identity(self.identity())),
        };
        let sealed = self.auth.seal_reply(&opened.mac, &body);
        self.metrics.bytes_sent.add(sealed.len() as u64);
        Ok(sealed)
    }

    pub(crate) fn identity(&self) -> Identity {
        Identity {
            node_id: self.node_id.clone(),
            instance: self.instance,
        }
    }

    /// Whether a request is for this replica: sealed for our `node_id`, by
    /// another one. Otherwise nothing in it is used and it is answered with
    /// our identity. A `to` naming another replica (a frame replayed to the
    /// wrong one, or an address that now reaches us instead) is counted; an
    /// empty one is a sender that does not know us yet.
    fn addressed(&self, to: &[u8], from: &str) -> bool {
        if to != self.node_id.as_bytes() {
            if !to.is_empty() {
                self.reject(Reject::Misaddressed);
                let to = String::from_utf8_lossy(to);
                tracing::debug!(%to, "gossip request for another replica: answered with our identity");
            }
            return false;
        }
        from != self.node_id
    }

    /// The encoded reply to a verified message addressed to us.
    fn answer(&self, table: &Table, tunables: &Tunables, msg: Message) -> Bytes {
        apply_config(tunables, &msg.config);
        match msg.body {
            Request::Deltas(items) => {
                self.merge(table, &items);
                let config = current_config(tunables);
                codec::encode_reply(&Reply::Ack { config })
            }
            Request::Pull { epoch, seqs } => page::serve(table, tunables, epoch, &seqs),
        }
    }

    /// Max-merges items learned from a peer (a trusted source: they confirm).
    pub(crate) fn merge(&self, table: &Table, items: &[Item]) {
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

    pub fn render(&self, o: &mut String) {
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

pub(crate) fn current_config(t: &Tunables) -> codec::ConfigFrame {
    codec::ConfigFrame {
        stamp: t.stamp(),
        values: t.get(),
    }
}

pub(crate) fn apply_config(t: &Tunables, c: &codec::ConfigFrame) {
    if c.stamp > t.stamp() && c.values.sane().is_ok() && t.apply(&c.values, c.stamp.clone()) {
        tracing::info!(stamp = ?c.stamp, values = ?c.values, "cluster config applied from a peer");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(peers: usize) -> (Cluster, Table) {
        let cfg = Config {
            peer: (0..peers).map(|i| format!("p{i}:1")).collect(),
            cluster_key: vec!["k".into()],
            ..Config::default()
        };
        let (c, t) = (Cluster::new(&cfg), Table::new());
        // A bulk load before the hook is registered is never sent.
        t.merge("snapshot", 1, false);
        if let Some(hook) = c.advance_hook() {
            t.on_advance(hook);
        }
        (c, t)
    }

    fn sent(c: &Cluster) -> Vec<String> {
        let mut v: Vec<String> = c.outbox.take().into_iter().map(Into::into).collect();
        v.sort();
        v
    }

    #[test]
    fn only_local_advances_are_sent_below_fanout() {
        let (c, t) = cluster(2);
        t.merge("local", 1, true);
        t.merge("local", 1, true);
        c.merge(
            &t,
            &[codec::Item {
                key: "from-peer".into(),
                version: 1,
                confirmed_ago_ms: None,
            }],
        );
        t.merge("after", 1, true);
        assert_eq!(sent(&c), ["after", "local"]);
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
        assert_eq!(sent(&c), ["from-peer"]);
        assert!(
            t.get("from-peer").unwrap().confirmed_ms > 0,
            "peers confirm"
        );
    }

    /// One item and a config stamp that would win, sealed as a peer would.
    fn sealed(c: &Cluster, to: &str, from: &str) -> (Bytes, [u8; auth::MAC_LEN]) {
        let tunables = Tunables::from_config(&Config::default());
        let mut values = tunables.get();
        values.max_age_ms = 0;
        let msg = Message {
            from: from.into(),
            config: codec::ConfigFrame {
                stamp: crate::tunables::Stamp {
                    at_ms: auth::unix_ms(),
                    node: from.into(),
                },
                values,
            },
            body: Request::Deltas(vec![codec::Item {
                key: "k".into(),
                version: 1,
                confirmed_ago_ms: None,
            }]),
        };
        c.auth.seal(to, &codec::encode_message(&msg))
    }

    #[test]
    fn only_frames_sealed_for_this_node_id_are_used() {
        let (c, t) = cluster(1);
        let tunables = Tunables::from_config(&Config::default());
        let reply = |to: &str, from: &str| {
            let (frame, mac) = sealed(&c, to, from);
            let r = c.handle(&t, &tunables, frame).unwrap();
            codec::decode_reply(&c.auth.open_reply(r, &mac).unwrap()).unwrap()
        };
        let me = c.identity();
        // Unknown recipient, another replica's frame, one from our own name.
        for (to, from) in [
            ("", "peer"),
            ("other:8081", "peer"),
            (&*me.node_id, &*me.node_id),
        ] {
            assert_eq!(reply(to, from), Reply::Identity(me.clone()), "{to:?}");
        }
        assert_eq!(t.get("k").map(|e| e.version), None, "merged");
        assert_ne!(tunables.get().max_age_ms, 0, "config applied");
        assert_eq!(c.metrics.rejected[Reject::Misaddressed as usize].get(), 1);
        assert!(matches!(reply(&me.node_id, "peer"), Reply::Ack { .. }));
        assert_eq!(t.get("k").map(|e| e.version), Some(1));
        assert_eq!(tunables.get().max_age_ms, 0);
    }

    #[test]
    fn a_lone_replica_has_no_hook_and_is_caught_up() {
        let (c, t) = cluster(0);
        t.merge("a", 1, true);
        assert!(sent(&c).is_empty());
        assert!(c.caught_up());
        assert!(!cluster(1).0.caught_up());
    }
}

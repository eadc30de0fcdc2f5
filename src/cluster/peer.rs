//! One peer address and what this replica knows of it: its health window,
//! when it last took deltas and answered a pull, and its queue of deltas.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};

use bytes::Bytes;
use parking_lot::RwLock;
use tokio::sync::mpsc;

/// Health window (Varnish-style): a peer is up when at least `GOOD` of its
/// last 8 probes (pulls) succeeded. The window starts with `GOOD - 1`
/// successes (Varnish's `.initial`), so a new peer is down until its first
/// answer and up right after it, even if it failed while it was starting.
const GOOD: u32 = 3;
const INITIAL: u8 = (1 << (GOOD - 1)) - 1;

/// One peer address and what we know of it.
pub struct Peer {
    pub addr: String,
    /// The configured `--peer` name the address came from: the metrics
    /// label. Behind a headless Service addresses change with every pod; the
    /// name does not, so the label values stay bounded by the config.
    pub name: String,
    /// Probe results, newest in bit 0.
    window: AtomicU8,
    /// The `node_id` that answers at this address, learned from its
    /// `Identity` reply (empty until then): what requests are sealed for.
    recipient: RwLock<String>,
    /// The address turned out to be this replica: leave it alone.
    pub is_self: AtomicBool,
    /// Another replica with our `node_id` answers here: a misconfiguration
    /// (it could accept frames meant for us), never gossiped with.
    pub clash: AtomicBool,
    last_deltas_ms: AtomicU64,
    last_pull_ms: AtomicU64,
    /// Changes at this peer not yet pulled, as of the last pull page.
    behind: AtomicU64,
    /// Delta messages waiting for this peer's send task.
    pub deltas: mpsc::Sender<Bytes>,
}

impl Peer {
    pub fn new(addr: String, name: String, deltas: mpsc::Sender<Bytes>) -> Self {
        Peer {
            addr,
            name,
            window: AtomicU8::new(INITIAL),
            recipient: RwLock::new(String::new()),
            is_self: AtomicBool::new(false),
            clash: AtomicBool::new(false),
            last_deltas_ms: AtomicU64::new(0),
            last_pull_ms: AtomicU64::new(0),
            behind: AtomicU64::new(0),
            deltas,
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
        good >= GOOD && !self.is_self.load(Ordering::Relaxed) && !self.clash.load(Ordering::Relaxed)
    }

    /// The `node_id` to seal requests for; empty while unknown.
    pub fn recipient(&self) -> String {
        self.recipient.read().clone()
    }

    /// Remembers who answers here now; returns who did before (empty: nobody known).
    pub fn set_recipient(&self, node_id: String) -> String {
        std::mem::replace(&mut *self.recipient.write(), node_id)
    }

    pub fn last_deltas(&self) -> u64 {
        self.last_deltas_ms.load(Ordering::Relaxed)
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

    pub fn sent_deltas(&self) {
        self.last_deltas_ms
            .store(super::auth::unix_ms(), Ordering::Relaxed);
    }

    pub fn pulled(&self) {
        self.last_pull_ms
            .store(super::auth::unix_ms(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    #[test]
    fn window_is_three_of_the_last_eight() {
        let (tx, _rx) = mpsc::channel(1);
        let p = Peer::new("a".into(), "a".into(), tx);
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
        p.clash.store(true, Ordering::Relaxed);
        assert!(!p.is_up(), "never a clashing node_id");
        p.clash.store(false, Ordering::Relaxed);
        p.is_self.store(true, Ordering::Relaxed);
        assert!(!p.is_up(), "never self");
    }
}

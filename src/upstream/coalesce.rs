//! Per-key coalescing: for a cold or expired key one request goes upstream
//! (the leader); concurrent polls of that key wait, bounded, for it to learn
//! the version and are then answered from memory.

use std::time::Duration;

use compact_str::CompactString;
use dashmap::DashMap;
use tokio::sync::watch;

#[derive(Default)]
pub struct Coalescer {
    inflight: DashMap<CompactString, watch::Receiver<()>, foldhash::fast::RandomState>,
}

/// Who goes upstream for a key.
pub enum Role<'a> {
    Leader(Leader<'a>),
    Follower(Follower),
}

/// Held by the one request that went upstream; dropping it wakes the followers.
pub struct Leader<'a> {
    coalescer: &'a Coalescer,
    key: CompactString,
    _done: watch::Sender<()>,
}

pub struct Follower {
    rx: watch::Receiver<()>,
}

impl Coalescer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Becomes the leader for `key` if nobody is, else a follower of the leader.
    pub fn join(&self, key: &str) -> Role<'_> {
        use dashmap::mapref::entry::Entry;
        match self.inflight.entry(CompactString::new(key)) {
            Entry::Occupied(e) => Role::Follower(Follower { rx: e.get().clone() }),
            Entry::Vacant(e) => {
                let (tx, rx) = watch::channel(());
                let key = e.key().clone();
                e.insert(rx);
                Role::Leader(Leader { coalescer: self, key, _done: tx })
            }
        }
    }

    /// Keys with a leader upstream right now (revalidations in flight).
    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        // Remove first so a poll arriving after the wake-up sees the learned
        // version in the table rather than joining a finished leader.
        self.coalescer.inflight.remove(&self.key);
        // `_done` drops after this body: followers see the channel close.
    }
}

impl Follower {
    /// Waits until the leader is done (true) or `max` passes (false).
    pub async fn wait(mut self, max: Duration) -> bool {
        // `changed` errs when the sender drops, which is exactly "leader done".
        tokio::time::timeout(max, async {
            while self.rx.changed().await.is_ok() {}
        })
        .await
        .is_ok()
    }
}

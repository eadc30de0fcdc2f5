//! The outbox: keys that advanced, collected by the table's advance hook
//! until the gossip task sends them to peers as a batch of deltas.

use compact_str::CompactString;
use hashbrown::HashSet;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use super::Origin;

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
    pub(crate) fn note(&self, key: &str, origin: Origin) {
        let send = match origin {
            Origin::Local => true,
            Origin::Peer => self.relay.load(Ordering::Relaxed),
        };
        if !send {
            return;
        }
        let mut keys = self.keys.lock();
        if keys.len() < OUTBOX_CAP {
            keys.insert(CompactString::new(key));
        } else {
            self.dropped.store(true, Ordering::Relaxed);
        }
    }

    pub fn take(&self) -> HashSet<CompactString> {
        std::mem::take(&mut *self.keys.lock())
    }
}

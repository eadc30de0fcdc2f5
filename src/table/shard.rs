//! One shard of the table: its slots (in fixed chunks), the index over
//! them, its keys and its recent changes.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use hashbrown::HashTable;
use parking_lot::{Mutex, RwLock};

use super::keys::Keys;
use super::{Entry, Merge};

/// Slots per chunk. Growing a shard allocates one more chunk instead of copying
/// every slot (no 2× peak, no moved atomics); waste is < one chunk (10 KiB) per shard.
pub(super) const CHUNK: usize = 256;

/// One key's state: 24 bytes. The numbers are atomics so merging into an
/// existing key needs only the shard's read lock: polls never wait behind
/// advancing merges.
pub(super) struct Slot {
    pub(super) version: AtomicU64,
    pub(super) confirmed_ms: AtomicU64,
    /// The low 32 bits of the shard's change count when this slot last
    /// advanced (pull anti-entropy; see [`Table::changed_since`] for why 32 suffice).
    pub(super) seq: AtomicU32,
    /// Where the key's bytes are in the shard's [`Keys`].
    pub(super) key: u32,
}

impl Slot {
    /// A new key's slot; a key that was never confirmed gets 0 (expired).
    pub(super) fn new(key: u32, version: u64, confirm_ms: Option<u64>) -> Slot {
        Slot {
            version: AtomicU64::new(version),
            confirmed_ms: AtomicU64::new(confirm_ms.unwrap_or(0)),
            seq: AtomicU32::new(0),
            key,
        }
    }

    pub(super) fn entry(&self) -> Entry {
        // Version first: a reader that sees a new version with a slightly older
        // confirmation only forwards one poll too many, never answers stale.
        let version = self.version.load(Ordering::Acquire);
        let confirmed_ms = self.confirmed_ms.load(Ordering::Acquire);
        Entry {
            version,
            confirmed_ms,
        }
    }

    /// Max-merges into this slot; `confirm_ms` is applied (as a max, so racing
    /// confirmations cannot move it back) only when `version` ≥ the stored one.
    pub(super) fn merge(&self, version: u64, confirm_ms: Option<u64>) -> Merge {
        let prev = self.version.fetch_max(version, Ordering::AcqRel);
        if version < prev {
            return Merge::Unchanged;
        }
        if let Some(ms) = confirm_ms {
            self.confirmed_ms.fetch_max(ms, Ordering::AcqRel);
        }
        if version == prev {
            Merge::Unchanged
        } else {
            Merge::Advanced { from: prev }
        }
    }
}

#[derive(Default)]
pub(super) struct ShardInner {
    /// Slot numbers, hashed by their slot's key. `u32` keeps a bucket at 5 bytes.
    pub(super) index: HashTable<u32>,
    /// Every chunk but the last is full; each is allocated with exactly `CHUNK` capacity
    /// and never pushed beyond it, so slots never move.
    pub(super) chunks: Vec<Vec<Slot>>,
    pub(super) keys: Keys,
    pub(super) len: usize,
}

/// Slot `n` of `chunks`.
pub(super) fn slot_in(chunks: &[Vec<Slot>], n: u32) -> &Slot {
    let n = n as usize;
    &chunks[n / CHUNK][n % CHUNK]
}

impl ShardInner {
    pub(super) fn slot(&self, n: u32) -> &Slot {
        slot_in(&self.chunks, n)
    }

    pub(super) fn key(&self, slot: &Slot) -> &str {
        self.keys.str(slot.key)
    }

    /// Every slot with its key, in slot order.
    pub(super) fn slots(&self) -> impl Iterator<Item = (&str, &Slot)> {
        self.chunks.iter().flatten().map(|s| (self.key(s), s))
    }

    pub(super) fn find(&self, hash: u64, key: &str) -> Option<&Slot> {
        self.find_n(hash, key).map(|(_, slot)| slot)
    }

    /// The slot and its number (for the shard's recent-changes list).
    pub(super) fn find_n(&self, hash: u64, key: &str) -> Option<(u32, &Slot)> {
        let key = key.as_bytes();
        let n = *self
            .index
            .find(hash, |&n| self.keys.bytes(self.slot(n).key) == key)?;
        Some((n, self.slot(n)))
    }

    /// The number of `key`'s slot, and whether it was just made for `version`
    /// and `confirm_ms`. One probe either way. The caller holds the write lock.
    pub(super) fn find_or_insert(
        &mut self,
        hash: u64,
        key: &str,
        version: u64,
        confirm_ms: Option<u64>,
        rehash: impl Fn(&str) -> u64,
    ) -> (u32, bool) {
        let ShardInner {
            index,
            chunks,
            keys,
            len,
        } = self;
        let key_of = |n: &u32| keys.bytes(slot_in(chunks, *n).key);
        let vacant = match index.entry(
            hash,
            |n| key_of(n) == key.as_bytes(),
            |n| rehash(keys.str(slot_in(chunks, *n).key)),
        ) {
            hashbrown::hash_table::Entry::Occupied(e) => return (*e.get(), false),
            hashbrown::hash_table::Entry::Vacant(v) => v,
        };
        if len.is_multiple_of(CHUNK) {
            chunks.push(Vec::with_capacity(CHUNK));
        }
        let n = u32::try_from(*len).expect("a shard holds fewer than 2^32 keys");
        let slot = Slot::new(keys.push(key), version, confirm_ms);
        chunks.last_mut().expect("pushed above").push(slot);
        *len += 1;
        vacant.insert(n);
        (n, true)
    }

    /// Sizes an empty shard's index for `keys` keys at once, so a bulk load
    /// does not rehash it at every doubling. Only when empty: a batch of keys
    /// the shard already holds must not grow its index a step early.
    pub(super) fn reserve_if_empty(&mut self, n: usize, rehash: impl Fn(&str) -> u64) {
        if self.len == 0 {
            let ShardInner {
                index,
                chunks,
                keys,
                ..
            } = self;
            index.reserve(n, |i| rehash(keys.str(slot_in(chunks, *i).key)));
        }
    }
}

/// Stamps kept per shard: a pull that is at most this many changes behind
/// visits just those slots instead of scanning the shard (~15k slots at 1M
/// keys). 256 covers ~15 s of 1k changes/s spread over 64 shards.
pub(super) const RECENT: usize = 256;

/// A shard's change count and its most recent stamps.
#[derive(Default)]
pub(super) struct Changes {
    pub(super) seq: u64,
    /// `(seq, slot number)` of the last [`RECENT`] stamps, oldest first;
    /// their seqs are consecutive and end at `seq`.
    pub(super) recent: VecDeque<(u64, u32)>,
}

impl Changes {
    /// Records that slot `n` just changed. Caller holds the shard's `inner`
    /// (read or write) and this lock.
    pub(super) fn stamp(&mut self, n: u32, slot: &Slot) {
        self.seq += 1;
        slot.seq.store(self.seq as u32, Ordering::Release);
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back((self.seq, n));
    }

    /// Whether every change after `since` is in `recent`.
    pub(super) fn covers(&self, since: u64) -> bool {
        self.recent.front().is_some_and(|&(s, _)| s <= since + 1)
    }
}

/// Aligned to two cache lines so neighbouring shards' lock words never share one
/// (adjacent-line prefetch on x86 pairs lines).
#[repr(align(128))]
#[derive(Default)]
pub(super) struct Shard {
    pub(super) inner: RwLock<ShardInner>,
    /// Changes (inserts and advances) so far. A mutex rather than an atomic so
    /// that taking the next number and storing it in the slot happen together:
    /// a reader that saw count C under this lock also sees every slot stamped
    /// ≤ C (see [`Table::changed_since`]). Only advancing merges take it.
    pub(super) changes: Mutex<Changes>,
}

impl Shard {
    /// Records that slot `n` just changed. Caller holds `inner` (read or write).
    pub(super) fn stamp(&self, n: u32, slot: &Slot) {
        self.changes.lock().stamp(n, slot);
    }
}

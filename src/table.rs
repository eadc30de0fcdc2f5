//! The sharded version table: key → (max version ever learned, when a trusted
//! source last confirmed it). Merge is `max`, so a version never goes backwards.
//!
//! Layout, chosen to stay under ~48 bytes of RSS per key at 1M keys:
//! a fixed power-of-two number of shards, each a `RwLock` over an index
//! (`HashTable<u32>` of slot numbers, 4 bytes + 1 control byte per bucket),
//! slots stored in fixed-size chunks (24 bytes each: three atomics and the
//! key's position) and the keys' bytes packed into 16 KiB chunks (a one-byte
//! length, then the key: 9 bytes for an 8-byte id).
//! Keys are never removed: versions form a join-semilattice, so there is
//! nothing to tombstone and slot numbers stay valid forever.
//!
//! For pull anti-entropy (see `cluster/PROTOCOL.md`) every shard counts its
//! changes (`seq`) and every slot remembers the count of its last change, so
//! "what changed in shard S since seq N?" is answered from the shard's last
//! 256 stamps when N is that recent, and by one scan of S otherwise.
//! The table's random `epoch` tells a peer that the counts restarted.

use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use hashbrown::HashTable;
use parking_lot::{Mutex, RwLock};

/// What a lookup sees of one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub version: u64,
    /// Milliseconds on the table clock ([`Table::now_ms`]) of the last confirmation.
    pub confirmed_ms: u64,
}

/// What a merge did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merge {
    /// The key was new.
    Inserted,
    /// The version moved up from `from`.
    Advanced { from: u64 },
    /// The version was already at least this high.
    Unchanged,
}

impl Merge {
    /// Whether watchers, peers and snapshots must hear about it.
    pub fn advanced(self) -> bool {
        !matches!(self, Merge::Unchanged)
    }
}

/// Called after every merge that inserted or advanced a key, outside any shard lock.
pub type AdvanceHook = Box<dyn Fn(&str, u64) + Send + Sync>;

/// Default shard count: enough that 2–16 cores rarely meet on one lock, few
/// enough that per-shard overhead (one partly filled chunk) stays negligible.
const DEFAULT_SHARDS: usize = 64;

/// Slots per chunk. Growing a shard allocates one more chunk instead of copying
/// every slot (no 2× peak, no moved atomics); waste is < one chunk (10 KiB) per shard.
const CHUNK: usize = 256;

/// The table clock starts here so `now_ms() - max_age` never underflows for any
/// sane `max_age`, even right after start-up.
const CLOCK_OFFSET_MS: u64 = 10 * 24 * 60 * 60 * 1000;

/// One key's state: 24 bytes. The numbers are atomics so merging into an
/// existing key needs only the shard's read lock: polls never wait behind
/// advancing merges.
struct Slot {
    version: AtomicU64,
    confirmed_ms: AtomicU64,
    /// The low 32 bits of the shard's change count when this slot last
    /// advanced (pull anti-entropy; see [`Table::changed_since`] for why 32 suffice).
    seq: AtomicU32,
    /// Where the key's bytes are in the shard's [`Keys`].
    key: u32,
}

impl Slot {
    /// A new key's slot; a key that was never confirmed gets 0 (expired).
    fn new(key: u32, version: u64, confirm_ms: Option<u64>) -> Slot {
        Slot {
            version: AtomicU64::new(version),
            confirmed_ms: AtomicU64::new(confirm_ms.unwrap_or(0)),
            seq: AtomicU32::new(0),
            key,
        }
    }

    fn entry(&self) -> Entry {
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
    fn merge(&self, version: u64, confirm_ms: Option<u64>) -> Merge {
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

/// Bits of a key position that are the offset in its chunk; the rest are the
/// chunk number. A key never spans two chunks.
const KEY_CHUNK_BITS: u32 = 14;

/// Bytes per key chunk (16 KiB): what a shard wastes at most on key bytes,
/// and a key longer than this gets a chunk of its own.
const KEY_CHUNK: usize = 1 << KEY_CHUNK_BITS;

/// A shard's keys, packed: each is a LEB128 length (one byte below 128) and
/// its bytes. Chunks are never reallocated, so a position stays valid forever
/// and growing never copies. Keys are never removed (see the module doc).
#[derive(Default)]
struct Keys {
    chunks: Vec<Vec<u8>>,
}

impl Keys {
    /// Appends `key`; returns its position.
    fn push(&mut self, key: &str) -> u32 {
        let need = varint_len(key.len()) + key.len();
        let fits = self
            .chunks
            .last()
            .is_some_and(|c| c.len() + need <= KEY_CHUNK.min(c.capacity()));
        if !fits {
            self.chunks.push(Vec::with_capacity(need.max(KEY_CHUNK)));
        }
        let n = self.chunks.len() - 1;
        assert!(
            n < 1 << (32 - KEY_CHUNK_BITS),
            "a shard holds fewer than 4 GiB of keys"
        );
        let chunk = &mut self.chunks[n];
        // Below KEY_CHUNK in a shared chunk; 0 in a chunk of its own.
        let at = chunk.len();
        put_varint(chunk, key.len());
        chunk.extend_from_slice(key.as_bytes());
        ((n << KEY_CHUNK_BITS) | at) as u32
    }

    /// The bytes of the key at `pos`.
    fn bytes(&self, pos: u32) -> &[u8] {
        let chunk = &self.chunks[(pos >> KEY_CHUNK_BITS) as usize];
        let at = (pos as usize) & (KEY_CHUNK - 1);
        let (len, head) = get_varint(&chunk[at..]);
        &chunk[at + head..at + head + len]
    }

    fn str(&self, pos: u32) -> &str {
        std::str::from_utf8(self.bytes(pos)).expect("keys are copied from a &str")
    }

    fn capacity(&self) -> usize {
        self.chunks.iter().map(Vec::capacity).sum()
    }
}

fn varint_len(mut n: usize) -> usize {
    let mut len = 1;
    while n >= 0x80 {
        n >>= 7;
        len += 1;
    }
    len
}

fn put_varint(out: &mut Vec<u8>, mut n: usize) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// `(value, bytes read)`; only ever reads what [`put_varint`] wrote.
fn get_varint(b: &[u8]) -> (usize, usize) {
    let (mut n, mut shift, mut i) = (0usize, 0, 0);
    loop {
        let byte = b[i];
        n |= ((byte & 0x7f) as usize) << shift;
        i += 1;
        if byte < 0x80 {
            return (n, i);
        }
        shift += 7;
    }
}

#[derive(Default)]
struct ShardInner {
    /// Slot numbers, hashed by their slot's key. `u32` keeps a bucket at 5 bytes.
    index: HashTable<u32>,
    /// Every chunk but the last is full; each is allocated with exactly `CHUNK` capacity
    /// and never pushed beyond it, so slots never move.
    chunks: Vec<Vec<Slot>>,
    keys: Keys,
    len: usize,
}

/// Slot `n` of `chunks`.
fn slot_in(chunks: &[Vec<Slot>], n: u32) -> &Slot {
    let n = n as usize;
    &chunks[n / CHUNK][n % CHUNK]
}

impl ShardInner {
    fn slot(&self, n: u32) -> &Slot {
        slot_in(&self.chunks, n)
    }

    fn key(&self, slot: &Slot) -> &str {
        self.keys.str(slot.key)
    }

    /// Every slot with its key, in slot order.
    fn slots(&self) -> impl Iterator<Item = (&str, &Slot)> {
        self.chunks.iter().flatten().map(|s| (self.key(s), s))
    }

    fn find(&self, hash: u64, key: &str) -> Option<&Slot> {
        self.find_n(hash, key).map(|(_, slot)| slot)
    }

    /// The slot and its number (for the shard's recent-changes list).
    fn find_n(&self, hash: u64, key: &str) -> Option<(u32, &Slot)> {
        let key = key.as_bytes();
        let n = *self
            .index
            .find(hash, |&n| self.keys.bytes(self.slot(n).key) == key)?;
        Some((n, self.slot(n)))
    }

    /// The number of `key`'s slot, and whether it was just made for `version`
    /// and `confirm_ms`. One probe either way. The caller holds the write lock.
    fn find_or_insert(
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
    fn reserve_if_empty(&mut self, n: usize, rehash: impl Fn(&str) -> u64) {
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
const RECENT: usize = 256;

/// A shard's change count and its most recent stamps.
#[derive(Default)]
struct Changes {
    seq: u64,
    /// `(seq, slot number)` of the last [`RECENT`] stamps, oldest first;
    /// their seqs are consecutive and end at `seq`.
    recent: VecDeque<(u64, u32)>,
}

impl Changes {
    /// Records that slot `n` just changed. Caller holds the shard's `inner`
    /// (read or write) and this lock.
    fn stamp(&mut self, n: u32, slot: &Slot) {
        self.seq += 1;
        slot.seq.store(self.seq as u32, Ordering::Release);
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back((self.seq, n));
    }

    /// Whether every change after `since` is in `recent`.
    fn covers(&self, since: u64) -> bool {
        self.recent.front().is_some_and(|&(s, _)| s <= since + 1)
    }
}

/// Aligned to two cache lines so neighbouring shards' lock words never share one
/// (adjacent-line prefetch on x86 pairs lines).
#[repr(align(128))]
#[derive(Default)]
struct Shard {
    inner: RwLock<ShardInner>,
    /// Changes (inserts and advances) so far. A mutex rather than an atomic so
    /// that taking the next number and storing it in the slot happen together:
    /// a reader that saw count C under this lock also sees every slot stamped
    /// ≤ C (see [`Table::changed_since`]). Only advancing merges take it.
    changes: Mutex<Changes>,
}

impl Shard {
    /// Records that slot `n` just changed. Caller holds `inner` (read or write).
    fn stamp(&self, n: u32, slot: &Slot) {
        self.changes.lock().stamp(n, slot);
    }
}

pub struct Table {
    shards: Box<[Shard]>,
    /// Right shift turning a hash into a shard number; 64 when there is one shard.
    shard_shift: u32,
    /// Random per table, so clients cannot precompute colliding keys.
    hasher: foldhash::fast::RandomState,
    start: Instant,
    len: AtomicUsize,
    hooks: RwLock<Vec<AdvanceHook>>,
    /// Mirrors `hooks.len()` so merges skip the hooks lock entirely when none exist.
    hook_count: AtomicUsize,
    /// Random per table (per process): shard counts from another epoch mean nothing.
    epoch: u64,
    /// A feed that holds every change (a complete Redis stream) vouches that
    /// every entry confirmed at or after `vouched_from` was still current at
    /// `vouched_upto` (see [`Table::vouch`]). `u64::MAX`: nobody vouches.
    vouched_from: AtomicU64,
    vouched_upto: AtomicU64,
}

impl Table {
    pub fn new() -> Self {
        Self::with_shards(DEFAULT_SHARDS)
    }

    /// A table with `shards` shards (a power of two ≥ 1); tests use 1 to fill chunks.
    pub fn with_shards(shards: usize) -> Self {
        assert!(
            shards.is_power_of_two(),
            "shard count must be a power of two"
        );
        Table {
            shards: (0..shards).map(|_| Shard::default()).collect(),
            shard_shift: 64 - shards.trailing_zeros(),
            hasher: foldhash::fast::RandomState::default(),
            start: Instant::now(),
            len: AtomicUsize::new(0),
            hooks: RwLock::new(Vec::new()),
            hook_count: AtomicUsize::new(0),
            epoch: fastrand::u64(1..),
            vouched_from: AtomicU64::new(u64::MAX),
            vouched_upto: AtomicU64::new(0),
        }
    }

    /// Identifies this table's change counts; a new process starts a new epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Changes (inserts and advances) in `shard` so far.
    pub fn shard_seq(&self, shard: usize) -> u64 {
        self.shards[shard].changes.lock().seq
    }

    /// Visits every entry of `shard` that changed after count `since` and
    /// returns the count the scan is complete up to: every change numbered
    /// ≤ the result was visited (later ones may be too; merging is idempotent).
    /// `f` runs under the shard's locks, so it must not merge into this table.
    pub fn changed_since(&self, shard: usize, since: u64, mut f: impl FnMut(&str, Entry)) -> u64 {
        let shard = &self.shards[shard];
        let inner = shard.inner.read();
        // Read under the changes lock: every slot stamped ≤ upto is stamped
        // already, and its version was raised before it was stamped.
        let changes = shard.changes.lock();
        let upto = changes.seq;
        if upto == since {
            return upto;
        }
        if changes.covers(since) {
            // No stamp can happen while we hold the lock, so a slot's seq is
            // its latest stamp here: each changed slot is visited once.
            // Slots keep 32 bits of their seq; the recent seqs are within 256
            // of `upto`, and a slot's is ≤ `upto`, so equal low bits are equal seqs.
            for &(seq, n) in changes.recent.iter().filter(|(seq, _)| *seq > since) {
                let slot = inner.slot(n);
                if slot.seq.load(Ordering::Acquire) == seq as u32 {
                    f(inner.key(slot), slot.entry());
                }
            }
            return upto;
        }
        drop(changes);
        for (key, slot) in inner.slots() {
            if changed_after(slot.seq.load(Ordering::Acquire), since, upto) {
                f(key, slot.entry());
            }
        }
        upto
    }

    /// Monotonic milliseconds; starts well above zero so `now - max_age` never underflows.
    pub fn now_ms(&self) -> u64 {
        CLOCK_OFFSET_MS + self.start.elapsed().as_millis() as u64
    }

    /// A complete feed caught up at `upto_ms` (table clock) and missed no
    /// change since `from_ms`: an entry confirmed at or after `from_ms` then
    /// needs no revalidation before `upto_ms + max_age`. Only such a feed may
    /// call this; a gap moves `from_ms` forward, an outage stops `upto_ms`.
    pub fn vouch(&self, from_ms: u64, upto_ms: u64) {
        self.vouched_from.store(from_ms, Ordering::Release);
        self.vouched_upto.fetch_max(upto_ms, Ordering::AcqRel);
    }

    /// When `e` was last known current: its own confirmation, or the
    /// vouching feed's if that covers it. Never-confirmed entries (0) stay 0.
    /// The feed's time is moved back by a per-entry amount in `[0, max_age/2)`:
    /// when the feed stops (Redis down), the entries it vouched for expire
    /// spread over the second half of `max_age` instead of all at one moment.
    /// The feed renews at least every `max_age/4`, so none expires meanwhile.
    pub fn confirmed_as_of(&self, e: Entry, max_age_ms: u64) -> u64 {
        let from = self.vouched_from.load(Ordering::Acquire);
        if e.confirmed_ms == 0 || e.confirmed_ms < from {
            return e.confirmed_ms;
        }
        // Own confirmations are spread (publishes, snapshot load): a cheap,
        // stable per-entry jitter without hashing the key.
        let jitter = e.confirmed_ms.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
        let back = jitter % (max_age_ms / 2).max(1);
        let upto = self.vouched_upto.load(Ordering::Acquire);
        e.confirmed_ms.max(upto.saturating_sub(back))
    }

    /// Lowers every entry's confirmation to at most `cap()` (drawn per entry):
    /// after a feed lost changes, nothing it confirmed can be trusted, and a
    /// spread cap makes the revalidations trickle instead of arriving at once.
    pub fn cap_confirmations(&self, mut cap: impl FnMut() -> u64) {
        for shard in self.shards.iter() {
            let inner = shard.inner.read();
            for slot in inner.chunks.iter().flatten() {
                slot.confirmed_ms.fetch_min(cap(), Ordering::AcqRel);
            }
        }
    }

    pub fn get(&self, key: &str) -> Option<Entry> {
        let (shard, hash) = self.locate(key);
        let inner = shard.inner.read();
        inner.find(hash, key).map(Slot::entry)
    }

    /// Max-merge `version` into `key`. With `confirm`, a version ≥ the stored
    /// one also refreshes `confirmed_ms` to now.
    pub fn merge(&self, key: &str, version: u64, confirm: bool) -> Merge {
        // A key that was never confirmed gets 0: as old as possible, so it reads as expired.
        let ms = confirm.then(|| self.now_ms());
        self.merge_inner(key, version, ms)
    }

    /// Max-merge with an explicit confirmation time (snapshot load spreads these).
    pub fn merge_at(&self, key: &str, version: u64, confirmed_ms: u64) -> Merge {
        self.merge_inner(key, version, Some(confirmed_ms))
    }

    /// Max-merges every `(key, version, confirmed_ms)` exactly as [`Table::merge_at`]
    /// would one by one in slice order (same versions, confirmations, change
    /// counts and hook calls), but faster for bulk loads: each key is hashed
    /// once, items are grouped by shard, and each shard's locks are taken once
    /// for all its items instead of once per key in random shard order.
    /// `threads` workers (at least one, the caller) take whole shards, so
    /// they never meet on a lock. Hooks run when every shard is done, on the
    /// calling thread and in item order, so thread-local context such as
    /// `cluster::Origin` applies to them as it would to `merge_at`.
    /// Returns how many items inserted or advanced a key.
    pub fn merge_batch_at(&self, items: &[(&str, u64, u64)], threads: usize) -> usize {
        assert!(
            u32::try_from(items.len()).is_ok(),
            "batch of 2^32 items or more"
        );
        let hashes = self.hash_all(items, threads.max(1));
        self.reserve_empty_shards(&hashes);
        let hooks = self.hook_count.load(Ordering::Acquire) > 0;
        let mut done = Advanced::default();
        for (round, base) in items.chunks(BLOCK).zip((0..).step_by(BLOCK)) {
            let hashes = &hashes[base..base + round.len()];
            let groups = Groups::new(self, round, hashes, base as u32);
            let got = self.merge_groups(&groups, threads.max(1), hooks);
            done.count += got.count;
            done.advanced.extend(got.advanced);
        }
        if hooks {
            self.run_batch_hooks(items, &done.advanced);
        }
        done.count
    }

    /// Every item's full key hash, computed on `threads` threads (the caller's included).
    fn hash_all(&self, items: &[(&str, u64, u64)], threads: usize) -> Vec<u64> {
        let mut hashes = vec![0; items.len()];
        let per = items.len().div_ceil(threads).max(1);
        let hash = |out: &mut [u64], part: &[(&str, u64, u64)]| {
            for (h, (key, ..)) in out.iter_mut().zip(part) {
                *h = self.hasher.hash_one(key);
            }
        };
        std::thread::scope(|s| {
            let mut parts = hashes.chunks_mut(per).zip(items.chunks(per));
            let first = parts.next();
            for (out, part) in parts {
                s.spawn(move || hash(out, part));
            }
            if let Some((out, part)) = first {
                hash(out, part);
            }
        });
        hashes
    }

    /// Sizes each empty shard's index for all the batch's keys that hash to
    /// it (see [`ShardInner::reserve_if_empty`]).
    fn reserve_empty_shards(&self, hashes: &[u64]) {
        let mut counts = vec![0usize; self.shards.len()];
        for &h in hashes {
            counts[self.shard_of(h)] += 1;
        }
        for (shard, n) in self.shards.iter().zip(counts) {
            shard
                .inner
                .write()
                .reserve_if_empty(n, |k| self.index_hash(k));
        }
    }

    /// Workers claim shards from a shared counter until none is left, so a
    /// worker the OS delays just ends up merging fewer shards.
    fn merge_groups(&self, groups: &Groups<'_>, threads: usize, hooks: bool) -> Advanced {
        let next = AtomicUsize::new(0);
        let work = || {
            let mut done = Advanced::default();
            loop {
                let s = next.fetch_add(1, Ordering::Relaxed);
                let Some(group) = groups.of(s) else {
                    return done;
                };
                self.merge_shard(s, group, hooks, &mut done);
            }
        };
        std::thread::scope(|scope| {
            let work = &work;
            let others: Vec<_> = (1..threads).map(|_| scope.spawn(work)).collect();
            let mut done = work();
            for worker in others {
                let theirs = worker
                    .join()
                    .unwrap_or_else(|e| std::panic::resume_unwind(e));
                done.count += theirs.count;
                done.advanced.extend(theirs.advanced);
            }
            done
        })
    }

    /// Merges `group` into shard `s` under one write lock and one hold of its
    /// change counter; per item, the steps of `merge_locked`'s write-lock path.
    fn merge_shard(&self, s: usize, group: &[Grouped<'_>], hooks: bool, done: &mut Advanced) {
        if group.is_empty() {
            return;
        }
        let shard = &self.shards[s];
        let mut inner = shard.inner.write();
        let mut changes = shard.changes.lock();
        let mut inserted = 0;
        for item in group {
            let (key, version, ms) = (item.key, item.version, Some(item.confirmed_ms));
            let hash = item.hash.rotate_left(32);
            let (n, new) = inner.find_or_insert(hash, key, version, ms, |k| self.index_hash(k));
            let slot = inner.slot(n);
            if new || slot.merge(version, ms).advanced() {
                changes.stamp(n, slot);
                done.note(item.index, hooks);
            }
            inserted += usize::from(new);
        }
        self.len.fetch_add(inserted, Ordering::Relaxed);
    }

    /// Runs the hooks for the advanced items (indices in any order) in item order.
    fn run_batch_hooks(&self, items: &[(&str, u64, u64)], advanced: &[u32]) {
        let mut flags = vec![false; items.len()];
        for &i in advanced {
            flags[i as usize] = true;
        }
        for (&(key, version, _), _) in items.iter().zip(flags).filter(|(_, f)| *f) {
            self.run_hooks(key, version);
        }
    }

    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Registers a hook run after every advancing merge. Set up at start-up.
    /// Hooks may call back into the table, but must not register hooks.
    pub fn on_advance(&self, hook: AdvanceHook) {
        let mut hooks = self.hooks.write();
        hooks.push(hook);
        self.hook_count.store(hooks.len(), Ordering::Release);
    }

    /// Visits every entry, one shard read-lock at a time (never a global lock).
    /// `f` runs under that lock, so it must not insert into this table.
    pub fn for_each(&self, mut f: impl FnMut(&str, Entry)) {
        for shard in self.shards.iter() {
            let inner = shard.inner.read();
            for (key, slot) in inner.slots() {
                f(key, slot.entry());
            }
        }
    }

    /// Approximate heap bytes held by shards (index, slots, keys), for metrics.
    pub fn memory_bytes(&self) -> usize {
        let per_bucket = std::mem::size_of::<u32>() + 1;
        let per_chunk = CHUNK * std::mem::size_of::<Slot>();
        self.shards
            .iter()
            .map(|s| {
                let inner = s.inner.read();
                inner.index.capacity() * 8 / 7 * per_bucket
                    + inner.chunks.len() * per_chunk
                    + inner.keys.capacity()
            })
            .sum()
    }

    /// Picks the shard from the hash's top bits and gives the shard's index the
    /// hash rotated by 32: hashbrown uses the top 7 bits as its tag and the low
    /// bits as the bucket, and neither must be the (constant-per-shard) shard bits.
    fn locate(&self, key: &str) -> (&Shard, u64) {
        let hash = self.hasher.hash_one(key);
        (&self.shards[self.shard_of(hash)], hash.rotate_left(32))
    }

    fn shard_of(&self, hash: u64) -> usize {
        hash.checked_shr(self.shard_shift).unwrap_or(0) as usize
    }

    /// The hash a shard's index stores for `key` (see [`Table::locate`]).
    fn index_hash(&self, key: &str) -> u64 {
        self.hasher.hash_one(key).rotate_left(32)
    }

    fn merge_inner(&self, key: &str, version: u64, confirm_ms: Option<u64>) -> Merge {
        let result = self.merge_locked(key, version, confirm_ms);
        if result.advanced() && self.hook_count.load(Ordering::Acquire) > 0 {
            self.run_hooks(key, version);
        }
        result
    }

    /// Existing keys merge under the read lock (atomics); only a new key takes
    /// the write lock, re-checking because another writer may have won the race.
    fn merge_locked(&self, key: &str, version: u64, confirm_ms: Option<u64>) -> Merge {
        let (shard, hash) = self.locate(key);
        if let Some((n, slot)) = shard.inner.read().find_n(hash, key) {
            return merge_slot(shard, n, slot, version, confirm_ms);
        }
        let mut inner = shard.inner.write();
        let (n, new) = inner.find_or_insert(hash, key, version, confirm_ms, |k| self.index_hash(k));
        if !new {
            return merge_slot(shard, n, inner.slot(n), version, confirm_ms);
        }
        shard.stamp(n, inner.slot(n));
        self.len.fetch_add(1, Ordering::Relaxed);
        Merge::Inserted
    }

    /// `read_recursive` so a hook that merges into this table (and so runs hooks
    /// again) cannot deadlock behind a queued `on_advance`.
    fn run_hooks(&self, key: &str, version: u64) {
        for hook in self.hooks.read_recursive().iter() {
            hook(key, version);
        }
    }
}

/// Items per round of [`Table::merge_batch_at`]. A round is copied into shard
/// order and its keys' bytes are then read in that order, at random: the
/// round must stay in cache for those reads to hit. Too small a round misses
/// on the indexes instead (each shard gets few items per visit). 128k items
/// measured best of 32k, 128k and 512k on a 2-core EPYC.
const BLOCK: usize = 1 << 17;

/// A round's items copied into shard order with a counting sort, each with
/// its hash and batch index, so a worker reads its shard's items in sequence:
/// shard `s`'s are `sorted[starts[s]..starts[s + 1]]`, in batch order.
struct Groups<'a> {
    sorted: Vec<Grouped<'a>>,
    starts: Vec<usize>,
}

/// One item of a round, with what the merge needs beside it.
#[derive(Clone, Copy)]
struct Grouped<'a> {
    key: &'a str,
    version: u64,
    confirmed_ms: u64,
    /// The key's full hash.
    hash: u64,
    /// Index in the whole batch, for running hooks in item order.
    index: u32,
}

impl<'a> Groups<'a> {
    /// `hashes` are the items' full key hashes; `base` is the round's first
    /// index in the batch.
    fn new(table: &Table, items: &[(&'a str, u64, u64)], hashes: &[u64], base: u32) -> Self {
        let mut starts = vec![0usize; table.shards.len() + 1];
        for &h in hashes {
            starts[table.shard_of(h) + 1] += 1;
        }
        for s in 1..starts.len() {
            starts[s] += starts[s - 1];
        }
        let mut next = starts.clone();
        let blank = Grouped {
            key: "",
            version: 0,
            confirmed_ms: 0,
            hash: 0,
            index: 0,
        };
        let mut sorted = vec![blank; items.len()];
        for ((&(key, version, confirmed_ms), &hash), index) in items.iter().zip(hashes).zip(base..)
        {
            let at = &mut next[table.shard_of(hash)];
            sorted[*at] = Grouped {
                key,
                version,
                confirmed_ms,
                hash,
                index,
            };
            *at += 1;
        }
        Groups { sorted, starts }
    }

    /// Shard `s`'s items; `None` past the last shard.
    fn of(&self, s: usize) -> Option<&[Grouped<'a>]> {
        let end = *self.starts.get(s + 1)?;
        Some(&self.sorted[self.starts[s]..end])
    }
}

/// What a batch worker merged: how many items advanced, and which (only
/// collected when hooks must run for them).
#[derive(Default)]
struct Advanced {
    count: usize,
    advanced: Vec<u32>,
}

impl Advanced {
    fn note(&mut self, i: u32, keep: bool) {
        self.count += 1;
        if keep {
            self.advanced.push(i);
        }
    }
}

/// Whether a slot whose seq has low bits `low` may have changed after
/// `since`, given that no seq is above `upto`. The slot's seq is taken as the
/// highest ≤ `upto` with those low bits: never below the true one, so a
/// change is never missed; a slot last stamped 2^32 or more changes ago may
/// be visited again, which merging (idempotent) allows.
fn changed_after(low: u32, since: u64, upto: u64) -> bool {
    let back = u64::from((upto as u32).wrapping_sub(low));
    back < upto - since
}

/// Merges into an existing slot and stamps it when it advanced.
fn merge_slot(shard: &Shard, n: u32, slot: &Slot, version: u64, confirm_ms: Option<u64>) -> Merge {
    let m = slot.merge(version, confirm_ms);
    if m.advanced() {
        shard.stamp(n, slot);
    }
    m
}

impl Default for Table {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn a_vouching_feed_covers_entries_confirmed_since_its_start() {
        let t = Table::new();
        t.merge_at("old", 1, 100);
        t.merge_at("new", 1, 500);
        t.merge("never", 1, false);
        // max_age 1: no jitter, so the rule shows plainly.
        let as_of = |k| t.confirmed_as_of(t.get(k).unwrap(), 1);
        assert_eq!(
            (as_of("old"), as_of("new")),
            (100, 500),
            "nobody vouches yet"
        );
        t.vouch(200, 900);
        assert_eq!((as_of("old"), as_of("new"), as_of("never")), (100, 900, 0));
        t.vouch(0, 800);
        assert_eq!(as_of("old"), 900, "upto never goes back");
        t.cap_confirmations(|| 50);
        assert_eq!(t.get("new").unwrap().confirmed_ms, 50);
        t.vouch(1_000, 1_000);
        assert_eq!(as_of("new"), 50, "a gap after it: not covered");
    }

    #[test]
    fn vouched_entries_expire_spread_over_the_second_half_of_max_age() {
        let t = Table::new();
        for i in 0..1000 {
            t.merge_at(&format!("k{i}"), 1, 1_000 + i * 7);
        }
        t.vouch(0, 100_000);
        let max_age = 10_000;
        let mut backs = Vec::new();
        t.for_each(|_, e| backs.push(100_000 - t.confirmed_as_of(e, max_age)));
        assert!(
            backs.iter().all(|&b| b < max_age / 2),
            "never more than half"
        );
        let spread = backs.iter().filter(|&&b| b < max_age / 4).count();
        assert!(
            (350..650).contains(&spread),
            "about half in each quarter: {spread}"
        );
    }

    #[test]
    fn clock_starts_high_and_is_monotonic() {
        let t = Table::new();
        let a = t.now_ms();
        assert!(a >= CLOCK_OFFSET_MS);
        assert!(t.now_ms() >= a);
    }

    #[test]
    fn merge_reports_insert_advance_unchanged() {
        let t = Table::new();
        assert_eq!(t.get("a"), None);
        assert_eq!(t.merge("a", 5, false), Merge::Inserted);
        assert_eq!(t.merge("a", 7, false), Merge::Advanced { from: 5 });
        assert_eq!(t.merge("a", 7, false), Merge::Unchanged);
        assert_eq!(t.merge("a", 3, false), Merge::Unchanged);
        assert_eq!(t.get("a").unwrap().version, 7);
    }

    #[test]
    fn confirm_only_when_not_behind() {
        let t = Table::new();
        t.merge("k", 5, false);
        assert_eq!(t.get("k").unwrap().confirmed_ms, 0, "unconfirmed insert");
        t.merge("k", 6, false);
        assert_eq!(
            t.get("k").unwrap().confirmed_ms,
            0,
            "confirm=false keeps it"
        );
        t.merge("k", 4, true);
        assert_eq!(
            t.get("k").unwrap().confirmed_ms,
            0,
            "lower version never confirms"
        );
        let before = t.now_ms();
        assert_eq!(t.merge("k", 6, true), Merge::Unchanged);
        let e = t.get("k").unwrap();
        assert!(e.confirmed_ms >= before && e.confirmed_ms <= t.now_ms());
    }

    #[test]
    fn merge_at_inserts_and_max_merges_confirmation() {
        let t = Table::new();
        assert_eq!(t.merge_at("k", 5, 100), Merge::Inserted);
        assert_eq!(
            t.get("k"),
            Some(Entry {
                version: 5,
                confirmed_ms: 100
            })
        );
        t.merge_at("k", 5, 50);
        assert_eq!(t.get("k").unwrap().confirmed_ms, 100, "older time kept");
        t.merge_at("k", 4, 500);
        assert_eq!(
            t.get("k").unwrap().confirmed_ms,
            100,
            "lower version ignored"
        );
        assert_eq!(t.merge_at("k", 9, 200), Merge::Advanced { from: 5 });
        assert_eq!(
            t.get("k"),
            Some(Entry {
                version: 9,
                confirmed_ms: 200
            })
        );
    }

    #[test]
    fn hooks_run_exactly_on_advance() {
        let t = Table::new();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        t.on_advance(Box::new(move |k, v| {
            s.lock().unwrap().push((k.to_string(), v))
        }));
        t.merge("a", 1, false);
        t.merge("a", 1, true);
        t.merge("a", 0, true);
        t.merge_at("a", 3, 0);
        t.merge("b", 2, true);
        let want = [("a", 1), ("a", 3), ("b", 2)].map(|(k, v)| (k.to_string(), v));
        assert_eq!(*seen.lock().unwrap(), want);
    }

    #[test]
    fn hook_may_merge_back_into_table() {
        let t = Arc::new(Table::new());
        let weak = Arc::downgrade(&t);
        t.on_advance(Box::new(move |k, v| {
            if k == "src" {
                weak.upgrade().unwrap().merge("mirror", v, false);
            }
        }));
        t.merge("src", 4, true);
        assert_eq!(t.get("mirror").unwrap().version, 4);
    }

    #[test]
    fn chunks_fill_past_boundaries_in_one_shard() {
        let t = Table::with_shards(1);
        let n = CHUNK * 3 + 17;
        for i in 0..n {
            assert_eq!(
                t.merge(&format!("key-{i}"), i as u64, false),
                Merge::Inserted
            );
        }
        assert_eq!(t.len(), n);
        for i in 0..n {
            assert_eq!(t.get(&format!("key-{i}")).unwrap().version, i as u64);
        }
        assert_eq!(t.shards[0].inner.read().chunks.len(), 4);
    }

    #[test]
    fn for_each_visits_all_and_len_counts_keys() {
        let t = Table::with_shards(4);
        assert!(t.is_empty());
        for i in 0..1000u64 {
            t.merge(&format!("k{i}"), i, false);
            t.merge(&format!("k{i}"), i + 1, false);
        }
        assert_eq!(t.len(), 1000);
        let mut seen = std::collections::HashMap::new();
        t.for_each(|k, e| assert!(seen.insert(k.to_string(), e.version).is_none()));
        assert_eq!(seen.len(), 1000);
        assert!((0..1000u64).all(|i| seen[&format!("k{i}")] == i + 1));
    }

    #[test]
    fn slot_is_24_bytes() {
        assert_eq!(std::mem::size_of::<Slot>(), 24);
    }

    /// Keys of every length class land in the right chunks and read back,
    /// including one longer than a chunk (a chunk of its own) between short ones.
    #[test]
    fn keys_round_trip_across_chunks() {
        let mut keys = Keys::default();
        let lens = [
            0,
            1,
            8,
            127,
            128,
            300,
            KEY_CHUNK - 2,
            KEY_CHUNK + 5,
            3,
            16_383,
        ];
        let mut stored = Vec::new();
        for round in 0..40 {
            for (i, &len) in lens.iter().enumerate() {
                let key: String = (0..len)
                    .map(|j| (b'a' + ((i + j + round) % 26) as u8) as char)
                    .collect();
                stored.push((keys.push(&key), key));
            }
        }
        for (pos, key) in &stored {
            assert_eq!(keys.str(*pos), key);
        }
        assert!(keys.chunks.iter().all(|c| c.len() <= c.capacity()));
    }

    #[test]
    fn changed_after_never_misses_across_the_32_bit_wrap() {
        let cases = [
            (0u64, 10u64),
            (u32::MAX as u64 - 3, u32::MAX as u64 + 9),
            (5 << 32, (5 << 32) + 300),
        ];
        for (since, upto) in cases {
            for seq in since.saturating_sub(20)..=upto {
                let low = seq as u32;
                assert_eq!(
                    changed_after(low, since, upto),
                    seq > since,
                    "seq {seq} since {since} upto {upto}"
                );
            }
        }
        // Stamped 2^32 or more changes ago: may be visited again, never wrongly skipped.
        let upto = (3u64 << 32) + 10;
        assert!(changed_after(upto as u32, upto - 1, upto));
    }

    #[test]
    fn odd_keys_do_not_panic() {
        let t = Table::new();
        let long = "x".repeat(300);
        for k in ["", "ünïcödé", "with space", "\0", long.as_str()] {
            assert_eq!(t.merge(k, 1, true), Merge::Inserted);
            assert_eq!(t.get(k).unwrap().version, 1);
        }
    }

    fn changed(t: &Table, since: u64) -> (Vec<(String, u64)>, u64) {
        let mut out = Vec::new();
        let upto = t.changed_since(0, since, |k, e| out.push((k.to_string(), e.version)));
        out.sort();
        (out, upto)
    }

    #[test]
    fn changed_since_sees_exactly_what_advanced() {
        let t = Table::with_shards(1);
        assert_eq!(changed(&t, 0), (vec![], 0));
        t.merge("a", 1, false);
        t.merge("b", 1, false);
        let (all, upto) = changed(&t, 0);
        assert_eq!((all.len(), upto), (2, 2));
        t.merge("a", 1, true);
        t.merge("b", 0, true);
        assert_eq!(changed(&t, 2), (vec![], 2), "no advance, no change");
        t.merge("b", 5, false);
        assert_eq!(changed(&t, 2), (vec![("b".into(), 5)], 3));
        assert_eq!(t.shard_seq(0), 3);
        assert_ne!(t.epoch(), Table::new().epoch(), "random per table");
    }

    /// A writer advances keys while a reader pulls increments: the union of
    /// what the reader saw must end at every key's final version.
    #[test]
    fn concurrent_changes_are_never_skipped() {
        let t = Table::with_shards(1);
        let done = std::sync::atomic::AtomicBool::new(false);
        let seen = std::thread::scope(|s| {
            let reader = s.spawn(|| {
                let mut seen = std::collections::HashMap::new();
                let mut since = 0;
                let mut last_round = false;
                loop {
                    since = t.changed_since(0, since, |k, e| {
                        let v = seen.entry(k.to_string()).or_insert(0);
                        *v = e.version.max(*v);
                    });
                    if last_round {
                        return seen;
                    }
                    last_round = done.load(Ordering::Acquire);
                }
            });
            let mut rng = fastrand::Rng::with_seed(7);
            for v in 1..50_000u64 {
                t.merge(&format!("k{}", rng.usize(..300)), v, false);
            }
            done.store(true, Ordering::Release);
            reader.join().unwrap()
        });
        t.for_each(|k, e| assert_eq!(seen.get(k), Some(&e.version), "{k}"));
    }

    #[test]
    #[should_panic(expected = "power of two")]
    fn shard_count_must_be_power_of_two() {
        Table::with_shards(3);
    }

    /// Writers race on overlapping keys; a reader checks no version goes back.
    #[test]
    fn concurrent_writers_never_lose_the_max() {
        const KEYS: usize = 64;
        let t = Table::with_shards(4);
        let done = std::sync::atomic::AtomicBool::new(false);
        let maxes: Vec<Vec<u64>> = std::thread::scope(|s| {
            s.spawn(|| watch_monotonic(&t, &done));
            let writers: Vec<_> = (0..3u64)
                .map(|seed| {
                    s.spawn({
                        let t = &t;
                        move || write_random(t, seed, KEYS)
                    })
                })
                .collect();
            let maxes = writers.into_iter().map(|w| w.join().unwrap()).collect();
            done.store(true, Ordering::Relaxed);
            maxes
        });
        for k in 0..KEYS {
            let want = maxes.iter().map(|m| m[k]).max().unwrap();
            assert_eq!(t.get(&format!("c{k}")).unwrap().version, want);
        }
        assert_eq!(t.len(), KEYS);
    }

    fn write_random(t: &Table, seed: u64, keys: usize) -> Vec<u64> {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut max = vec![0u64; keys];
        for _ in 0..20_000 {
            let k = rng.usize(..keys);
            let v = rng.u64(1..1_000_000);
            t.merge(&format!("c{k}"), v, rng.bool());
            max[k] = max[k].max(v);
        }
        max
    }

    fn watch_monotonic(t: &Table, done: &std::sync::atomic::AtomicBool) {
        let mut last = 0;
        while !done.load(Ordering::Relaxed) {
            let v = t.get("c0").map_or(0, |e| e.version);
            assert!(v >= last, "c0 went back from {last} to {v}");
            last = v;
        }
    }

    /// Everything a merge can change, shard by shard and slot by slot, so two
    /// tables built with the same hasher can be compared exactly.
    type Dump = Vec<(u64, Vec<(u64, u32)>, Vec<(String, u64, u64, u32)>)>;

    fn dump(t: &Table) -> Dump {
        let shard = |s: &Shard| {
            let inner = s.inner.read();
            let changes = s.changes.lock();
            let slots = inner.slots().map(|(key, slot)| {
                let e = slot.entry();
                let seq = slot.seq.load(Ordering::Relaxed);
                (key.to_string(), e.version, e.confirmed_ms, seq)
            });
            let recent = changes.recent.iter().copied().collect();
            (changes.seq, recent, slots.collect())
        };
        t.shards.iter().map(shard).collect()
    }

    type Calls = Arc<Mutex<Vec<(String, u64)>>>;

    /// A table sharing `like`'s hasher (so keys land in the same shards) whose
    /// hook records every call.
    fn recording_twin(like: &Table, shards: usize) -> (Table, Calls) {
        let mut t = Table::with_shards(shards);
        t.hasher = like.hasher;
        let calls = Calls::default();
        let c = calls.clone();
        t.on_advance(Box::new(move |k, v| {
            c.lock().unwrap().push((k.to_string(), v))
        }));
        (t, calls)
    }

    #[test]
    fn batch_runs_hooks_on_the_calling_thread() {
        let t = Table::with_shards(8);
        let caller = std::thread::current().id();
        let threads = Arc::new(Mutex::new(Vec::new()));
        let seen = threads.clone();
        t.on_advance(Box::new(move |_, _| {
            seen.lock().unwrap().push(std::thread::current().id())
        }));
        let keys: Vec<String> = (0..500).map(|i| format!("k{i}")).collect();
        let items: Vec<_> = keys.iter().map(|k| (k.as_str(), 1, 5)).collect();
        assert_eq!(t.merge_batch_at(&items, 4), 500);
        let threads = threads.lock().unwrap();
        assert_eq!(threads.len(), 500);
        assert!(threads.iter().all(|&id| id == caller));
        assert_eq!(t.len(), 500);
        assert_eq!(
            t.merge_batch_at(&items, 4),
            0,
            "nothing new the second time"
        );
    }

    #[test]
    fn batch_reserves_an_empty_shard_like_one_by_one_growth() {
        let keys: Vec<String> = (0..20_000).map(|i| format!("k{i}")).collect();
        let items: Vec<_> = keys.iter().map(|k| (k.as_str(), 1, 0)).collect();
        let (one, mut batch) = (Table::with_shards(4), Table::with_shards(4));
        batch.hasher = one.hasher;
        for &(k, v, ms) in &items {
            one.merge_at(k, v, ms);
        }
        batch.merge_batch_at(&items, 2);
        assert_eq!(one.memory_bytes(), batch.memory_bytes());
    }

    mod props {
        use super::*;
        use proptest::prelude::*;
        use std::collections::HashMap;

        /// `(key, version, confirmed_ms)` over few keys, so batches repeat keys.
        fn items() -> impl Strategy<Value = Vec<(u8, u64, u64)>> {
            prop::collection::vec((0u8..40, 0u64..20, 0u64..20), 0..300)
        }

        proptest! {
            /// A batch leaves the table exactly as `merge_at` item by item
            /// would: same slots, versions, confirmations, change counts,
            /// recent-change lists, hook calls (in order) and advance count,
            /// whatever the table held before and however many threads.
            #[test]
            fn batch_equals_one_by_one(
                before in items(),
                batch in items(),
                shards in prop::sample::select(vec![1usize, 2, 8]),
                threads in 1usize..4,
            ) {
                let key = |k: u8| format!("key-{k}");
                let (one, one_calls) = recording_twin(&Table::new(), shards);
                let (all, all_calls) = recording_twin(&one, shards);
                for t in [&one, &all] {
                    for &(k, v, ms) in &before {
                        t.merge_at(&key(k), v, ms);
                    }
                }
                let keys: Vec<(String, u64, u64)> =
                    batch.iter().map(|&(k, v, ms)| (key(k), v, ms)).collect();
                let items: Vec<_> = keys.iter().map(|(k, v, ms)| (k.as_str(), *v, *ms)).collect();
                let want = items
                    .iter()
                    .filter(|&&(k, v, ms)| one.merge_at(k, v, ms).advanced())
                    .count();
                prop_assert_eq!(all.merge_batch_at(&items, threads), want);
                prop_assert_eq!(dump(&all), dump(&one));
                prop_assert_eq!(all.len(), one.len());
                prop_assert_eq!(&*all_calls.lock().unwrap(), &*one_calls.lock().unwrap());
            }
        }

        fn ops() -> impl Strategy<Value = Vec<(u8, u64)>> {
            prop::collection::vec((0u8..8, 0u64..20), 0..64)
        }

        fn apply(ops: &[(u8, u64)]) -> Vec<(String, u64)> {
            let t = Table::with_shards(2);
            for (k, v) in ops {
                t.merge(&format!("k{k}"), *v, false);
            }
            let mut out = Vec::new();
            t.for_each(|k, e| out.push((k.to_string(), e.version)));
            out.sort();
            out
        }

        proptest! {
            #[test]
            fn result_matches_model(ops in ops()) {
                let t = Table::with_shards(2);
                let mut model: HashMap<String, u64> = HashMap::new();
                for (k, v) in ops {
                    let key = format!("k{k}");
                    let want = match model.get(&key).copied() {
                        None => Merge::Inserted,
                        Some(old) if v > old => Merge::Advanced { from: old },
                        Some(_) => Merge::Unchanged,
                    };
                    let before = t.get(&key).map(|e| e.version);
                    prop_assert_eq!(t.merge(&key, v, true), want);
                    let after = t.get(&key).unwrap().version;
                    prop_assert!(before.is_none_or(|b| after >= b), "went backwards");
                    let m = model.entry(key).or_insert(v);
                    *m = (*m).max(v);
                    prop_assert_eq!(after, *m);
                }
                prop_assert_eq!(t.len(), model.len());
            }

            /// Whether answered from the recent-changes list or by a scan,
            /// `changed_since` visits exactly the keys whose last change is
            /// after `since`, each once, at their current version.
            #[test]
            fn changed_since_matches_a_change_log(
                ops in prop::collection::vec((0u16..400, 0u64..40), 0..700),
                pick in 0.0f64..=1.0,
            ) {
                let t = Table::with_shards(1);
                let mut last: HashMap<String, u64> = HashMap::new();
                for (k, v) in ops {
                    let key = format!("k{k}");
                    if t.merge(&key, v, false).advanced() {
                        last.insert(key, t.shard_seq(0));
                    }
                }
                let upto = t.shard_seq(0);
                let since = (upto as f64 * pick) as u64;
                let mut seen = Vec::new();
                prop_assert_eq!(t.changed_since(0, since, |k, e| seen.push((k.to_string(), e.version))), upto);
                seen.sort();
                let mut want: Vec<(String, u64)> = last
                    .iter()
                    .filter(|(_, &s)| s > since)
                    .map(|(k, _)| (k.clone(), t.get(k).unwrap().version))
                    .collect();
                want.sort();
                prop_assert_eq!(seen, want);
            }

            /// Commutative and associative: any order gives the same table.
            #[test]
            fn order_does_not_matter(ops in ops(), seed in any::<u64>()) {
                let mut shuffled = ops.clone();
                fastrand::Rng::with_seed(seed).shuffle(&mut shuffled);
                prop_assert_eq!(apply(&ops), apply(&shuffled));
            }

            /// Idempotent: merging everything twice changes nothing.
            #[test]
            fn duplicates_do_not_matter(ops in ops()) {
                let twice: Vec<_> = ops.iter().chain(ops.iter()).copied().collect();
                prop_assert_eq!(apply(&ops), apply(&twice));
            }
        }
    }
}

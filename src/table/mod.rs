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

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

mod keys;
mod shard;

use parking_lot::RwLock;
use shard::{Shard, Slot, CHUNK};

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

/// The table clock starts here so `now_ms() - max_age` never underflows for any
/// sane `max_age`, even right after start-up.
const CLOCK_OFFSET_MS: u64 = 10 * 24 * 60 * 60 * 1000;

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
mod tests;

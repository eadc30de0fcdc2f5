//! Who watches which key: a sharded map key → watchers, so an advance wakes
//! exactly the watchers of that key. Each connection owns one [`Watcher`]
//! that coalesces notices (only the latest version per key is kept).
//!
//! Lock order: a registry shard, then a watcher. Subscribing and
//! unsubscribing never hold both; notifying holds the shard's read lock while
//! it touches each watcher's small mutex (no allocation, no await).

use std::sync::Arc;

use compact_str::CompactString;
use dashmap::DashMap;
use parking_lot::Mutex;
use slab::Slab;
use tokio::sync::Notify;

use crate::table::Table;

/// Enough shards that subscribe storms on different keys rarely meet, few
/// enough that an idle registry costs next to nothing.
const SHARDS: usize = 64;

type Watchers = Slab<Arc<Watcher>>;

pub struct Registry {
    /// Key → its watchers. A slab so leaving is O(1) whatever the fan-out
    /// (100k watchers of one key dropping at once must not be O(n²)).
    keys: DashMap<CompactString, Watchers, foldhash::fast::RandomState>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            keys: DashMap::with_hasher_and_shard_amount(Default::default(), SHARDS),
        }
    }
}

impl Registry {
    /// A new watcher, unsubscribed from everything when dropped.
    pub fn subscribe(self: &Arc<Self>) -> Subscription {
        Subscription {
            registry: self.clone(),
            watcher: Arc::new(Watcher::default()),
            count: 0,
        }
    }

    /// Called by the table's advance hook: tells the watchers of `key`, and only them.
    pub fn notify(&self, key: &str, version: u64) {
        if let Some(watchers) = self.keys.get(key) {
            for (_, w) in watchers.iter() {
                w.offer(key, version);
            }
        }
    }

    /// Keys with at least one watcher.
    pub fn keys(&self) -> usize {
        self.keys.len()
    }

    fn add(&self, key: &str, w: &Arc<Watcher>) -> usize {
        self.keys
            .entry(CompactString::new(key))
            .or_default()
            .insert(w.clone())
    }

    fn remove(&self, key: &str, at: usize) {
        let empty = match self.keys.get_mut(key) {
            Some(mut ws) => {
                ws.try_remove(at);
                ws.is_empty()
            }
            None => false,
        };
        if empty {
            self.keys.remove_if(key, |_, ws| ws.is_empty());
        }
    }
}

/// One connection's pending notices and the wake-up for its task.
#[derive(Default)]
pub struct Watcher {
    slots: Mutex<Vec<Slot>>,
    notify: Notify,
}

/// One watched key. Memory per watcher is bounded by the keys it watches,
/// however many advances a slow client misses.
struct Slot {
    key: CompactString,
    /// Highest version the client has or has been told of.
    known: u64,
    /// `known` has not been sent yet.
    pending: bool,
    /// This watcher's place in the registry's slab for `key`.
    at: usize,
}

impl Watcher {
    /// Records that `key` is at `version`; wakes the owner if that is news.
    fn offer(&self, key: &str, version: u64) {
        let mut slots = self.slots.lock();
        let Some(s) = slots.iter_mut().find(|s| s.key == key) else {
            return;
        };
        if version <= s.known {
            return;
        }
        s.known = version;
        s.pending = true;
        drop(slots);
        // Stores a permit if the owner is busy, so no wake-up is ever lost.
        self.notify.notify_one();
    }
}

/// A connection's membership in the registry (RAII: dropping it unsubscribes).
pub struct Subscription {
    registry: Arc<Registry>,
    watcher: Arc<Watcher>,
    /// Keys watched, kept outside the lock for cheap limit checks.
    count: usize,
}

impl Subscription {
    /// Watches `key` for versions above `known` (replacing an earlier `known`
    /// for the same key). A table already past `known` makes a notice pending at once.
    pub fn watch(&mut self, table: &Table, key: &str, known: u64) {
        let fresh = {
            let mut slots = self.watcher.slots.lock();
            match slots.iter_mut().find(|s| s.key == key) {
                Some(s) => {
                    s.known = known;
                    s.pending = false;
                    false
                }
                None => true,
            }
        };
        if fresh {
            // Registered before the table is read: an advance racing with us
            // is either seen below or delivered by the hook, never lost.
            let at = self.registry.add(key, &self.watcher);
            self.watcher.slots.lock().push(Slot {
                key: CompactString::new(key),
                known,
                pending: false,
                at,
            });
            self.count += 1;
        }
        if let Some(e) = table.get(key) {
            self.watcher.offer(key, e.version);
        }
    }

    /// Stops watching `key`; a key not watched is ignored.
    pub fn unwatch(&mut self, key: &str) {
        let slot = {
            let mut slots = self.watcher.slots.lock();
            let i = slots.iter().position(|s| s.key == key);
            i.map(|i| slots.swap_remove(i))
        };
        if let Some(s) = slot {
            self.registry.remove(&s.key, s.at);
            self.count -= 1;
        }
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn watching(&self, key: &str) -> bool {
        self.watcher.slots.lock().iter().any(|s| s.key == key)
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Resolves when a notice may be pending (check with [`Self::drain`]).
    /// Cancel-safe: a wake-up that arrives while nobody waits is kept.
    pub async fn changed(&self) {
        self.watcher.notify.notified().await
    }

    /// Hands every pending `(key, version)` to `f` and clears them. Returns how many.
    pub fn drain(&self, mut f: impl FnMut(&str, u64)) -> usize {
        let mut slots = self.watcher.slots.lock();
        let mut n = 0;
        for s in slots.iter_mut().filter(|s| s.pending) {
            s.pending = false;
            f(&s.key, s.known);
            n += 1;
        }
        n
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let slots = std::mem::take(&mut *self.watcher.slots.lock());
        for s in slots {
            self.registry.remove(&s.key, s.at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(s: &Subscription) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        s.drain(|k, v| out.push((k.to_string(), v)));
        out
    }

    #[test]
    fn only_the_watchers_of_the_advanced_key_hear_of_it() {
        let table = Table::new();
        let reg = Arc::new(Registry::default());
        let (mut a, mut b) = (reg.subscribe(), reg.subscribe());
        a.watch(&table, "a", 1);
        b.watch(&table, "b", 1);
        reg.notify("a", 2);
        assert_eq!(pending(&a), [("a".to_string(), 2)]);
        assert!(pending(&b).is_empty());
    }

    #[test]
    fn an_old_version_is_told_at_once_and_notices_coalesce() {
        let table = Table::new();
        table.merge("k", 5, true);
        let reg = Arc::new(Registry::default());
        let mut s = reg.subscribe();
        s.watch(&table, "k", 3);
        assert_eq!(pending(&s), [("k".to_string(), 5)]);
        s.watch(&table, "k", 5);
        assert!(pending(&s).is_empty(), "client is current");
        for v in 6..100 {
            reg.notify("k", v);
        }
        reg.notify("k", 50); // late, lower: ignored
        assert_eq!(pending(&s), [("k".to_string(), 99)], "only the latest");
    }

    #[test]
    fn dropping_and_unwatching_leave_no_trace() {
        let table = Table::new();
        let reg = Arc::new(Registry::default());
        let subs: Vec<_> = (0..100)
            .map(|_| {
                let mut s = reg.subscribe();
                s.watch(&table, "hot", 0);
                s.watch(&table, "other", 0);
                s
            })
            .collect();
        assert_eq!(reg.keys(), 2);
        let mut subs = subs.into_iter();
        let mut first = subs.next().unwrap();
        first.unwatch("other");
        first.unwatch("never-watched");
        assert_eq!(first.len(), 1);
        drop(subs);
        assert_eq!(reg.keys(), 1, "only `first` is left, on `hot`");
        drop(first);
        assert_eq!(reg.keys(), 0);
    }
}

//! Revalidation back-off: an expired key whose revalidation left it still
//! unconfirmed (the upstream sent no usable version header, or failed) is not
//! revalidated again by the very next poll; meanwhile polls are answered
//! from memory, as they are while another poll revalidates.

use std::sync::atomic::{AtomicU64, Ordering};

use compact_str::CompactString;
use dashmap::DashMap;

/// First wait after a revalidation that confirmed nothing; each further one
/// doubles it, up to `max_age` (so a key is still tried once per `max_age`).
const FIRST_MS: u64 = 1_000;
/// Keys tracked at most (~100 bytes each): an upstream that never sends the
/// header for any key must not grow this without bound. Beyond it new keys
/// revalidate as before, until expired waits are pruned.
const CAP: usize = 65_536;
/// Pruning scans every tracked key: at most once per this long.
const PRUNE_EVERY_MS: u64 = 1_000;

#[derive(Default)]
pub struct Backoff {
    keys: DashMap<CompactString, Wait, foldhash::fast::RandomState>,
    last_prune_ms: AtomicU64,
}

#[derive(Debug, Clone, Copy)]
struct Wait {
    /// Revalidations in a row that confirmed nothing.
    misses: u32,
    /// No revalidation before this (table clock, ms).
    until_ms: u64,
}

impl Backoff {
    /// Whether `key` may revalidate at `now_ms`.
    pub fn due(&self, key: &str, now_ms: u64) -> bool {
        self.keys.get(key).is_none_or(|w| now_ms >= w.until_ms)
    }

    /// The revalidation confirmed the entry: no more waiting.
    pub fn confirmed(&self, key: &str) {
        self.keys.remove(key);
    }

    /// The revalidation left `key` unconfirmed: wait twice as long as last
    /// time (the first time [`FIRST_MS`]), at most `max_ms`.
    pub fn missed(&self, key: &str, now_ms: u64, max_ms: u64) {
        if !self.keys.contains_key(key) && !self.room(now_ms) {
            return;
        }
        let mut w = self.keys.entry(CompactString::new(key)).or_insert(Wait {
            misses: 0,
            until_ms: 0,
        });
        w.misses = w.misses.saturating_add(1);
        w.until_ms = now_ms.saturating_add(wait_ms(w.misses, max_ms));
    }

    /// Whether a new key fits, pruning expired waits (rate-limited) if full.
    fn room(&self, now_ms: u64) -> bool {
        if self.keys.len() < CAP {
            return true;
        }
        let last = self.last_prune_ms.load(Ordering::Relaxed);
        if now_ms.saturating_sub(last) < PRUNE_EVERY_MS
            || self
                .last_prune_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return false;
        }
        self.keys.retain(|_, w| w.until_ms > now_ms);
        self.keys.len() < CAP
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.keys.len()
    }
}

/// `FIRST_MS · 2^(misses-1)`, capped at `max_ms` (but at least `FIRST_MS`).
fn wait_ms(misses: u32, max_ms: u64) -> u64 {
    let doubled = FIRST_MS.saturating_mul(1u64 << misses.saturating_sub(1).min(32));
    doubled.min(max_ms.max(FIRST_MS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_max_age_and_a_confirmation_clears_them() {
        let b = Backoff::default();
        assert!(b.due("k", 0));
        let mut now = 10_000;
        for want in [1_000, 2_000, 4_000, 8_000, 10_000, 10_000] {
            b.missed("k", now, 10_000);
            assert!(!b.due("k", now + want - 1), "{want}");
            assert!(b.due("k", now + want), "{want}");
            now += want;
        }
        b.confirmed("k");
        assert!(b.due("k", now));
        b.missed("k", now, 10_000);
        assert!(b.due("k", now + 1_000), "a confirmation restarts at 1 s");
        assert!(b.due("other", now));
    }

    #[test]
    fn tracked_keys_are_bounded_and_expired_ones_pruned() {
        let b = Backoff::default();
        for i in 0..CAP + 10 {
            b.missed(&format!("k{i}"), 5_000, 60_000);
        }
        assert_eq!(b.len(), CAP);
        // All still waiting: nothing to prune, the newcomer is not tracked.
        b.missed("late", 5_500, 60_000);
        assert!(b.due("late", 5_500));
        // Once they expired, a newcomer prunes them (at most once a second).
        b.missed("later", 7_000, 60_000);
        assert!(!b.due("later", 7_000));
        assert_eq!(b.len(), 1);
    }
}

//! The table's unit tests.

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

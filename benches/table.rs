//! Table lookup and merge at 1M preloaded keys, 1 and 2 threads, against the
//! naive `Mutex<HashMap>` baseline in the same harness.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use pollgate::table::Table;

const KEYS: usize = 1_000_000;
/// Pre-drawn random key indices, so the measured loop draws no numbers.
const ORDER: usize = 1 << 16;

/// The two operations under test, so both stores run the same loop.
trait Store: Sync {
    fn lookup(&self, key: &str) -> u64;
    fn merge(&self, key: &str, version: u64);
}

impl Store for Table {
    fn lookup(&self, key: &str) -> u64 {
        self.get(key).map_or(0, |e| e.version)
    }
    fn merge(&self, key: &str, version: u64) {
        Table::merge(self, key, version, true);
    }
}

/// What a first version would write: one lock, owned `String` keys.
struct Baseline {
    map: Mutex<HashMap<String, (u64, u64)>>,
    start: Instant,
}

impl Store for Baseline {
    fn lookup(&self, key: &str) -> u64 {
        self.map.lock().unwrap().get(key).map_or(0, |e| e.0)
    }
    fn merge(&self, key: &str, version: u64) {
        let now = self.start.elapsed().as_millis() as u64;
        let mut map = self.map.lock().unwrap();
        if let Some(e) = map.get_mut(key) {
            if version >= e.0 {
                *e = (version, now);
            }
        }
    }
}

struct Fixture {
    keys: Vec<String>,
    order: Vec<usize>,
    table: Table,
    baseline: Baseline,
}

fn fixture() -> Fixture {
    let keys: Vec<String> = (0..KEYS).map(|i| format!("p{i:09}")).collect();
    let mut rng = fastrand::Rng::with_seed(7);
    let order = (0..ORDER).map(|_| rng.usize(..KEYS)).collect();
    let table = Table::new();
    let mut map = HashMap::with_capacity(KEYS);
    for k in &keys {
        table.merge(k, 1, true);
        map.insert(k.clone(), (1, 0));
    }
    let baseline = Baseline {
        map: Mutex::new(map),
        start: Instant::now(),
    };
    Fixture {
        keys,
        order,
        table,
        baseline,
    }
}

/// Runs `iters` ops on each of `threads` threads; the elapsed wall time covers all.
fn run(fx: &Fixture, store: &dyn Store, threads: usize, iters: u64, merge: bool) -> Duration {
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || ops(fx, store, t, iters, merge));
        }
    });
    start.elapsed()
}

fn ops(fx: &Fixture, store: &dyn Store, thread: usize, iters: u64, merge: bool) {
    let start = thread * (ORDER / 2);
    for i in 0..iters {
        let key = &fx.keys[fx.order[(start + i as usize) % ORDER]];
        if merge {
            store.merge(key, 2 + i);
        } else {
            black_box(store.lookup(key));
        }
    }
}

fn bench(c: &mut Criterion) {
    let fx = fixture();
    for (op, merge) in [("lookup", false), ("merge", true)] {
        let stores: [(&str, &dyn Store); 2] =
            [("pollgate", &fx.table), ("mutex_hashmap", &fx.baseline)];
        for (name, store) in stores {
            let mut group = c.benchmark_group(format!("{op}/{name}"));
            group
                .measurement_time(Duration::from_secs(3))
                .sample_size(20);
            for threads in [1usize, 2] {
                group.throughput(Throughput::Elements(threads as u64));
                group.bench_function(BenchmarkId::from_parameter(threads), |b| {
                    b.iter_custom(|iters| run(&fx, store, threads, iters, merge))
                });
            }
            group.finish();
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);

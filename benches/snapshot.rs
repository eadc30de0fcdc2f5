//! Snapshot write and load at 100k and 1M keys, against a naive baseline in
//! the same harness: `key version` text lines parsed into a `Mutex<HashMap>`,
//! and against loading the same records one `merge_at` at a time (what
//! `load` did before `Table::merge_batch_at`). Prints the file size per key
//! once per size.

use std::collections::HashMap;
use std::sync::Mutex;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use pollgate::snapshot::{self, format::Snapshot, snapshot_path};
use pollgate::table::Table;

fn table(keys: u64) -> Table {
    let t = Table::new();
    for i in 0..keys {
        t.merge(&format!("project:{i}"), i + 1, true);
    }
    t
}

fn text_of(t: &Table) -> Vec<u8> {
    let mut s = String::new();
    t.for_each(|k, e| {
        s.push_str(k);
        s.push(' ');
        s.push_str(&e.version.to_string());
        s.push('\n');
    });
    s.into_bytes()
}

fn naive_load(text: &[u8]) -> Mutex<HashMap<String, u64>> {
    let map = Mutex::new(HashMap::new());
    for line in std::str::from_utf8(text).unwrap().lines() {
        let (k, v) = line.split_once(' ').unwrap();
        map.lock()
            .unwrap()
            .insert(k.to_string(), v.parse().unwrap());
    }
    map
}

/// Validates, then merges record by record on one thread.
fn per_key_load(t: &Table, bytes: &[u8]) {
    let snap = Snapshot::parse(bytes).unwrap();
    let now = t.now_ms();
    for (key, version) in snap.iter() {
        t.merge_at(key, version, now);
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("snapshot");
    g.sample_size(10)
        .measurement_time(std::time::Duration::from_secs(8));
    for keys in [100_000u64, 1_000_000] {
        let t = table(keys);
        let dir = tempfile::tempdir().unwrap();
        let w = snapshot::write(&t, dir.path(), &snapshot::Positions::default()).unwrap();
        eprintln!(
            "snapshot of {keys} keys: {} bytes, {:.1} bytes/key",
            w.bytes,
            w.bytes as f64 / keys as f64
        );
        let path = snapshot_path(dir.path());
        let bytes = std::fs::read(&path).unwrap();
        let text = text_of(&t);

        g.bench_with_input(BenchmarkId::new("write_fsync", keys), &t, |b, t| {
            b.iter(|| snapshot::write(t, dir.path(), &snapshot::Positions::default()).unwrap())
        });
        g.bench_with_input(BenchmarkId::new("load", keys), &path, |b, path| {
            b.iter_batched_ref(
                Table::new,
                |fresh| {
                    snapshot::load(fresh, path, 60_000, &snapshot::Positions::default())
                        .unwrap()
                        .unwrap()
                },
                BatchSize::PerIteration,
            )
        });
        g.bench_with_input(
            BenchmarkId::new("load_per_key_merge_at", keys),
            &bytes,
            |b, bytes| {
                b.iter_batched_ref(
                    Table::new,
                    |fresh| per_key_load(fresh, bytes),
                    BatchSize::PerIteration,
                )
            },
        );
        g.bench_with_input(
            BenchmarkId::new("validate_only", keys),
            &bytes,
            |b, bytes| b.iter(|| Snapshot::parse(bytes).unwrap().len()),
        );
        g.bench_with_input(
            BenchmarkId::new("naive_text_hashmap_load", keys),
            &text,
            |b, text| b.iter(|| naive_load(text)),
        );
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

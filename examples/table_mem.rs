//! Resident memory per key of the version table vs a `Mutex<HashMap>` at 1M keys.
//! Each store is measured in its own child process so memory freed by one
//! cannot be reused by the other and hide its cost.

use std::collections::HashMap;
use std::fmt::Write;
use std::process::Command;
use std::sync::Mutex;

use pollgate::table::Table;

const KEYS: usize = 1_000_000;
/// x86-64 and aarch64 Linux default; statm counts pages.
const PAGE: usize = 4096;

fn main() {
    match std::env::args().nth(1).as_deref() {
        Some("table") => report(measure(fill_table)),
        Some("hashmap") => report(measure(fill_hashmap)),
        _ => compare(),
    }
}

fn compare() {
    let table = child("table");
    let map = child("hashmap");
    println!("pollgate table:       {table:6.1} bytes/key");
    println!("Mutex<HashMap>:       {map:6.1} bytes/key");
    println!("ratio table/baseline: {:6.2}", table / map);
}

fn child(which: &str) -> f64 {
    let exe = std::env::current_exe().expect("own path");
    let out = Command::new(exe).arg(which).output().expect("child runs");
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("child {which} printed {text:?}"))
}

fn report(bytes_per_key: f64) {
    println!("{bytes_per_key}");
}

/// RSS delta across `fill`, per key; the store stays alive until measured.
fn measure<T>(fill: fn() -> T) -> f64 {
    let before = rss_bytes();
    let store = fill();
    let after = rss_bytes();
    drop(std::hint::black_box(store));
    (after - before) as f64 / KEYS as f64
}

fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux /proc");
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("statm resident");
    pages * PAGE
}

/// Keys like `p000123456`, built in one reused buffer so only the store allocates.
fn each_key(mut f: impl FnMut(&str)) {
    let mut buf = String::with_capacity(16);
    for i in 0..KEYS {
        buf.clear();
        write!(buf, "p{i:09}").expect("write to String");
        f(&buf);
    }
}

fn fill_table() -> Table {
    let table = Table::new();
    each_key(|k| {
        table.merge(k, 1, true);
    });
    assert_eq!(table.len(), KEYS);
    table
}

fn fill_hashmap() -> Mutex<HashMap<String, (u64, u64)>> {
    let mut map = HashMap::new();
    each_key(|k| {
        map.insert(k.to_string(), (1, 0));
    });
    Mutex::new(map)
}

//! Warm restarts: the table is written to `<data_dir>/pollgate.snap` every
//! `snapshot_interval` (when it changed) and at shutdown, and loaded at start.
//! Format and crash-safety argument: `src/snapshot.md`.
//!
//! Loaded entries are trusted only as far as `max_age` allows: their
//! confirmation times are spread so their revalidations trickle upstream
//! uniformly over one `max_age` instead of arriving as one wave.

mod file;
pub mod format;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::state::State;
use crate::table::{AdvanceHook, Table};
use format::{Encoder, FormatError, Snapshot};

pub use file::{snapshot_path, FILE_NAME};

/// Why a snapshot was not loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read; it may be fine, so it is left in place.
    #[error("cannot read: {0}")]
    Io(#[from] std::io::Error),
    /// The bytes are not a valid snapshot; the file is moved aside.
    #[error("{0}")]
    Format(#[from] FormatError),
}

/// Where each feed (a Redis stream, by name) stands: the last ID `(ms, seq)`
/// whose versions are in the table. Kept in the snapshot so a restart resumes
/// right after what the loaded table already holds. The writer reads it
/// before walking the table, so a file never claims an entry it lacks.
#[derive(Default)]
pub struct Positions(Mutex<BTreeMap<String, (u64, u64)>>);

impl Positions {
    pub fn get(&self, name: &str) -> Option<(u64, u64)> {
        self.0.lock().get(name).copied()
    }

    pub fn set(&self, name: &str, pos: (u64, u64)) {
        let mut m = self.0.lock();
        match m.get_mut(name) {
            Some(p) => *p = pos,
            None => {
                m.insert(name.to_string(), pos);
            }
        }
    }

    pub fn all(&self) -> Vec<(String, (u64, u64))> {
        self.0.lock().iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
}

/// What a successful load did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loaded {
    pub entries: u64,
    pub created_ms: u64,
    /// Feed positions stored with the entries.
    pub positions: usize,
}

/// What a successful write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub entries: u64,
    pub bytes: u64,
    pub created_ms: u64,
    /// Table keys left out because a loader would refuse them.
    pub skipped: u64,
}

/// Validates the whole file at `path` first, then merges every entry into
/// `table` with confirmation times spread over `max_age_ms` (see [`spread`])
/// and sets the feed positions stored with them. `Ok(None)`: no snapshot.
pub fn load(
    table: &Table,
    path: &Path,
    max_age_ms: u64,
    positions: &Positions,
) -> Result<Option<Loaded>, LoadError> {
    let Some(map) = file::map(path)? else {
        return Ok(None);
    };
    let snap = Snapshot::parse(&map)?;
    merge_all(table, &snap, max_age_ms, threads_for(snap.len()))?;
    for (name, pos) in &snap.positions {
        positions.set(name, *pos);
    }
    Ok(Some(Loaded {
        entries: snap.len(),
        created_ms: snap.header.created_ms,
        positions: snap.positions.len(),
    }))
}

/// Below this many records per thread, starting threads costs more than it
/// saves. Starting one costs tens of µs; 16k records take a few ms to merge.
const RECORDS_PER_THREAD: u64 = 16 * 1024;

/// Merges every record in one [`Table::merge_batch_at`]: inserting is most of
/// a load's time, and the batch takes each shard's lock once, on `threads`
/// threads that never share a shard. Nothing is merged unless every record
/// reads (which `Snapshot::parse` already checked). Blocking.
fn merge_all(
    table: &Table,
    snap: &Snapshot<'_>,
    max_age_ms: u64,
    threads: u64,
) -> Result<(), FormatError> {
    let items = items(snap, table.now_ms(), max_age_ms, threads)?;
    // Runs before `app::run` registers the advance hooks: peers have these
    // versions or will pull them, and nobody watches yet.
    table.merge_batch_at(&items, threads as usize);
    Ok(())
}

/// Every record as `(key, version, spread confirmation)`, read on `threads`
/// threads, each filling its own part: reading and re-checking a million
/// records is the largest cost of a load after the merge itself.
fn items<'a>(
    snap: &Snapshot<'a>,
    now: u64,
    max_age_ms: u64,
    threads: u64,
) -> Result<Vec<(&'a str, u64, u64)>, FormatError> {
    // `parse` checked the records fit in the mapped file, so the count fits a usize.
    let mut items = vec![("", 0, 0); snap.len() as usize];
    let per = items.len().div_ceil(threads.max(1) as usize).max(1);
    std::thread::scope(|s| {
        let parts: Vec<_> = (items.chunks_mut(per).zip((0..).step_by(per)))
            .map(|(part, start)| s.spawn(move || fill(snap, part, start, now, max_age_ms)))
            .collect();
        parts
            .into_iter()
            .try_for_each(|p| p.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
    })?;
    Ok(items)
}

/// Fills `part` with the records from index `start` on.
fn fill<'a>(
    snap: &Snapshot<'a>,
    part: &mut [(&'a str, u64, u64)],
    start: u64,
    now: u64,
    max_age_ms: u64,
) -> Result<(), FormatError> {
    let mut rng = fastrand::Rng::new();
    for (item, i) in part.iter_mut().zip(start..) {
        let (key, version) = snap.record(i)?;
        *item = (key, version, spread(now, max_age_ms, &mut rng));
    }
    Ok(())
}

/// One thread per 16k records, at most one per core (and 8: more cores than
/// that only add lock traffic on 64 shards).
fn threads_for(records: u64) -> u64 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    (records / RECORDS_PER_THREAD).clamp(1, cores.min(8))
}

/// A confirmation time for a loaded entry: `now - max_age + uniform[0, max_age)`,
/// so the entry expires at a uniformly random moment of the next `max_age` and
/// the upstream sees `keys / max_age` revalidations per second, not one wave.
/// The file's own age is deliberately ignored: a snapshot is never fresher than
/// "unconfirmed". With `max_age = 0` nothing expires, so any time will do.
pub fn spread(now_ms: u64, max_age_ms: u64, rng: &mut fastrand::Rng) -> u64 {
    if max_age_ms == 0 {
        return now_ms;
    }
    now_ms.saturating_sub(max_age_ms) + rng.u64(0..max_age_ms)
}

/// Serialises `table` (one shard read lock at a time) with the feed
/// `positions` and atomically replaces the snapshot in `dir`. Blocking: run
/// it off the async threads.
pub fn write(table: &Table, dir: &Path, positions: &Positions) -> std::io::Result<Written> {
    let created_ms = unix_ms();
    let mut enc = Encoder::with_capacity(table.len());
    // Before the walk: every entry up to these positions is in the table
    // now, so the walk records it (versions only grow).
    enc.set_positions(&positions.all());
    table.for_each(|key, e| enc.push(key, e.version));
    let (header, [records, keys, tail]) = enc.finish(created_ms);
    let bytes = file::write_atomically(dir, &[&header, records, keys, tail])?;
    Ok(Written {
        entries: enc.len(),
        bytes,
        created_ms,
        skipped: enc.skipped,
    })
}

pub use crate::clock::unix_ms;

/// Counters shared by the writer task, the advance hook and the metrics scrape.
#[derive(Default)]
pub struct SnapshotStats {
    /// Advancing merges seen by the table hook since start.
    changes: AtomicU64,
    /// `changes` as it was when the last successful write started.
    written: AtomicU64,
    /// Unix ms of the newest snapshot written or loaded; 0 = none.
    created_ms: AtomicU64,
    last_write_micros: AtomicU64,
    bytes: AtomicU64,
    entries_loaded: AtomicU64,
    load_failures: AtomicU64,
    writes: AtomicU64,
    write_failures: AtomicU64,
}

/// Owns the periodic writer; `shutdown` writes a final snapshot.
pub struct SnapshotHandle {
    task: Option<(JoinHandle<()>, oneshot::Sender<()>)>,
    pub stats: Arc<SnapshotStats>,
    /// Held until shutdown: `data_dir` belongs to this process alone.
    _lock: Option<std::fs::File>,
}

/// Registers the metrics, and with `data_dir`: loads the snapshot (before the
/// caller starts serving, so no poll meets a half-loaded table and falls
/// through to the upstream as "unknown"), then starts the writer.
pub async fn start(state: &Arc<State>, positions: Arc<Positions>) -> SnapshotHandle {
    let stats = Arc::new(SnapshotStats::default());
    register_metrics(state, &stats);
    let disabled = |stats| SnapshotHandle {
        task: None,
        stats,
        _lock: None,
    };
    let Some(dir) = state.cfg.data_dir.clone() else {
        return disabled(stats);
    };
    let lock = match std::fs::create_dir_all(&dir).and_then(|()| file::lock_dir(&dir)) {
        Ok(lock) => lock,
        Err(e) => {
            tracing::error!(dir = %dir.display(), error = %e, "data_dir unusable; running without snapshots");
            return disabled(stats);
        }
    };
    load_at_start(state, &stats, &dir, &positions).await;
    let (stop_tx, stop_rx) = oneshot::channel();
    let every = state.cfg.snapshot_interval;
    let task = tokio::spawn(run(
        state.clone(),
        stats.clone(),
        dir,
        positions,
        every,
        stop_rx,
    ));
    SnapshotHandle {
        task: Some((task, stop_tx)),
        stats,
        _lock: Some(lock),
    }
}

impl SnapshotHandle {
    /// Counts advances, so the writer skips a round when nothing changed
    /// (`None` without `data_dir`). Registered by `app::run` after the load.
    pub fn advance_hook(&self) -> Option<AdvanceHook> {
        self.task.as_ref()?;
        let s = self.stats.clone();
        Some(Box::new(move |_, _| {
            s.changes.fetch_add(1, Ordering::Relaxed);
        }))
    }

    /// Stops the writer after one last write of whatever changed. Call it after
    /// the server has drained, so the final snapshot includes every publish.
    pub async fn shutdown(self) {
        if let Some((task, stop)) = self.task {
            let _ = stop.send(());
            if let Err(e) = task.await {
                tracing::error!(error = %e, "snapshot writer task failed");
            }
        }
    }
}

async fn run(
    state: Arc<State>,
    stats: Arc<SnapshotStats>,
    dir: PathBuf,
    positions: Arc<Positions>,
    every: Duration,
    mut stop: oneshot::Receiver<()>,
) {
    if every.is_zero() {
        let _ = stop.await;
        return write_if_changed(&state, &stats, &dir, &positions, &mut FailureLog::default())
            .await;
    }
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    // A slow disk must not cause back-to-back catch-up writes.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut quiet = FailureLog::default();
    loop {
        tokio::select! {
            _ = tick.tick() => write_if_changed(&state, &stats, &dir, &positions, &mut quiet).await,
            _ = &mut stop => break,
        }
    }
    write_if_changed(&state, &stats, &dir, &positions, &mut quiet).await;
}

/// A write that keeps failing (a snapshot path that is a directory, a full
/// disk) is logged at ERROR once, then at most every [`FAILURE_LOG_EVERY`]
/// while it lasts, and once more when it recovers; the metric counts each.
#[derive(Default)]
struct FailureLog {
    last: Option<Instant>,
    suppressed: u64,
}

const FAILURE_LOG_EVERY: Duration = Duration::from_secs(300);

impl FailureLog {
    fn failed(&mut self, file: &Path, e: &dyn std::fmt::Display) {
        if self.last.is_some_and(|t| t.elapsed() < FAILURE_LOG_EVERY) {
            self.suppressed += 1;
            tracing::debug!(file = %file.display(), error = %e, "snapshot write failed again");
            return;
        }
        let suppressed = std::mem::take(&mut self.suppressed);
        tracing::error!(file = %file.display(), error = %e, suppressed, "snapshot write failed; will retry (logged again in 5 min if it persists)");
        self.last = Some(Instant::now());
    }

    fn succeeded(&mut self, file: &Path) {
        if self.last.take().is_some() {
            tracing::info!(file = %file.display(), "snapshot writes work again");
        }
        self.suppressed = 0;
    }
}

/// Writes on a blocking thread when anything advanced since the last write.
/// A failed write is logged and retried at the next tick; serving goes on.
async fn write_if_changed(
    state: &Arc<State>,
    stats: &SnapshotStats,
    dir: &Path,
    positions: &Arc<Positions>,
    quiet: &mut FailureLog,
) {
    let changes = stats.changes.load(Ordering::Acquire);
    if changes == stats.written.load(Ordering::Acquire) {
        return;
    }
    let (st, d, p) = (state.clone(), dir.to_path_buf(), positions.clone());
    let started = Instant::now();
    let res = tokio::task::spawn_blocking(move || write(&st.table, &d, &p)).await;
    let file = snapshot_path(dir);
    match res {
        Ok(Ok(w)) => {
            stats.written.store(changes, Ordering::Release);
            stats.record_write(&w, started.elapsed());
            quiet.succeeded(&file);
            if w.skipped > 0 {
                tracing::warn!(
                    skipped = w.skipped,
                    "snapshot left out keys that break the key rule"
                );
            }
            tracing::debug!(file = %file.display(), entries = w.entries, bytes = w.bytes, "snapshot written");
        }
        Ok(Err(e)) => {
            stats.write_failures.fetch_add(1, Ordering::Relaxed);
            quiet.failed(&file, &e);
        }
        Err(e) => {
            stats.write_failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!(file = %file.display(), error = %e, "snapshot writer panicked");
        }
    }
}

impl SnapshotStats {
    fn record_write(&self, w: &Written, took: Duration) {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.created_ms.store(w.created_ms, Ordering::Relaxed);
        self.bytes.store(w.bytes, Ordering::Relaxed);
        self.last_write_micros
            .store(took.as_micros() as u64, Ordering::Relaxed);
    }
}

/// Loads on a blocking thread; on a bad file logs why, moves it aside and
/// leaves the table cold. Never fails start-up.
async fn load_at_start(
    state: &Arc<State>,
    stats: &SnapshotStats,
    dir: &Path,
    positions: &Arc<Positions>,
) {
    let path = snapshot_path(dir);
    let (st, p, pos) = (state.clone(), path.clone(), positions.clone());
    let started = Instant::now();
    let max_age = state.tunables.max_age_ms();
    let res = tokio::task::spawn_blocking(move || load(&st.table, &p, max_age, &pos)).await;
    match res {
        Ok(Ok(Some(l))) => {
            stats.entries_loaded.store(l.entries, Ordering::Relaxed);
            stats.created_ms.store(l.created_ms, Ordering::Relaxed);
            let age_s = unix_ms().saturating_sub(l.created_ms) / 1000;
            tracing::info!(file = %path.display(), entries = l.entries, positions = l.positions, age_s, took_ms = started.elapsed().as_millis() as u64, "snapshot loaded; entries revalidate over max_age");
        }
        Ok(Ok(None)) => tracing::info!(file = %path.display(), "no snapshot; starting cold"),
        Ok(Err(e)) => load_failed(stats, &path, &e),
        Err(e) => {
            stats.load_failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!(file = %path.display(), error = %e, "snapshot loader panicked; starting cold");
        }
    }
}

/// Corrupt snapshots kept for inspection; older ones are deleted, so a
/// replica that keeps meeting corrupt files cannot fill its disk with them.
const KEEP_CORRUPT: usize = 3;

fn load_failed(stats: &SnapshotStats, path: &Path, e: &LoadError) {
    stats.load_failures.fetch_add(1, Ordering::Relaxed);
    let LoadError::Format(_) = e else {
        tracing::error!(file = %path.display(), reason = %e, "snapshot unreadable; starting cold");
        return;
    };
    match file::move_aside(path, unix_ms() / 1000) {
        Ok(to) => {
            file::prune_corrupt(path, KEEP_CORRUPT);
            tracing::error!(file = %path.display(), reason = %e, moved_to = %to.display(), "snapshot corrupt; moved aside, starting cold")
        }
        Err(mv) => {
            tracing::error!(file = %path.display(), reason = %e, error = %mv, "snapshot corrupt and could not be moved aside; starting cold")
        }
    }
}

/// Snapshot metrics, plus revalidations in flight (coalesced upstream
/// requests for cold or expired keys), which is what `max_age` costs.
fn register_metrics(state: &Arc<State>, stats: &Arc<SnapshotStats>) {
    // Weak: the collector lives inside `state.metrics`; a strong ref would be a cycle.
    let (st, s): (Weak<State>, _) = (Arc::downgrade(state), stats.clone());
    state.metrics.register(Box::new(move |o| {
        s.render(o);
        if let Some(st) = st.upgrade() {
            crate::metrics::gauge(
                o,
                "pollgate_revalidations_inflight",
                "Coalesced upstream requests in flight for cold or expired keys.",
                st.coalescer.in_flight() as i64,
            );
        }
    }));
}

impl SnapshotStats {
    fn render(&self, o: &mut String) {
        use crate::metrics::{counter, gauge};
        let created = self.created_ms.load(Ordering::Relaxed);
        let age = match created {
            0 => f64::NAN,
            c => unix_ms().saturating_sub(c) as f64 / 1000.0,
        };
        float_gauge(
            o,
            "pollgate_snapshot_age_seconds",
            "Age of the newest snapshot written or loaded (NaN: none).",
            age,
        );
        let took = self.last_write_micros.load(Ordering::Relaxed) as f64 / 1e6;
        float_gauge(
            o,
            "pollgate_snapshot_write_seconds",
            "Duration of the last snapshot write, serialising to directory fsync.",
            took,
        );
        gauge(
            o,
            "pollgate_snapshot_bytes",
            "Size of the last snapshot written.",
            self.bytes.load(Ordering::Relaxed) as i64,
        );
        gauge(
            o,
            "pollgate_snapshot_entries_loaded",
            "Entries loaded from the snapshot at start.",
            self.entries_loaded.load(Ordering::Relaxed) as i64,
        );
        counter(
            o,
            "pollgate_snapshot_load_failures_total",
            "Snapshots that could not be loaded at start.",
            self.load_failures.load(Ordering::Relaxed),
        );
        counter(
            o,
            "pollgate_snapshot_writes_total",
            "Snapshots written.",
            self.writes.load(Ordering::Relaxed),
        );
        counter(
            o,
            "pollgate_snapshot_write_failures_total",
            "Snapshot writes that failed (retried next interval).",
            self.write_failures.load(Ordering::Relaxed),
        );
    }
}

fn float_gauge(o: &mut String, name: &str, help: &str, v: f64) {
    use std::fmt::Write;
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table_of(n: u64) -> Table {
        let t = Table::new();
        for i in 0..n {
            t.merge(&format!("k{i}"), i * 3, true);
        }
        t
    }

    fn contents(t: &Table) -> Vec<(String, u64)> {
        let mut v = Vec::new();
        t.for_each(|k, e| v.push((k.to_string(), e.version)));
        v.sort();
        v
    }

    #[test]
    fn write_then_load_gives_the_same_table() {
        let dir = tempfile::tempdir().unwrap();
        let t = table_of(1000);
        let w = write(&t, dir.path(), &Positions::default()).unwrap();
        assert_eq!((w.entries, w.skipped), (1000, 0));
        let back = Table::new();
        let l = load(
            &back,
            &snapshot_path(dir.path()),
            60_000,
            &Positions::default(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (l.entries, l.created_ms, l.positions),
            (1000, w.created_ms, 0)
        );
        assert_eq!(contents(&back), contents(&t));
    }

    #[test]
    fn merging_on_several_threads_loads_every_record() {
        let t = table_of(1001);
        let mut enc = Encoder::default();
        t.for_each(|k, e| enc.push(k, e.version));
        let bytes = enc.to_vec(0);
        let snap = Snapshot::parse(&bytes).unwrap();
        for threads in [1, 2, 3, 8] {
            let back = Table::new();
            merge_all(&back, &snap, 1_000, threads).unwrap();
            assert_eq!(contents(&back), contents(&t), "{threads} threads");
        }
        assert_eq!(threads_for(0), 1);
        assert!(threads_for(u64::MAX) <= 8);
    }

    #[test]
    fn feed_positions_round_trip_with_the_table() {
        let dir = tempfile::tempdir().unwrap();
        let pos = Positions::default();
        pos.set("versions", (1_700_000_000_000, 2));
        pos.set("other", (5, 0));
        write(&table_of(10), dir.path(), &pos).unwrap();
        let back = Positions::default();
        let t = Table::new();
        let l = load(&t, &snapshot_path(dir.path()), 1_000, &back)
            .unwrap()
            .unwrap();
        assert_eq!((l.entries, l.positions), (10, 2));
        assert_eq!(back.all(), pos.all());
    }

    #[test]
    fn loading_max_merges_into_a_live_table() {
        let dir = tempfile::tempdir().unwrap();
        write(&table_of(10), dir.path(), &Positions::default()).unwrap();
        let t = Table::new();
        t.merge("k5", 1_000, true);
        load(
            &t,
            &snapshot_path(dir.path()),
            60_000,
            &Positions::default(),
        )
        .unwrap();
        assert_eq!(t.get("k5").unwrap().version, 1_000, "never goes back");
        assert_eq!(t.get("k4").unwrap().version, 12);
    }

    #[test]
    fn no_file_is_not_an_error_and_a_bad_one_loads_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let t = Table::new();
        let p = snapshot_path(dir.path());
        assert!(load(&t, &p, 0, &Positions::default()).unwrap().is_none());
        write(&table_of(100), dir.path(), &Positions::default()).unwrap();
        let mut bytes = std::fs::read(&p).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x20;
        std::fs::write(&p, &bytes).unwrap();
        assert!(matches!(
            load(&t, &p, 0, &Positions::default()),
            Err(LoadError::Format(_))
        ));
        assert!(
            t.is_empty(),
            "nothing merged from a file that failed validation"
        );
    }

    #[test]
    fn loaded_entries_expire_spread_over_max_age() {
        let dir = tempfile::tempdir().unwrap();
        write(&table_of(10_000), dir.path(), &Positions::default()).unwrap();
        let t = Table::new();
        let max_age = 60_000;
        let now = t.now_ms();
        load(
            &t,
            &snapshot_path(dir.path()),
            max_age,
            &Positions::default(),
        )
        .unwrap();
        // Expiry = confirmed + max_age, relative to the load: 10 buckets of 6 s.
        let mut buckets = [0u32; 10];
        t.for_each(|_, e| {
            let expires_in = (e.confirmed_ms + max_age).saturating_sub(now);
            assert!(expires_in <= max_age + 1_000, "{expires_in}");
            buckets[(expires_in * 10 / max_age).min(9) as usize] += 1;
        });
        // Uniform: 1000 per bucket; ±25 % is > 7 sigma.
        assert!(
            buckets.iter().all(|&b| (750..1250).contains(&b)),
            "{buckets:?}"
        );
    }

    #[test]
    fn spread_handles_zero_and_huge_max_age() {
        let mut rng = fastrand::Rng::with_seed(1);
        assert_eq!(spread(500, 0, &mut rng), 500);
        for _ in 0..1000 {
            let c = spread(1_000, u64::MAX / 2, &mut rng);
            assert!(c < u64::MAX / 2, "{c}");
            let c = spread(1_000_000, 1_000, &mut rng);
            assert!((999_000..1_000_000).contains(&c), "{c}");
        }
    }
}

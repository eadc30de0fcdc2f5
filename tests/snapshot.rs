//! Warm restarts and bounded staleness, end to end: pollgate as a real process
//! with a `--data-dir`, restarted with SIGTERM (or killed), in front of a real
//! upstream that counts what reaches it.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{eventually, get, Mode, Pollgate, Upstream};
use http::StatusCode;

/// Held by the two heavy tests so they never overlap: a 100k-key publish and
/// load beside the burst test stalls its pollers, and expiries that pile up
/// during a stall are revalidated together when polling resumes: a burst
/// made by the test, not by pollgate.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn poll_path(key: &str, since: u64) -> String {
    format!("/projects/{key}/changes?since={since}")
}

fn dir_flag(dir: &Path) -> String {
    dir.to_str().unwrap().to_string()
}

/// Publishes `key{i} = i + 1` for `i < n`, in batches well under 1 MiB.
async fn publish_many(pg: &Pollgate, prefix: &str, n: usize) {
    for start in (0..n).step_by(20_000) {
        let body: String = (start..n.min(start + 20_000))
            .map(|i| format!("{prefix}{i} {}\n", i + 1))
            .collect();
        let (s, b) = pg.publish(&body).await;
        assert_eq!(s, StatusCode::OK, "{b}");
    }
}

/// SIGTERM, then a clean exit (which writes the final snapshot).
fn stop(mut pg: Pollgate) {
    pg.signal("-TERM");
    let status = tokio::task::block_in_place(|| pg.wait_exit(Duration::from_secs(30)));
    assert!(status.success(), "{status:?}: {:?}", pg.log.lock());
}

/// `(version, confirmed_ms_ago)` from the internal lookup.
async fn lookup(pg: &Pollgate, key: &str) -> Option<(u64, u64)> {
    let (s, _, body) = get(&pg.internal_url(&format!("/v1/versions/{key}"))).await;
    if s == StatusCode::NOT_FOUND {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    Some((
        v["version"].as_u64().unwrap(),
        v["confirmed_ms_ago"].as_u64().unwrap(),
    ))
}

#[tokio::test(flavor = "multi_thread")]
async fn restart_is_warm_with_100k_keys() {
    const KEYS: usize = 100_000;
    const MAX_AGE_MS: u64 = 200 * 3600 * 1000;
    let _heavy = HEAVY.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start().await;
    let args = ["--data-dir", &dir_flag(dir.path()), "--max-age", "200h"];
    let pg = Pollgate::start(&up.url(), &args);
    publish_many(&pg, "t", KEYS).await;
    stop(pg);
    assert!(dir.path().join("pollgate.snap").exists());

    let pg = Pollgate::start(&up.url(), &args);
    assert_eq!(get(&pg.internal_url("/readyz")).await.0, StatusCode::OK);
    assert_eq!(
        pg.metric("pollgate_snapshot_entries_loaded").await,
        KEYS as f64
    );
    let sample: Vec<usize> = (0..KEYS).step_by(KEYS / 200).collect();
    let mut agos = Vec::new();
    for &i in &sample {
        let (version, ago) = lookup(&pg, &format!("t{i}")).await.expect("loaded");
        assert_eq!(version, i as u64 + 1);
        agos.push(ago);
    }
    // Loaded entries are unconfirmed, their expiries spread over max_age.
    let (lo, hi) = (agos.iter().min().unwrap(), agos.iter().max().unwrap());
    assert!(
        *lo < MAX_AGE_MS / 4 && *hi > MAX_AGE_MS * 3 / 4,
        "{lo} {hi}"
    );
    // The first polls are answered from memory. Skip keys (≈ 1 in 10^4) whose
    // spread expiry falls within the next minute: those rightly revalidate.
    for (&i, ago) in sample.iter().zip(agos) {
        if ago + 60_000 > MAX_AGE_MS {
            continue;
        }
        let (s, h, _) = get(&pg.url(&poll_path(&format!("t{i}"), i as u64 + 1))).await;
        assert_eq!(
            (s, h["x-pollgate"].to_str().unwrap()),
            (StatusCode::NOT_MODIFIED, "hit")
        );
    }
    assert_eq!(up.hits(), 0, "no poll reached the upstream");
}

/// Polls every key continuously for longer than `max_age` after a restart
/// and measures upstream requests in every 1 s window.
#[tokio::test(flavor = "multi_thread")]
async fn revalidation_after_restart_is_a_trickle_not_a_burst() {
    const KEYS: usize = 1_000;
    const MAX_AGE_S: f64 = 6.0;
    let _heavy = HEAVY.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start().await;
    for i in 0..KEYS {
        up.set_version(&format!("r{i}"), i as u64 + 1);
    }
    let args = ["--data-dir", &dir_flag(dir.path()), "--max-age", "6s"];
    let pg = Pollgate::start(&up.url(), &args);
    publish_many(&pg, "r", KEYS).await;
    stop(pg);
    let pg = Arc::new(Pollgate::start(&up.url(), &args));
    let hits = up.hits.clone();
    let end = Instant::now() + Duration::from_secs_f64(MAX_AGE_S * 1.3);
    let sampler = tokio::spawn(async move {
        let mut samples = vec![(Instant::now(), 0usize)];
        while Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(20)).await;
            samples.push((
                Instant::now(),
                hits.load(std::sync::atomic::Ordering::SeqCst),
            ));
        }
        samples
    });
    let pollers: Vec<_> = (0..16)
        .map(|w| tokio::spawn(poll_until_done(pg.clone(), w, KEYS, end)))
        .collect();
    let samples = sampler.await.unwrap();
    let (mut polls, mut cycle) = (0, Duration::ZERO);
    for p in pollers {
        let (n, c) = p.await.unwrap();
        polls += n;
        cycle = cycle.max(c);
    }
    let worst = worst_window(&samples, Duration::from_secs(1));
    let limit = trickle_limit(KEYS, MAX_AGE_S, cycle);
    let total = samples.last().unwrap().1;
    let rate = polls as f64 / (MAX_AGE_S * 1.3);
    eprintln!(
        "revalidations: {total} total, worst 1 s window {worst}, limit {limit}, 10-80% in {:?}; {rate:.0} polls/s, longest poll cycle {cycle:?}",
        span(&samples, KEYS / 10, KEYS * 8 / 10)
    );
    assert!(
        worst <= limit,
        "burst: {worst} upstream requests in 1 s > {limit}"
    );
    // The rate limit grows with the poll cycle, and a burst itself slows the
    // pollers down; what tells a trickle from a burst whatever the machine:
    // the time between the 10th and the 80th percent of the keys revalidated
    // is ~0.7 max_age for a trickle, the time to forward them all for a burst.
    let spread = span(&samples, KEYS / 10, KEYS * 8 / 10);
    assert!(
        spread >= Duration::from_secs_f64(MAX_AGE_S / 2.0),
        "burst: 10% to 80% of the keys revalidated within {spread:?}"
    );
    // Every key expired within max_age of the restart and was polled after:
    // most of them must have been revalidated (the check above is not vacuous).
    assert!(total >= KEYS / 2, "only {total} revalidations");
}

/// Most revalidations a trickle can put in a 1 s window. Loaded entries
/// expire at uniformly random moments of `max_age` (`snapshot::spread`): `n =
/// keys / max_age` per second. A key is revalidated by its first poll after it
/// expired, so a window also takes the keys that expired up to `cycle` (the
/// longest a key waited between two polls) before it: `n × (1 s + cycle)`
/// expected, plus 4 standard deviations of that count (Poisson). The old
/// fixed limit, 2n, was this expectation at a 1 s cycle with no margin at all.
fn trickle_limit(keys: usize, max_age_s: f64, cycle: Duration) -> usize {
    let expected = keys as f64 / max_age_s * (1.0 + cycle.as_secs_f64());
    (expected + 4.0 * expected.sqrt()).ceil() as usize
}

/// Worker `w` of 16 polls its share of keys at their current version until
/// `end`; returns how many polls it made and the longest any of its keys
/// waited between two polls.
async fn poll_until_done(
    pg: Arc<Pollgate>,
    w: usize,
    keys: usize,
    end: Instant,
) -> (usize, Duration) {
    let client = common::client();
    let (mut polls, mut longest) = (0, Duration::ZERO);
    let mut last: Vec<Option<Instant>> = vec![None; keys];
    while Instant::now() < end {
        for i in (w..keys).step_by(16) {
            polls += 1;
            let now = Instant::now();
            if let Some(prev) = last[i].replace(now) {
                longest = longest.max(now - prev);
            }
            let uri = pg.url(&poll_path(&format!("r{i}"), i as u64 + 1));
            let req = http::Request::get(uri)
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap();
            let resp = client.request(req).await.unwrap();
            let s = resp.status();
            assert!(s == StatusCode::NOT_MODIFIED || s == StatusCode::OK, "{s}");
            let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
        }
    }
    (polls, longest)
}

/// Time from the first sample at `from` or more to the first at `to` or more
/// (zero if the counter never got there).
fn span(samples: &[(Instant, usize)], from: usize, to: usize) -> Duration {
    let at = |n| samples.iter().find(|s| s.1 >= n).map(|s| s.0);
    match (at(from), at(to)) {
        (Some(a), Some(b)) => b - a,
        _ => Duration::ZERO,
    }
}

/// Largest increase of the counter over any window of length `w`.
fn worst_window(samples: &[(Instant, usize)], w: Duration) -> usize {
    let mut worst = 0;
    let mut j = 0;
    for (i, &(t, n)) in samples.iter().enumerate() {
        j = j.max(i);
        while j + 1 < samples.len() && samples[j + 1].0 <= t + w {
            j += 1;
        }
        worst = worst.max(samples[j].1 - n);
    }
    worst
}

#[tokio::test]
async fn a_lost_publish_is_found_within_max_age() {
    let up = Upstream::start().await;
    let pg = Pollgate::start(&up.url(), &["--max-age", "1s"]);
    pg.publish("lp 5\n").await;
    // The app moves on, but the publish of version 6 is lost.
    up.set_version("lp", 6);
    let started = Instant::now();
    let (s, _, _) = get(&pg.url(&poll_path("lp", 5))).await;
    assert_eq!(s, StatusCode::NOT_MODIFIED, "fresh: answered from memory");
    // Keep polling at the old version until a poll is not answered from memory.
    let deadline = Instant::now() + Duration::from_secs(5);
    let (s, h, hits) = loop {
        let (s, h, _) = get(&pg.url(&poll_path("lp", 5))).await;
        if s != StatusCode::NOT_MODIFIED {
            break (s, h, up.hits());
        }
        assert!(Instant::now() < deadline, "the change was never found");
        assert_eq!(up.hits(), 0);
    };
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!((s, hits), (StatusCode::OK, 1), "forwarded once");
    assert_eq!(h["x-pollgate-version"], "6", "the client learns the change");
    assert_eq!(lookup(&pg, "lp").await.unwrap().0, 6);
    // Confirmed again: the new version is a hit, nothing more goes upstream.
    assert_eq!(
        get(&pg.url(&poll_path("lp", 6))).await.0,
        StatusCode::NOT_MODIFIED
    );
    assert_eq!(up.hits(), 1);
}

/// Stale-while-revalidate: polls of an expired key while its revalidation is
/// upstream are answered from memory.
#[tokio::test(flavor = "multi_thread")]
async fn an_expired_key_revalidates_once_while_others_are_answered() {
    let up = Upstream::start().await;
    let pg = Pollgate::start(&up.url(), &["--max-age", "500ms"]);
    pg.publish("sw 3\n").await;
    up.set_version("sw", 3);
    up.set_mode(Mode::Delay(Duration::from_millis(500)));
    let expired = eventually(Duration::from_secs(5), || async {
        lookup(&pg, "sw").await.unwrap().1 >= 600
    })
    .await;
    assert!(expired);
    let url = pg.url(&poll_path("sw", 3));
    let polls: Vec<_> = (0..20)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { get(&url).await.0 })
        })
        .collect();
    let mut statuses = Vec::new();
    for p in polls {
        statuses.push(p.await.unwrap());
    }
    let from_memory = statuses
        .iter()
        .filter(|s| **s == StatusCode::NOT_MODIFIED)
        .count();
    assert_eq!(up.hits(), 1, "one revalidation went upstream");
    assert_eq!(from_memory, 19, "{statuses:?}");
    assert!(
        lookup(&pg, "sw").await.unwrap().1 < 500,
        "confirmed by the upstream"
    );
}

/// An expired entry whose upstream is down is still answered from memory once
/// the breaker is open: a known version beats a 503.
#[tokio::test]
async fn an_expired_key_is_served_from_memory_while_the_breaker_is_open() {
    let up = Upstream::start().await;
    let args = [
        "--max-age",
        "300ms",
        "--breaker-failures",
        "1",
        "--breaker-open",
        "60s",
    ];
    let pg = Pollgate::start(&up.url(), &args);
    pg.publish("bk 2\n").await;
    up.kill();
    let expired = eventually(Duration::from_secs(5), || async {
        lookup(&pg, "bk").await.unwrap().1 >= 400
    })
    .await;
    assert!(expired);
    let (s, _, _) = get(&pg.url(&poll_path("bk", 2))).await;
    assert!(
        s.is_server_error(),
        "the revalidation tried and failed: {s}"
    );
    assert_eq!(pg.metric("pollgate_breaker_open").await, 1.0);
    for _ in 0..5 {
        let (s, h, _) = get(&pg.url(&poll_path("bk", 2))).await;
        assert_eq!(
            (s, h["etag"].to_str().unwrap()),
            (StatusCode::NOT_MODIFIED, "\"2\"")
        );
    }
}

#[tokio::test]
async fn max_age_zero_never_revalidates() {
    let up = Upstream::start().await;
    let pg = Pollgate::start(&up.url(), &["--max-age", "0s"]);
    pg.publish("z 1\n").await;
    let waited = eventually(Duration::from_secs(3), || async {
        lookup(&pg, "z").await.unwrap().1 >= 200
    })
    .await;
    assert!(waited);
    assert_eq!(
        get(&pg.url(&poll_path("z", 1))).await.0,
        StatusCode::NOT_MODIFIED
    );
    assert_eq!(up.hits(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_snapshot_is_moved_aside_and_pollgate_starts_cold() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start().await;
    let args = ["--data-dir", &dir_flag(dir.path())];
    // A real snapshot, then truncated by one byte.
    let pg = Pollgate::start(&up.url(), &args);
    publish_many(&pg, "c", 100).await;
    stop(pg);
    let file = dir.path().join("pollgate.snap");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() - 1]).unwrap();

    let pg = Pollgate::start(&up.url(), &args);
    assert_eq!(get(&pg.internal_url("/readyz")).await.0, StatusCode::OK);
    assert_eq!(
        pg.metric("pollgate_snapshot_load_failures_total").await,
        1.0
    );
    let logged = eventually(Duration::from_secs(5), || async {
        pg.log.lock().iter().any(|l| {
            l.contains("snapshot corrupt") && l.contains("pollgate.snap") && l.contains("truncated")
        })
    })
    .await;
    assert!(logged, "{:?}", pg.log.lock());
    let aside: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("pollgate.snap.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "moved aside");
    assert!(!file.exists());
    // Cold: nothing was loaded from the bad file, polls go upstream.
    assert_eq!(lookup(&pg, "c1").await, None);
    assert_eq!(get(&pg.url(&poll_path("c1", 2))).await.0, StatusCode::OK);
    assert_eq!(up.hits(), 1);
    drop(pg);

    // Garbage of every kind, including an empty file and a future version.
    let junks = [
        Vec::new(),
        b"not a snapshot at all, just text".to_vec(),
        future_version(&bytes),
    ];
    for junk in junks {
        std::fs::write(&file, junk).unwrap();
        let pg = Pollgate::start(&up.url(), &args);
        assert_eq!(
            pg.metric("pollgate_snapshot_load_failures_total").await,
            1.0
        );
        assert!(!file.exists());
    }
}

fn future_version(valid: &[u8]) -> Vec<u8> {
    let mut f = valid.to_vec();
    f[8..12].copy_from_slice(&99u32.to_le_bytes());
    f
}

/// Without a graceful shutdown, the periodic snapshot is what survives.
#[tokio::test(flavor = "multi_thread")]
async fn periodic_snapshots_survive_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start().await;
    let args = [
        "--data-dir",
        &dir_flag(dir.path()),
        "--snapshot-interval",
        "100ms",
    ];
    let pg = Pollgate::start(&up.url(), &args);
    pg.publish("killed 7\n").await;
    let written = eventually(Duration::from_secs(5), || async {
        pg.metric("pollgate_snapshot_bytes").await > 0.0
    })
    .await;
    assert!(written);
    assert!(pg.metric("pollgate_snapshot_age_seconds").await < 5.0);
    pg.signal("-KILL");
    drop(pg);
    let pg = Pollgate::start(&up.url(), &args);
    assert_eq!(lookup(&pg, "killed").await.map(|e| e.0), Some(7));
    assert_eq!(pg.metric("pollgate_snapshot_entries_loaded").await, 1.0);
}

/// A second pollgate on the same data_dir must not overwrite the first one's
/// snapshots: it says why and runs without them.
#[tokio::test]
async fn a_data_dir_in_use_is_refused_not_shared() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start().await;
    let args = ["--data-dir", &dir_flag(dir.path())];
    let first = Pollgate::start(&up.url(), &args);
    assert_eq!(get(&first.internal_url("/readyz")).await.0, StatusCode::OK);
    let second = Pollgate::start(&up.url(), &args);
    assert_eq!(get(&second.internal_url("/readyz")).await.0, StatusCode::OK);
    let said = eventually(Duration::from_secs(5), || async {
        second
            .log
            .lock()
            .iter()
            .any(|l| l.contains("data_dir unusable") && l.contains("another pollgate"))
    })
    .await;
    assert!(said, "{:?}", second.log.lock());
}

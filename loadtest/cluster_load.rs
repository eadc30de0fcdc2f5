//! Replication load test with three real pollgate processes on loopback:
//!
//! 1. publish→visible latency: 1k publishes/s at replica 0 for `SECS`; every
//!    50th publish is sampled by polling replicas 1 and 2 every 1 ms until
//!    they have it; reports p50/p99/max of "visible on all".
//! 2. gossip bandwidth per replica during that phase (from the
//!    `pollgate_cluster_{sent,received}_bytes_total` counters).
//! 3. catch-up: SIGKILL replica 2, publish 1M new keys at replica 0, restart
//!    replica 2 and time spawn → `/readyz` 200, checking it holds every key
//!    the moment readiness flips.
//!
//! Run: `cargo build --release && cargo run --release --example cluster_load`
//! (uses `target/release/pollgate` next to this example's binary, or `$POLLGATE_BIN`).
//! Loopback only, bounded in count and time.

#[path = "common.rs"]
mod common;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{bin, free_port, get, metric, HttpClient};
use http::StatusCode;
use parking_lot::Mutex;

const KEY: &str = "loadtest-cluster-key";
const TOKEN: &str = "loadtest-publish-token";
const RATE: u64 = 1000;
const SECS: u64 = 15;
const SAMPLE_EVERY: u64 = 50;
const CATCHUP_KEYS: usize = 1_000_000;

struct Replica {
    port: u16,
    child: Option<Child>,
}

fn spawn(ports: &[u16], i: usize) -> Child {
    let mut cmd = Command::new(bin());
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        "http://127.0.0.1:9",
    ])
    .args(["--internal-listen", &format!("127.0.0.1:{}", ports[i])])
    .args(["--cluster-key", KEY, "--publish-token", TOKEN])
    .env(
        "RUST_LOG",
        "warn,pollgate::gossip=debug,pollgate::cluster=debug",
    )
    .stdout(Stdio::null())
    .stderr(match std::env::var_os("LOADTEST_LOG") {
        Some(_) if i == 2 => Stdio::inherit(),
        _ => Stdio::null(),
    });
    for (j, p) in ports.iter().enumerate() {
        if j != i {
            cmd.args(["--peer", &format!("127.0.0.1:{p}")]);
        }
    }
    cmd.spawn()
        .expect("spawn pollgate (build it with --release first)")
}

/// Convergence is timed by this wait, so it looks every 2 ms.
async fn wait_for<F, Fut>(max: Duration, cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    pollgate::testkit::eventually(max, Duration::from_millis(2), cond).await
}

async fn formed(c: &HttpClient, ports: &[u16]) -> bool {
    for &p in ports {
        if get(c, p, "/readyz").await.0 != StatusCode::OK
            || metric(c, p, "pollgate_cluster_peers_up").await < 2.0
        {
            return false;
        }
    }
    true
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

async fn latency_phase(c: &HttpClient, ports: &[u16]) {
    let bytes_before: Vec<(f64, f64)> = gossip_bytes(c, ports).await;
    let lat = Arc::new(Mutex::new(Vec::new()));
    let mut samplers = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let start = Instant::now();
    let total = RATE * SECS;
    for i in 0..total {
        tick.tick().await;
        let key = format!("lt-{i}");
        let sent = Instant::now();
        common::publish(c, ports[0], TOKEN, format!("{key} {}\n", i + 1)).await;
        if i % SAMPLE_EVERY == 0 {
            let (c, lat, others) = (c.clone(), lat.clone(), [ports[1], ports[2]]);
            samplers.spawn(async move {
                let mut worst = Duration::ZERO;
                for p in others {
                    let path = format!("/v1/versions/{key}");
                    let ok = wait_for(Duration::from_secs(5), || async {
                        get(&c, p, &path).await.0 == StatusCode::OK
                    })
                    .await;
                    assert!(ok, "{key} never reached {p}");
                    worst = worst.max(sent.elapsed());
                }
                lat.lock().push(worst);
            });
        }
    }
    let elapsed = start.elapsed();
    while samplers.join_next().await.is_some() {}
    let bytes_after = gossip_bytes(c, ports).await;
    let mut l = lat.lock().clone();
    l.sort();
    println!(
        "publish→visible on all 3 ({} publishes in {:.1?} = {:.0}/s, {} samples): p50 {:.1?}  p99 {:.1?}  max {:.1?}",
        total,
        elapsed,
        total as f64 / elapsed.as_secs_f64(),
        l.len(),
        pct(&l, 0.5),
        pct(&l, 0.99),
        l[l.len() - 1]
    );
    for (i, (b, a)) in bytes_before.iter().zip(&bytes_after).enumerate() {
        let secs = elapsed.as_secs_f64();
        println!(
            "replica {i} gossip bandwidth: sent {:.0} B/s, received {:.0} B/s",
            (a.0 - b.0) / secs,
            (a.1 - b.1) / secs
        );
    }
}

async fn gossip_bytes(c: &HttpClient, ports: &[u16]) -> Vec<(f64, f64)> {
    let mut v = Vec::new();
    for &p in ports {
        v.push((
            metric(c, p, "pollgate_cluster_sent_bytes_total").await,
            metric(c, p, "pollgate_cluster_received_bytes_total").await,
        ));
    }
    v
}

async fn catchup_phase(c: &HttpClient, ports: &[u16], replicas: &mut [Replica]) {
    let mut child = replicas[2].child.take().expect("running");
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    let t = Instant::now();
    const BATCH: usize = 50_000;
    for b in 0..CATCHUP_KEYS / BATCH {
        let body: String = (0..BATCH)
            .map(|i| format!("cu-{:07} {}\n", b * BATCH + i, i + 1))
            .collect();
        common::publish(c, ports[0], TOKEN, body).await;
    }
    println!(
        "published {CATCHUP_KEYS} keys at replica 0 in {:.1?} while replica 2 was down",
        t.elapsed()
    );
    let keys0 = metric(c, ports[0], "pollgate_keys").await;
    let spawned = Instant::now();
    replicas[2].child = Some(spawn(ports, 2));
    let up = wait_for(Duration::from_secs(10), || async {
        get(c, ports[2], "/healthz").await.0 == StatusCode::OK
    })
    .await;
    let listening = spawned.elapsed();
    let ready = up
        && wait_for(Duration::from_secs(60), || async {
            get(c, ports[2], "/readyz").await.0 == StatusCode::OK
        })
        .await;
    let took = spawned.elapsed();
    let keys2 = metric(c, ports[2], "pollgate_keys").await;
    assert!(ready, "replica 2 never became ready");
    println!(
        "restarted replica: listening after {listening:.1?}, /readyz 200 after {took:.1?} (spawn → ready); it then held {keys2} keys, replica 0 {keys0}"
    );
    assert!(keys2 >= keys0, "ready before caught up");
}

#[tokio::main]
async fn main() {
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut replicas: Vec<Replica> = (0..3)
        .map(|i| Replica {
            port: ports[i],
            child: Some(spawn(&ports, i)),
        })
        .collect();
    let c = common::client();
    assert!(
        wait_for(Duration::from_secs(20), || formed(&c, &ports)).await,
        "cluster did not form"
    );
    println!(
        "3 replicas formed on internal ports {:?}",
        replicas.iter().map(|r| r.port).collect::<Vec<_>>()
    );
    latency_phase(&c, &ports).await;
    catchup_phase(&c, &ports, &mut replicas).await;
    for r in &mut replicas {
        if let Some(mut ch) = r.child.take() {
            let _ = ch.kill();
            let _ = ch.wait();
        }
    }
}

//! Redis feed load test with a real redis-server and real pollgate processes
//! on loopback (`make loadtest-redis`, `loadtest/redis_fleet.sh`).
//!
//! - `throughput`: versions/s applied from a prefilled stream, from PUB/SUB
//!   and through `POST /v1/versions`, batches of 1 and 100, same run.
//! - `latency`: publish→visible p50/p99 at 1k and 10k changes/s through each
//!   of POST, stream and channel (every 50th change sampled by polling
//!   `GET /v1/versions/{key}` until it is there).
//! - `restart`: the app's request rate after a pollgate restart, with and
//!   without `redis_stream_complete` (a gap-free resume vouching for the
//!   loaded entries).
//! - `fleet`: 1 Redis and up to 6 pollgates reading one stream; Redis CPU
//!   per 1k changes/s with 1 and 6 pollgates, with and without poll load on
//!   the pollgates, and each pollgate's publish→visible lag.
//!
//! Every phase is bounded in count and time; everything is on 127.0.0.1.
//! Uses `target/release/pollgate` beside this example (or `$POLLGATE_BIN`).

#[path = "common.rs"]
mod common;

use std::convert::Infallible;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{bin, free_port, get, metric, HttpClient};
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use redis::aio::MultiplexedConnection;

const TOKEN: &str = "loadtest-token";
const SAMPLE_EVERY: u64 = 50;

struct Redis {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Redis {
    fn start() -> Redis {
        for _ in 0..20 {
            let (port, dir) = (free_port(), tempfile::tempdir().unwrap());
            let mut child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(dir.path())
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server (apt-get install redis-server)");
            let client = redis::Client::open(url(port)).unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && child.try_wait().unwrap().is_none() {
                let info = client
                    .get_connection()
                    .and_then(|mut c| redis::cmd("INFO").arg("server").query::<String>(&mut c));
                if info.is_ok_and(|i| i.contains(&format!("process_id:{}", child.id()))) {
                    return Redis {
                        child,
                        port,
                        _dir: dir,
                    };
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("redis-server did not start");
    }

    fn url(&self) -> String {
        url(self.port)
    }

    async fn conn(&self) -> MultiplexedConnection {
        let c = redis::Client::open(self.url()).unwrap();
        c.get_multiplexed_async_connection().await.unwrap()
    }

    /// User + system CPU seconds of the redis-server process so far.
    fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = after.split(' ').collect();
        // Fields 14 and 15 of stat (1-based) are 11 and 12 after the name.
        let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
        ticks / 100.0
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn url(port: u16) -> String {
    format!("redis://127.0.0.1:{port}/0")
}

struct Pg {
    child: Child,
    public: u16,
    internal: u16,
}

impl Pg {
    fn start(upstream: &str, extra: &[&str]) -> Pg {
        let (public, internal) = (free_port(), free_port());
        let child = Command::new(bin())
            .args(["--listen", &format!("127.0.0.1:{public}")])
            .args(["--internal-listen", &format!("127.0.0.1:{internal}")])
            .args(["--upstream", upstream, "--publish-token", TOKEN])
            .args(extra)
            .env("RUST_LOG", "warn")
            // pollgate refuses unknown POLLGATE_* variables.
            .env_remove("POLLGATE_BIN")
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn pollgate (build it with --release first)");
        Pg {
            child,
            public,
            internal,
        }
    }

    /// SIGTERM and wait: the final snapshot is written.
    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn learned(source: &str) -> String {
    format!("pollgate_versions_learned_total{{source=\"{source}\"}}")
}

async fn wait_metric(c: &HttpClient, port: u16, name: &str, want: f64, max: Duration) -> bool {
    let deadline = Instant::now() + max;
    while Instant::now() < deadline {
        if metric(c, port, name).await >= want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    false
}

fn body(i: u64, batch: u64) -> String {
    (0..batch)
        .map(|j| format!("k{} {}\n", (i * batch + j) % 100_000, i + 1))
        .collect()
}

async fn pipe_in_chunks(c: &mut MultiplexedConnection, cmds: impl Iterator<Item = redis::Cmd>) {
    let mut pipe = redis::pipe();
    let mut n = 0;
    for cmd in cmds {
        pipe.add_command(cmd).ignore();
        n += 1;
        if n == 1000 {
            let () = pipe.query_async(c).await.unwrap();
            pipe = redis::pipe();
            n = 0;
        }
    }
    if n > 0 {
        let () = pipe.query_async(c).await.unwrap();
    }
}

fn xadd_body(stream: &str, body: String) -> redis::Cmd {
    let mut c = redis::cmd("XADD");
    c.arg(stream).arg("*").arg("body").arg(body);
    c
}

fn xadd_kv(stream: &str, key: &str, version: u64) -> redis::Cmd {
    let mut c = redis::cmd("XADD");
    c.arg(stream)
        .arg("*")
        .arg("key")
        .arg(key)
        .arg("version")
        .arg(version);
    c
}

fn stream_cmd(stream: &str, i: u64, batch: u64) -> redis::Cmd {
    match batch {
        1 => xadd_kv(stream, &format!("k{}", i % 100_000), i + 1),
        _ => xadd_body(stream, body(i, batch)),
    }
}

fn publish_cmd(channel: &str, i: u64, batch: u64) -> redis::Cmd {
    let mut c = redis::cmd("PUBLISH");
    c.arg(channel).arg(body(i, batch));
    c
}

/// Versions/s between the first applied version and the last.
async fn applied_rate(c: &HttpClient, pg: &Pg, source: &str, total: u64) -> f64 {
    let name = learned(source);
    assert!(wait_metric(c, pg.internal, &name, 1.0, Duration::from_secs(30)).await);
    let (t0, n0) = (Instant::now(), metric(c, pg.internal, &name).await);
    assert!(
        wait_metric(
            c,
            pg.internal,
            &name,
            total as f64,
            Duration::from_secs(120)
        )
        .await,
        "not all {total} versions applied"
    );
    (total as f64 - n0) / t0.elapsed().as_secs_f64()
}

async fn throughput(redis: &Redis, c: &HttpClient) {
    println!("\n## throughput: versions/s applied (first to last applied)");
    println!("| source | batch | messages | versions | versions/s | vs POST |");
    println!("| --- | --- | --- | --- | --- | --- |");
    let up = "http://127.0.0.1:9";
    let mut rc = redis.conn().await;
    for batch in [1u64, 100] {
        let msgs = if batch == 1 { 50_000 } else { 3_000 };
        let total = msgs * batch;
        // POST: 4 concurrent senders (keep-alive), batches as bodies.
        let pg = Pg::start(up, &[]);
        assert!(
            wait_metric(
                c,
                pg.internal,
                "pollgate_keys",
                0.0,
                Duration::from_secs(10)
            )
            .await
        );
        let t0 = Instant::now();
        let senders: Vec<_> = (0..4)
            .map(|s| {
                let (c, port) = (c.clone(), pg.internal);
                tokio::spawn(async move {
                    for i in (s..msgs).step_by(4) {
                        common::publish(&c, port, TOKEN, body(i, batch)).await;
                    }
                })
            })
            .collect();
        for s in senders {
            s.await.unwrap();
        }
        let base = total as f64 / t0.elapsed().as_secs_f64();
        drop(pg);
        row("POST /v1/versions", batch, msgs, total, base, base);

        // Stream: prefilled, then read by a freshly started pollgate.
        let stream = format!("tp-{batch}");
        pipe_in_chunks(&mut rc, (0..msgs).map(|i| stream_cmd(&stream, i, batch))).await;
        let pg = Pg::start(
            up,
            &["--redis-url", &redis.url(), "--redis-stream", &stream],
        );
        let rate = applied_rate(c, &pg, "redis", total).await;
        drop(pg);
        row("stream (prefilled)", batch, msgs, total, rate, base);

        // Channel: published live, pipelined 1000 at a time.
        let ch = format!("tp-{batch}");
        let pg = Pg::start(up, &["--redis-url", &redis.url(), "--redis-channel", &ch]);
        let connected = "pollgate_feed_redis_connected";
        assert!(wait_metric(c, pg.internal, connected, 1.0, Duration::from_secs(10)).await);
        let t0 = Instant::now();
        pipe_in_chunks(&mut rc, (0..msgs).map(|i| publish_cmd(&ch, i, batch))).await;
        let name = learned("redis");
        let applied = wait_metric(
            c,
            pg.internal,
            &name,
            total as f64,
            Duration::from_secs(120),
        )
        .await;
        let got = metric(c, pg.internal, &name).await;
        assert!(applied, "channel: {got} of {total} applied");
        let rate = total as f64 / t0.elapsed().as_secs_f64();
        drop(pg);
        row("channel (publisher-paced)", batch, msgs, total, rate, base);
    }
}

fn row(src: &str, batch: u64, msgs: u64, total: u64, rate: f64, base: f64) {
    println!(
        "| {src} | {batch} | {msgs} | {total} | {:.0} | {:.2}× |",
        rate,
        rate / base
    );
}

#[derive(Clone, Copy, PartialEq)]
enum Via {
    Post,
    Stream,
    Channel,
}

/// Where a change goes: POST to `port`, or XADD/PUBLISH to `name`.
#[derive(Clone)]
struct Target {
    via: Via,
    port: u16,
    name: Arc<str>,
}

/// Sends one change (key, version) the chosen way, without waiting for it.
fn send(t: &Target, c: &HttpClient, rc: &MultiplexedConnection, key: String, v: u64) {
    let (c, mut rc, t) = (c.clone(), rc.clone(), t.clone());
    let (via, port) = (t.via, t.port);
    tokio::spawn(async move {
        match via {
            Via::Post => common::publish(&c, port, TOKEN, format!("{key} {v}\n")).await,
            Via::Stream => {
                let _: String = xadd_kv(&t.name, &key, v)
                    .query_async(&mut rc)
                    .await
                    .unwrap();
            }
            Via::Channel => {
                let _: i64 = redis::cmd("PUBLISH")
                    .arg(&*t.name)
                    .arg(format!("{key} {v}"))
                    .query_async(&mut rc)
                    .await
                    .unwrap();
            }
        }
    });
}

/// Polls `GET /v1/versions/{key}` on every port until each has it; returns
/// the time from `sent` per port.
async fn visible(c: &HttpClient, ports: &[u16], key: &str, sent: Instant) -> Vec<Duration> {
    let mut out = Vec::with_capacity(ports.len());
    for &p in ports {
        let deadline = sent + Duration::from_secs(5);
        loop {
            if get(c, p, &format!("/v1/versions/{key}")).await.0 == StatusCode::OK {
                out.push(sent.elapsed());
                break;
            }
            if Instant::now() > deadline {
                out.push(Duration::from_secs(5));
                break;
            }
            tokio::task::yield_now().await;
        }
    }
    out
}

/// Changes at `rate`/s for `secs`, every 50th a sampled new key; returns
/// the samples' publish→visible times per port.
async fn paced(
    target: &Target,
    c: &HttpClient,
    rc: &MultiplexedConnection,
    ports: &[u16],
    rate: u64,
    secs: u64,
    tag: &str,
) -> Vec<Vec<Duration>> {
    let samples = Arc::new(Mutex::new(vec![Vec::new(); ports.len()]));
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let per_tick = (rate / 1000).max(1);
    let mut tasks = Vec::new();
    let mut n = 0u64;
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        tick.tick().await;
        for _ in 0..per_tick {
            n += 1;
            if n.is_multiple_of(SAMPLE_EVERY) {
                let key = format!("s-{tag}-{n}");
                let sent = Instant::now();
                send(target, c, rc, key.clone(), 1);
                let (c, ports, samples) = (c.clone(), ports.to_vec(), samples.clone());
                tasks.push(tokio::spawn(async move {
                    let t = visible(&c, &ports, &key, sent).await;
                    let mut s = samples.lock();
                    for (i, d) in t.into_iter().enumerate() {
                        s[i].push(d);
                    }
                }));
            } else {
                send(target, c, rc, format!("w{}", n % 1000), n);
            }
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let s = samples.lock().clone();
    s
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
    v[i].as_secs_f64() * 1000.0
}

async fn latency(redis: &Redis, c: &HttpClient) {
    println!(
        "\n## publish→visible latency (ms; every {SAMPLE_EVERY}th change sampled, 5 s per row)"
    );
    println!("| changes/s | via | samples | p50 | p99 | max |");
    println!("| --- | --- | --- | --- | --- | --- |");
    let url = redis.url();
    let flags = [
        "--redis-url",
        &url,
        "--redis-stream",
        "lat",
        "--redis-channel",
        "lat",
    ];
    let pg = Pg::start("http://127.0.0.1:9", &flags);
    let connected = "pollgate_feed_redis_connected";
    assert!(wait_metric(c, pg.internal, connected, 1.0, Duration::from_secs(10)).await);
    let rc = redis.conn().await;
    for rate in [1000, 10_000] {
        for (via, name) in [
            (Via::Post, "POST"),
            (Via::Stream, "stream"),
            (Via::Channel, "channel"),
        ] {
            let tag = format!("{rate}-{name}");
            let t = Target {
                via,
                port: pg.internal,
                name: "lat".into(),
            };
            let mut s = paced(&t, c, &rc, &[pg.internal], rate, 5, &tag).await;
            let s = &mut s[0];
            println!(
                "| {rate} | {name} | {} | {:.2} | {:.2} | {:.2} |",
                s.len(),
                pct(s, 0.5),
                pct(s, 0.99),
                pct(s, 1.0)
            );
        }
    }
}

/// A tiny app: answers every poll 200 with version 1 and counts requests.
async fn upstream(hits: Arc<AtomicU64>) -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            let hits = hits.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    hits.fetch_add(1, Ordering::Relaxed);
                    async {
                        let r = Response::builder()
                            .header("x-pollgate-version", "1")
                            .body(Full::new(Bytes::from_static(b"{}")))
                            .unwrap();
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    port
}

async fn restart(redis: &Redis, c: &HttpClient) {
    const KEYS: u64 = 5_000;
    const MAX_AGE_S: u64 = 5;
    const POLL_S: u64 = 7;
    println!("\n## app requests after a restart: {KEYS} keys from the snapshot, max_age {MAX_AGE_S}s, every key polled as current for {POLL_S} s");
    println!("| redis_stream_complete | polls | app requests | app requests/s |");
    println!("| --- | --- | --- | --- |");
    let hits = Arc::new(AtomicU64::new(0));
    let app = format!("http://127.0.0.1:{}", upstream(hits.clone()).await);
    let mut rc = redis.conn().await;
    for complete in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let stream = format!("restart-{complete}");
        let (d, url) = (dir.path().display().to_string(), redis.url());
        let (age, on) = (format!("{MAX_AGE_S}s"), complete.to_string());
        let flags = [
            "--redis-url",
            &url,
            "--redis-stream",
            &stream,
            "--data-dir",
            &d,
            "--max-age",
            &age,
            "--redis-stream-complete",
            &on,
        ];
        pipe_in_chunks(
            &mut rc,
            (0..KEYS).map(|i| xadd_kv(&stream, &format!("p{i}"), 1)),
        )
        .await;
        let pg = Pg::start(&app, &flags);
        assert!(
            wait_metric(
                c,
                pg.internal,
                &learned("redis"),
                KEYS as f64,
                Duration::from_secs(30)
            )
            .await
        );
        pg.stop();
        let pg = Pg::start(&app, &flags);
        let connected = "pollgate_feed_redis_connected";
        assert!(wait_metric(c, pg.internal, connected, 1.0, Duration::from_secs(10)).await);
        let before = hits.load(Ordering::Relaxed);
        let polls = Arc::new(AtomicU64::new(0));
        let end = Instant::now() + Duration::from_secs(POLL_S);
        let pollers: Vec<_> = (0..8)
            .map(|w| {
                let (c, polls, port) = (c.clone(), polls.clone(), pg.public);
                tokio::spawn(async move {
                    let mut i = w;
                    while Instant::now() < end {
                        get(
                            &c,
                            port,
                            &format!("/projects/p{}/changes?since=1", i % KEYS),
                        )
                        .await;
                        polls.fetch_add(1, Ordering::Relaxed);
                        i += 8;
                    }
                })
            })
            .collect();
        for p in pollers {
            p.await.unwrap();
        }
        let app_hits = hits.load(Ordering::Relaxed) - before;
        println!(
            "| {complete} | {} | {app_hits} | {:.0} |",
            polls.load(Ordering::Relaxed),
            app_hits as f64 / POLL_S as f64
        );
    }
}

async fn fleet(redis: &Redis, c: &HttpClient) {
    const SECS: u64 = 5;
    println!(
        "\n## fleet: one stream, N pollgates; Redis CPU and each pollgate's publish→visible (ms)"
    );
    println!("| pollgates | changes/s | poll load on pollgates | Redis CPU % | Redis CPU ms per 1k changes | lag p50 per pollgate | lag p99 per pollgate |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    let rc = redis.conn().await;
    for (run, (n, rate, polled)) in [
        (1, 1000, false),
        (6, 1000, false),
        (6, 5000, false),
        (6, 5000, true),
    ]
    .into_iter()
    .enumerate()
    {
        let stream = format!("fleet-{run}");
        let url = redis.url();
        let pgs: Vec<Pg> = (0..n)
            .map(|_| {
                Pg::start(
                    "http://127.0.0.1:9",
                    &["--redis-url", &url, "--redis-stream", &stream],
                )
            })
            .collect();
        for pg in &pgs {
            let connected = "pollgate_feed_redis_connected";
            assert!(wait_metric(c, pg.internal, connected, 1.0, Duration::from_secs(10)).await);
        }
        let ports: Vec<u16> = pgs.iter().map(|p| p.internal).collect();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let load: Vec<_> = (0..if polled { 4 } else { 0 })
            .map(|w| {
                let (c, stop, port) = (c.clone(), stop.clone(), pgs[w % n].public);
                tokio::spawn(async move {
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        get(
                            &c,
                            port,
                            &format!("/projects/w{}/changes?since=1", i % 1000),
                        )
                        .await;
                        i += 1;
                    }
                })
            })
            .collect();
        let cpu0 = redis.cpu_seconds();
        let t0 = Instant::now();
        let tag = format!("fleet{run}");
        let t = Target {
            via: Via::Stream,
            port: 0,
            name: stream.as_str().into(),
        };
        let mut s = paced(&t, c, &rc, &ports, rate, SECS, &tag).await;
        let cpu = redis.cpu_seconds() - cpu0;
        let secs = t0.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        for l in load {
            l.await.unwrap();
        }
        let changes = rate as f64 * SECS as f64;
        let p50: Vec<String> = s
            .iter_mut()
            .map(|v| format!("{:.1}", pct(v, 0.5)))
            .collect();
        let p99: Vec<String> = s
            .iter_mut()
            .map(|v| format!("{:.1}", pct(v, 0.99)))
            .collect();
        println!(
            "| {n} | {rate} | {} | {:.1} | {:.1} | {} | {} |",
            if polled { "4 pollers" } else { "none" },
            cpu / secs * 100.0,
            cpu * 1000.0 / (changes / 1000.0),
            p50.join(" / "),
            p99.join(" / ")
        );
    }
}

#[tokio::main]
async fn main() {
    let mode = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    let c = common::client();
    let redis = Redis::start();
    println!(
        "redis-server on port {}; pollgate {}; {} cores",
        redis.port,
        bin(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    match mode.as_str() {
        "throughput" => throughput(&redis, &c).await,
        "latency" => latency(&redis, &c).await,
        "restart" => restart(&redis, &c).await,
        "fleet" => fleet(&redis, &c).await,
        _ => {
            throughput(&redis, &c).await;
            latency(&redis, &c).await;
            restart(&redis, &c).await;
        }
    }
}

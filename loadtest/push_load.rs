//! Push load generator (not run in CI): opens N SSE watchers of one key from
//! source addresses spread over 127.0.0.0/8 (past the ephemeral-port limit of
//! one address), then measures what the issue asks for:
//!
//! - `watch`: connections held, accept rate, server RSS per connection
//!   (`/proc/<pid>/status` VmRSS delta), then `--publishes` bumps of the key
//!   and the delivery latency of each notice (p50/p99/max, publish POST sent → notice read);
//! - `storm`: after the ramp every watcher drops and reconnects at a random
//!   instant within `--storm-window`; refused ones honour `Retry-After`.
//!   Reports refusals, Retry-After spread and how long until all are back.
//!
//! Run through `loadtest/push.sh`, which raises `ulimit -n` and starts pollgate.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{watch, Semaphore};

#[derive(Parser, Clone)]
struct Args {
    /// `watch` or `storm`.
    #[arg(long, default_value = "watch")]
    scenario: String,
    /// pollgate's public address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    public: SocketAddr,
    /// pollgate's internal address (publish).
    #[arg(long, default_value = "127.0.0.1:8081")]
    internal: SocketAddr,
    #[arg(long, default_value = "load-token")]
    token: String,
    /// pollgate's pid, for VmRSS.
    #[arg(long)]
    pid: u32,
    /// Watchers to open.
    #[arg(long, default_value_t = 10_000)]
    conns: usize,
    /// Connection attempts in flight during the ramp (the listen backlog is finite).
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// The key every watcher watches (one hot key: worst-case fan-out).
    #[arg(long, default_value = "hot")]
    key: String,
    /// Bumps of the key to publish (`watch`), each measured separately.
    #[arg(long, default_value_t = 5)]
    publishes: u64,
    /// `storm`: every watcher reconnects at a random instant within this.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    storm_window: Duration,
    /// `storm`: run wrk against this hit-path URL while the storm lasts.
    #[arg(long)]
    wrk_url: Option<String>,
    /// Give up waiting for watchers or notices after this long.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    deadline: Duration,
}

/// What every watcher task reports into.
struct Shared {
    start: Instant,
    /// Watchers currently holding an admitted stream.
    held: AtomicUsize,
    admitted: AtomicUsize,
    refused: AtomicUsize,
    errors: AtomicUsize,
    /// Version last published, and when its POST was sent (ns since `start`).
    published: AtomicU64,
    published_ns: AtomicU64,
    /// Delivery latencies of the current publish, ns.
    latencies: Mutex<Vec<u64>>,
    retry_after: Mutex<Vec<u64>>,
    /// Bumped to make every watcher drop and reconnect (storm).
    generation: watch::Sender<u64>,
    quiet: AtomicBool,
}

fn main() {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(args));
}

async fn run(args: Args) {
    let sh = Arc::new(Shared {
        start: Instant::now(),
        held: AtomicUsize::new(0),
        admitted: AtomicUsize::new(0),
        refused: AtomicUsize::new(0),
        errors: AtomicUsize::new(0),
        published: AtomicU64::new(0),
        published_ns: AtomicU64::new(0),
        latencies: Mutex::new(Vec::new()),
        retry_after: Mutex::new(Vec::new()),
        generation: watch::Sender::new(0),
        quiet: AtomicBool::new(false),
    });
    let base_version = 1_000_000 + fastrand::u64(0..1_000_000);
    publish(&args, base_version).await;
    sh.published.store(base_version, Relaxed);
    let rss0 = rss_kib(args.pid);
    println!(
        "scenario={} conns={} server_rss_before={} KiB",
        args.scenario, args.conns, rss0
    );

    let t0 = Instant::now();
    let cpu0 = cpu_ms(args.pid);
    let gate = Arc::new(Semaphore::new(args.concurrency));
    for id in 0..args.conns {
        let (a, s, g) = (args.clone(), sh.clone(), gate.clone());
        let v = base_version;
        tokio::spawn(async move { watcher(id, a, s, g, v).await });
    }
    let ok = wait_until(args.deadline, || sh.held.load(Relaxed) >= args.conns).await;
    let ramp = t0.elapsed();
    let ramp_cpu_ms = cpu_ms(args.pid) - cpu0;
    let held = sh.held.load(Relaxed);
    println!(
        "ramp: held={held}/{} in {:.2}s, accept rate {:.0}/s, refused={} errors={}{}",
        args.conns,
        ramp.as_secs_f64(),
        held as f64 / ramp.as_secs_f64(),
        sh.refused.load(Relaxed),
        sh.errors.load(Relaxed),
        if ok { "" } else { " (deadline hit)" }
    );
    // Accepting, sniffing, reading the head, admitting and the first event:
    // the whole cost of a watcher arriving (10 ms ticks: use thousands).
    println!(
        "ramp: server CPU {ramp_cpu_ms} ms = {:.1} µs per accepted watcher",
        ramp_cpu_ms as f64 * 1000.0 / held.max(1) as f64
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss1 = rss_kib(args.pid);
    println!(
        "server VmRSS {rss1} KiB: +{} KiB for {held} watchers = {:.2} KiB per watcher",
        rss1 - rss0,
        (rss1 - rss0) as f64 / held.max(1) as f64
    );
    match args.scenario.as_str() {
        "storm" => storm(&args, &sh).await,
        _ => fanout(&args, &sh, base_version).await,
    }
}

/// Publishes `--publishes` bumps and reports each one's delivery latencies.
async fn fanout(args: &Args, sh: &Shared, base: u64) {
    for i in 1..=args.publishes {
        let v = base + i;
        sh.latencies.lock().clear();
        let (cpu0, own0) = (cpu_ms(args.pid), cpu_ms(std::process::id()));
        sh.published.store(v, Relaxed);
        sh.published_ns
            .store(sh.start.elapsed().as_nanos() as u64, Relaxed);
        publish(args, v).await;
        let want = sh.held.load(Relaxed);
        let got = wait_until(Duration::from_secs(30), || {
            sh.latencies.lock().len() >= want
        })
        .await;
        let (cpu1, own1) = (cpu_ms(args.pid), cpu_ms(std::process::id()));
        let mut l = std::mem::take(&mut *sh.latencies.lock());
        report(
            &format!(
                "publish {i}: delivered {}/{want}{}",
                l.len(),
                if got { "" } else { " (timeout)" }
            ),
            &mut l,
        );
        println!(
            "  CPU during the fan-out: server {} ms, load generator {} ms",
            cpu1 - cpu0,
            own1 - own0
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Every watcher drops and reconnects within the storm window.
async fn storm(args: &Args, sh: &Shared) {
    let refused0 = sh.refused.load(Relaxed);
    let admitted0 = sh.admitted.load(Relaxed);
    let n = sh.held.load(Relaxed);
    if let Some(url) = &args.wrk_url {
        let out = wrk(url, "5s").await;
        println!("wrk on the hit path, 5 s before the storm (watchers held):\n{out}");
    }
    let wrk = args
        .wrk_url
        .clone()
        .map(|url| tokio::spawn(async move { wrk(&url, "15s").await }));
    sh.retry_after.lock().clear();
    let t0 = Instant::now();
    sh.generation.send_modify(|g| *g += 1);
    let mut next_print = Duration::from_secs(1);
    let back = wait_until(args.deadline, || {
        let a = sh.admitted.load(Relaxed) - admitted0;
        if t0.elapsed() >= next_print {
            next_print += Duration::from_secs(1);
            println!(
                "  t={:>4.1}s re-admitted {a}/{n}, refused so far {}, held {}",
                t0.elapsed().as_secs_f64(),
                sh.refused.load(Relaxed) - refused0,
                sh.held.load(Relaxed)
            );
        }
        a >= n
    })
    .await;
    let took = t0.elapsed();
    let mut ra = std::mem::take(&mut *sh.retry_after.lock());
    ra.sort_unstable();
    let pct = |p: f64| {
        ra.get(((ra.len() as f64 * p) as usize).min(ra.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "storm: {n} watchers dropped; all back: {back} after {:.1}s; refused {} times (503), Retry-After s p50={} p99={} max={}",
        took.as_secs_f64(),
        sh.refused.load(Relaxed) - refused0,
        pct(0.5),
        pct(0.99),
        ra.last().copied().unwrap_or(0)
    );
    sh.quiet.store(true, Relaxed);
    if let Some(w) = wrk {
        let out = w.await.unwrap();
        println!("wrk on the hit path, 15 s from the start of the storm:\n{out}");
    }
}

/// wrk with few connections (a closed loop that saturates 2 cores measures
/// queueing, not the hit path); returns its latency lines.
async fn wrk(url: &str, duration: &str) -> String {
    let out = tokio::process::Command::new("wrk")
        .args(["-t1", "-c4", "-d", duration, "--latency", url])
        .output()
        .await
        .expect("wrk runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let keep = [
        "Latency ",
        "50%",
        "90%",
        "99%",
        "Requests/sec",
        "Socket errors",
    ];
    text.lines()
        .filter(|l| keep.iter().any(|k| l.trim_start().starts_with(k)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// One watcher: connect (from its own source address), watch, read notices.
/// Reconnects when the storm generation changes; honours Retry-After when refused.
async fn watcher(id: usize, args: Args, sh: Arc<Shared>, gate: Arc<Semaphore>, version: u64) {
    let mut gen = sh.generation.subscribe();
    let mut wait = Duration::ZERO;
    loop {
        tokio::time::sleep(wait).await;
        let conn = {
            let _p = gate.acquire().await.unwrap();
            open(id, &args, version).await
        };
        let mut stream = match conn {
            Ok(Open::Admitted(s)) => s,
            Ok(Open::Refused(secs)) => {
                sh.refused.fetch_add(1, Relaxed);
                sh.retry_after.lock().push(secs);
                wait = Duration::from_secs(secs);
                continue;
            }
            Err(_) => {
                sh.errors.fetch_add(1, Relaxed);
                wait = Duration::from_millis(500 + fastrand::u64(0..1000));
                continue;
            }
        };
        sh.admitted.fetch_add(1, Relaxed);
        sh.held.fetch_add(1, Relaxed);
        let g = *gen.borrow_and_update();
        let dropped = read_notices(&mut stream, &sh, &mut gen, g).await;
        sh.held.fetch_sub(1, Relaxed);
        drop(stream);
        if !dropped {
            sh.errors.fetch_add(1, Relaxed);
        }
        // Storm: come back at a random instant within the window.
        wait = Duration::from_nanos(fastrand::u64(0..args.storm_window.as_nanos().max(1) as u64));
    }
}

enum Open {
    Admitted(TcpStream),
    Refused(u64),
}

/// 127.0.0.2 … 127.0.255.254 round robin: ~28k ephemeral ports per address.
fn source(id: usize) -> SocketAddr {
    let n = id % (250 * 250);
    let ip = Ipv4Addr::new(127, 0, 2 + (n / 250) as u8, 2 + (n % 250) as u8);
    SocketAddr::new(IpAddr::V4(ip), 0)
}

async fn open(id: usize, args: &Args, version: u64) -> std::io::Result<Open> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(source(id))?;
    let mut s = sock.connect(args.public).await?;
    let req = format!(
        "GET /pollgate/v1/watch?keys={}:{version} HTTP/1.1\r\nHost: pollgate\r\nAccept: text/event-stream\r\n\r\n",
        args.key
    );
    s.write_all(req.as_bytes()).await?;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 512];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).await?;
        if n == 0 || head.len() > 8192 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    if text.starts_with("HTTP/1.1 200") {
        return Ok(Open::Admitted(s));
    }
    let retry = text
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("retry-after: ")
                .map(|v| v.trim().parse().unwrap_or(1))
        })
        .unwrap_or(1);
    Ok(Open::Refused(retry))
}

/// Reads until the stream ends (false) or the storm generation moves (true).
/// Records the latency of each notice carrying the current published version.
async fn read_notices(
    s: &mut TcpStream,
    sh: &Shared,
    gen: &mut watch::Receiver<u64>,
    g: u64,
) -> bool {
    let mut buf = [0u8; 512];
    loop {
        tokio::select! {
            _ = gen.wait_for(|x| *x != g) => return true,
            r = s.read(&mut buf) => {
                let n = match r { Ok(0) | Err(_) => return false, Ok(n) => n };
                if let Some(v) = notice_version(&buf[..n]) {
                    if v == sh.published.load(Relaxed) && !sh.quiet.load(Relaxed) {
                        let now = sh.start.elapsed().as_nanos() as u64;
                        let lat = now.saturating_sub(sh.published_ns.load(Relaxed));
                        sh.latencies.lock().push(lat);
                    }
                }
            }
        }
    }
}

/// The version in an `event: stale` chunk (`"version":N`), if the chunk has one.
fn notice_version(chunk: &[u8]) -> Option<u64> {
    const TAG: &[u8] = b"\"version\":";
    let i = chunk.windows(TAG.len()).position(|w| w == TAG)? + TAG.len();
    let digits: Vec<u8> = chunk[i..]
        .iter()
        .copied()
        .take_while(u8::is_ascii_digit)
        .collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

async fn publish(args: &Args, version: u64) {
    let body = format!("{} {version}\n", args.key);
    let req = format!(
        "POST /v1/versions HTTP/1.1\r\nHost: pollgate\r\nAuthorization: Bearer {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        args.token,
        body.len()
    );
    let mut s = TcpStream::connect(args.internal)
        .await
        .expect("internal listener");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "publish failed: {resp}");
}

fn report(what: &str, l: &mut [u64]) {
    l.sort_unstable();
    let ms = |ns: u64| ns as f64 / 1e6;
    let pct = |p: f64| {
        l.get(((l.len() as f64 * p) as usize).min(l.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "{what}: latency p50={:.1}ms p99={:.1}ms max={:.1}ms",
        ms(pct(0.5)),
        ms(pct(0.99)),
        ms(l.last().copied().unwrap_or(0))
    );
}

/// utime + stime of a process in ms (from /proc/<pid>/stat, 100 ticks/s).
fn cpu_ms(pid: u32) -> i64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_comm = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<i64> = after_comm
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // Fields 14 and 15 (utime, stime) are at 11 and 12 after the comm field.
    (f.get(11).unwrap_or(&0) + f.get(12).unwrap_or(&0)) * 10
}

fn rss_kib(pid: u32) -> i64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(-1)
}

async fn wait_until(max: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + max;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

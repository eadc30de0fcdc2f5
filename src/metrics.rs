//! Prometheus metrics: plain atomics on the hot path, text rendered on scrape.
//! Labels are route outcomes and results, never keys (unbounded cardinality).

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use parking_lot::RwLock;

#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Relaxed);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

#[derive(Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn set(&self, v: i64) {
        self.0.store(v, Relaxed);
    }
    pub fn add(&self, v: i64) {
        self.0.fetch_add(v, Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Relaxed)
    }
}

/// Upper bounds in seconds; sized for an app server answering polls.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|&b| s <= b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_micros.fetch_add(d.as_micros() as u64, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str) {
        let mut cum = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cum += self.buckets[i].load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cum}");
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

/// What happened to a poll or pass-through request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered from memory.
    Hit,
    /// Client behind the table: forwarded.
    Stale,
    /// Key not known: forwarded (as the coalescing leader).
    Unknown,
    /// Waited for another request of the same key, then answered from memory.
    Coalesced,
    /// Entry older than `max_age`: forwarded to revalidate.
    Revalidate,
    /// The poll carried no version: forwarded.
    NoVersion,
    /// Refused by the upstream guard (503).
    Shed,
    /// Matched no route: proxied unchanged.
    Passthrough,
    /// Bad key or version: 400.
    BadRequest,
    /// No token covering the key (auth on): forwarded, the app decides.
    Unauthorized,
}

const OUTCOMES: [(Outcome, &str); 10] = [
    (Outcome::Hit, "hit"),
    (Outcome::Stale, "stale"),
    (Outcome::Unknown, "unknown"),
    (Outcome::Coalesced, "coalesced"),
    (Outcome::Revalidate, "revalidate"),
    (Outcome::NoVersion, "no_version"),
    (Outcome::Shed, "shed"),
    (Outcome::Passthrough, "passthrough"),
    (Outcome::BadRequest, "bad_request"),
    (Outcome::Unauthorized, "unauthorized"),
];

/// Result of one upstream attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamResult {
    /// A response below 500.
    Ok,
    /// A 5xx response (counts against the breaker).
    ServerError,
    /// Connect or I/O failure.
    Error,
    /// No response head within `upstream_timeout`.
    Timeout,
    /// Refused by the guard before reaching the upstream.
    Shed,
    /// Refused because the breaker is open.
    BreakerOpen,
}

const RESULTS: [(UpstreamResult, &str); 6] = [
    (UpstreamResult::Ok, "ok"),
    (UpstreamResult::ServerError, "server_error"),
    (UpstreamResult::Error, "error"),
    (UpstreamResult::Timeout, "timeout"),
    (UpstreamResult::Shed, "shed"),
    (UpstreamResult::BreakerOpen, "breaker_open"),
];

/// Request counters, one row of them per stripe: a worker thread counts in
/// its own stripe, so cores answering hits never write the same cache line
/// (a shared counter would bounce one line between them on every hit).
/// Reads sum the stripes.
struct RequestCounts {
    stripes: [Stripe; STRIPES],
}

/// More stripes than this VM's cores, few enough that a scrape's sum is cheap.
const STRIPES: usize = 16;

/// Aligned to two cache lines: x86's adjacent-line prefetcher pairs them.
#[repr(align(128))]
#[derive(Default)]
struct Stripe([AtomicU64; OUTCOMES.len()]);

impl Default for RequestCounts {
    fn default() -> Self {
        RequestCounts {
            stripes: std::array::from_fn(|_| Stripe::default()),
        }
    }
}

impl RequestCounts {
    fn inc(&self, o: Outcome) {
        self.stripes[stripe()].0[o as usize].fetch_add(1, Relaxed);
    }

    fn get(&self, o: Outcome) -> u64 {
        self.stripes
            .iter()
            .map(|s| s.0[o as usize].load(Relaxed))
            .sum()
    }
}

/// This thread's stripe: threads take stripes in turn as they first count.
fn stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: usize = NEXT.fetch_add(1, Relaxed) % STRIPES;
    }
    STRIPE.with(|s| *s)
}

/// A module's own metrics, rendered after the core ones.
pub type Collector = Box<dyn Fn(&mut String) + Send + Sync>;

#[derive(Default)]
pub struct Metrics {
    requests: RequestCounts,
    upstream_requests: [Counter; RESULTS.len()],
    pub upstream_inflight: Gauge,
    pub upstream_queued: Gauge,
    pub upstream_duration: Histogram,
    pub breaker_open: Gauge,
    pub keys: Gauge,
    /// What `/readyz` says, set on each scrape: alerting needs it as a series.
    pub ready: Gauge,
    pub publish_batches: Counter,
    pub publish_rejected: Counter,
    pub versions_learned_publish: Counter,
    pub versions_learned_upstream: Counter,
    pub versions_learned_redis: Counter,
    pub versions_advanced: Counter,
    collectors: RwLock<Vec<Collector>>,
}

impl Metrics {
    pub fn request(&self, o: Outcome) {
        self.requests.inc(o);
    }
    pub fn requests(&self, o: Outcome) -> u64 {
        self.requests.get(o)
    }
    pub fn upstream(&self, r: UpstreamResult) {
        self.upstream_requests[r as usize].inc();
    }
    pub fn upstream_count(&self, r: UpstreamResult) -> u64 {
        self.upstream_requests[r as usize].get()
    }
    /// Adds a module's own metrics to every scrape.
    pub fn register(&self, c: Collector) {
        self.collectors.write().push(c);
    }

    pub fn render(&self) -> String {
        let mut o = String::with_capacity(4096);
        render_build_info(&mut o);
        process::render(&mut o);
        self.render_requests(&mut o);
        self.render_upstream(&mut o);
        self.render_versions(&mut o);
        for c in self.collectors.read().iter() {
            c(&mut o);
        }
        o
    }

    fn render_requests(&self, o: &mut String) {
        let rows = OUTCOMES.iter().map(|&(k, name)| (name, self.requests(k)));
        #[rustfmt::skip]
        family(o, "counter", "pollgate_requests_total", "Public requests by outcome.", "outcome", rows);
        #[rustfmt::skip]
        let counters = [
            ("pollgate_publish_batches_total", "Accepted publish batches.", &self.publish_batches),
            ("pollgate_publish_rejected_total", "Refused publish requests.", &self.publish_rejected),
        ];
        for (name, help, c) in counters {
            counter(o, name, help, c.get());
        }
    }

    fn render_upstream(&self, o: &mut String) {
        let rows = RESULTS
            .iter()
            .map(|&(r, name)| (name, self.upstream_count(r)));
        #[rustfmt::skip]
        family(o, "counter", "pollgate_upstream_requests_total", "Upstream attempts by result.", "result", rows);
        #[rustfmt::skip]
        let gauges = [
            ("pollgate_upstream_inflight", "Upstream requests in flight.", &self.upstream_inflight),
            ("pollgate_upstream_queued", "Requests waiting for an upstream slot.", &self.upstream_queued),
            ("pollgate_breaker_open", "1 while the upstream circuit breaker is open.", &self.breaker_open),
        ];
        for (name, help, g) in gauges {
            gauge(o, name, help, g.get());
        }
        let name = "pollgate_upstream_duration_seconds";
        let _ = writeln!(
            o,
            "# HELP {name} Time to the upstream response head.\n# TYPE {name} histogram"
        );
        self.upstream_duration.render(o, name);
    }

    fn render_versions(&self, o: &mut String) {
        #[rustfmt::skip]
        gauge(o, "pollgate_ready", "1 when /readyz answers 200 (snapshot loaded, caught up with peers).", self.ready.get());
        gauge(
            o,
            "pollgate_keys",
            "Keys in the version table.",
            self.keys.get(),
        );
        let rows = [
            ("publish", self.versions_learned_publish.get()),
            ("upstream", self.versions_learned_upstream.get()),
            ("redis", self.versions_learned_redis.get()),
        ];
        #[rustfmt::skip]
        family(o, "counter", "pollgate_versions_learned_total", "Versions received from trusted sources.", "source", rows);
        #[rustfmt::skip]
        counter(o, "pollgate_versions_advanced_total", "Merges that moved a key forward.", self.versions_advanced.get());
    }
}

/// One metric with a single label: HELP, TYPE (`kind`), then a line per
/// `(label value, n)`. Label values come from fixed tables, never from keys.
pub fn family<'a>(
    o: &mut String,
    kind: &str,
    name: &str,
    help: &str,
    label: &str,
    rows: impl IntoIterator<Item = (&'a str, u64)>,
) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (value, n) in rows {
        let _ = writeln!(o, "{name}{{{label}=\"{value}\"}} {n}");
    }
}

pub fn gauge(o: &mut String, name: &str, help: &str, v: i64) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
}

pub fn counter(o: &mut String, name: &str, help: &str, v: u64) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
}

/// The crate version and the git commit it was built from (`build.rs`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const COMMIT: &str = env!("PG_GIT_COMMIT");

fn render_build_info(o: &mut String) {
    let name = "pollgate_build_info";
    let _ = writeln!(
        o,
        "# HELP {name} Always 1; the labels say which build runs.\n# TYPE {name} gauge\n{name}{{version=\"{VERSION}\",commit=\"{COMMIT}\"}} 1"
    );
}

/// Process metrics read from `/proc/self` on each scrape (Linux; elsewhere
/// they are absent), named like the Prometheus clients' process collector
/// with the `pollgate_` namespace.
mod process {
    use std::fmt::Write;

    pub fn render(o: &mut String) {
        let stat = std::fs::read_to_string("/proc/self/stat").ok();
        // Fields after the `(comm)`, which may itself contain spaces.
        let fields: Vec<&str> = stat
            .as_deref()
            .and_then(|s| s.rsplit_once(") "))
            .map_or(Vec::new(), |(_, rest)| rest.split(' ').collect());
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<f64>().ok());
        // SAFETY: sysconf only reads a system constant.
        let (tick, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK) as f64,
                libc::sysconf(libc::_SC_PAGESIZE) as f64,
            )
        };
        let cpu = field(14).zip(field(15)).map(|(u, s)| (u + s) / tick);
        let start = field(22).zip(boot_time()).map(|(t, boot)| boot + t / tick);
        #[rustfmt::skip]
        let rows = [
            ("pollgate_process_cpu_seconds_total", "counter", "User and system CPU time spent.", cpu),
            ("pollgate_process_resident_memory_bytes", "gauge", "Resident memory size.", field(24).map(|p| p * page)),
            ("pollgate_process_virtual_memory_bytes", "gauge", "Virtual memory size.", field(23)),
            ("pollgate_process_open_fds", "gauge", "Open file descriptors (each push connection is one).", open_fds()),
            ("pollgate_process_max_fds", "gauge", "The open file descriptor limit (ulimit -n, LimitNOFILE).", max_fds()),
            ("pollgate_process_start_time_seconds", "gauge", "Start time since the Unix epoch.", start),
        ];
        for (name, kind, help, v) in rows {
            if let Some(v) = v {
                let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
            }
        }
    }

    fn open_fds() -> Option<f64> {
        Some(std::fs::read_dir("/proc/self/fd").ok()?.count() as f64)
    }

    fn max_fds() -> Option<f64> {
        let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
        let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
        line.split_whitespace().nth(3)?.parse().ok()
    }

    /// Boot time (Unix seconds): process start times in /proc count from it.
    fn boot_time() -> Option<f64> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        stat.lines()
            .find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Threads count in different stripes; reads sum them all.
    #[test]
    fn striped_requests_sum_over_threads() {
        let m = Metrics::default();
        std::thread::scope(|s| {
            for _ in 0..(STRIPES + 3) {
                s.spawn(|| (0..1000).for_each(|_| m.request(Outcome::Hit)));
            }
        });
        m.request(Outcome::Stale);
        assert_eq!(m.requests(Outcome::Hit), 1000 * (STRIPES as u64 + 3));
        assert_eq!(m.requests(Outcome::Stale), 1);
        assert!(m
            .render()
            .contains("pollgate_requests_total{outcome=\"hit\"} 19000"));
    }
}

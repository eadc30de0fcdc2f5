//! The upstream guard: at most `upstream_max_inflight` requests in flight, a
//! bounded wait queue, 503 + jittered `Retry-After` beyond, and a circuit breaker.
//!
//! The breaker counts *consecutive* failures: connect/IO errors, timeouts and
//! `502`/`503`/`504` answers. A `500` is the app answering (five broken keys
//! must not cut every key off the app), so it counts as a success. Any success
//! resets the count. After `breaker_failures` it opens for `breaker_open`, then
//! lets exactly one probe through: success closes it, failure reopens it. Only
//! the probe decides while the breaker is not closed; results of requests that
//! were already in flight when it opened are ignored.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::Response;
use hyper::body::Incoming;
use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::config::Config;
use crate::error::{jittered, Error};
use crate::metrics::{Metrics, UpstreamResult};

pub struct Guard {
    inner: Arc<Inner>,
}

struct Inner {
    slots: Arc<Semaphore>,
    /// Requests waiting for a slot right now; bounded by `queue_cap`.
    queued: AtomicUsize,
    queue_cap: usize,
    queue_timeout: Duration,
    /// Tiny critical sections, never held across `.await`.
    breaker: Mutex<Breaker>,
    metrics: Arc<Metrics>,
}

struct Breaker {
    phase: Phase,
    threshold: u32,
    open_for: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Closed {
        failures: u32,
    },
    /// Refusing until `until`; the first request after that becomes the probe.
    Open {
        until: Instant,
    },
    /// The probe is in flight; everyone else is refused until it reports.
    HalfOpen,
}

/// What the breaker says to a request that has a slot.
enum Admit {
    Normal,
    Probe,
    Refuse(Duration),
}

/// A slot in flight; `record` feeds the breaker, drop frees the slot.
pub struct Permit {
    inner: Arc<Inner>,
    _slot: OwnedSemaphorePermit,
    /// This request is the half-open probe: its result decides the breaker.
    probe: bool,
}

/// Counts one queued request for as long as it lives, so a waiter that is
/// cancelled (client gone) can never leak a queue place or the gauge.
struct Queued<'a>(&'a Inner);

impl Guard {
    pub fn new(cfg: &Config, metrics: Arc<Metrics>) -> Self {
        let breaker = Breaker {
            phase: Phase::Closed { failures: 0 },
            threshold: cfg.breaker_failures.max(1),
            open_for: cfg.breaker_open,
        };
        let inner = Inner {
            slots: Arc::new(Semaphore::new(cfg.upstream_max_inflight)),
            queued: AtomicUsize::new(0),
            queue_cap: cfg.upstream_queue,
            queue_timeout: cfg.upstream_queue_timeout,
            breaker: Mutex::new(breaker),
            metrics,
        };
        Guard {
            inner: Arc::new(inner),
        }
    }

    /// Waits (bounded) for a slot, or refuses with `Error::Shed` / `Error::BreakerOpen`.
    pub async fn acquire(&self) -> Result<Permit, Error> {
        // Refuse before queueing: while the breaker is open nobody should wait.
        if let Some(e) = self.refusing() {
            return Err(e);
        }
        let slot = self.inner.slot().await?;
        // The breaker may have opened while we waited, or a probe may be due.
        let probe = match self.inner.breaker.lock().admit(Instant::now()) {
            Admit::Normal => false,
            Admit::Probe => true,
            Admit::Refuse(left) => return Err(self.inner.refuse(left)),
        };
        self.inner.metrics.upstream_inflight.add(1);
        Ok(Permit {
            inner: self.inner.clone(),
            _slot: slot,
            probe,
        })
    }

    /// `Some(BreakerOpen)` while the breaker is open and no probe is due.
    pub fn refusing(&self) -> Option<Error> {
        let left = self.inner.breaker.lock().refusing(Instant::now())?;
        Some(self.inner.refuse(left))
    }

    /// Requests waiting for a slot right now.
    pub fn queued(&self) -> usize {
        self.inner.queued.load(Ordering::Relaxed)
    }

    /// Free in-flight slots right now.
    pub fn available(&self) -> usize {
        self.inner.slots.available_permits()
    }
}

impl Inner {
    /// A slot at once if one is free, else a bounded wait in a bounded queue.
    async fn slot(&self) -> Result<OwnedSemaphorePermit, Error> {
        if let Ok(slot) = self.slots.clone().try_acquire_owned() {
            return Ok(slot);
        }
        let Some(_queued) = Queued::enter(self) else {
            return Err(self.shed("queue full"));
        };
        match tokio::time::timeout(self.queue_timeout, self.slots.clone().acquire_owned()).await {
            Ok(Ok(slot)) => Ok(slot),
            Ok(Err(_closed)) => Err(Error::Internal("upstream semaphore closed".into())),
            Err(_) => Err(self.shed("queue timeout")),
        }
    }

    /// The hint grows with the backlog: a full queue asks for up to 5× the
    /// queue timeout before the jitter, so a deeper storm spreads wider.
    fn shed(&self, why: &'static str) -> Error {
        self.metrics.upstream(UpstreamResult::Shed);
        tracing::debug!(why, "upstream request shed");
        let queued = self.queued.load(Ordering::Relaxed).min(self.queue_cap) as u32;
        let scale = 1 + 4 * queued / self.queue_cap.max(1) as u32;
        Error::Shed {
            retry_after: jittered(self.queue_timeout * scale),
        }
    }

    fn refuse(&self, left: Duration) -> Error {
        self.metrics.upstream(UpstreamResult::BreakerOpen);
        Error::BreakerOpen {
            retry_after: jittered(left),
        }
    }

    fn report(&self, probe: bool, ok: bool) {
        let mut b = self.breaker.lock();
        let before = b.phase;
        b.report(probe, ok, Instant::now());
        let after = b.phase;
        drop(b);
        self.transitioned(before, after);
    }

    /// Logs and gauges a breaker transition; both are rare, so logging is fine.
    fn transitioned(&self, before: Phase, after: Phase) {
        use Phase::*;
        match (before, after) {
            (Closed { .. }, Open { .. }) => {
                self.metrics.breaker_open.set(1);
                tracing::warn!("upstream circuit breaker opened");
            }
            (HalfOpen, Open { .. }) => tracing::warn!("upstream probe failed; breaker open again"),
            (HalfOpen, Closed { .. }) => {
                self.metrics.breaker_open.set(0);
                tracing::info!("upstream probe succeeded; breaker closed");
            }
            _ => {}
        }
    }
}

impl Breaker {
    /// How long is left if refusing now without taking a slot.
    fn refusing(&self, now: Instant) -> Option<Duration> {
        match self.phase {
            Phase::Closed { .. } => None,
            Phase::Open { until } if until > now => Some(until - now),
            Phase::Open { .. } => None, // a probe is due: let it queue for a slot
            Phase::HalfOpen => Some(Duration::ZERO),
        }
    }

    fn admit(&mut self, now: Instant) -> Admit {
        match self.phase {
            Phase::Closed { .. } => Admit::Normal,
            Phase::Open { until } if until > now => Admit::Refuse(until - now),
            Phase::Open { .. } => {
                self.phase = Phase::HalfOpen;
                tracing::info!("upstream breaker half-open: sending one probe");
                Admit::Probe
            }
            Phase::HalfOpen => Admit::Refuse(Duration::ZERO),
        }
    }

    fn report(&mut self, probe: bool, ok: bool, now: Instant) {
        let reopen = Phase::Open {
            until: now + self.open_for,
        };
        self.phase = match (self.phase, probe, ok) {
            (Phase::HalfOpen, true, true) => Phase::Closed { failures: 0 },
            (Phase::HalfOpen, true, false) => reopen,
            (Phase::Closed { .. }, _, true) => Phase::Closed { failures: 0 },
            (Phase::Closed { failures }, _, false) if failures + 1 >= self.threshold => reopen,
            (Phase::Closed { failures }, _, false) => Phase::Closed {
                failures: failures + 1,
            },
            // Not closed and not the probe: a request from before the breaker
            // opened. Stale evidence; the probe decides.
            (state, _, _) => state,
        };
    }

    /// The probe went away without a result (client disconnected). That says
    /// nothing about the upstream, so the next request may probe at once.
    fn abandon_probe(&mut self, now: Instant) {
        if self.phase == Phase::HalfOpen {
            self.phase = Phase::Open { until: now };
        }
    }
}

impl Permit {
    /// Feeds the upstream's answer to the breaker and frees the slot.
    /// Errors that are not the upstream's (e.g. an unforwardable request) are
    /// neutral: they neither count as failure nor close the breaker.
    pub fn record(self, res: &Result<Response<Incoming>, Error>) {
        match res {
            Ok(resp) => self.record_outcome(!upstream_unwell(resp.status())),
            Err(Error::UpstreamTimeout | Error::Upstream(_)) => self.record_outcome(false),
            Err(_) => drop(self),
        }
    }

    /// `record` without a response: `ok` is false for an error, timeout or 502/503/504.
    pub fn record_outcome(mut self, ok: bool) {
        self.inner.report(self.probe, ok);
        self.probe = false; // reported: dropping is no longer abandoning
    }

    /// True if this request is the half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }
}

/// `502`/`503`/`504` say the app (or what stands before it) cannot answer;
/// a `500` is the app's answer to one request (one bad key must not open the
/// breaker for every key), so it does not count.
fn upstream_unwell(s: http::StatusCode) -> bool {
    use http::StatusCode as S;
    matches!(
        s,
        S::BAD_GATEWAY | S::SERVICE_UNAVAILABLE | S::GATEWAY_TIMEOUT
    )
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit")
            .field("probe", &self.probe)
            .finish()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.inner.metrics.upstream_inflight.add(-1);
        if self.probe {
            tracing::debug!("upstream probe abandoned; next request probes");
            self.inner.breaker.lock().abandon_probe(Instant::now());
        }
    }
}

impl<'a> Queued<'a> {
    fn enter(inner: &'a Inner) -> Option<Self> {
        inner
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                (q < inner.queue_cap).then_some(q + 1)
            })
            .ok()?;
        inner.metrics.upstream_queued.add(1);
        Some(Queued(inner))
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.queued.fetch_sub(1, Ordering::AcqRel);
        self.0.metrics.upstream_queued.add(-1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(f: impl FnOnce(&mut Config)) -> (Arc<Guard>, Arc<Metrics>) {
        let mut cfg = Config {
            upstream_max_inflight: 2,
            upstream_queue: 10,
            upstream_queue_timeout: Duration::from_secs(30),
            breaker_failures: 3,
            breaker_open: Duration::from_secs(30),
            ..Config::default()
        };
        f(&mut cfg);
        let metrics = Arc::new(Metrics::default());
        (Arc::new(Guard::new(&cfg, metrics.clone())), metrics)
    }

    /// Polls `cond` until it holds; panics after a generous deadline.
    async fn eventually(what: &str, cond: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    fn spawn_acquire(g: &Arc<Guard>) -> tokio::task::JoinHandle<Result<Permit, Error>> {
        let g = g.clone();
        tokio::spawn(async move { g.acquire().await })
    }

    #[tokio::test]
    async fn cap_holds_and_waiters_take_freed_slots() {
        let (g, m) = guard(|_| {});
        let p1 = g.acquire().await.unwrap();
        let p2 = g.acquire().await.unwrap();
        let mut waiters: Vec<_> = (0..3).map(|_| spawn_acquire(&g)).collect();
        eventually("3 queued", || g.queued() == 3).await;
        assert_eq!((m.upstream_inflight.get(), m.upstream_queued.get()), (2, 3));
        assert!(waiters.iter().all(|w| !w.is_finished()));
        drop(p1);
        eventually("one waiter admitted", || {
            waiters.iter().any(|w| w.is_finished())
        })
        .await;
        let i = waiters.iter().position(|w| w.is_finished()).unwrap();
        let p3 = waiters.swap_remove(i).await.unwrap().unwrap();
        assert_eq!((g.queued(), m.upstream_inflight.get()), (2, 2));
        assert!(waiters.iter().all(|w| !w.is_finished()));
        drop((p2, p3));
        let rest: Vec<Permit> = futures_util::future::join_all(waiters)
            .await
            .into_iter()
            .map(|r| r.unwrap().unwrap())
            .collect();
        assert_eq!(m.upstream_inflight.get(), 2);
        drop(rest);
        assert_eq!((m.upstream_inflight.get(), m.upstream_queued.get()), (0, 0));
        assert_eq!(g.available(), 2);
    }

    #[tokio::test]
    async fn no_queue_sheds_at_once() {
        let (g, m) = guard(|c| {
            c.upstream_max_inflight = 1;
            c.upstream_queue = 0;
        });
        let _p = g.acquire().await.unwrap();
        let e = g.acquire().await.err().unwrap();
        let Error::Shed { retry_after } = e else {
            panic!("{e:?}")
        };
        assert!(retry_after >= Duration::from_secs(1));
        assert_eq!(m.upstream_count(UpstreamResult::Shed), 1);
        assert_eq!(m.upstream_queued.get(), 0);
    }

    #[tokio::test]
    async fn full_queue_sheds_at_once() {
        let (g, m) = guard(|c| {
            c.upstream_max_inflight = 1;
            c.upstream_queue = 1;
        });
        let _p = g.acquire().await.unwrap();
        let waiter = spawn_acquire(&g);
        eventually("1 queued", || g.queued() == 1).await;
        assert!(matches!(g.acquire().await, Err(Error::Shed { .. })));
        assert_eq!(m.upstream_count(UpstreamResult::Shed), 1);
        assert!(!waiter.is_finished());
        waiter.abort();
    }

    #[tokio::test]
    async fn waiting_too_long_sheds() {
        let (g, m) = guard(|c| {
            c.upstream_max_inflight = 1;
            c.upstream_queue_timeout = Duration::from_millis(50);
        });
        let _p = g.acquire().await.unwrap();
        let start = std::time::Instant::now();
        assert!(matches!(g.acquire().await, Err(Error::Shed { .. })));
        assert!(start.elapsed() >= Duration::from_millis(50));
        assert_eq!(m.upstream_count(UpstreamResult::Shed), 1);
        assert_eq!((g.queued(), m.upstream_queued.get()), (0, 0));
    }

    #[tokio::test]
    async fn cancelled_waiters_leak_nothing() {
        let (g, m) = guard(|c| c.upstream_max_inflight = 1);
        let p = g.acquire().await.unwrap();
        let waiters: Vec<_> = (0..4).map(|_| spawn_acquire(&g)).collect();
        eventually("4 queued", || g.queued() == 4).await;
        for w in &waiters {
            w.abort();
        }
        for w in waiters {
            assert!(w.await.unwrap_err().is_cancelled());
        }
        assert_eq!((g.queued(), m.upstream_queued.get()), (0, 0));
        drop(p);
        assert_eq!((g.available(), m.upstream_inflight.get()), (1, 0));
        let _p = g.acquire().await.unwrap();
        assert_eq!(m.upstream_inflight.get(), 1);
    }

    fn fail(g: &Guard, n: usize) {
        for _ in 0..n {
            g.inner.report(false, false);
        }
    }

    #[tokio::test]
    async fn breaker_opens_after_consecutive_failures_only() {
        let (g, m) = guard(|_| {});
        fail(&g, 2);
        g.acquire().await.unwrap().record_outcome(true);
        fail(&g, 2);
        assert!(
            g.refusing().is_none(),
            "a success in between resets the count"
        );
        let p = g.acquire().await.unwrap();
        p.record_outcome(false);
        assert_eq!(m.breaker_open.get(), 1);
        let Some(Error::BreakerOpen { retry_after }) = g.refusing() else {
            panic!()
        };
        // ≈ the 30 s left, jittered upwards.
        assert!(retry_after >= Duration::from_secs(29), "{retry_after:?}");
        assert!(matches!(g.acquire().await, Err(Error::BreakerOpen { .. })));
        assert_eq!(m.upstream_count(UpstreamResult::BreakerOpen), 2);
        assert_eq!(m.upstream_inflight.get(), 0);
    }

    #[tokio::test]
    async fn half_open_lets_one_probe_and_closes_on_success() {
        let (g, m) = guard(|c| c.breaker_open = Duration::from_millis(50));
        fail(&g, 3);
        assert!(g.refusing().is_some());
        eventually("probe due", || g.refusing().is_none()).await;
        let probe = g.acquire().await.unwrap();
        assert!(probe.is_probe());
        let Err(Error::BreakerOpen { retry_after }) = g.acquire().await else {
            panic!()
        };
        assert!(retry_after >= Duration::from_secs(1));
        assert!(g.refusing().is_some());
        assert_eq!(m.breaker_open.get(), 1);
        probe.record_outcome(true);
        assert_eq!(m.breaker_open.get(), 0);
        assert!(g.refusing().is_none());
        let p = g.acquire().await.unwrap();
        assert!(!p.is_probe());
        // Closed with a fresh count: it takes 3 failures again to open.
        p.record_outcome(false);
        fail(&g, 1);
        assert!(g.refusing().is_none());
    }

    #[tokio::test]
    async fn failed_probe_reopens_for_the_full_time() {
        let (g, m) = guard(|c| c.breaker_open = Duration::from_millis(50));
        fail(&g, 3);
        eventually("probe due", || g.refusing().is_none()).await;
        let opened = Instant::now();
        g.acquire().await.unwrap().record_outcome(false);
        assert_eq!(m.breaker_open.get(), 1);
        assert!(g.refusing().is_some());
        eventually("probe due again", || g.refusing().is_none()).await;
        assert!(opened.elapsed() >= Duration::from_millis(50));
        assert!(g.acquire().await.unwrap().is_probe());
    }

    #[tokio::test]
    async fn abandoned_probe_lets_the_next_request_probe() {
        let (g, _) = guard(|c| c.breaker_open = Duration::from_millis(50));
        fail(&g, 3);
        eventually("probe due", || g.refusing().is_none()).await;
        let probe = g.acquire().await.unwrap();
        assert!(g.refusing().is_some());
        drop(probe); // the client went away mid-request
        assert!(g.refusing().is_none());
        let probe = g.acquire().await.unwrap();
        assert!(probe.is_probe());
        probe.record_outcome(true);
        assert!(g.refusing().is_none());
    }

    #[tokio::test]
    async fn queued_request_is_refused_if_the_breaker_opened_meanwhile() {
        let (g, _) = guard(|c| c.upstream_max_inflight = 1);
        let p = g.acquire().await.unwrap();
        let waiter = spawn_acquire(&g);
        eventually("1 queued", || g.queued() == 1).await;
        fail(&g, 3);
        drop(p);
        assert!(matches!(
            waiter.await.unwrap(),
            Err(Error::BreakerOpen { .. })
        ));
        assert_eq!(g.available(), 1);
    }

    // The state machine alone, on a synthetic clock.

    fn breaker() -> Breaker {
        Breaker {
            phase: Phase::Closed { failures: 0 },
            threshold: 2,
            open_for: Duration::from_secs(5),
        }
    }

    #[test]
    fn late_results_do_not_decide_an_open_breaker() {
        let t0 = Instant::now();
        let mut b = breaker();
        b.report(false, false, t0);
        b.report(false, false, t0);
        assert_eq!(
            b.phase,
            Phase::Open {
                until: t0 + Duration::from_secs(5)
            }
        );
        // A request from before the opening succeeds: still open.
        b.report(false, true, t0 + Duration::from_secs(1));
        assert_eq!(
            b.refusing(t0 + Duration::from_secs(1)),
            Some(Duration::from_secs(4))
        );
        let t5 = t0 + Duration::from_secs(5);
        assert_eq!(b.refusing(t5), None);
        assert!(matches!(b.admit(t5), Admit::Probe));
        assert!(matches!(b.admit(t5), Admit::Refuse(_)));
        b.report(false, true, t5); // late non-probe success while half-open
        assert_eq!(b.phase, Phase::HalfOpen);
        b.report(true, false, t5);
        assert_eq!(
            b.phase,
            Phase::Open {
                until: t5 + Duration::from_secs(5)
            }
        );
    }

    #[test]
    fn abandoning_only_matters_half_open() {
        let t0 = Instant::now();
        let mut b = breaker();
        b.abandon_probe(t0);
        assert_eq!(b.phase, Phase::Closed { failures: 0 });
        b.phase = Phase::HalfOpen;
        b.abandon_probe(t0);
        assert!(matches!(b.admit(t0), Admit::Probe));
    }
}

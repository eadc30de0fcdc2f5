//! The upstream guard: at most `upstream_max_inflight` requests in flight, a
//! bounded wait queue, 503 + jittered `Retry-After` beyond, and a circuit breaker.
//!
//! The breaker counts *consecutive* failures: connect/IO errors, timeouts and
//! every 5xx response (a 500 storm is as much a sign of a sick app as 502/503/504,
//! and a struggling app needs the load taken off either way). Any success
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
    state: State,
    threshold: u32,
    open_for: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
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
            state: State::Closed { failures: 0 },
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

    fn shed(&self, why: &'static str) -> Error {
        self.metrics.upstream(UpstreamResult::Shed);
        tracing::debug!(why, "upstream request shed");
        Error::Shed {
            retry_after: jittered(self.queue_timeout),
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
        let before = b.state;
        b.report(probe, ok, Instant::now());
        let after = b.state;
        drop(b);
        self.transitioned(before, after);
    }

    /// Logs and gauges a breaker transition; both are rare, so logging is fine.
    fn transitioned(&self, before: State, after: State) {
        use State::*;
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
        match self.state {
            State::Closed { .. } => None,
            State::Open { until } if until > now => Some(until - now),
            State::Open { .. } => None, // a probe is due: let it queue for a slot
            State::HalfOpen => Some(Duration::ZERO),
        }
    }

    fn admit(&mut self, now: Instant) -> Admit {
        match self.state {
            State::Closed { .. } => Admit::Normal,
            State::Open { until } if until > now => Admit::Refuse(until - now),
            State::Open { .. } => {
                self.state = State::HalfOpen;
                tracing::info!("upstream breaker half-open: sending one probe");
                Admit::Probe
            }
            State::HalfOpen => Admit::Refuse(Duration::ZERO),
        }
    }

    fn report(&mut self, probe: bool, ok: bool, now: Instant) {
        let reopen = State::Open {
            until: now + self.open_for,
        };
        self.state = match (self.state, probe, ok) {
            (State::HalfOpen, true, true) => State::Closed { failures: 0 },
            (State::HalfOpen, true, false) => reopen,
            (State::Closed { .. }, _, true) => State::Closed { failures: 0 },
            (State::Closed { failures }, _, false) if failures + 1 >= self.threshold => reopen,
            (State::Closed { failures }, _, false) => State::Closed {
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
        if self.state == State::HalfOpen {
            self.state = State::Open { until: now };
        }
    }
}

impl Permit {
    /// Feeds the upstream's answer to the breaker and frees the slot.
    /// Errors that are not the upstream's (e.g. an unforwardable request) are
    /// neutral: they neither count as failure nor close the breaker.
    pub fn record(self, res: &Result<Response<Incoming>, Error>) {
        match res {
            Ok(resp) => self.record_outcome(!resp.status().is_server_error()),
            Err(Error::UpstreamTimeout | Error::Upstream(_)) => self.record_outcome(false),
            Err(_) => drop(self),
        }
    }

    /// `record` without a response: `ok` is false for an error, timeout or 5xx.
    pub fn record_outcome(mut self, ok: bool) {
        self.inner.report(self.probe, ok);
        self.probe = false; // reported: dropping is no longer abandoning
    }

    /// True if this request is the half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe
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

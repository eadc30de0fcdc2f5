//! `header_read_timeout` for the public listener's connections served by
//! hyper (HTTP/1.1 and h2c, which has no header timeout of its own), kept
//! per connection by one coarse sweeper instead of hyper's per-request timer
//! (a boxed `Sleep` and a timer-wheel insert and removal on every request:
//! ~340 instructions per hit, `make loadtest-instructions`).
//!
//! A connection that answers nothing and has nothing in flight for
//! `header_read_timeout` is inside a head that does not come (slowloris) or
//! idle between requests, which hyper's timer also counts; either way it is
//! closed, like hyper closes it: the connection is dropped without an
//! answer. Only connections served by hyper are watched: a raw SSE watch
//! (`push::raw`) never allocates a [`Clock`] or an entry here. The sweeper
//! looks every quarter of the timeout (at most every second), so a head gets
//! between the timeout and 1.25× of it; never less.
//!
//! The sweeper also tells each connection when shutdown starts: a flag and
//! a waker per connection cost a load per wake of its task, where a `watch`
//! receiver polled beside hyper's connection cost ~170 instructions per hit.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{
    AtomicBool, AtomicU64, AtomicU8, Ordering::Acquire, Ordering::Relaxed, Ordering::Release,
};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use http_body::{Frame, SizeHint};
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::body::{Body, BoxError};
use crate::shutdown::stopping;

/// What the sweeper reads of one connection; only the connection's task
/// writes it (uncontended atomics, no lock).
#[derive(Default)]
pub struct Clock {
    /// Bumped when a request is answered at once and when a slower one's
    /// response body is dropped (written, or abandoned).
    served: AtomicU64,
    /// Requests whose response body is not finished yet.
    busy: AtomicU64,
    /// Set once the connection is hyper's (HTTP/1.1 or h2c): before that,
    /// sniffing has its own deadline, and a raw SSE stream is not a head.
    armed: AtomicBool,
    /// 0 while serving, then a [`Stop`] (as `u8`): set by the sweeper.
    stop: AtomicU8,
    stop_waker: AtomicWaker,
}

/// Why a connection must end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Shutdown started: finish what is in flight, then close.
    Shutdown = 1,
    /// No head within `header_read_timeout`: close now.
    HeadTimeout = 2,
}

impl Clock {
    /// Served by hyper from now on: the sweeper may close this connection.
    pub fn arm(&self) {
        self.armed.store(true, Relaxed);
    }

    /// A request answered at once (a hit): one uncontended counter.
    pub fn served_now(&self) {
        self.served.fetch_add(1, Relaxed);
    }

    /// Resolves when the sweeper says this connection must end; again
    /// after a shutdown, for a head timeout that comes during the drain.
    pub fn stopping(&self, after: Option<Stop>) -> impl Future<Output = Stop> + '_ {
        std::future::poll_fn(move |cx| {
            if let Some(s) = self.stopped(after) {
                return Poll::Ready(s);
            }
            // Registered before the second look, so a stop in between wakes us.
            self.stop_waker.register(cx.waker());
            self.stopped(after).map_or(Poll::Pending, Poll::Ready)
        })
    }

    fn stopped(&self, after: Option<Stop>) -> Option<Stop> {
        let s = match self.stop.load(Acquire) {
            1 => Stop::Shutdown,
            2 => Stop::HeadTimeout,
            _ => return None,
        };
        (Some(s) != after).then_some(s)
    }

    /// Tells the connection; a head timeout overrides a shutdown, not back.
    pub fn stop(&self, why: Stop) {
        self.stop.fetch_max(why as u8, Release);
        self.stop_waker.wake();
    }

    /// A request whose answer takes time: the connection is busy until the
    /// returned guard (kept in the response body) is dropped.
    pub fn busy(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Relaxed);
        Busy(self.clone())
    }
}

/// A request in flight on a [`Clock`]'s connection.
pub struct Busy(Arc<Clock>);

/// A response body that keeps its connection [`Busy`] until hyper drops it:
/// a streamed answer is not a head, however long it lasts.
pub struct Tracked {
    body: Body,
    _busy: Option<Busy>,
}

impl Tracked {
    pub fn new(body: Body, busy: Option<Busy>) -> Tracked {
        Tracked { body, _busy: busy }
    }
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.served.fetch_add(1, Relaxed);
        self.0.busy.fetch_sub(1, Relaxed);
    }
}

/// One watched connection, as the sweeper last saw it.
struct Watched {
    /// Shared with the connection: when it is the last reference, the
    /// connection is gone.
    clock: Arc<Clock>,
    seen: u64,
    since: Instant,
    /// Told to stop (shutdown), once.
    stopped: bool,
}

/// Connections registered since the last sweep (a connection holds this
/// lock for a push; the sweep itself runs on its own list).
#[derive(Default)]
pub struct Registry {
    pending: Mutex<Vec<Watched>>,
}

impl Registry {
    /// Watches a connection accepted at `accepted` and now served by hyper:
    /// its first head is due within the timeout of the accept (sniffing
    /// included), then each one within the timeout of the last answer.
    pub fn watch(&self, clock: Arc<Clock>, accepted: Instant) {
        let w = Watched {
            clock,
            seen: 0,
            since: accepted,
            stopped: false,
        };
        self.pending.lock().push(w);
    }
}

/// Owns the sweeper task; dropping it stops the sweeps.
pub struct Heads {
    registry: Arc<Registry>,
    sweeper: JoinHandle<()>,
}

impl Heads {
    /// Sweeps every so often for `timeout`, and tells every connection once
    /// `shutdown` flips.
    pub fn start(timeout: Duration, shutdown: watch::Receiver<bool>) -> Heads {
        let registry = Arc::<Registry>::default();
        let sweeper = tokio::spawn(sweep(registry.clone(), timeout, shutdown));
        Heads { registry, sweeper }
    }

    /// Where connections register.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }
}

impl Drop for Heads {
    fn drop(&mut self) {
        self.sweeper.abort();
    }
}

/// How often the sweeper looks: a quarter of the timeout, at most a second.
fn period(timeout: Duration) -> Duration {
    (timeout / 4).clamp(Duration::from_millis(5), Duration::from_secs(1))
}

async fn sweep(registry: Arc<Registry>, timeout: Duration, mut shutdown: watch::Receiver<bool>) {
    let mut watched: Vec<Watched> = Vec::new();
    let mut tick = tokio::time::interval(period(timeout));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stopping_now = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopping(&mut shutdown), if !stopping_now => stopping_now = true,
        }
        watched.append(&mut registry.pending.lock());
        if stopping_now {
            watched.iter_mut().filter(|w| !w.stopped).for_each(|w| {
                w.stopped = true;
                w.clock.stop(Stop::Shutdown);
            });
        }
        let now = Instant::now();
        watched.retain_mut(|w| keep(w, now, timeout));
    }
}

/// `false` once the connection is gone or has been closed for its head.
fn keep(w: &mut Watched, now: Instant, timeout: Duration) -> bool {
    if Arc::strong_count(&w.clock) == 1 {
        return false;
    }
    let served = w.clock.served.load(Relaxed);
    if w.clock.busy.load(Relaxed) > 0 || served != w.seen {
        w.seen = served;
        w.since = now;
        return true;
    }
    if w.clock.armed.load(Relaxed) && now.duration_since(w.since) >= timeout {
        w.clock.stop(Stop::HeadTimeout);
        return false;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shutdown signal that does not come (its sender leaked for the test).
    fn never() -> watch::Receiver<bool> {
        let (tx, rx) = watch::channel(false);
        std::mem::forget(tx);
        rx
    }

    /// A connection: a task that ends when its clock says so.
    fn connection(heads: &Heads, armed: bool) -> (Arc<Clock>, JoinHandle<Stop>) {
        let clock = Arc::new(Clock::default());
        if armed {
            clock.arm();
        }
        heads.registry().watch(clock.clone(), Instant::now());
        let c = clock.clone();
        (clock, tokio::spawn(async move { c.stopping(None).await }))
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_armed_connection_is_closed_after_the_timeout_not_before() {
        let heads = Heads::start(Duration::from_secs(4), never());
        let (_clock, task) = connection(&heads, true);
        tokio::time::sleep(Duration::from_millis(3900)).await;
        assert!(!task.is_finished());
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert_eq!(task.await.unwrap(), Stop::HeadTimeout);
    }

    #[tokio::test(start_paused = true)]
    async fn answers_and_busy_requests_keep_a_connection() {
        let heads = Heads::start(Duration::from_secs(4), never());
        let (clock, task) = connection(&heads, true);
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_secs(3)).await;
            clock.served_now();
        }
        let busy = clock.busy();
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert!(!task.is_finished(), "a request in flight is not a head");
        drop(busy);
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(!task.is_finished(), "the timeout counts from the answer");
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(task.await.unwrap(), Stop::HeadTimeout);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unarmed_connection_is_left_to_its_own_deadline() {
        let heads = Heads::start(Duration::from_secs(1), never());
        let (_clock, task) = connection(&heads, false);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(!task.is_finished());
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_gone_is_forgotten() {
        let heads = Heads::start(Duration::from_secs(1), never());
        let (clock, task) = connection(&heads, true);
        let gone = Arc::downgrade(&clock);
        drop(clock);
        task.abort();
        let _ = task.await;
        assert_eq!(gone.strong_count(), 1, "only the sweeper holds it");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(gone.strong_count(), 0, "the sweeper let go of it");
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_reaches_every_connection_then_a_head_timeout_still_can() {
        let (tx, rx) = watch::channel(false);
        let heads = Heads::start(Duration::from_secs(10), rx);
        let conns: Vec<_> = (0..3).map(|_| connection(&heads, true)).collect();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(conns.iter().all(|(_, t)| !t.is_finished()));
        tx.send_replace(true);
        for (clock, t) in conns {
            let why = tokio::time::timeout(Duration::from_millis(100), t)
                .await
                .expect("told at once, not at the next sweep")
                .unwrap();
            assert_eq!(why, Stop::Shutdown);
            let next = clock.stopping(Some(Stop::Shutdown));
            let why = tokio::time::timeout(Duration::from_secs(20), next).await;
            assert_eq!(
                why.ok(),
                Some(Stop::HeadTimeout),
                "a drain is no reason to wait for a head"
            );
        }
    }
}

//! Admission control for new push connections: a token bucket (rate from the
//! cluster-wide tunables, so every replica agrees) and a cap on open ones.
//! A reconnect storm is refused with a jittered `Retry-After` spread by how
//! far behind the bucket is, so the refused come back at about the rate we admit.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::error::{jittered, Error};
use crate::metrics::Counter;

/// How long after a refusal push counts as "refusing" (short poll hint).
const REFUSING_FOR: Duration = Duration::from_secs(5);

/// The push transports, for labels and per-transport connection counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Sse = 0,
    Wait = 1,
    Ws = 2,
}

pub const TRANSPORTS: [(Transport, &str); 3] = [
    (Transport::Sse, "sse"),
    (Transport::Wait, "wait"),
    (Transport::Ws, "ws"),
];

/// Why a connection was refused, for `pollgate_push_refused_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The token bucket is empty.
    Rate = 0,
    /// `push_max_connections` are open.
    Full = 1,
}

pub const REFUSALS: [(Refusal, &str); 2] = [(Refusal::Rate, "rate"), (Refusal::Full, "full")];

pub struct Admission {
    bucket: Mutex<Bucket>,
    burst: f64,
    max_open: usize,
    open_total: AtomicUsize,
    pub open: [AtomicU64; TRANSPORTS.len()],
    pub admitted: Counter,
    pub refused: [Counter; REFUSALS.len()],
    start: Instant,
    /// Milliseconds since `start` of the last refusal, plus one (0: never).
    last_refused_ms: AtomicU64,
}

struct Bucket {
    tokens: f64,
    last: Instant,
    /// Refusals in the current one-second window: how far behind we are.
    window: Instant,
    refused_in_window: u64,
}

impl Admission {
    pub fn new(burst: u64, max_open: usize) -> Self {
        let now = Instant::now();
        Admission {
            bucket: Mutex::new(Bucket {
                tokens: burst as f64,
                last: now,
                window: now,
                refused_in_window: 0,
            }),
            burst: burst as f64,
            max_open,
            open_total: AtomicUsize::new(0),
            open: Default::default(),
            admitted: Counter::default(),
            refused: Default::default(),
            start: now,
            last_refused_ms: AtomicU64::new(0),
        }
    }

    /// Admits one connection at `per_s` new connections a second, or says
    /// when to come back. The permit releases the connection slot when dropped.
    pub fn admit(self: &Arc<Self>, t: Transport, per_s: u64) -> Result<Ticket, Error> {
        if self.open_total.fetch_add(1, Relaxed) >= self.max_open {
            self.open_total.fetch_sub(1, Relaxed);
            return Err(self.refuse(Refusal::Full, per_s));
        }
        if !self.take_token(per_s) {
            self.open_total.fetch_sub(1, Relaxed);
            return Err(self.refuse(Refusal::Rate, per_s));
        }
        self.admitted.inc();
        self.open[t as usize].fetch_add(1, Relaxed);
        Ok(Ticket {
            admission: self.clone(),
            transport: t,
        })
    }

    fn take_token(&self, per_s: u64) -> bool {
        let mut b = self.bucket.lock();
        let now = Instant::now();
        let refill = now.duration_since(b.last).as_secs_f64() * per_s as f64;
        b.tokens = (b.tokens + refill).min(self.burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return true;
        }
        false
    }

    /// Counts the refusal and picks a `Retry-After`: at least 1 s, longer the
    /// more were refused this second (≈ backlog / rate), then jittered ×[1, 2).
    fn refuse(&self, why: Refusal, per_s: u64) -> Error {
        self.refused[why as usize].inc();
        let now = Instant::now();
        let since_start = now.duration_since(self.start).as_millis() as u64;
        self.last_refused_ms.store(since_start + 1, Relaxed);
        let backlog = {
            let mut b = self.bucket.lock();
            if now.duration_since(b.window) >= Duration::from_secs(1) {
                b.window = now;
                b.refused_in_window = 0;
            }
            b.refused_in_window += 1;
            b.refused_in_window
        };
        let base_s = 1 + backlog / per_s.max(1);
        Error::PushBusy {
            retry_after: jittered(Duration::from_secs(base_s.min(300))),
        }
    }

    /// Whether a connection was refused within the last few seconds.
    pub fn refusing(&self) -> bool {
        let last = self.last_refused_ms.load(Relaxed);
        if last == 0 {
            return false;
        }
        let now = self.start.elapsed().as_millis() as u64 + 1;
        now.saturating_sub(last) < REFUSING_FOR.as_millis() as u64
    }

    pub fn open_total(&self) -> usize {
        self.open_total.load(Relaxed)
    }
}

/// One admitted connection (RAII: dropping it frees the slot).
pub struct Ticket {
    admission: Arc<Admission>,
    transport: Transport,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let a = &self.admission;
        a.open[self.transport as usize].fetch_sub(1, Relaxed);
        a.open_total.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refused_with_a_retry_hint() {
        let a = Arc::new(Admission::new(3, 100));
        let tickets: Vec<_> = (0..3)
            .map(|_| a.admit(Transport::Sse, 1).unwrap())
            .collect();
        assert!(!a.refusing());
        match a.admit(Transport::Sse, 1) {
            Err(Error::PushBusy { retry_after }) => {
                assert!(retry_after >= Duration::from_secs(1), "{retry_after:?}")
            }
            _ => panic!("the fourth in the same instant must be refused"),
        }
        assert!(a.refusing());
        assert_eq!(a.refused[Refusal::Rate as usize].get(), 1);
        assert_eq!(a.open_total(), 3);
        drop(tickets);
        assert_eq!(a.open_total(), 0);
        assert_eq!(a.open[Transport::Sse as usize].load(Relaxed), 0);
    }

    #[test]
    fn the_connection_cap_holds_whatever_the_rate() {
        let a = Arc::new(Admission::new(1000, 2));
        let _p = (
            a.admit(Transport::Ws, 1000).unwrap(),
            a.admit(Transport::Wait, 1000).unwrap(),
        );
        assert!(a.admit(Transport::Sse, 1000).is_err());
        assert_eq!(a.refused[Refusal::Full as usize].get(), 1);
    }

    #[test]
    fn a_big_backlog_asks_refused_clients_to_wait_longer() {
        let a = Arc::new(Admission::new(0, 1_000_000));
        let mut longest = Duration::ZERO;
        for _ in 0..10_000 {
            if let Err(Error::PushBusy { retry_after }) = a.admit(Transport::Sse, 1000) {
                longest = longest.max(retry_after);
            }
        }
        assert!(longest >= Duration::from_secs(10), "{longest:?}");
    }
}

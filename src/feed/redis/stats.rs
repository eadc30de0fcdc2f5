//! The feed's metrics (`pollgate_feed_redis_*`) and its bad-message log,
//! which speaks once per burst rather than once per message.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::Settings;
use crate::metrics::{counter, gauge};
use crate::state::State;

/// Where a message came from: the `source` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Channel,
    Stream,
}

/// A bad message is logged at most this often; the ones in between are
/// counted and the next log line says how many there were.
const BURST: Duration = Duration::from_secs(10);

#[derive(Default)]
pub struct Stats {
    /// `[source][applied, invalid]`.
    messages: [[AtomicU64; 2]; 2],
    channel_up: AtomicBool,
    stream_up: AtomicBool,
    want_channel: bool,
    want_stream: bool,
    /// Unix ms of the last applied stream entry (its ID); 0 = none yet.
    last_entry_ms: AtomicU64,
    /// The last read reached the end of every stream.
    caught_up: AtomicBool,
    gaps: AtomicU64,
    bad_log: Mutex<BadLog>,
}

#[derive(Default)]
struct BadLog {
    last: Option<Instant>,
    quiet: u64,
}

impl Stats {
    pub fn new(s: &Settings) -> Stats {
        Stats {
            want_channel: !s.channels.is_empty(),
            want_stream: !s.streams.is_empty(),
            ..Stats::default()
        }
    }

    pub fn applied(&self, src: Source) -> u64 {
        self.messages[src as usize][0].load(Ordering::Relaxed)
    }

    pub fn invalid(&self, src: Source) -> u64 {
        self.messages[src as usize][1].load(Ordering::Relaxed)
    }

    pub fn count_applied(&self, src: Source, n: u64) {
        self.messages[src as usize][0].fetch_add(n, Ordering::Relaxed);
    }

    /// Counts a message that was applied not at all, and logs it unless one
    /// was logged less than [`BURST`] ago.
    pub fn bad(&self, src: Source, name: &str, id: &str, why: &dyn std::fmt::Display) {
        self.messages[src as usize][1].fetch_add(1, Ordering::Relaxed);
        let mut log = self.bad_log.lock();
        let now = Instant::now();
        if log.last.is_some_and(|t| now.duration_since(t) < BURST) {
            log.quiet += 1;
            return;
        }
        let unlogged = std::mem::take(&mut log.quiet);
        log.last = Some(now);
        drop(log);
        tracing::warn!(source = ?src, name, id, reason = %why, unlogged, "bad Redis message skipped (nothing of it applied)");
    }

    pub fn set_connected(&self, src: Source, up: bool) {
        match src {
            Source::Channel => self.channel_up.store(up, Ordering::Relaxed),
            Source::Stream => self.stream_up.store(up, Ordering::Relaxed),
        }
    }

    /// 1 when every configured connection is up.
    pub fn connected(&self) -> bool {
        (!self.want_channel || self.channel_up.load(Ordering::Relaxed))
            && (!self.want_stream || self.stream_up.load(Ordering::Relaxed))
    }

    pub fn entry_applied(&self, entry_ms: u64) {
        self.last_entry_ms.fetch_max(entry_ms, Ordering::Relaxed);
    }

    pub fn set_caught_up(&self, yes: bool) {
        self.caught_up.store(yes, Ordering::Relaxed);
    }

    pub fn gap(&self) {
        self.gaps.fetch_add(1, Ordering::Relaxed);
    }

    pub fn gaps(&self) -> u64 {
        self.gaps.load(Ordering::Relaxed)
    }

    /// Now minus the last applied entry's time while behind; 0 once a read
    /// reached the end (an idle stream is not a lagging one).
    fn lag_seconds(&self) -> f64 {
        if self.caught_up.load(Ordering::Relaxed) {
            return 0.0;
        }
        match self.last_entry_ms.load(Ordering::Relaxed) {
            0 => 0.0,
            ms => crate::snapshot::unix_ms().saturating_sub(ms) as f64 / 1000.0,
        }
    }

    pub fn register(self: &Arc<Self>, state: &Arc<State>) {
        let s: Weak<Stats> = Arc::downgrade(self);
        state.metrics.register(Box::new(move |o| {
            if let Some(s) = s.upgrade() {
                s.render(o);
            }
        }));
    }

    fn render(&self, o: &mut String) {
        use std::fmt::Write;
        let name = "pollgate_feed_redis_messages_total";
        let _ = writeln!(o, "# HELP {name} Redis messages (channel) and entries (stream) by outcome.\n# TYPE {name} counter");
        for (src, label) in [(Source::Channel, "channel"), (Source::Stream, "stream")] {
            let (a, i) = (self.applied(src), self.invalid(src));
            let _ = writeln!(o, "{name}{{source=\"{label}\",result=\"applied\"}} {a}");
            let _ = writeln!(o, "{name}{{source=\"{label}\",result=\"invalid\"}} {i}");
        }
        #[rustfmt::skip]
        gauge(o, "pollgate_feed_redis_connected", "1 while every configured Redis connection is up.", self.connected() as i64);
        let name = "pollgate_feed_redis_lag_seconds";
        let _ = writeln!(o, "# HELP {name} Now minus the last applied stream entry's time while behind; 0 when caught up.\n# TYPE {name} gauge\n{name} {}", self.lag_seconds());
        #[rustfmt::skip]
        counter(o, "pollgate_feed_redis_stream_gaps_total", "Times a stream was found trimmed past the last applied entry.", self.gaps());
    }
}

//! The push hub that the shared state holds: which watchers wait on which
//! key ([`registry`]), who may open a push connection ([`admission`]), and
//! ownership of the streams; the handlers that use it live in `push`.

pub mod admission;
pub mod registry;

use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use tokio::task::JoinSet;

use crate::config::Config;
use crate::metrics::Counter;

pub use admission::{Admission, Ticket, Transport};
pub use registry::{Registry, Subscription};

/// Push's share of the shared state: who watches what, who may connect,
/// and the streams that outlive their connection task.
pub struct Hub {
    pub registry: Arc<Registry>,
    pub admission: Arc<Admission>,
    pub stats: Arc<NoticeStats>,
    /// WebSocket sessions and raw SSE streams outlive the connection task
    /// that started them; they are owned here so shutdown can wait for their
    /// goodbyes (close frame, final `retry:`).
    sessions: Mutex<JoinSet<()>>,
    /// Where raw SSE streams run (set by `push::start`, which owns the runtime).
    runtime: OnceLock<tokio::runtime::Handle>,
}

#[derive(Default)]
pub struct NoticeStats {
    /// Stale notices written to clients (all transports).
    pub notifications: Counter,
    /// WebSockets closed for not answering pings.
    pub ghosts_reaped: Counter,
}

impl Hub {
    pub fn new(cfg: &Config) -> Hub {
        Hub {
            registry: Arc::new(Registry::default()),
            admission: Arc::new(Admission::new(
                cfg.push_admission_burst,
                cfg.push_max_connections,
            )),
            stats: Arc::new(NoticeStats::default()),
            sessions: Mutex::new(JoinSet::new()),
            runtime: OnceLock::new(),
        }
    }

    /// Sets where streams run (once, at start).
    pub fn set_runtime(&self, rt: tokio::runtime::Handle) {
        let _ = self.runtime.set(rt);
    }

    /// The open streams, taken at shutdown so their goodbyes can be awaited.
    pub fn take_sessions(&self) -> JoinSet<()> {
        std::mem::take(&mut *self.sessions.lock())
    }

    /// The low-priority runtime for streams, once started.
    pub fn runtime(&self) -> Option<&tokio::runtime::Handle> {
        self.runtime.get()
    }

    /// Whether the long poll hint applies: push is on and admitting.
    pub fn healthy(&self, cfg: &Config) -> bool {
        cfg.push && !self.admission.refusing()
    }

    /// Runs a WebSocket session or raw SSE stream on the stream runtime (low
    /// priority), owned by `sessions` so shutdown can wait for it.
    pub fn spawn_stream(&self, f: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut set = self.sessions.lock();
        while set.try_join_next().is_some() {}
        match self.runtime() {
            Some(rt) => set.spawn_on(f, rt),
            None => set.spawn(f),
        };
    }
}

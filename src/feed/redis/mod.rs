//! The Redis feed: versions from PUB/SUB channels ([`channel`]) and Redis
//! Streams ([`stream`]), each message validated whole, then learned.
//!
//! A channel message and a stream entry's `body` field are exactly a publish
//! body (`key version` lines or a JSON array) and go through the publish
//! parser; nothing of a bad one is applied. Every version enters through
//! `State::learn`, so it wakes watchers, gossips and lands in snapshots.
//! Each connection reconnects by itself with jittered exponential backoff;
//! while it is down polls are still answered, bounded by `max_age`.

mod backoff;
mod channel;
pub mod reply;
mod stats;
pub mod stream;

use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::Error;
use crate::feed::publish::{parse_json, parse_text};
use crate::snapshot::Positions;
use crate::state::{State, VersionSource};

pub use stats::Stats;

/// The feed's own settings, filled from the config (`redis_*` keys).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    /// `redis://[:password@]host:port/db`, or `rediss://` for TLS. `None`: no feed.
    pub url: Option<String>,
    /// PUB/SUB channels: lossy (a message sent while disconnected is gone),
    /// so staleness after an outage is bounded by `max_age` only.
    pub channels: Vec<String>,
    /// Streams read from the last applied ID, which the snapshot keeps.
    pub streams: Vec<String>,
    /// The app writes every version change to `streams`: while the reader is
    /// caught up and has seen no gap, every entry counts as confirmed (see
    /// `stream::Coverage`). Off by default: only the app can promise it.
    pub stream_complete: bool,
    /// PEM CA certificate(s) a `rediss://` server is verified against instead
    /// of the system roots (a private CA, as managed Redis often uses).
    pub tls_ca: Option<std::path::PathBuf>,
}

impl Settings {
    /// The `redis_*` config keys.
    pub fn from_config(cfg: &crate::config::Config) -> Settings {
        Settings {
            url: cfg.redis_url.clone(),
            channels: cfg.redis_channel.clone(),
            streams: cfg.redis_stream.clone(),
            stream_complete: cfg.redis_stream_complete,
            tls_ca: cfg.redis_tls_ca.clone(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.url.is_some() && !(self.channels.is_empty() && self.streams.is_empty())
    }
}

pub use crate::config::check_redis_url as check_url;

/// A client for `url`, trusting `tls_ca` (PEM) instead of the system roots.
fn client(url: &str, tls_ca: Option<&std::path::Path>) -> Result<redis::Client, String> {
    let Some(path) = tls_ca else {
        return redis::Client::open(url).map_err(|e| e.to_string());
    };
    let pem = std::fs::read(path).map_err(|e| format!("redis_tls_ca {}: {e}", path.display()))?;
    let certs = redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(pem),
    };
    redis::Client::build_with_tls(url, certs).map_err(|e| e.to_string())
}

/// Owns the channel and stream readers; `shutdown` stops and awaits them.
pub struct RedisHandle {
    tasks: Vec<JoinHandle<()>>,
    stop: watch::Sender<bool>,
    pub stats: Arc<Stats>,
}

impl RedisHandle {
    /// Starts a reader per kind configured (none when the feed is off).
    /// `positions` holds the stream IDs the snapshot was loaded with and is
    /// where the reader records what it applied, for the next snapshot.
    pub fn start(state: &Arc<State>, settings: &Settings, positions: Arc<Positions>) -> Self {
        let stats = Arc::new(Stats::new(settings));
        let (stop, _) = watch::channel(false);
        let mut tasks = Vec::new();
        if let (true, Some(url)) = (settings.enabled(), settings.url.as_deref()) {
            stats.register(state);
            match client(url, settings.tls_ca.as_deref()) {
                Ok(_) => tasks = start_readers(state, settings, &stats, positions, &stop),
                Err(e) => tracing::error!(error = %e, "redis_url unusable; Redis feed off"),
            }
        }
        RedisHandle { tasks, stop, stats }
    }

    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            if let Err(e) = t.await {
                tracing::error!(error = %e, "Redis feed task failed");
            }
        }
    }
}

fn start_readers(
    state: &Arc<State>,
    settings: &Settings,
    stats: &Arc<Stats>,
    positions: Arc<Positions>,
    stop: &watch::Sender<bool>,
) -> Vec<JoinHandle<()>> {
    let target = Target {
        urls: state.redis_url.subscribe(),
        tls_ca: settings.tls_ca.clone(),
    };
    let mut tasks = Vec::new();
    if !settings.channels.is_empty() {
        let r = channel::Reader {
            state: state.clone(),
            target: target.clone(),
            channels: settings.channels.clone(),
            stats: stats.clone(),
        };
        tasks.push(tokio::spawn(r.run(stop.subscribe())));
    }
    if !settings.streams.is_empty() {
        let r = stream::Reader::new(state.clone(), target, settings, stats.clone(), positions);
        tasks.push(tokio::spawn(r.run(stop.subscribe())));
    }
    tasks
}

/// Where a reader connects: the running `redis_url`, which a reload may
/// change (a rotated password), and the CA to verify it with.
#[derive(Clone)]
pub struct Target {
    urls: watch::Receiver<Option<String>>,
    tls_ca: Option<std::path::PathBuf>,
}

impl Target {
    /// A client for the URL in force now (marked seen, so [`Target::changed`]
    /// waits for the next one).
    fn client(&mut self) -> Result<redis::Client, String> {
        let url = self.urls.borrow_and_update().clone();
        client(
            url.as_deref().ok_or("redis_url unset")?,
            self.tls_ca.as_deref(),
        )
    }

    fn has_changed(&self) -> bool {
        self.urls.has_changed().unwrap_or(false)
    }

    /// Resolves when a reload changes the URL; never once the process's
    /// state (the sender) is gone: `stop` ends the reader then.
    async fn changed(&mut self) {
        if self.urls.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Parses a publish body (JSON when it starts with `[`, else lines) and, only
/// if all of it is valid, learns every version. Returns how many it held.
pub fn apply_body(state: &State, body: &[u8]) -> Result<usize, Error> {
    let items = if is_json(body) {
        parse_json(body)?
    } else {
        parse_text(body)?
    };
    for i in &items {
        state.learn(&i.key, i.version, VersionSource::Redis);
    }
    Ok(items.len())
}

/// A key never contains `[`, so a line body cannot start with one.
fn is_json(body: &[u8]) -> bool {
    body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_told_from_lines_by_the_first_byte() {
        assert!(is_json(b" \n[{\"key\":\"a\",\"version\":1}]"));
        assert!(!is_json(b"a 1\n"));
        assert!(!is_json(b""));
    }

    #[test]
    fn urls_are_checked_like_the_client_reads_them() {
        assert!(check_url("redis://127.0.0.1:6379/2").is_ok());
        assert!(check_url("redis://:secret@host/0").is_ok());
        assert!(check_url("rediss://host:6380").is_ok());
        assert!(check_url("http://host").is_err());
        assert!(check_url("redis://host/notadb").is_err());
    }

    #[test]
    fn enabled_needs_a_url_and_something_to_read() {
        let mut s = Settings::default();
        assert!(!s.enabled());
        s.url = Some("redis://127.0.0.1".into());
        assert!(!s.enabled());
        s.streams.push("versions".into());
        assert!(s.enabled());
    }
}

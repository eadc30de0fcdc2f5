//! The pooled HTTP client to the app servers: round-robin with passive health,
//! hop-by-hop headers stripped, `X-Forwarded-For`/`Via` added, timeouts.
//!
//! Choices worth knowing:
//! - **No retries.** Request bodies stream straight through, so there is
//!   nothing to replay, and a retry could run a non-idempotent request twice.
//!   (hyper's pool still re-sends a request that was never written because a
//!   pooled connection turned out closed; that is safe by construction.)
//! - **Host is preserved.** The app sees the Host the client asked for, as
//!   most reverse proxies do, so virtual hosts and absolute links keep working.
//!   An HTTP/2 request has no Host header, so its `:authority` becomes Host;
//!   only a request with neither gets the upstream's authority (set by hyper).
//! - Everything goes out as HTTP/1.1, whatever the client spoke (h2c included).
//! - Hop-by-hop headers are stripped both ways, so `Upgrade` (WebSocket)
//!   cannot be passed through; pollgate serves its own WebSocket.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{Request, Response, Version};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::body::Body;
use crate::config::Config;
use crate::error::Error;
use crate::metrics::{Metrics, UpstreamResult};

type Http = hyper_util::client::legacy::Client<HttpConnector, Body>;

/// Idle keep-alive connections are dropped after this; app servers commonly
/// close at 60–120 s, and reusing a connection the server is closing costs a
/// (safe) re-send, so stay in that range.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Generous: the guard's in-flight cap is what bounds connections, not the pool.
const POOL_MAX_IDLE_PER_HOST: usize = 1024;

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1), plus the
/// proxy credentials, which are meant for us and not the app.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
];

/// Headers a `Connection` list may not remove: they route and frame the message.
const PROTECTED: [HeaderName; 2] = [header::HOST, header::CONTENT_LENGTH];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// How long an upstream that just failed is skipped: `base`, doubling per
/// consecutive failure up to `max`, forgotten on the next success.
#[derive(Debug, Clone, Copy)]
pub struct Cooldown {
    pub base: Duration,
    pub max: Duration,
}

impl Default for Cooldown {
    /// 1 s is long enough to stop hammering a dead server, short enough that a
    /// restarted one is back in rotation almost at once; 10 s caps the doubling.
    fn default() -> Self {
        Cooldown {
            base: Duration::from_secs(1),
            max: Duration::from_secs(10),
        }
    }
}

pub struct Client {
    http: Http,
    backends: Box<[Backend]>,
    /// Round-robin position; wraps harmlessly.
    cursor: AtomicUsize,
    timeout: Duration,
    cooldown: Cooldown,
    metrics: Arc<Metrics>,
}

/// One app server and what we have seen of its health.
struct Backend {
    scheme: Scheme,
    authority: Authority,
    health: Mutex<Health>,
}

/// Passive health: only real requests feed it, there is no active probing.
#[derive(Default)]
struct Health {
    /// Consecutive connect/IO failures or timeouts.
    streak: u32,
    failed_at: Option<Instant>,
    down_until: Option<Instant>,
}

impl Client {
    pub fn new(cfg: &Config, metrics: Arc<Metrics>) -> Self {
        let mut conn = HttpConnector::new();
        conn.set_connect_timeout(Some(cfg.upstream_connect_timeout));
        conn.set_nodelay(true);
        let http = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
            // Without a timer the idle timeout is never enforced.
            .pool_timer(TokioTimer::new())
            .build(conn);
        Client {
            http,
            backends: cfg.upstream.iter().filter_map(Backend::new).collect(),
            cursor: AtomicUsize::new(0),
            timeout: cfg.upstream_timeout,
            cooldown: Cooldown::default(),
            metrics,
        }
    }

    /// Replaces the passive-health cooldown (tests use long ones).
    pub fn with_cooldown(mut self, cooldown: Cooldown) -> Self {
        self.cooldown = cooldown;
        self
    }

    /// Sends `req` to the next healthy upstream; times out per config.
    /// The response body is returned unread, so it streams to the client.
    pub async fn send(
        &self,
        req: Request<Incoming>,
        client_addr: SocketAddr,
    ) -> Result<Response<Incoming>, Error> {
        let Some(backend) = self.pick() else {
            return Err(Error::Upstream("no upstream configured".into()));
        };
        let req = rewrite(req, backend, client_addr)?;
        let start = Instant::now();
        let res = tokio::time::timeout(self.timeout, self.http.request(req)).await;
        self.metrics.upstream_duration.observe(start.elapsed());
        match res {
            Ok(Ok(resp)) => Ok(self.answered(backend, resp)),
            Ok(Err(e)) => Err(self.failed(backend, &e)),
            Err(_) => Err(self.timed_out(backend)),
        }
    }

    /// Next upstream in round-robin order that is not cooling down; if all
    /// are, the one that failed longest ago. Never refuses: the breaker does.
    fn pick(&self) -> Option<&Backend> {
        let n = self.backends.len();
        let start = self.cursor.fetch_add(1, Relaxed);
        if n <= 1 {
            return self.backends.first();
        }
        let now = Instant::now();
        let ring = (0..n).map(|i| &self.backends[(start + i) % n]);
        ring.clone()
            .find(|b| b.is_up(now))
            .or_else(|| ring.min_by_key(|b| b.health.lock().failed_at))
    }

    fn answered(&self, backend: &Backend, mut resp: Response<Incoming>) -> Response<Incoming> {
        backend.succeeded();
        let result = if resp.status().is_server_error() {
            UpstreamResult::ServerError
        } else {
            UpstreamResult::Ok
        };
        self.metrics.upstream(result);
        let h = resp.headers_mut();
        strip_hop_by_hop(h);
        // RFC 9110 §7.6.3: a proxy adds Via to every message it forwards.
        h.append(header::VIA, HeaderValue::from_static("1.1 pollgate"));
        resp
    }

    fn failed(&self, backend: &Backend, e: &hyper_util::client::legacy::Error) -> Error {
        self.metrics.upstream(UpstreamResult::Error);
        let what = if e.is_connect() { "connect" } else { "request" };
        let detail = format!("{} {what}: {}", backend.authority, chain(e));
        self.mark_failed(backend, &detail);
        Error::Upstream(detail)
    }

    fn timed_out(&self, backend: &Backend) -> Error {
        self.metrics.upstream(UpstreamResult::Timeout);
        let detail = format!(
            "{}: no response head within {:?}",
            backend.authority, self.timeout
        );
        self.mark_failed(backend, &detail);
        Error::UpstreamTimeout
    }

    /// Logs at warn only when an upstream goes from healthy to cooling down, so
    /// an outage costs one line per upstream per streak, not one per request.
    fn mark_failed(&self, backend: &Backend, detail: &str) {
        let (streak, cooldown) = backend.failed(Instant::now(), self.cooldown);
        if streak == 1 {
            tracing::warn!(upstream = %backend.authority, ?cooldown, "upstream failed: {detail}");
        } else {
            tracing::debug!(upstream = %backend.authority, streak, ?cooldown, "upstream failed: {detail}");
        }
    }
}

impl Backend {
    /// An upstream without scheme or authority cannot be dialled; config
    /// validation rejects it, so here it is only skipped with a warning.
    fn new(uri: &Uri) -> Option<Self> {
        let Some(authority) = uri.authority().cloned() else {
            tracing::warn!(%uri, "upstream has no host:port; ignored");
            return None;
        };
        let scheme = uri.scheme().cloned().unwrap_or(Scheme::HTTP);
        Some(Backend {
            scheme,
            authority,
            health: Mutex::default(),
        })
    }

    fn is_up(&self, now: Instant) -> bool {
        self.health.lock().down_until.is_none_or(|t| t <= now)
    }

    fn succeeded(&self) {
        let mut h = self.health.lock();
        if h.streak != 0 {
            tracing::debug!(upstream = %self.authority, "upstream recovered");
            *h = Health::default();
        }
    }

    /// Returns the new streak and the cooldown it earned.
    fn failed(&self, now: Instant, c: Cooldown) -> (u32, Duration) {
        let mut h = self.health.lock();
        h.streak = h.streak.saturating_add(1);
        let cooldown = c
            .base
            .saturating_mul(1 << (h.streak - 1).min(16))
            .min(c.max);
        h.failed_at = Some(now);
        h.down_until = Some(now + cooldown);
        (h.streak, cooldown)
    }
}

/// Points `req` at `backend` and makes its headers fit for the next hop.
fn rewrite(
    req: Request<Incoming>,
    backend: &Backend,
    client_addr: SocketAddr,
) -> Result<Request<Body>, Error> {
    let (mut parts, body) = req.into_parts();
    let pq = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or(PathAndQuery::from_static("/"));
    let uri = Uri::builder()
        .scheme(backend.scheme.clone())
        .authority(backend.authority.clone())
        .path_and_query(pq)
        .build()
        // e.g. `OPTIONS *`: there is no origin-form to give the app.
        .map_err(|_| Error::BadRequest("request target cannot be forwarded"))?;
    let original = std::mem::replace(&mut parts.uri, uri);
    let h = &mut parts.headers;
    if !h.contains_key(header::HOST) {
        if let Some(host) = original
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            h.insert(header::HOST, host);
        }
    }
    strip_hop_by_hop(h);
    append_forwarded_for(h, client_addr.ip());
    h.append(header::VIA, via(parts.version));
    parts.version = Version::HTTP_11;
    Ok(Request::from_parts(parts, Body::Incoming(body)))
}

/// Removes the headers named in `Connection`, then the fixed hop-by-hop set.
fn strip_hop_by_hop(h: &mut HeaderMap) {
    if h.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = h
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|s| s.split(','))
            .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
            .filter(|n| !PROTECTED.contains(n))
            .collect();
        for n in named {
            h.remove(n);
        }
    }
    for n in &HOP_BY_HOP {
        h.remove(n);
    }
}

/// `X-Forwarded-For: <existing>, <client ip>`, folding repeated header lines
/// into one. Values that are not visible ASCII are dropped, not forwarded.
fn append_forwarded_for(h: &mut HeaderMap, ip: IpAddr) {
    let mut v = String::with_capacity(64);
    for existing in h
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
    {
        let existing = existing.trim();
        if !existing.is_empty() {
            v.push_str(existing);
            v.push_str(", ");
        }
    }
    let _ = write!(v, "{ip}");
    if let Ok(v) = HeaderValue::try_from(v) {
        h.insert(X_FORWARDED_FOR, v);
    }
}

/// Via names the protocol we received, not the one we send on.
fn via(v: Version) -> HeaderValue {
    HeaderValue::from_static(match v {
        Version::HTTP_10 => "1.0 pollgate",
        Version::HTTP_2 => "2.0 pollgate",
        _ => "1.1 pollgate",
    })
}

/// An error and its causes on one line, for the log.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let _ = write!(s, ": {c}");
        cur = c.source();
    }
    s
}

//! The pooled HTTP client to the app servers: round-robin with passive health,
//! hop-by-hop headers stripped, `X-Forwarded-For`/`Via` added, timeouts.
//!
//! Choices worth knowing:
//! - **No retries.** Request bodies stream straight through, so there is
//!   nothing to replay, and a retry could run a non-idempotent request twice.
//!   (hyper's pool still re-sends a request that was never written because a
//!   pooled connection turned out closed; that is safe by construction.)
//! - **Host is preserved** (unless `upstream_host` replaces it; the public
//!   router refused a missing, doubled or malformed one). The app sees the Host the client asked for, as
//!   most reverse proxies do, so virtual hosts and absolute links keep working.
//!   An HTTP/2 request has no Host header, so its `:authority` becomes Host;
//!   only a request with neither gets the upstream's authority (set by hyper).
//! - Everything goes out as HTTP/1.1, whatever the client spoke (h2c included).
//! - `upstream_timeout` bounds the wait for the response *head*, counted
//!   from the moment the request body has been sent whole: a client dripping
//!   its upload is bounded by `client_body_timeout` (408) and never counts
//!   against the app. The response body then streams for as long as the app
//!   keeps sending (long-polls pass through).
//! - Passive health reacts to connect/IO errors and timeouts only; a 5xx means
//!   the server is reachable, so it feeds the guard's breaker instead.
//! - Hop-by-hop headers are stripped both ways, so `Upgrade` (WebSocket)
//!   cannot be passed through; pollgate serves its own WebSocket.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{Request, Response, Version};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use parking_lot::Mutex;
use tokio::sync::oneshot::Receiver;
use tokio::time::{error::Elapsed, timeout, Instant};

use crate::body::Body;
use crate::config::Config;
use crate::error::Error;
use crate::metrics::{Metrics, UpstreamResult};
use crate::upstream::upload;

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
    /// Swapped whole by a reload; a backend listed before and after keeps
    /// its health, and requests in flight finish on the one they picked.
    backends: ArcSwap<Vec<Arc<Backend>>>,
    /// Round-robin position; wraps harmlessly.
    cursor: AtomicUsize,
    timeout: Duration,
    /// `upstream_host`: replaces the client's Host on every forwarded request.
    host: Option<HeaderValue>,
    /// `client_body_timeout`: longest a client may take to deliver its body.
    body_timeout: Duration,
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
            backends: ArcSwap::from_pointee(backends(&cfg.upstream, &[])),
            cursor: AtomicUsize::new(0),
            timeout: cfg.upstream_timeout,
            body_timeout: cfg.client_body_timeout,
            host: cfg.upstream_host.as_deref().and_then(|h| h.parse().ok()),
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
        req: Request<impl Into<Body>>,
        client_addr: SocketAddr,
    ) -> Result<Response<Incoming>, Error> {
        let Some(backend) = self.pick() else {
            return Err(Error::Upstream("no upstream configured".into()));
        };
        let backend = &*backend;
        let (mut parts, body) = rewrite(req, backend, client_addr)?.into_parts();
        if let Some(host) = &self.host {
            parts.headers.insert(header::HOST, host.clone());
        }
        let (body, sent) = upload::watch(body, self.body_timeout);
        let start = Instant::now();
        let res = self.head(self.http.request(Request::from_parts(parts, body)), sent);
        let res = res.await;
        self.metrics.upstream_duration.observe(start.elapsed());
        match res {
            Ok(Ok(resp)) => Ok(self.answered(backend, resp)),
            Ok(Err(e)) if upload::slow_upload(&e).is_some() => Err(slow_client(&e)),
            Ok(Err(e)) if request_body_failed(&e) => Err(client_body_error(&e)),
            Ok(Err(e)) => Err(self.failed(backend, &e)),
            Err(_) => Err(self.timed_out(backend)),
        }
    }

    /// The response head, with `upstream_timeout` counted from the moment
    /// the request body has been handed over whole (`sent`; at once when
    /// there is none). Before that the client is on the clock: the upload's
    /// own deadline ends a slow client, and an upstream that stops reading
    /// the body is bounded by both limits together.
    async fn head<F, T>(&self, fut: F, sent: Option<Receiver<()>>) -> Result<T, Elapsed>
    where
        F: std::future::Future<Output = T>,
    {
        let mut fut = std::pin::pin!(fut);
        if let Some(mut sent) = sent {
            let uploading = async {
                tokio::select! {
                    r = &mut fut => Some(r),
                    _ = &mut sent => None,
                }
            };
            if let Some(r) = timeout(self.body_timeout + self.timeout, uploading).await? {
                return Ok(r);
            }
        }
        timeout(self.timeout, fut).await
    }

    /// Next upstream in round-robin order that is not cooling down; if all
    /// are, the one that failed longest ago. Never refuses: the breaker does.
    fn pick(&self) -> Option<Arc<Backend>> {
        let all = self.backends.load();
        let n = all.len();
        let start = self.cursor.fetch_add(1, Relaxed);
        if n <= 1 {
            return all.first().cloned();
        }
        let now = Instant::now();
        let ring = (0..n).map(|i| &all[(start + i) % n]);
        ring.clone()
            .find(|b| b.is_up(now))
            .or_else(|| ring.min_by_key(|b| b.health.lock().failed_at))
            .cloned()
    }

    /// A reload's `upstream` list: new servers join the rotation, removed
    /// ones get no new request, kept ones keep their health.
    pub fn set_upstreams(&self, uris: &[Uri]) {
        let next = backends(uris, &self.backends.load());
        self.backends.store(Arc::new(next));
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

/// One backend per usable URI, reusing `kept` ones (and their health).
fn backends(uris: &[Uri], kept: &[Arc<Backend>]) -> Vec<Arc<Backend>> {
    let reuse = |b: &Backend| {
        kept.iter()
            .find(|k| k.scheme == b.scheme && k.authority == b.authority)
            .cloned()
    };
    uris.iter()
        .filter_map(Backend::new)
        .map(|b| reuse(&b).unwrap_or_else(|| Arc::new(b)))
        .collect()
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

/// hyper's `User::Body` (the only user-kind error with a cause): the request
/// body we were streaming failed, i.e. the client broke off its upload.
fn request_body_failed(e: &hyper_util::client::legacy::Error) -> bool {
    use std::error::Error as _;
    let mut cur = e.source();
    while let Some(c) = cur {
        if let Some(h) = c.downcast_ref::<hyper::Error>() {
            return h.is_user() && h.source().is_some();
        }
        cur = c.source();
    }
    false
}

/// The client's upload was too slow: 408, and like any client body error
/// nothing for the breaker or the upstream's health.
fn slow_client(e: &hyper_util::client::legacy::Error) -> Error {
    tracing::debug!(error = %chain(e), "client request body too slow");
    Error::BodyTimeout(upload::slow_upload(e).unwrap_or_default())
}

/// Not the upstream's fault, so no cooldown and nothing for the breaker
/// (only `Error::Upstream*` count there): one client aborting uploads must
/// not mark a healthy upstream down for everyone.
fn client_body_error(e: &hyper_util::client::legacy::Error) -> Error {
    tracing::debug!(error = %chain(e), "client request body failed while forwarding");
    Error::BadRequest("request body ended early or was malformed")
}

/// Points `req` at `backend` and makes its headers fit for the next hop.
fn rewrite(
    req: Request<impl Into<Body>>,
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
    Ok(Request::from_parts(parts, body.into()))
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use std::pin::Pin;
    use std::sync::atomic::AtomicUsize;
    use std::task::{Context, Poll};

    use crate::testkit::serve;
    use bytes::Bytes;
    use http_body::Frame;
    use http_body_util::BodyExt;
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    /// An upstream that reports what it received in an `x-echo` JSON header
    /// and streams the request body back as the response body.
    async fn echo(hits: Arc<AtomicUsize>) -> SocketAddr {
        serve(move |req: Request<Incoming>, _| {
            hits.fetch_add(1, Relaxed);
            async move {
                let headers: Vec<(String, String)> = req
                    .headers()
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("?").to_string()))
                    .collect();
                let report = serde_json::json!({
                    "method": req.method().as_str(),
                    "uri": req.uri().to_string(),
                    "version": format!("{:?}", req.version()),
                    "headers": headers,
                });
                Response::builder()
                    .header("x-echo", report.to_string())
                    .header("connection", "x-resp-hop")
                    .header("x-resp-hop", "1")
                    .header("keep-alive", "timeout=5")
                    .header("proxy-authenticate", "Basic")
                    .header("x-resp-e2e", "1")
                    .body(Body::Incoming(req.into_body()))
                    .unwrap()
            }
        })
        .await
    }

    /// pollgate's public side in miniature: every request goes through `send`;
    /// errors become their client response plus `x-error: <variant>`.
    async fn front(client: Arc<Client>) -> SocketAddr {
        serve(move |req, remote| {
            let client = client.clone();
            async move {
                match client.send(req, remote).await {
                    Ok(resp) => resp.map(Body::Incoming),
                    Err(e) => {
                        let variant = format!("{e:?}");
                        let variant = variant.split(['(', ' ']).next().unwrap().to_string();
                        let mut resp = e.into_response();
                        resp.headers_mut()
                            .insert("x-error", variant.parse().unwrap());
                        resp
                    }
                }
            }
        })
        .await
    }

    fn config(upstreams: &[SocketAddr]) -> Config {
        Config {
            upstream: upstreams
                .iter()
                .map(|a| format!("http://{a}").parse().unwrap())
                .collect(),
            upstream_timeout: Duration::from_secs(5),
            ..Config::default()
        }
    }

    fn client(cfg: &Config) -> (Arc<Client>, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::default());
        (Arc::new(Client::new(cfg, metrics.clone())), metrics)
    }

    /// A plain client for talking to the front server, as a browser would.
    fn test_client() -> Http {
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http()
    }

    async fn get(front: SocketAddr, path: &str) -> Response<Incoming> {
        let req = Request::get(format!("http://{front}{path}"))
            .body(Body::empty())
            .unwrap();
        test_client().request(req).await.unwrap()
    }

    fn echoed(resp: &Response<Incoming>) -> serde_json::Value {
        serde_json::from_str(resp.headers()["x-echo"].to_str().unwrap()).unwrap()
    }

    fn header<'a>(echo: &'a serde_json::Value, name: &str) -> Vec<&'a str> {
        echo["headers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|kv| kv[0] == name)
            .map(|kv| kv[1].as_str().unwrap())
            .collect()
    }

    fn error_of(resp: &Response<Incoming>) -> &str {
        resp.headers()
            .get("x-error")
            .map_or("", |v| v.to_str().unwrap())
    }

    /// A request body fed from a channel, so a test controls when each chunk leaves.
    struct ChanBody(mpsc::Receiver<Bytes>);

    impl http_body::Body for ChanBody {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            self.0.poll_recv(cx).map(|c| c.map(|b| Ok(Frame::data(b))))
        }
    }

    #[tokio::test]
    async fn forwards_path_query_and_fixes_headers() {
        let up = echo(Arc::default()).await;
        let (client, metrics) = client(&config(&[up]));
        let front = front(client).await;
        let req = Request::get(format!("http://{front}/projects/a/changes?since=3&x=%20y"))
            .header("host", "app.example")
            .header("connection", "x-hop, keep-alive")
            .header("x-hop", "1")
            .header("keep-alive", "timeout=5")
            .header("te", "trailers")
            .header("trailer", "x-t")
            .header("upgrade", "websocket")
            .header("proxy-authorization", "Basic abc")
            .header("proxy-connection", "keep-alive")
            .header("x-forwarded-for", "10.0.0.1")
            .header("x-forwarded-for", "10.0.0.2")
            .header("via", "1.1 cdn")
            .header("x-e2e", "kept")
            .body(Body::empty())
            .unwrap();
        let resp = test_client().request(req).await.unwrap();
        assert_eq!(resp.status(), 200, "{}", error_of(&resp));
        let e = echoed(&resp);
        assert_eq!(e["method"], "GET");
        assert_eq!(e["uri"], "/projects/a/changes?since=3&x=%20y");
        assert_eq!(e["version"], "HTTP/1.1");
        for hop in [
            "connection",
            "x-hop",
            "keep-alive",
            "te",
            "trailer",
            "upgrade",
        ] {
            assert!(header(&e, hop).is_empty(), "{hop} forwarded: {e}");
        }
        for hop in ["proxy-authorization", "proxy-connection"] {
            assert!(header(&e, hop).is_empty(), "{hop} forwarded: {e}");
        }
        assert_eq!(header(&e, "host"), ["app.example"]);
        assert_eq!(
            header(&e, "x-forwarded-for"),
            ["10.0.0.1, 10.0.0.2, 127.0.0.1"]
        );
        assert_eq!(header(&e, "via"), ["1.1 cdn", "1.1 pollgate"]);
        assert_eq!(header(&e, "x-e2e"), ["kept"]);
        // And on the way back.
        let h = resp.headers();
        for hop in ["x-resp-hop", "keep-alive", "proxy-authenticate"] {
            assert!(!h.contains_key(hop), "{hop} returned");
        }
        assert_eq!(h["x-resp-e2e"], "1");
        assert_eq!(h["via"], "1.1 pollgate");
        assert_eq!(metrics.upstream_count(UpstreamResult::Ok), 1);
    }

    #[tokio::test]
    async fn without_host_the_request_still_reaches_the_app() {
        let up = echo(Arc::default()).await;
        let (client, _) = client(&config(&[up]));
        let front = front(client).await;
        let resp = get(front, "/").await;
        let e = echoed(&resp);
        // The front's own Host (set by the test client) is what the app sees.
        assert_eq!(header(&e, "host"), [front.to_string().as_str()]);
        assert_eq!(header(&e, "x-forwarded-for"), ["127.0.0.1"]);
        assert_eq!(header(&e, "via"), ["1.1 pollgate"]);
    }

    #[tokio::test]
    async fn large_chunked_body_streams_both_ways() {
        let up = echo(Arc::default()).await;
        let (client, _) = client(&config(&[up]));
        let front = front(client).await;
        let (tx, rx) = mpsc::channel(4);
        let req = Request::put(format!("http://{front}/upload"))
            .body(Body::boxed(ChanBody(rx)))
            .unwrap();
        let send = tokio::spawn(async move { test_client().request(req).await.unwrap() });
        // The response head arrives while most of the body is still unsent:
        // nothing on the way buffers the request.
        tx.send(Bytes::from(vec![b'a'; 1024])).await.unwrap();
        let resp = send.await.unwrap();
        assert_eq!(resp.status(), 200, "{}", error_of(&resp));
        assert_eq!(header(&echoed(&resp), "transfer-encoding"), ["chunked"]);
        let mut body = resp.into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&first[..], &[b'a'; 1024][..first.len()]);
        let mut received = first.len();
        let writer = tokio::spawn(async move {
            // 2 MiB more in 64 KiB chunks, while the echo is read concurrently.
            for i in 0..32u8 {
                tx.send(Bytes::from(vec![i; 64 << 10])).await.unwrap();
            }
        });
        let mut tail = Vec::new();
        while let Some(frame) = body.frame().await {
            let data = frame.unwrap().into_data().unwrap();
            received += data.len();
            tail.extend_from_slice(&data);
        }
        writer.await.unwrap();
        assert_eq!(received, 1024 + (2 << 20));
        assert_eq!(tail[tail.len() - 1], 31);
    }

    #[tokio::test]
    async fn hung_upstream_times_out() {
        // Accepts connections and never answers.
        let hung = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = hung.local_addr().unwrap();
        let _holder = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = hung.accept().await {
                held.push(s);
            }
        });
        let cfg = Config {
            upstream_timeout: Duration::from_millis(200),
            ..config(&[addr])
        };
        let (client, metrics) = client(&cfg);
        let front = front(client).await;
        let start = std::time::Instant::now();
        let resp = get(front, "/").await;
        let took = start.elapsed();
        assert_eq!(resp.status(), 504);
        assert_eq!(error_of(&resp), "UpstreamTimeout");
        assert!(took >= Duration::from_millis(200), "{took:?}");
        assert!(took < Duration::from_secs(3), "{took:?}");
        assert_eq!(metrics.upstream_count(UpstreamResult::Timeout), 1);
    }

    async fn dead_addr() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
        // dropped here: connecting to it is refused
    }

    #[tokio::test]
    async fn refused_connection_is_upstream_error() {
        let (client, metrics) = client(&config(&[dead_addr().await]));
        let front = front(client).await;
        let resp = get(front, "/").await;
        assert_eq!(resp.status(), 502);
        assert_eq!(error_of(&resp), "Upstream");
        assert_eq!(metrics.upstream_count(UpstreamResult::Error), 1);
    }

    /// A request body that fails at once, as a client dropping mid-upload does.
    struct BrokenBody;

    impl http_body::Body for BrokenBody {
        type Data = Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            Poll::Ready(Some(Err(std::io::ErrorKind::UnexpectedEof.into())))
        }
    }

    #[tokio::test]
    async fn broken_client_body_is_not_an_upstream_failure() {
        let up = echo(Arc::default()).await;
        let (client, metrics) = client(&config(&[up]));
        let req = Request::put("/upload")
            .header("content-length", "1000")
            .body(Body::boxed(BrokenBody))
            .unwrap();
        let remote: SocketAddr = "127.0.0.1:9".parse().unwrap();
        match client.send(req, remote).await {
            Err(e) => assert_eq!(e.status(), 400, "{e}"),
            Ok(resp) => panic!("forwarded a broken body: {}", resp.status()),
        }
        assert_eq!(metrics.upstream_count(UpstreamResult::Error), 0);
        assert!(
            client.backends.load()[0].is_up(Instant::now()),
            "no cooldown"
        );
    }

    #[tokio::test]
    async fn round_robin_splits_requests() {
        let (a_hits, b_hits) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let a = echo(a_hits.clone()).await;
        let b = echo(b_hits.clone()).await;
        let (client, _) = client(&config(&[a, b]));
        let front = front(client).await;
        for _ in 0..10 {
            assert_eq!(get(front, "/").await.status(), 200);
        }
        assert_eq!((a_hits.load(Relaxed), b_hits.load(Relaxed)), (5, 5));
    }

    #[tokio::test]
    async fn dead_upstream_is_skipped_after_first_failure() {
        let live_hits = Arc::new(AtomicUsize::new(0));
        let live = echo(live_hits.clone()).await;
        let cfg = config(&[dead_addr().await, live]);
        let metrics = Arc::new(Metrics::default());
        // A long cooldown so a slow test machine cannot see the dead one return.
        let long = Cooldown {
            base: Duration::from_secs(60),
            max: Duration::from_secs(60),
        };
        let client = Arc::new(Client::new(&cfg, metrics.clone()).with_cooldown(long));
        let front = front(client).await;
        let mut failed = 0;
        for _ in 0..8 {
            match get(front, "/").await.status().as_u16() {
                200 => {}
                502 => failed += 1,
                s => panic!("unexpected {s}"),
            }
        }
        assert_eq!(
            failed, 1,
            "only the first request may hit the dead upstream"
        );
        assert_eq!(live_hits.load(Relaxed), 7);
    }

    #[tokio::test]
    async fn all_down_still_tries_the_least_recently_failed() {
        let cfg = config(&[dead_addr().await, dead_addr().await]);
        let (client, metrics) = client(&cfg);
        let front = front(client).await;
        for _ in 0..4 {
            assert_eq!(get(front, "/").await.status(), 502);
        }
        // Never refused by the client itself: every request was attempted.
        assert_eq!(metrics.upstream_count(UpstreamResult::Error), 4);
    }

    #[test]
    fn cooldown_doubles_and_caps_and_resets() {
        let b = Backend::new(&Uri::from_static("http://127.0.0.1:1")).unwrap();
        let c = Cooldown::default();
        let now = Instant::now();
        let secs: Vec<u64> = (0..6).map(|_| b.failed(now, c).1.as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 10, 10]);
        assert!(!b.is_up(now));
        assert!(b.is_up(now + Duration::from_secs(10)));
        b.succeeded();
        assert!(b.is_up(now));
        assert_eq!(b.failed(now, c).1.as_secs(), 1);
    }

    #[test]
    fn connection_named_headers_go_but_host_stays() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            "Host, X-A , content-length".parse().unwrap(),
        );
        h.insert(header::HOST, "h".parse().unwrap());
        h.insert(header::CONTENT_LENGTH, "3".parse().unwrap());
        h.insert("x-a", "1".parse().unwrap());
        h.insert("x-b", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        let mut left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["content-length", "host", "x-b"]);
    }

    #[test]
    fn forwarded_for_ipv6_and_empty() {
        let mut h = HeaderMap::new();
        h.insert(&X_FORWARDED_FOR, "".parse().unwrap());
        append_forwarded_for(&mut h, "::1".parse().unwrap());
        assert_eq!(h[&X_FORWARDED_FOR], "::1");
    }
}

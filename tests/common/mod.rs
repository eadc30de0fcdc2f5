//! Shared test harness: a real upstream HTTP server that counts what it
//! receives, pollgate started as a real process, and a small HTTP client.
#![allow(dead_code)] // each test binary uses a different subset of the harness

pub mod rotation;
pub mod tool;

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// How the fake upstream behaves right now.
#[derive(Clone, Debug, Default)]
pub enum Mode {
    #[default]
    Normal,
    /// Answer with this status (and the version header).
    Status(u16),
    /// Accept but never answer.
    Hang,
    /// Answer after this long.
    Delay(Duration),
}

/// A real HTTP upstream on 127.0.0.1:0 that counts requests per path.
pub struct Upstream {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    pub versions: Arc<Mutex<HashMap<String, u64>>>,
    pub mode: Arc<Mutex<Mode>>,
    pub seen: Arc<Mutex<Vec<(String, HeaderMap)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::start_on(listener).await
    }

    pub async fn start_on(listener: TcpListener) -> Upstream {
        let addr = listener.local_addr().unwrap();
        let up = Shared::default();
        let shared = up.clone();
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    continue;
                };
                let shared = shared.clone();
                conns.spawn(async move {
                    let svc = service_fn(move |req| answer(shared.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        Upstream {
            addr,
            hits: up.hits,
            versions: up.versions,
            mode: up.mode,
            seen: up.seen,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
    pub fn set_version(&self, key: &str, v: u64) {
        self.versions.lock().insert(key.to_string(), v);
    }
    pub fn set_mode(&self, m: Mode) {
        *self.mode.lock() = m;
    }
    /// Stops listening and drops every open connection: the upstream is down.
    pub fn kill(&self) {
        self.task.abort();
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone, Default)]
struct Shared {
    hits: Arc<AtomicUsize>,
    versions: Arc<Mutex<HashMap<String, u64>>>,
    mode: Arc<Mutex<Mode>>,
    seen: Arc<Mutex<Vec<(String, HeaderMap)>>>,
}

async fn answer(s: Shared, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    s.hits.fetch_add(1, Ordering::SeqCst);
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    s.seen.lock().push((path.clone(), req.headers().clone()));
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let mode = s.mode.lock().clone();
    let status = match mode {
        Mode::Hang => std::future::pending().await,
        Mode::Delay(d) => {
            tokio::time::sleep(d).await;
            200
        }
        Mode::Status(c) => c,
        Mode::Normal => 200,
    };
    let key = path
        .strip_prefix("/projects/")
        .and_then(|p| p.split('/').next());
    let version = key.and_then(|k| s.versions.lock().get(k).copied());
    let mut resp = Response::builder().status(status);
    if let Some(v) = version {
        resp = resp.header("x-pollgate-version", v);
    }
    let text = format!("upstream saw {path} with {} body bytes", body.len());
    Ok(resp.body(Full::new(Bytes::from(text))).unwrap())
}

/// Both listeners on port 0 and an upstream nobody listens on, then
/// `extra`: the arguments of a pollgate whose test needs no app and no
/// publish token set by the harness (as [`Pollgate::start`] sets one).
pub fn loopback_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let base = [
        "--listen",
        "127.0.0.1:0",
        "--internal-listen",
        "127.0.0.1:0",
        "--upstream",
        "http://127.0.0.1:9",
    ];
    base.iter().chain(extra).copied().collect()
}

/// A port the kernel just handed out and nobody listens on (for a process
/// that must be told its port in advance, or an address that refuses).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// pollgate as a real child process on ephemeral ports.
pub struct Pollgate {
    pub child: Child,
    pub public: SocketAddr,
    pub internal: SocketAddr,
    pub log: Arc<Mutex<Vec<String>>>,
}

pub const TOKEN: &str = "test-token";

/// The pollgate the tests start: this build's, or `TEST_POLLGATE_BIN` (e.g.
/// `target/pgo/release/pollgate`, to check the profile-guided build with the
/// same tests).
pub fn bin() -> std::ffi::OsString {
    std::env::var_os("TEST_POLLGATE_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_pollgate").into())
}

impl Pollgate {
    /// Starts pollgate in front of `upstream` with a publish token and `extra` flags.
    pub fn start(upstream: &str, extra: &[&str]) -> Pollgate {
        let mut args = vec![
            "--listen",
            "127.0.0.1:0",
            "--internal-listen",
            "127.0.0.1:0",
            "--upstream",
            upstream,
            "--publish-token",
            TOKEN,
        ];
        args.extend_from_slice(extra);
        Self::start_args(&args)
    }

    pub fn start_args(args: &[&str]) -> Pollgate {
        Self::start_logging(args, "info")
    }

    /// Like `start_args`, logging at `filter` (`RUST_LOG`), e.g. `debug`.
    pub fn start_logging(args: &[&str], filter: &str) -> Pollgate {
        Self::start_env(args, &[("RUST_LOG", filter)])
    }

    /// Like `start_args` with exactly these variables added (no `RUST_LOG`
    /// unless given: then the config's `log_level` decides).
    pub fn start_env(args: &[&str], env: &[(&str, &str)]) -> Pollgate {
        let mut child = Command::new(bin())
            .args(args)
            .env_remove("RUST_LOG")
            .envs(env.iter().copied())
            .env_remove("POLLGATE_PUBLISH_TOKEN")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn pollgate");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("pollgate listening") {
                    let _ = tx.send(line.clone());
                }
                log2.lock().push(line);
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("pollgate did not start: {:?}", log.lock()));
        Pollgate {
            child,
            public: addr_after(&line, "public="),
            internal: addr_after(&line, "internal="),
            log,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.public)
    }
    pub fn internal_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.internal)
    }

    pub async fn publish(&self, body: &str) -> (StatusCode, String) {
        let auth = format!("Bearer {TOKEN}");
        let (s, _, b) = send(
            "POST",
            &self.internal_url("/v1/versions"),
            &[("authorization", &auth), ("content-type", "text/plain")],
            body.as_bytes().to_vec(),
        )
        .await;
        (s, b)
    }

    /// The version pollgate holds for `key` (`GET /v1/versions/{key}`).
    pub async fn version(&self, key: &str) -> Option<u64> {
        let (s, _, body) = get(&self.internal_url(&format!("/v1/versions/{key}"))).await;
        if s != StatusCode::OK {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["version"].as_u64()
    }

    /// Value of one sample line in /metrics, e.g. `pollgate_requests_total{outcome="hit"}`.
    pub async fn metric(&self, name: &str) -> f64 {
        let (_, _, body) = get(&self.internal_url("/metrics")).await;
        body.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("metric {name} missing"))
            .trim()
            .parse()
            .unwrap()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Waits for the process to exit; panics after `max`.
    pub fn wait_exit(&mut self, max: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + max;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "pollgate did not exit within {max:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Pollgate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn addr_after(line: &str, tag: &str) -> SocketAddr {
    let rest = &line[line.find(tag).unwrap_or_else(|| panic!("{tag} in {line}")) + tag.len()..];
    let end = rest.find(|c: char| c.is_whitespace()).unwrap_or(rest.len());
    rest[..end].parse().unwrap()
}

pub type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

pub async fn get(url: &str) -> (StatusCode, HeaderMap, String) {
    send("GET", url, &[], Vec::new()).await
}

pub async fn send(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (StatusCode, HeaderMap, String) {
    send_on(&client(), method, url, headers, body).await
}

/// `send` on a client the caller keeps: its keep-alive connections are reused.
pub async fn send_on(
    client: &HttpClient,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (StatusCode, HeaderMap, String) {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client
        .request(req.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// Polls `cond` until true or `max` passes (no sleeps as synchronisation).
pub async fn eventually<F, Fut>(max: Duration, cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    pollgate::testkit::eventually(max, Duration::from_millis(10), cond).await
}

/// An SSE (or any streaming) response read block by block, as it arrives.
pub struct Stream {
    pub status: StatusCode,
    pub headers: HeaderMap,
    body: Incoming,
    buf: String,
}

impl Stream {
    pub async fn open(url: &str) -> Stream {
        Self::open_with(&client(), url).await
    }

    /// Opens on `client`, reusing a pooled keep-alive connection if it has one.
    pub async fn open_with(client: &HttpClient, url: &str) -> Stream {
        let req = Request::get(url).body(Full::new(Bytes::new())).unwrap();
        let resp = client.request(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        Stream {
            status: parts.status,
            headers: parts.headers,
            body,
            buf: String::new(),
        }
    }

    /// The next `\n\n`-terminated SSE block (without the blank line), or
    /// `None` when the stream ends or nothing complete arrives within `max`.
    pub async fn next_block(&mut self, max: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + max;
        loop {
            if let Some(i) = self.buf.find("\n\n") {
                let block = self.buf[..i].to_string();
                self.buf.drain(..i + 2);
                return Some(block);
            }
            let frame = tokio::time::timeout_at(deadline, self.body.frame()).await;
            match frame {
                Ok(Some(Ok(f))) => {
                    if let Ok(data) = f.into_data() {
                        self.buf.push_str(&String::from_utf8_lossy(&data));
                    }
                }
                _ => return None,
            }
        }
    }

    /// The next `event: stale` block's data line, skipping comments and `retry:`.
    pub async fn next_stale(&mut self, max: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + max;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let block = self.next_block(left).await?;
            if block.starts_with("event: stale\n") {
                return block
                    .lines()
                    .find_map(|l| l.strip_prefix("data: ").map(String::from));
            }
        }
    }

    /// Whether the body ends (cleanly) within `max`, discarding what comes before.
    pub async fn ends_within(&mut self, max: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + max;
        loop {
            match tokio::time::timeout_at(deadline, self.body.frame()).await {
                Ok(None) => return true,
                Ok(Some(Ok(_))) => continue,
                _ => return false,
            }
        }
    }
}

pub type WsClient = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// A WebSocket client on `/pollgate/v1/ws`; `Err` carries a refused upgrade.
pub async fn ws_connect(
    addr: SocketAddr,
) -> Result<WsClient, tokio_tungstenite::tungstenite::Error> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let url = format!("ws://{addr}/pollgate/v1/ws");
    tokio_tungstenite::client_async(url, tcp)
        .await
        .map(|(ws, _)| ws)
}

//! A tiny in-memory app server for demos and tests: projects with events,
//! a change feed pollgate can sit in front of, and publishing to pollgate.
//!
//! - `GET /projects/{key}/changes?since=N` → `200` with the events newer than
//!   `N` and `X-Pollgate-Version: V` (the project's version, 0 if unknown).
//! - `POST /projects/{key}/events` (body = text) → appends an event, bumps
//!   the version, answers `201` and publishes `key V` to pollgate.
//! - `GET /` → the demo board (`demo_board.html`): the projects, live in
//!   every tab through pollgate's browser client (through pass-through on
//!   pollgate's port, the page and the client share an origin).
//! - `GET /stats` → `{"requests":N}`: requests served, `/stats` not counted,
//!   so a test can read it without changing it.
//! - anything else → `404`.
//!
//! Run: `cargo run --example demo_upstream -- --seed 3`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::net::TcpListener;

/// Event bodies beyond this are refused: a demo has no use for more, and an
/// unbounded body is a memory hole.
const MAX_EVENT_BYTES: usize = 64 * 1024;

/// How long the seed publisher keeps trying: long enough for `make run` to
/// start pollgate after this server, short enough not to retry forever.
const SEED_PUBLISH_ATTEMPTS: u32 = 120;
const SEED_PUBLISH_PAUSE: Duration = Duration::from_millis(500);

#[derive(Parser, Debug)]
#[command(about = "In-memory demo app server that publishes versions to pollgate")]
struct Args {
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// pollgate's internal listener; versions are POSTed to `{url}/v1/versions`.
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    publish_url: String,
    /// Bearer token for pollgate's publish API.
    #[arg(long, default_value = "demo-token")]
    publish_token: String,
    /// Create projects p1..pN at version 1 and publish them to pollgate.
    #[arg(long, default_value_t = 0)]
    seed: u32,
}

struct Event {
    version: u64,
    text: String,
}

#[derive(Default)]
struct Project {
    version: u64,
    events: Vec<Event>,
}

/// Everything a request handler needs; shared behind an `Arc`.
struct App {
    /// A std mutex is fine: critical sections are tiny and never span an await.
    projects: Mutex<HashMap<String, Project>>,
    requests: AtomicU64,
    publisher: Publisher,
}

type Reply = Response<Full<Bytes>>;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        // stdout is for the address line scripts read; logs go to stderr.
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let publisher = Publisher::new(&args.publish_url, &args.publish_token)?;
    let app = Arc::new(App {
        projects: Mutex::new(seed_projects(args.seed)),
        requests: AtomicU64::new(0),
        publisher,
    });
    let listener = TcpListener::bind(args.listen).await?;
    println!("listening on {}", listener.local_addr()?);
    let seeder = tokio::spawn(publish_seeds(app.clone(), args.seed));
    tokio::select! {
        res = accept_loop(listener, app) => res?,
        _ = stop_signal() => tracing::info!("shutting down"),
    }
    seeder.abort();
    Ok(())
}

/// Ctrl-C or SIGTERM (what `make run` sends when it stops): a clean exit 0.
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn seed_projects(n: u32) -> HashMap<String, Project> {
    (1..=n)
        .map(|i| {
            let events = vec![Event {
                version: 1,
                text: "created".into(),
            }];
            (format!("p{i}"), Project { version: 1, events })
        })
        .collect()
}

async fn accept_loop(listener: TcpListener, app: Arc<App>) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(app.clone(), req));
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with error");
            }
        });
    }
}

async fn handle(app: Arc<App>, req: Request<Incoming>) -> Result<Reply, Infallible> {
    if req.method() == Method::GET && req.uri().path() == "/stats" {
        let n = app.requests.load(Ordering::Relaxed);
        return Ok(json_reply(StatusCode::OK, json!({ "requests": n })));
    }
    app.requests.fetch_add(1, Ordering::Relaxed);
    if req.method() == Method::GET && req.uri().path() == "/" {
        return Ok(board());
    }
    let reply = match parse_project_path(req.uri().path()) {
        Some((key, "changes")) if req.method() == Method::GET => {
            let key = key.to_owned();
            changes(&app, &key, req.uri().query())
        }
        Some((key, "events")) if req.method() == Method::POST => {
            let key = key.to_owned();
            add_event(&app, key, req).await
        }
        _ => text_reply(StatusCode::NOT_FOUND, "not found\n"),
    };
    Ok(reply)
}

/// `/projects/{key}/{action}` → `(key, action)` when the key is valid.
fn parse_project_path(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/projects/")?;
    let (key, action) = rest.split_once('/')?;
    valid_key(key).then_some((key, action))
}

/// Same rule as pollgate: 1–128 bytes of `[A-Za-z0-9._:-]`.
fn valid_key(key: &str) -> bool {
    let ok = |b: u8| b.is_ascii_alphanumeric() || b"._:-".contains(&b);
    (1..=128).contains(&key.len()) && key.bytes().all(ok)
}

fn changes(app: &App, key: &str, query: Option<&str>) -> Reply {
    let Some(since) = parse_since(query) else {
        return text_reply(StatusCode::BAD_REQUEST, "since must be a u64\n");
    };
    let projects = app.projects.lock().unwrap();
    let (version, events) = match projects.get(key) {
        Some(p) => (p.version, newer_events(p, since)),
        None => (0, Vec::new()),
    };
    drop(projects);
    let body = json!({ "key": key, "version": version, "events": events });
    let mut reply = json_reply(StatusCode::OK, body);
    reply
        .headers_mut()
        .insert("x-pollgate-version", HeaderValue::from(version));
    reply
}

/// `since` from the query string; missing means 0 (everything).
fn parse_since(query: Option<&str>) -> Option<u64> {
    let pairs = query.unwrap_or("").split('&');
    match pairs.filter_map(|p| p.strip_prefix("since=")).next() {
        Some(v) => v.parse().ok(),
        None => Some(0),
    }
}

fn newer_events(p: &Project, since: u64) -> Vec<serde_json::Value> {
    let newer = p.events.iter().filter(|e| e.version > since);
    newer
        .map(|e| json!({ "version": e.version, "text": e.text }))
        .collect()
}

async fn add_event(app: &App, key: String, req: Request<Incoming>) -> Reply {
    let body = match Limited::new(req.into_body(), MAX_EVENT_BYTES)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => return text_reply(StatusCode::PAYLOAD_TOO_LARGE, "event too large\n"),
    };
    let text = String::from_utf8_lossy(&body).into_owned();
    let version = append_event(app, &key, text);
    // Publishing is best effort: the app's write already succeeded, and
    // pollgate also learns versions from forwarded responses and max_age.
    app.publisher.publish(&key, version).await;
    json_reply(
        StatusCode::CREATED,
        json!({ "key": key, "version": version }),
    )
}

fn append_event(app: &App, key: &str, text: String) -> u64 {
    let mut projects = app.projects.lock().unwrap();
    let p = projects.entry(key.to_owned()).or_default();
    p.version += 1;
    let version = p.version;
    p.events.push(Event { version, text });
    version
}

/// Seeds are published in the background with retries, because in
/// `make run` this server starts before pollgate does.
async fn publish_seeds(app: Arc<App>, n: u32) {
    if n == 0 {
        return;
    }
    let body: String = (1..=n).map(|i| format!("p{i} 1\n")).collect();
    for _ in 0..SEED_PUBLISH_ATTEMPTS {
        if app.publisher.send(body.clone()).await.is_ok() {
            tracing::info!(projects = n, "seed versions published to pollgate");
            return;
        }
        tokio::time::sleep(SEED_PUBLISH_PAUSE).await;
    }
    tracing::warn!("gave up publishing seed versions; pollgate will learn them from polls");
}

/// Sends `key version` lines to pollgate's `POST /v1/versions`.
struct Publisher {
    client: Client<HttpConnector, Full<Bytes>>,
    uri: hyper::Uri,
    auth: HeaderValue,
}

impl Publisher {
    fn new(base: &str, token: &str) -> Result<Self, Box<dyn std::error::Error>> {
        let uri = format!("{}/v1/versions", base.trim_end_matches('/')).parse()?;
        let auth = HeaderValue::from_str(&format!("Bearer {token}"))?;
        let client = Client::builder(TokioExecutor::new()).build_http();
        Ok(Publisher { client, uri, auth })
    }

    /// Logs instead of failing: pollgate being down must not break the app.
    async fn publish(&self, key: &str, version: u64) {
        if let Err(e) = self.send(format!("{key} {version}\n")).await {
            tracing::warn!(%key, version, error = %e, "publish to pollgate failed");
        }
    }

    async fn send(&self, body: String) -> Result<(), String> {
        let req = Request::post(self.uri.clone())
            .header(AUTHORIZATION, self.auth.clone())
            .header(CONTENT_TYPE, "text/plain")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let res = self.client.request(req).await.map_err(|e| e.to_string())?;
        let status = res.status();
        // Drain the body so the pooled connection can be reused.
        let _ = res.into_body().collect().await;
        match status.is_success() {
            true => Ok(()),
            false => Err(format!("pollgate answered {status}")),
        }
    }
}

/// The demo board page, built into the binary.
fn board() -> Reply {
    let mut reply = Response::new(Full::new(Bytes::from_static(BOARD.as_bytes())));
    let ct = HeaderValue::from_static("text/html; charset=utf-8");
    reply.headers_mut().insert(CONTENT_TYPE, ct);
    reply
}

const BOARD: &str = include_str!("demo_board.html");

fn json_reply(status: StatusCode, body: serde_json::Value) -> Reply {
    let mut reply = Response::new(Full::new(Bytes::from(body.to_string())));
    *reply.status_mut() = status;
    let ct = HeaderValue::from_static("application/json");
    reply.headers_mut().insert(CONTENT_TYPE, ct);
    reply
}

fn text_reply(status: StatusCode, body: &'static str) -> Reply {
    let mut reply = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *reply.status_mut() = status;
    let ct = HeaderValue::from_static("text/plain; charset=utf-8");
    reply.headers_mut().insert(CONTENT_TYPE, ct);
    reply
}

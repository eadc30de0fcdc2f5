//! What the Rust load tests share (`#[path = "common.rs"] mod common;` in
//! `cluster_load.rs` and `redis_load.rs`): the pollgate binary to run, free
//! ports, and the few HTTP calls they make to pollgates on loopback.

use std::net::TcpListener;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A pooled client with Nagle off (latencies are measured in milliseconds).
pub fn client() -> HttpClient {
    let mut conn = HttpConnector::new();
    conn.set_nodelay(true);
    Client::builder(TokioExecutor::new()).build(conn)
}

/// `$POLLGATE_BIN`, else `pollgate` in the target dir this example was built in.
pub fn bin() -> String {
    std::env::var("POLLGATE_BIN").unwrap_or_else(|_| {
        let exe = std::env::current_exe().expect("own path");
        let dir = exe
            .parent()
            .and_then(|p| p.parent())
            .expect("target/release");
        dir.join("pollgate").display().to_string()
    })
}

/// A port the kernel just handed out; racy in theory, fine on loopback.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Status and body; a connection failure reads as 503 with no body.
pub async fn get(c: &HttpClient, port: u16, path: &str) -> (StatusCode, String) {
    let req = Request::get(format!("http://127.0.0.1:{port}{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    match c.request(req).await {
        Ok(r) => {
            let s = r.status();
            let b = r.into_body().collect().await.map(|b| b.to_bytes());
            let b = b.unwrap_or_default();
            (s, String::from_utf8_lossy(&b).into_owned())
        }
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, String::new()),
    }
}

/// `POST /v1/versions` (text body) with `token`; panics unless 200.
pub async fn publish(c: &HttpClient, port: u16, token: &str, body: String) {
    let req = Request::post(format!("http://127.0.0.1:{port}/v1/versions"))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let r = c.request(req).await.expect("publish");
    assert_eq!(r.status(), StatusCode::OK);
    let _ = r.into_body().collect().await;
}

/// One sample of `/metrics` (`name` with its labels); NaN when absent.
pub async fn metric(c: &HttpClient, port: u16, name: &str) -> f64 {
    let (_, body) = get(c, port, "/metrics").await;
    body.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

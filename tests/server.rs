//! Server hygiene: h2c, keep-alive, oversized heads, slow clients.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Pollgate, Upstream};
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn h2c_prior_knowledge_gets_hits() {
    let up = Upstream::start().await;
    let pg = Pollgate::start(&up.url(), &[]);
    pg.publish("h2 3\n").await;
    let h2 = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    for _ in 0..10 {
        let req = Request::get(pg.url("/projects/h2/changes?since=3"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = h2.request(req).await.unwrap();
        assert_eq!(resp.version(), http::Version::HTTP_2);
        assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);
    }
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn keep_alive_serves_many_polls_on_one_connection() {
    let up = Upstream::start().await;
    let pg = Pollgate::start(&up.url(), &[]);
    pg.publish("ka 1\n").await;
    let mut s = TcpStream::connect(pg.public).await.unwrap();
    let req = b"GET /projects/ka/changes?since=1 HTTP/1.1\r\nHost: x\r\n\r\n";
    for _ in 0..5 {
        s.write_all(req).await.unwrap();
        let head = read_head(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 304"), "{head}");
    }
}

async fn read_head(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).await.unwrap() == 0 {
            break;
        }
        buf.push(byte[0]);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test]
async fn an_oversized_request_head_is_refused() {
    let up = Upstream::start().await;
    let pg = Pollgate::start(&up.url(), &["--max-header-size", "8KiB"]);
    let mut s = TcpStream::connect(pg.public).await.unwrap();
    let big = "x".repeat(64 * 1024);
    let req =
        format!("GET /projects/a/changes?since=1 HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n");
    let _ = s.write_all(req.as_bytes()).await;
    let head = read_head(&mut s).await;
    assert!(
        head.is_empty() || head.starts_with("HTTP/1.1 431"),
        "{head}"
    );
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn a_slow_client_is_cut_off_after_the_header_timeout() {
    let up = Upstream::start().await;
    let pg = Pollgate::start(&up.url(), &["--header-read-timeout", "300ms"]);
    let mut s = TcpStream::connect(pg.public).await.unwrap();
    s.write_all(b"GET /projects/a/chan").await.unwrap();
    let t = Instant::now();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "connection closed by pollgate, not left open");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
}

/// The HTTP/2 client preface, then an empty SETTINGS frame: a connection
/// that never sends a request.
const H2_IDLE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

#[tokio::test]
async fn an_h2c_connection_without_a_request_is_closed_after_the_header_timeout() {
    let up = Upstream::start().await;
    let pg = Pollgate::start(&up.url(), &["--header-read-timeout", "300ms"]);
    let mut s = TcpStream::connect(pg.public).await.unwrap();
    s.write_all(H2_IDLE).await.unwrap();
    let t = Instant::now();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "connection closed by pollgate, not left open");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
}

#[tokio::test]
async fn an_h2c_request_in_flight_outlives_the_header_timeout() {
    let up = Upstream::start().await;
    let pg = Pollgate::start(&up.url(), &["--header-read-timeout", "1s"]);
    pg.publish("w 1\n").await;
    let h2 = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    // A long poll that nothing wakes: answered 304 when its 3 s are up,
    // well past the 1-1.25 s after which an idle connection is closed.
    let req = Request::get(pg.url("/pollgate/v1/wait?keys=w:1&timeout=3"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let t = Instant::now();
    let resp = h2.request(req).await.expect("not cut off as a late head");
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);
    assert!(
        t.elapsed() >= Duration::from_millis(2900),
        "{:?}",
        t.elapsed()
    );
}

//! The upstream side end to end on loopback: a front server forwarding through
//! `Upstream::forward` (guard + client) to real app servers.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use pollgate::body::Body;
use pollgate::config::Config;
use pollgate::metrics::{Metrics, UpstreamResult};
use pollgate::testkit::serve;
use pollgate::upstream::Upstream;
use tokio::net::TcpListener;

/// An app that answers every request with `status`, counting them, and
/// reporting the version, Host and Via it saw.
async fn app(status: StatusCode, hits: Arc<AtomicUsize>) -> SocketAddr {
    serve(move |req: Request<Incoming>, _| {
        hits.fetch_add(1, Relaxed);
        let seen = format!(
            "{:?} host={} via={}",
            req.version(),
            req.headers()
                .get("host")
                .map_or("-", |v| v.to_str().unwrap()),
            req.headers()
                .get("via")
                .map_or("-", |v| v.to_str().unwrap()),
        );
        async move {
            Response::builder()
                .status(status)
                .body(Body::full(seen))
                .unwrap()
        }
    })
    .await
}

/// pollgate's forwarding path in miniature.
async fn front(cfg: Config) -> (SocketAddr, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::default());
    let upstream = Arc::new(Upstream::new(&cfg, metrics.clone()));
    let addr = serve(move |req, remote| {
        let upstream = upstream.clone();
        async move {
            match upstream.forward(req, remote).await {
                Ok(resp) => resp.map(Body::Incoming),
                Err(e) => e.into_response(),
            }
        }
    })
    .await;
    (addr, metrics)
}

fn config(upstream: SocketAddr) -> Config {
    Config {
        upstream: vec![format!("http://{upstream}").parse().unwrap()],
        breaker_failures: 3,
        breaker_open: Duration::from_secs(60),
        ..Config::default()
    }
}

fn client() -> Client<HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn get(c: &Client<HttpConnector, Body>, front: SocketAddr) -> Response<String> {
    let req = Request::get(format!("http://{front}/projects/a/changes?since=1"))
        .body(Body::empty())
        .unwrap();
    let resp = c.request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let body = http_body_util::BodyExt::collect(body)
        .await
        .unwrap()
        .to_bytes();
    Response::from_parts(parts, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn app_5xx_opens_the_breaker_then_pollgate_answers_503_itself() {
    let hits = Arc::new(AtomicUsize::new(0));
    let up = app(StatusCode::SERVICE_UNAVAILABLE, hits.clone()).await;
    let (front, metrics) = front(config(up)).await;
    let c = client();
    for _ in 0..3 {
        let resp = get(&c, front).await;
        assert_eq!(resp.status(), 503);
        assert!(
            resp.body().contains("host="),
            "the app's own 503: {}",
            resp.body()
        );
    }
    let resp = get(&c, front).await;
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.body(), "upstream unavailable\n");
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    // Whole seconds over [left, 2·left + 1] (error::jittered).
    assert!((60..=121).contains(&retry), "Retry-After {retry}");
    assert_eq!(
        hits.load(Relaxed),
        3,
        "the open breaker kept the app out of it"
    );
    assert_eq!(metrics.upstream_count(UpstreamResult::ServerError), 3);
    assert_eq!(metrics.upstream_count(UpstreamResult::BreakerOpen), 1);
    assert_eq!(metrics.breaker_open.get(), 1);
    assert_eq!(metrics.upstream_inflight.get(), 0);
}

#[tokio::test]
async fn client_errors_from_the_app_do_not_count() {
    let hits = Arc::new(AtomicUsize::new(0));
    let up = app(StatusCode::NOT_FOUND, hits.clone()).await;
    let (front, metrics) = front(config(up)).await;
    let c = client();
    for _ in 0..10 {
        assert_eq!(get(&c, front).await.status(), 404);
    }
    assert_eq!(hits.load(Relaxed), 10);
    assert_eq!(metrics.breaker_open.get(), 0);
    assert_eq!(metrics.upstream_count(UpstreamResult::Ok), 10);
}

#[tokio::test]
async fn dead_app_gets_502_then_fast_503() {
    let dead = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let (front, metrics) = front(config(dead)).await;
    let c = client();
    for _ in 0..3 {
        assert_eq!(get(&c, front).await.status(), 502);
    }
    assert_eq!(get(&c, front).await.status(), 503);
    assert_eq!(metrics.upstream_count(UpstreamResult::Error), 3);
    assert_eq!(metrics.upstream_count(UpstreamResult::BreakerOpen), 1);
}

#[tokio::test]
async fn h2c_is_forwarded_as_http11_with_its_authority_as_host() {
    let up = app(StatusCode::OK, Arc::default()).await;
    let (front, _) = front(config(up)).await;
    let h2: Client<HttpConnector, Body> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let resp = get(&h2, front).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(
        resp.body(),
        &format!("HTTP/1.1 host={front} via=2.0 pollgate")
    );
}

//! The in-process hit path (route match → table lookup → 304), against the
//! ceiling: building the same constant 304 with no lookup at all.

use std::net::SocketAddr;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use futures_util::FutureExt;
use http::{Request, Response, StatusCode};
use pollgate::body::Body;
use pollgate::config::Config;
use pollgate::state::{State, VersionSource};

fn request(key: u64) -> Request<Body> {
    let uri = format!("/projects/p{key}/changes?since=1");
    // An HTTP/1.1 request without Host is refused (400), so the bench sends one.
    Request::get(uri)
        .header("host", "app.example")
        .body(Body::empty())
        .unwrap()
}

fn ceiling() -> Response<Body> {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::NOT_MODIFIED;
    let h = r.headers_mut();
    h.insert("etag", http::HeaderValue::from_static("\"1\""));
    h.insert("x-pollgate", http::HeaderValue::from_static("hit"));
    h.insert("x-poll-interval", http::HeaderValue::from(5u64));
    r
}

fn bench(c: &mut Criterion) {
    let remote: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let mut g = c.benchmark_group("hit_path");
    g.measurement_time(std::time::Duration::from_secs(3))
        .sample_size(30);
    for keys in [1_000u64, 100_000, 1_000_000] {
        let state = State::new(Config::default()).unwrap();
        let conn = std::sync::Arc::new(pollgate::auth::ConnCache::default());
        for k in 0..keys {
            state.learn(&format!("p{k}"), 1, VersionSource::Publish);
        }
        g.bench_with_input(BenchmarkId::new("pollgate", keys), &keys, |b, &keys| {
            b.iter_batched(
                || request(fastrand::u64(0..keys)),
                |req| {
                    let resp = pollgate::public::route(&state, remote, &conn, req)
                        .now_or_never()
                        .map(|r| r.unwrap_or_else(|e| match e {}));
                    assert_eq!(resp.unwrap().status(), StatusCode::NOT_MODIFIED);
                },
                BatchSize::SmallInput,
            )
        });
        g.bench_with_input(
            BenchmarkId::new("ceiling_constant_304", keys),
            &keys,
            |b, &keys| {
                b.iter_batched(
                    || request(fastrand::u64(0..keys)),
                    |_req| ceiling(),
                    BatchSize::SmallInput,
                )
            },
        );
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

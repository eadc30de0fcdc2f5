//! End-to-end: pollgate as a real process in front of a real upstream on loopback.

mod common;

use std::time::{Duration, Instant};

use common::{eventually, get, send, Mode, Pollgate, Upstream, TOKEN};
use http::StatusCode;

fn poll_path(key: &str, since: u64) -> String {
    format!("/projects/{key}/changes?since={since}")
}

#[tokio::test]
async fn fresh_polls_never_reach_the_upstream() {
    let up = Upstream::start().await;
    let pg = Pollgate::start(&up.url(), &[]);
    assert_eq!(pg.publish("p1 7\n").await.0, StatusCode::OK);
    for _ in 0..200 {
        let (s, h, _) = get(&pg.url(&poll_path("p1", 7))).await;
        assert_eq!(s, StatusCode::NOT_MODIFIED);
        assert_eq!(h["etag"], "\"7\"");
        assert_eq!(h["x-pollgate"], "hit");
        assert!(
            h["x-poll-interval"]
                .to_str()
                .unwrap()
                .parse::<u64>()
                .unwrap()
                > 0
        );
    }
    assert_eq!(up.hits(), 0);
    assert_eq!(
        pg.metric("pollgate_requests_total{outcome=\"hit\"}").await,
        200.0
    );
}

#[tokio::test]
async fn stale_poll_is_forwarded_and_teaches_the_version() {
    let up = Upstream::start().await;
    up.set_version("p2", 9);
    let pg = Pollgate::start(&up.url(), &[]);
    pg.publish("p2 8\n").await;
    let (s, h, body) = get(&pg.url(&poll_path("p2", 3))).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h["x-pollgate-version"], "9");
    assert!(body.contains("/projects/p2/changes?since=3"), "{body}");
    assert_eq!(up.hits(), 1);
    // The header taught pollgate version 9: a client at 9 is now a hit.
    let (s, h, _) = get(&pg.url(&poll_path("p2", 9))).await;
    assert_eq!(
        (s, &h["etag"]),
        (StatusCode::NOT_MODIFIED, &"\"9\"".parse().unwrap())
    );
    assert_eq!(up.hits(), 1);
    let (_, _, v) = get(&pg.internal_url("/v1/versions/p2")).await;
    assert!(v.contains("\"version\":9"), "{v}");
}

#[tokio::test]
async fn concurrent_polls_of_a_cold_key_make_one_upstream_request() {
    let up = Upstream::start().await;
    up.set_version("cold", 4);
    // Long enough that all 50 polls arrive while the leader is upstream.
    up.set_mode(Mode::Delay(Duration::from_millis(1000)));
    let pg = Pollgate::start(&up.url(), &[]);
    let url = pg.url(&poll_path("cold", 4));
    let polls = (0..50).map(|_| tokio::spawn(get_status(url.clone())));
    let statuses = futures_util::future::join_all(polls).await;
    assert_eq!(up.hits(), 1, "exactly one request went upstream");
    let ok = statuses
        .iter()
        .filter(|s| *s.as_ref().unwrap() == StatusCode::OK)
        .count();
    let hits = statuses
        .iter()
        .filter(|s| *s.as_ref().unwrap() == StatusCode::NOT_MODIFIED)
        .count();
    assert_eq!((ok, hits), (1, 49));
    let coalesced = pg
        .metric("pollgate_requests_total{outcome=\"coalesced\"}")
        .await;
    let late_hits = pg.metric("pollgate_requests_total{outcome=\"hit\"}").await;
    assert_eq!(coalesced + late_hits, 49.0);
    assert!(
        coalesced >= 40.0,
        "most polls waited for the leader: {coalesced}"
    );
}

async fn get_status(url: String) -> StatusCode {
    get(&url).await.0
}

#[tokio::test]
async fn publish_then_hit_and_lower_versions_are_ignored() {
    let up = Upstream::start().await;
    let pg = Pollgate::start(&up.url(), &[]);
    let (s, body) = pg.publish("a 5\nb 2\n").await;
    assert_eq!(
        (s, body.trim()),
        (StatusCode::OK, r#"{"accepted":2,"advanced":2}"#)
    );
    let (s, body) = pg.publish("a 3\nb 2\n").await;
    assert_eq!(body.trim(), r#"{"accepted":2,"advanced":0}"#, "{s}");
    let (_, _, v) = get(&pg.internal_url("/v1/versions/a")).await;
    assert!(v.contains("\"version\":5"), "{v}");
    // JSON batches too.
    let auth = format!("Bearer {TOKEN}");
    let (s, _, body) = send(
        "POST",
        &pg.internal_url("/v1/versions"),
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        br#"[{"key":"a","version":6}]"#.to_vec(),
    )
    .await;
    assert_eq!(
        (s, body.trim()),
        (StatusCode::OK, r#"{"accepted":1,"advanced":1}"#)
    );
    assert_eq!(
        get(&pg.url(&poll_path("a", 6))).await.0,
        StatusCode::NOT_MODIFIED
    );
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn a_client_claiming_a_huge_version_changes_nothing() {
    let up = Upstream::start().await;
    let pg = Pollgate::start(&up.url(), &[]);
    pg.publish("k 5\n").await;
    let (s, _, _) = get(&pg.url(&poll_path("k", u64::MAX))).await;
    assert_eq!(s, StatusCode::NOT_MODIFIED);
    let (_, _, v) = get(&pg.internal_url("/v1/versions/k")).await;
    assert!(v.contains("\"version\":5"), "{v}");
    // Everyone else still learns they are stale.
    assert_eq!(get(&pg.url(&poll_path("k", 4))).await.0, StatusCode::OK);
}

#[tokio::test]
async fn publish_needs_the_right_token() {
    let up = Upstream::start().await;
    let pg = Pollgate::start(&up.url(), &[]);
    let url = pg.internal_url("/v1/versions");
    let (s, h, _) = send("POST", &url, &[], b"a 1".to_vec()).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(h["www-authenticate"], "Bearer");
    let (s, _, _) = send(
        "POST",
        &url,
        &[("authorization", "Bearer nope")],
        b"a 1".to_vec(),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(
        get(&pg.internal_url("/v1/versions/a")).await.0,
        StatusCode::NOT_FOUND
    );

    let open = Pollgate::start_args(&[
        "--listen",
        "127.0.0.1:0",
        "--internal-listen",
        "127.0.0.1:0",
    ]);
    let (s, _, body) = send(
        "POST",
        &open.internal_url("/v1/versions"),
        &[],
        b"a 1".to_vec(),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(body.contains("publish_token"), "{body}");
}

#[tokio::test]
async fn a_malformed_batch_applies_nothing() {
    let up = Upstream::start().await;
    let pg = Pollgate::start(&up.url(), &[]);
    let (s, body) = pg.publish("good 1\nbad key 2\n").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(body.starts_with("line 2:"), "{body}");
    let (s, body) = pg.publish("good 1\nother notanumber\n").await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(
        get(&pg.internal_url("/v1/versions/good")).await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn an_oversized_publish_is_refused() {
    let up = Upstream::start().await;
    let pg = Pollgate::start(&up.url(), &["--publish-max-body", "1KiB"]);
    let body: String = (0..200).map(|i| format!("key{i} 1\n")).collect();
    assert!(body.len() > 1024);
    let (s, _) = pg.publish(&body).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        get(&pg.internal_url("/v1/versions/key0")).await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn bad_keys_and_versions_are_400_with_a_reason() {
    let up = Upstream::start().await;
    let pg = Pollgate::start(&up.url(), &[]);
    let long = "k".repeat(129);
    for path in [
        "/projects/a%20b/changes?since=1".to_string(),
        format!("/projects/{long}/changes?since=1"),
        "/projects/a/changes?since=abc".to_string(),
        "/projects/a/changes?since=-1".to_string(),
        "/projects/a/changes?since=99999999999999999999999".to_string(),
    ] {
        let (s, _, body) = get(&pg.url(&path)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{path}");
        assert!(
            body.contains("key") || body.contains("version"),
            "{path}: {body}"
        );
    }
    assert_eq!(up.hits(), 0);
    assert_eq!(
        get(&pg.internal_url("/v1/versions/a%20b")).await.0,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn unrouted_paths_pass_through_or_404() {
    let up = Upstream::start().await;
    let pg = Pollgate::start(&up.url(), &[]);
    let (s, _, body) = get(&pg.url("/api/other?x=1")).await;
    assert_eq!(s, StatusCode::OK);
    assert!(body.contains("/api/other?x=1"), "{body}");
    let (path, headers) = up.seen.lock().last().cloned().unwrap();
    assert_eq!(path, "/api/other?x=1");
    assert!(headers["x-forwarded-for"]
        .to_str()
        .unwrap()
        .contains("127.0.0.1"));
    assert!(headers["via"].to_str().unwrap().contains("pollgate"));

    let closed = Pollgate::start(&up.url(), &["--passthrough", "false"]);
    assert_eq!(
        get(&closed.url("/api/other")).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn upstream_down_fresh_polls_still_answered_stale_fail_fast() {
    let up = Upstream::start().await;
    let pg = Pollgate::start(&up.url(), &[]);
    pg.publish("d 5\n").await;
    up.kill();
    for _ in 0..20 {
        assert_eq!(
            get(&pg.url(&poll_path("d", 5))).await.0,
            StatusCode::NOT_MODIFIED
        );
    }
    let t = Instant::now();
    let (s, _, _) = get(&pg.url(&poll_path("d", 4))).await;
    assert!(
        s == StatusCode::BAD_GATEWAY || s == StatusCode::SERVICE_UNAVAILABLE,
        "{s}"
    );
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
}

#[tokio::test]
async fn hung_upstream_times_out_with_504() {
    let up = Upstream::start().await;
    up.set_mode(Mode::Hang);
    let pg = Pollgate::start(&up.url(), &["--upstream-timeout", "300ms"]);
    let (s, _, _) = get(&pg.url(&poll_path("h", 1))).await;
    assert_eq!(s, StatusCode::GATEWAY_TIMEOUT);
}

#[tokio::test]
async fn breaker_opens_on_failures_and_recovers() {
    let up = Upstream::start().await;
    // 502/503/504 count (a 500 is the app's answer, see tests/harden.rs).
    up.set_mode(Mode::Status(503));
    let pg = Pollgate::start(
        &up.url(),
        &["--breaker-failures", "3", "--breaker-open", "300ms"],
    );
    pg.publish("b 9\n").await;
    for _ in 0..3 {
        let (s, h, _) = get(&pg.url(&poll_path("b", 1))).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        assert!(!h.contains_key("retry-after"), "the app's own 503");
    }
    let (s, h, _) = get(&pg.url(&poll_path("b", 1))).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert!(h.contains_key("retry-after"));
    assert_eq!(pg.metric("pollgate_breaker_open").await, 1.0);
    assert_eq!(up.hits(), 3, "open breaker sends nothing upstream");
    // Fresh polls are still answered while it is open.
    assert_eq!(
        get(&pg.url(&poll_path("b", 9))).await.0,
        StatusCode::NOT_MODIFIED
    );
    up.set_mode(Mode::Normal);
    let recovered = eventually(Duration::from_secs(5), || async {
        get(&pg.url(&poll_path("b", 1))).await.0 == StatusCode::OK
    })
    .await;
    assert!(
        recovered,
        "breaker half-opened and closed after a good probe"
    );
    assert_eq!(pg.metric("pollgate_breaker_open").await, 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_an_in_flight_request_then_exits_0() {
    let up = Upstream::start().await;
    up.set_mode(Mode::Delay(Duration::from_millis(800)));
    let mut pg = Pollgate::start(&up.url(), &[]);
    let url = pg.url(&poll_path("slow", 0));
    let inflight = tokio::spawn(async move { get(&url).await });
    assert!(eventually(Duration::from_secs(5), || async { up.hits() == 1 }).await);
    pg.signal("-TERM");
    let (s, _, body) = inflight.await.unwrap();
    assert_eq!(s, StatusCode::OK, "in-flight request finished: {body}");
    let status = tokio::task::block_in_place(|| pg.wait_exit(Duration::from_secs(10)));
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn health_and_metrics_endpoints() {
    let up = Upstream::start().await;
    let pg = Pollgate::start(&up.url(), &[]);
    assert_eq!(get(&pg.internal_url("/healthz")).await.0, StatusCode::OK);
    assert_eq!(get(&pg.internal_url("/readyz")).await.0, StatusCode::OK);
    pg.publish("m1 1\nm2 1\n").await;
    assert_eq!(pg.metric("pollgate_keys").await, 2.0);
    let (_, h, body) = get(&pg.internal_url("/metrics")).await;
    assert!(h["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    for name in [
        "pollgate_upstream_inflight",
        "pollgate_upstream_duration_seconds_bucket",
        "pollgate_breaker_open",
    ] {
        assert!(body.contains(name), "{name}");
    }
}

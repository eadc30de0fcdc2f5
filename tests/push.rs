//! End-to-end push: SSE, long-poll and WebSocket against pollgate as a real
//! process on loopback. Watching must never reach the upstream.

mod common;

use std::time::{Duration, Instant};

use common::{eventually, get, send, ws_connect, Pollgate, Stream, Upstream, WsClient};
use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

const SEC: Duration = Duration::from_secs(1);

async fn started(extra: &[&str]) -> (Upstream, Pollgate) {
    let up = Upstream::start().await;
    let pg = Pollgate::start(&up.url(), extra);
    (up, pg)
}

async fn sse(pg: &Pollgate, keys: &str) -> Stream {
    let s = Stream::open(&pg.url(&format!("/pollgate/v1/watch?keys={keys}"))).await;
    assert_eq!(s.status, StatusCode::OK);
    s
}

fn stale(key: &str, version: u64) -> String {
    format!("{{\"key\":\"{key}\",\"version\":{version}}}")
}

fn ws_stale(key: &str, version: u64) -> String {
    format!("{{\"op\":\"stale\",\"key\":\"{key}\",\"version\":{version}}}")
}

/// The next text message, skipping pings and pongs.
async fn ws_text(ws: &mut WsClient, max: Duration) -> Option<String> {
    let deadline = tokio::time::Instant::now() + max;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return Some(t.to_string()),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            _ => return None,
        }
    }
}

/// The close frame the server sends, skipping everything before it.
async fn ws_close(ws: &mut WsClient, max: Duration) -> Option<(CloseCode, String)> {
    let deadline = tokio::time::Instant::now() + max;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Close(Some(f))))) => return Some((f.code, f.reason.to_string())),
            Ok(Some(Ok(_))) => continue,
            _ => return None,
        }
    }
}

/// Sends a watch and waits until it is applied: it includes `sync`, a key
/// already past `0`, whose notice can only come after the whole command.
async fn ws_watch(ws: &mut WsClient, keys: &str, sync: &str) {
    let cmd = format!(r#"{{"op":"watch","keys":{{{keys},"{sync}":0}}}}"#);
    ws.send(Message::text(cmd)).await.unwrap();
    let want = ws_stale(sync, 1);
    loop {
        let got = ws_text(ws, SEC).await.expect("sync notice");
        if got == want {
            return;
        }
    }
}

async fn metric(pg: &Pollgate, name: &str) -> f64 {
    pg.metric(name).await
}

async fn wait_for_metric(pg: &Pollgate, name: &str, want: f64) {
    let ok = eventually(5 * SEC, || async { metric(pg, name).await == want }).await;
    assert!(
        ok,
        "{name} never reached {want}: {}",
        metric(pg, name).await
    );
}

#[tokio::test]
async fn sse_notice_within_a_second_only_to_watchers_of_that_key() {
    let (up, pg) = started(&[]).await;
    pg.publish("a 1\nb 1\n").await;
    let mut a = sse(&pg, "a:1").await;
    let mut b = sse(&pg, "b:1").await;
    assert_eq!(a.headers["content-type"], "text/event-stream");
    assert_eq!(a.headers["cache-control"], "no-cache");
    assert_eq!(a.headers["x-accel-buffering"], "no");
    assert_eq!(a.headers["connection"], "close", "served off hyper");
    let first = a.next_block(SEC).await.unwrap();
    let retry: u64 = first.strip_prefix("retry: ").unwrap().parse().unwrap();
    assert!((1000..5000).contains(&retry), "{retry}");

    let t0 = Instant::now();
    pg.publish("a 2\n").await;
    assert_eq!(a.next_stale(SEC).await, Some(stale("a", 2)));
    assert!(t0.elapsed() < SEC, "{:?}", t0.elapsed());
    pg.publish("a 3\nb 5\n").await;
    assert_eq!(a.next_stale(SEC).await, Some(stale("a", 3)));
    // b's first notice is its own key: it was never woken for `a`.
    assert_eq!(b.next_stale(SEC).await, Some(stale("b", 5)));
    assert_eq!(metric(&pg, "pollgate_push_notifications_total").await, 3.0);
    assert_eq!(
        metric(&pg, "pollgate_push_connections{transport=\"sse\"}").await,
        2.0
    );
    drop((a, b));
    wait_for_metric(&pg, "pollgate_push_connections{transport=\"sse\"}", 0.0).await;
    wait_for_metric(&pg, "pollgate_push_watched_keys", 0.0).await;
    assert_eq!(up.hits(), 0, "watching never reaches the upstream");
}

/// A watch that is not the first request of its connection is served by
/// hyper rather than the raw path: same events, same headers.
#[tokio::test]
async fn sse_after_a_poll_on_the_same_connection_works_alike() {
    let (up, pg) = started(&["--heartbeat-interval", "200ms"]).await;
    pg.publish("p 1\nk 2\n").await;
    let client = common::client();
    let req = http::Request::get(pg.url("/projects/p/changes?since=1"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);
    drop(resp);
    let mut s = Stream::open_with(&client, &pg.url("/pollgate/v1/watch?keys=k:1")).await;
    assert_eq!(s.status, StatusCode::OK);
    assert_eq!(s.headers["content-type"], "text/event-stream");
    assert_eq!(s.headers["transfer-encoding"], "chunked", "hyper's path");
    assert!(s.next_block(SEC).await.unwrap().starts_with("retry: "));
    assert_eq!(s.next_stale(SEC).await, Some(stale("k", 2)));
    pg.publish("k 3\n").await;
    assert_eq!(s.next_stale(SEC).await, Some(stale("k", 3)));
    assert_eq!(s.next_block(SEC).await.as_deref(), Some(": hb"));
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn an_old_version_is_told_at_once_on_every_transport() {
    let (up, pg) = started(&[]).await;
    pg.publish("k 5\nsync 1\n").await;
    let mut s = sse(&pg, "k:3,unknown:0").await;
    assert_eq!(s.next_stale(SEC).await, Some(stale("k", 5)));

    let (st, _, body) = get(&pg.url("/pollgate/v1/wait?keys=k:3,j:0")).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(body.trim(), format!("{{\"stale\":[{}]}}", stale("k", 5)));

    let mut ws = ws_connect(pg.public).await.unwrap();
    ws.send(Message::text(r#"{"op":"watch","keys":{"k":3}}"#))
        .await
        .unwrap();
    assert_eq!(ws_text(&mut ws, SEC).await, Some(ws_stale("k", 5)));
    // A client already at the table's version is not told anything.
    ws_watch(&mut ws, r#""k":5"#, "sync").await;
    let (st, _, _) = get(&pg.url("/pollgate/v1/wait?keys=k:5&timeout=0")).await;
    assert_eq!(st, StatusCode::NOT_MODIFIED);
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn long_poll_answers_on_advance_and_304_on_timeout() {
    let (up, pg) = started(&["--wait-max-timeout", "1s"]).await;
    pg.publish("a 1\n").await;
    let url = pg.url("/pollgate/v1/wait?keys=a:1,b:0&timeout=30");
    let waiting = tokio::spawn(async move { get(&url).await });
    wait_for_metric(&pg, "pollgate_push_connections{transport=\"wait\"}", 1.0).await;
    let t0 = Instant::now();
    pg.publish("a 4\n").await;
    let (st, h, body) = waiting.await.unwrap();
    assert!(t0.elapsed() < SEC, "{:?}", t0.elapsed());
    assert_eq!(
        (st, body.trim()),
        (
            StatusCode::OK,
            &*format!("{{\"stale\":[{}]}}", stale("a", 4))
        )
    );
    assert_eq!(h["content-type"], "application/json");

    // timeout=30 is capped at wait_max_timeout (1 s).
    let t0 = Instant::now();
    let (st, _, _) = get(&pg.url("/pollgate/v1/wait?keys=a:4&timeout=30")).await;
    assert_eq!(st, StatusCode::NOT_MODIFIED);
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < 3 * SEC,
        "{took:?}"
    );
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn websocket_watch_unwatch_and_notices() {
    let (up, pg) = started(&[]).await;
    pg.publish("a 1\nb 1\ns1 1\ns2 1\n").await;
    let mut ws = ws_connect(pg.public).await.unwrap();
    ws_watch(&mut ws, r#""a":1,"b":1"#, "s1").await;
    let t0 = Instant::now();
    pg.publish("a 2\n").await;
    assert_eq!(ws_text(&mut ws, SEC).await, Some(ws_stale("a", 2)));
    assert!(t0.elapsed() < SEC, "{:?}", t0.elapsed());

    ws.send(Message::text(r#"{"op":"unwatch","keys":["a"]}"#))
        .await
        .unwrap();
    ws_watch(&mut ws, r#""b":1"#, "s2").await;
    pg.publish("a 3\nb 2\n").await;
    assert_eq!(
        ws_text(&mut ws, SEC).await,
        Some(ws_stale("b", 2)),
        "a was unwatched"
    );
    assert_eq!(
        metric(&pg, "pollgate_push_connections{transport=\"ws\"}").await,
        1.0
    );
    ws.close(None).await.unwrap();
    wait_for_metric(&pg, "pollgate_push_connections{transport=\"ws\"}", 0.0).await;
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn heartbeats_arrive_at_the_configured_interval() {
    let (_up, pg) = started(&["--heartbeat-interval", "200ms", "--ghost-timeout", "2s"]).await;
    let mut s = sse(&pg, "a:0").await;
    let mut beats = Vec::new();
    while beats.len() < 4 {
        let block = s.next_block(SEC).await.expect("a heartbeat within 1 s");
        if block == ": hb" {
            beats.push(Instant::now());
        }
    }
    for w in beats.windows(2) {
        let gap = w[1] - w[0];
        assert!(
            gap >= Duration::from_millis(150) && gap < Duration::from_millis(450),
            "SSE heartbeat gap {gap:?}"
        );
    }

    let mut ws = ws_connect(pg.public).await.unwrap();
    let mut pings = Vec::new();
    while pings.len() < 4 {
        match tokio::time::timeout(SEC, ws.next()).await {
            Ok(Some(Ok(Message::Ping(_)))) => pings.push(Instant::now()),
            Ok(Some(Ok(_))) => {}
            other => panic!("expected a ping within 1 s, got {other:?}"),
        }
    }
    for w in pings.windows(2) {
        let gap = w[1] - w[0];
        assert!(
            gap >= Duration::from_millis(150) && gap < Duration::from_millis(450),
            "WebSocket ping gap {gap:?}"
        );
    }
}

#[tokio::test]
async fn a_websocket_that_stops_answering_pings_is_reaped() {
    let (_up, pg) = started(&["--heartbeat-interval", "100ms", "--ghost-timeout", "300ms"]).await;
    pg.publish("s 1\nk 1\n").await;
    // Never polled, so it never answers a ping: a ghost.
    let ghost = ws_connect(pg.public).await.unwrap();
    // Reads (and so answers pings) the whole time.
    let mut healthy = ws_connect(pg.public).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    ws_watch(&mut healthy, r#""k":1"#, "s").await;
    let reader = tokio::spawn(async move {
        while let Some(Ok(m)) = healthy.next().await {
            if let Message::Text(t) = m {
                let _ = tx.send(t.to_string());
            }
        }
    });
    wait_for_metric(&pg, "pollgate_push_ghosts_reaped_total", 1.0).await;
    wait_for_metric(&pg, "pollgate_push_connections{transport=\"ws\"}", 1.0).await;
    // The healthy one survived many ghost timeouts and still gets notices.
    pg.publish("k 2\n").await;
    let got = tokio::time::timeout(SEC, rx.recv()).await.unwrap();
    assert_eq!(got, Some(ws_stale("k", 2)));
    assert_eq!(metric(&pg, "pollgate_push_ghosts_reaped_total").await, 1.0);
    reader.abort();
    drop(ghost);
}

#[tokio::test]
async fn admission_refuses_past_the_bucket_with_retry_after() {
    let flags = ["--push-admission-burst", "3", "--push-admission-per-s", "1"];
    let (up, pg) = started(&flags).await;
    pg.publish("p 1\n").await;
    let (_, h, _) = get(&pg.url("/projects/p/changes?since=1")).await;
    assert_eq!(h["x-poll-interval"], "60", "push healthy: long hint");
    let open: Vec<Stream> = futures_util::future::join_all((0..3).map(|_| sse(&pg, "a:0"))).await;

    let refused = Stream::open(&pg.url("/pollgate/v1/watch?keys=a:0")).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    let retry: u64 = refused.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=10).contains(&retry), "{retry}");
    let (st, h, _) = get(&pg.url("/pollgate/v1/wait?keys=a:0")).await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE);
    assert!(h.contains_key("retry-after"));
    match ws_connect(pg.public).await {
        Err(WsError::Http(resp)) => {
            assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert!(resp.headers().contains_key("retry-after"));
        }
        other => panic!("upgrade should be refused, got {:?}", other.map(|_| ())),
    }
    assert!(metric(&pg, "pollgate_push_refused_total{reason=\"rate\"}").await >= 3.0);
    assert_eq!(metric(&pg, "pollgate_push_admitted_total").await, 3.0);
    // While refusing, polls are told to poll often again.
    let (_, h, _) = get(&pg.url("/projects/p/changes?since=1")).await;
    assert_eq!(h["x-poll-interval"], "5", "push refusing: short hint");
    drop(open);
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn the_connection_cap_refuses_with_retry_after() {
    let (_up, pg) = started(&["--push-max-connections", "2"]).await;
    let _open = (sse(&pg, "a:0").await, sse(&pg, "b:0").await);
    let refused = Stream::open(&pg.url("/pollgate/v1/watch?keys=a:0")).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(refused.headers.contains_key("retry-after"));
    assert_eq!(
        metric(&pg, "pollgate_push_refused_total{reason=\"full\"}").await,
        1.0
    );
}

#[tokio::test]
async fn push_off_means_404_and_the_short_hint() {
    let (_up, pg) = started(&["--push", "false"]).await;
    pg.publish("p 1\n").await;
    let (st, _, _) = get(&pg.url("/pollgate/v1/watch?keys=a:0")).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (_, h, _) = get(&pg.url("/projects/p/changes?since=1")).await;
    assert_eq!(h["x-poll-interval"], "5");
}

#[tokio::test]
async fn bad_watches_are_400_with_a_reason() {
    let (up, pg) = started(&["--max-keys-per-watch", "3"]).await;
    let cases = [
        ("", "keys is required"),
        ("keys=a", "needs the version"),
        ("keys=a:x", "version must be"),
        ("keys=a:-1", "version must be"),
        ("keys=a/b:1", "key must be"),
        ("keys=a:1,,b:2", "\"\": each key needs"),
        ("keys=a:1,b:1,c:1,d:1", "at most 3"),
        ("keys=a:1&timeout=soon", "timeout"),
    ];
    for (q, why) in cases {
        let paths = ["watch", "wait"];
        for p in paths
            .iter()
            .filter(|p| !(q.contains("timeout") && **p == "watch"))
        {
            let (st, _, body) = get(&pg.url(&format!("/pollgate/v1/{p}?{q}"))).await;
            assert_eq!(st, StatusCode::BAD_REQUEST, "{p}?{q}: {body}");
            assert!(body.contains(why), "{p}?{q}: {body:?} lacks {why:?}");
        }
    }
    let (st, _, _) = send("POST", &pg.url("/pollgate/v1/watch?keys=a:1"), &[], vec![]).await;
    assert_eq!(st, StatusCode::METHOD_NOT_ALLOWED);
    let (st, _, body) = get(&pg.url("/pollgate/v1/ws")).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(metric(&pg, "pollgate_push_admitted_total").await, 0.0);
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn malformed_websocket_frames_are_closed_with_a_reason() {
    let (_up, pg) = started(&["--max-keys-per-watch", "2"]).await;
    let big = format!(
        r#"{{"op":"watch","keys":{{"a":1}},"pad":"{}"}}"#,
        "x".repeat(70_000)
    );
    let cases: Vec<(Message, CloseCode, &str)> = vec![
        (Message::text("not json"), CloseCode::Policy, "bad command"),
        (
            Message::text(r#"{"op":"dance"}"#),
            CloseCode::Policy,
            "unknown variant",
        ),
        (
            Message::text(r#"{"op":"watch","keys":{"a/b":1}}"#),
            CloseCode::Policy,
            "key must be",
        ),
        (
            Message::text(r#"{"op":"watch","keys":{"a":"x"}}"#),
            CloseCode::Policy,
            "bad command",
        ),
        (
            Message::text(r#"{"op":"watch","keys":{"a":1,"b":1,"c":1}}"#),
            CloseCode::Policy,
            "too many keys",
        ),
        (
            Message::binary(vec![1, 2, 3]),
            CloseCode::Unsupported,
            "binary",
        ),
        (Message::text(big), CloseCode::Size, "too big"),
    ];
    for (msg, code, why) in cases {
        let mut ws = ws_connect(pg.public).await.unwrap();
        ws.send(msg).await.unwrap();
        let (got, reason) = ws_close(&mut ws, 2 * SEC).await.expect("a close frame");
        assert_eq!(got, code, "{reason}");
        assert!(reason.contains(why), "{reason:?} lacks {why:?}");
    }
    wait_for_metric(&pg, "pollgate_push_connections{transport=\"ws\"}", 0.0).await;
    assert_eq!(get(&pg.internal_url("/healthz")).await.0, StatusCode::OK);
}

#[tokio::test]
async fn sigterm_ends_every_push_stream_with_a_retry_hint_and_exits_fast() {
    let (up, mut pg) = started(&["--grace-period", "10s"]).await;
    pg.publish("s 1\n").await;
    let mut s = sse(&pg, "a:0").await;
    assert!(s.next_block(SEC).await.unwrap().starts_with("retry: "));
    let mut ws = ws_connect(pg.public).await.unwrap();
    ws_watch(&mut ws, r#""a":0"#, "s").await;
    let url = pg.url("/pollgate/v1/wait?keys=a:0&timeout=60");
    let waiting = tokio::spawn(async move { get(&url).await });
    wait_for_metric(&pg, "pollgate_push_connections{transport=\"wait\"}", 1.0).await;

    let t0 = Instant::now();
    pg.signal("-TERM");
    let last = s.next_block(3 * SEC).await.expect("a final SSE block");
    let ms: u64 = last
        .lines()
        .find_map(|l| l.strip_prefix("retry: "))
        .unwrap()
        .parse()
        .unwrap();
    assert!((1000..10_000).contains(&ms), "SSE retry {ms}");
    assert!(s.ends_within(3 * SEC).await, "SSE stream ends itself");

    let (code, reason) = ws_close(&mut ws, 3 * SEC).await.expect("a close frame");
    assert_eq!(code, CloseCode::Restart);
    let ms: u64 = reason.strip_prefix("retry_ms=").unwrap().parse().unwrap();
    assert!((1000..10_000).contains(&ms), "WebSocket retry {ms}");

    let (st, h, _) = waiting.await.unwrap();
    assert_eq!(st, StatusCode::NOT_MODIFIED);
    assert!(h.contains_key("retry-after"));

    let status = pg.wait_exit(5 * SEC);
    assert!(status.success(), "{status:?}");
    assert!(
        t0.elapsed() < 5 * SEC,
        "exit took {:?} of a 10 s grace",
        t0.elapsed()
    );
    assert_eq!(up.hits(), 0);
}

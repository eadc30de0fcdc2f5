//! Live reload against a real process: a publish token rotated by editing
//! the config file and sending SIGHUP while a client publishes throughout,
//! a broken file refused whole, restart-only keys named.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::rotation::{accepted, publish, rotate_publish_token_under_load};
use common::{eventually, loopback_args, send, Pollgate};

const ADMIN: &str = "admin-secret";
const WAIT: Duration = Duration::from_secs(10);

fn start(file: &Path) -> Pollgate {
    Pollgate::start_args(&loopback_args(&["--config", file.to_str().unwrap()]))
}

fn write(file: &Path, publish_tokens: &[&str], extra: &str) {
    let tokens: Vec<String> = publish_tokens.iter().map(|t| format!("{t:?}")).collect();
    let text = format!(
        "publish_token = [{}]\nadmin_token = {ADMIN:?}\n{extra}",
        tokens.join(", ")
    );
    std::fs::write(file, text).unwrap();
}

async fn reload(pg: &Pollgate) -> (u16, String) {
    let auth = format!("Bearer {ADMIN}");
    let (s, _, b) = send(
        "POST",
        &pg.internal_url("/v1/reload"),
        &[("authorization", &auth)],
        vec![],
    )
    .await;
    (s.as_u16(), b)
}

fn logged(pg: &Pollgate, needle: &str) -> bool {
    pg.log.lock().iter().any(|l| l.contains(needle))
}

#[tokio::test]
async fn a_publish_token_rotates_on_sighup_without_a_failed_publish() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pollgate.toml");
    write(&file, &["old-token"], "");
    let pg = Arc::new(start(&file));

    rotate_publish_token_under_load(pg.clone(), |tokens| write(&file, tokens, "")).await;
    // The harness reads stderr on another thread: wait for the line.
    assert!(eventually(WAIT, || async { logged(&pg, "config reloaded") }).await);
}

#[tokio::test]
async fn a_broken_file_is_refused_whole_and_nothing_changes() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pollgate.toml");
    write(&file, &["old-token"], "");
    let pg = start(&file);
    // A new token beside a bad value: neither may take effect.
    write(&file, &["new-token"], "max_age = \"soon\"\n");
    let (status, body) = reload(&pg).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("max_age"), "names the bad key: {body}");
    pg.signal("-HUP");
    let refused = eventually(Duration::from_secs(10), || async {
        logged(&pg, "config refused")
    })
    .await;
    assert!(refused);
    assert!(accepted(&pg, "old-token").await, "old token still valid");
    assert_eq!(publish(&pg, "new-token", "k 1\n").await, 401);
}

#[tokio::test]
async fn keys_that_cannot_change_live_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pollgate.toml");
    write(&file, &["t"], "");
    let pg = start(&file);
    write(
        &file,
        &["t"],
        "max_age = \"5s\"\nupstream_max_inflight = 3\n",
    );
    let (status, body) = reload(&pg).await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["restart_needed"],
        serde_json::json!(["upstream_max_inflight", "max_age"])
    );
    assert!(
        v["why"]["max_age"]
            .as_str()
            .unwrap()
            .contains("PUT /v1/config"),
        "{body}"
    );
    assert!(
        v["why"]["upstream_max_inflight"]
            .as_str()
            .unwrap()
            .contains("at start"),
        "{body}"
    );
    assert_eq!(v["changed"], serde_json::json!([]));
    // Set by a flag: the file cannot change it, and the answer says so.
    assert_eq!(v["pinned"], serde_json::json!(["upstream"]), "{body}");
    // The log line is read from stderr by another thread: it may trail the answer.
    assert!(eventually(WAIT, || async { logged(&pg, "restart_needed") }).await);
    // Reload is an admin action.
    let (s, _, _) = send("POST", &pg.internal_url("/v1/reload"), &[], vec![]).await;
    assert_eq!(s, 401);
}

/// A config file with the admin token and `body` (TOML lines).
fn write_config(file: &Path, body: &str) {
    std::fs::write(
        file,
        format!("admin_token = {ADMIN:?}\npublish_token = \"p\"\n{body}"),
    )
    .unwrap();
}

/// pollgate with everything from the file (nothing pinned by flags).
fn start_from_file(file: &Path) -> Pollgate {
    Pollgate::start_args(&["--config", file.to_str().unwrap()])
}

fn listeners() -> &'static str {
    "listen = \"127.0.0.1:0\"\ninternal_listen = \"127.0.0.1:0\"\n"
}

async fn get_with(url: &str, headers: &[(&str, &str)]) -> (u16, http::HeaderMap) {
    let (s, h, _) = send("GET", url, headers, vec![]).await;
    (s.as_u16(), h)
}

fn reloads_logged(pg: &Pollgate) -> usize {
    pg.log
        .lock()
        .iter()
        .filter(|l| l.contains("config reloaded"))
        .count()
}

/// A WebSocket watching `key` from version 1, its watch known to be in
/// place: the sync key `w` (published at 1, watched from 0) answered first.
async fn ws_watching(pg: &Pollgate, key: &str) -> common::WsClient {
    use futures_util::SinkExt;
    assert_eq!(publish(pg, "p", "w 1\n").await, 200);
    let mut ws = common::ws_connect(pg.public).await.unwrap();
    let watch = format!(r#"{{"op":"watch","keys":{{"{key}":1,"w":0}}}}"#);
    ws.send(tokio_tungstenite::tungstenite::Message::text(watch))
        .await
        .unwrap();
    assert_eq!(
        ws_next_text(&mut ws).await,
        r#"{"op":"stale","key":"w","version":1}"#
    );
    ws
}

/// The next text message (pings skipped), or a panic after `WAIT`.
async fn ws_next_text(ws: &mut common::WsClient) -> String {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return t.to_string(),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            other => panic!("no text message: {other:?}"),
        }
    }
}

#[tokio::test]
async fn routes_upstreams_cors_and_limits_change_on_sighup_and_open_streams_go_on() {
    let (a, b) = (
        common::Upstream::start().await,
        common::Upstream::start().await,
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pollgate.toml");
    let before = format!("{}upstream = [{:?}]\n", listeners(), a.url());
    write_config(&file, &before);
    let pg = start_from_file(&file);
    // A push stream and a keep-alive poller opened before the reload.
    let mut stream = common::Stream::open(&pg.url("/pollgate/v1/watch?keys=k:1")).await;
    assert_eq!(stream.status, 200);
    let mut ws = ws_watching(&pg, "k").await;
    assert_eq!(get_with(&pg.url("/p/k?v=1"), &[]).await.0, 200);
    assert_eq!((a.hits(), b.hits()), (1, 0), "/p/... is pass-through to a");

    let after = format!(
        "{}upstream = [{:?}]\nroute = [\"/projects/{{key}}/changes?since={{version}}\", \"/p/{{key}}?v={{version}}\"]\n\
         cors_origins = [\"https://app.example\"]\nclient_rate_per_s = 1\nclient_burst = 1\n",
        listeners(),
        b.url()
    );
    write_config(&file, &after);
    pg.signal("-HUP");
    assert!(eventually(WAIT, || async { reloads_logged(&pg) == 1 }).await);
    assert!(
        logged(
            &pg,
            r#"changed=["upstream", "client_rate_per_s", "client_burst", "route", "cors_origins"]"#
        ),
        "{:?}",
        pg.log.lock()
    );

    // The new route: a published version is answered from memory.
    assert_eq!(publish(&pg, "p", "k 3\n").await, 200);
    let (s, h) = get_with(&pg.url("/p/k?v=3"), &[]).await;
    assert_eq!((s, h["x-pollgate"].to_str().unwrap()), (304, "hit"));
    // The new upstream, and the per-client limit (burst 1) behind it.
    assert_eq!(get_with(&pg.url("/elsewhere"), &[]).await.0, 200);
    assert_eq!((a.hits(), b.hits()), (1, 1), "forwarded to b only");
    assert_eq!(get_with(&pg.url("/elsewhere"), &[]).await.0, 429);
    // CORS for the listed origin.
    let preflight = [
        ("origin", "https://app.example"),
        ("access-control-request-method", "GET"),
    ];
    let (s, _, _) = send("OPTIONS", &pg.url("/p/k?v=3"), &preflight, vec![]).await;
    assert_eq!(s, 204);
    // The stream opened before the reload still delivers.
    let notice = stream
        .next_stale(WAIT)
        .await
        .expect("stale notice on the old stream");
    assert!(notice.contains("\"version\":3"), "{notice}");
    let ws_notice = ws_next_text(&mut ws).await;
    assert_eq!(ws_notice, r#"{"op":"stale","key":"k","version":3}"#);
}

#[tokio::test]
async fn log_level_changes_live_unless_rust_log_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pollgate.toml");
    // A dead upstream: each pass-through is a 502 logged "upstream error" at debug.
    let body = format!("{}upstream = [\"http://127.0.0.1:9\"]\n", listeners());
    write_config(&file, &body);
    let pg = Pollgate::start_env(&["--config", file.to_str().unwrap()], &[]);
    assert_eq!(get_with(&pg.url("/x"), &[]).await.0, 502);
    write_config(&file, &format!("{body}log_level = \"debug\"\n"));
    let (status, answer) = reload(&pg).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("\"changed\":[\"log_level\"]"), "{answer}");
    assert!(!logged(&pg, "upstream error"), "not at info");
    assert_eq!(get_with(&pg.url("/x"), &[]).await.0, 502);
    assert!(eventually(WAIT, || async { logged(&pg, "upstream error") }).await);

    // With RUST_LOG the environment wins, and the answer says so.
    let pinned = Pollgate::start_env(
        &["--config", file.to_str().unwrap()],
        &[("RUST_LOG", "info")],
    );
    write_config(&file, &format!("{body}log_level = \"warn\"\n"));
    let (_, answer) = reload(&pinned).await;
    let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(
        v["restart_needed"],
        serde_json::json!(["log_level"]),
        "{answer}"
    );
    assert!(
        v["why"]["log_level"].as_str().unwrap().contains("RUST_LOG"),
        "{answer}"
    );
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A replica's config: its own internal port, the other as its peer.
fn replica_config(file: &Path, port: u16, peer: u16, keys: &[&str]) {
    let keys: Vec<String> = keys.iter().map(|k| format!("{k:?}")).collect();
    replica_config_with(
        file,
        port,
        peer,
        &format!("cluster_key = [{}]", keys.join(", ")),
    );
}

/// A replica on internal port `port` gossiping with `peer`, plus `line`.
fn replica_config_with(file: &Path, port: u16, peer: u16, line: &str) {
    let body = format!(
        "listen = \"127.0.0.1:0\"\ninternal_listen = \"127.0.0.1:{port}\"\nupstream = [\"http://127.0.0.1:9\"]\n\
         peer = [\"127.0.0.1:{peer}\"]\n{line}\n"
    );
    write_config(file, &body);
}

async fn version_at(pg: &Pollgate, key: &str) -> Option<u64> {
    let (s, _, body) = send(
        "GET",
        &pg.internal_url(&format!("/v1/versions/{key}")),
        &[],
        vec![],
    )
    .await;
    let v: serde_json::Value = serde_json::from_str(&body).ok().filter(|_| s == 200)?;
    v["version"].as_u64()
}

#[tokio::test]
async fn cluster_key_rotates_across_replicas_without_a_refused_message() {
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb) = (free_port(), free_port());
    let (fa, fb) = (dir.path().join("a.toml"), dir.path().join("b.toml"));
    replica_config(&fa, pa, pb, &["old"]);
    replica_config(&fb, pb, pa, &["old"]);
    let (a, b) = (start_from_file(&fa), start_from_file(&fb));
    let steps: [&[&str]; 3] = [&["old", "new"], &["new", "old"], &["new"]];
    for (n, keys) in steps.iter().enumerate() {
        // One replica at a time, as an operator would: the other still runs
        // the previous step, and gossip between them must keep working.
        for (file, port, peer, pg) in [(&fa, pa, pb, &a), (&fb, pb, pa, &b)] {
            replica_config(file, port, peer, keys);
            let (status, body) = reload(pg).await;
            assert_eq!(status, 200, "{body}");
            assert!(body.contains("\"changed\":[\"cluster_key\"]"), "{body}");
            let v = (n * 2 + 1) as u64 + u64::from(port == pb);
            assert_eq!(publish(pg, "p", &format!("k {v}\n")).await, 200);
            let other = if port == pa { &b } else { &a };
            assert!(
                eventually(WAIT, || async { version_at(other, "k").await == Some(v) }).await,
                "step {n}: version {v} did not cross"
            );
        }
    }
    for pg in [&a, &b] {
        assert_eq!(
            pg.metric("pollgate_cluster_rejected_total{reason=\"bad_mac\"}")
                .await,
            0.0
        );
    }
}

async fn reload_as(pg: &Pollgate, token: &str) -> u16 {
    let auth = format!("Bearer {token}");
    let url = pg.internal_url("/v1/reload");
    send("POST", &url, &[("authorization", &auth)], vec![])
        .await
        .0
        .as_u16()
}

#[tokio::test]
async fn the_admin_token_rotates_through_its_own_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pollgate.toml");
    write(&file, &["p"], "");
    let pg = start(&file);
    let both = format!("admin_token = [{ADMIN:?}, \"next-admin\"]\n");
    std::fs::write(&file, format!("publish_token = \"p\"\n{both}")).unwrap();
    assert_eq!(reload_as(&pg, ADMIN).await, 200);
    assert_eq!(reload_as(&pg, "next-admin").await, 200, "both valid");
    std::fs::write(
        &file,
        "publish_token = \"p\"\nadmin_token = \"next-admin\"\n",
    )
    .unwrap();
    assert_eq!(reload_as(&pg, "next-admin").await, 200);
    assert_eq!(reload_as(&pg, ADMIN).await, 401, "the old one retired");
}

#[tokio::test]
async fn removing_the_cluster_key_waits_for_a_restart_and_gossip_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb) = (free_port(), free_port());
    let (fa, fb) = (dir.path().join("a.toml"), dir.path().join("b.toml"));
    replica_config(&fa, pa, pb, &["k3y"]);
    replica_config(&fb, pb, pa, &["k3y"]);
    let (a, b) = (start_from_file(&fa), start_from_file(&fb));
    // A's file drops the key (allowed with insecure_cluster): restart-only,
    // so A must go on signing with the key B still checks.
    replica_config_with(&fa, pa, pb, "insecure_cluster = true");
    let (status, answer) = reload(&a).await;
    assert_eq!(status, 200, "{answer}");
    let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert!(
        v["restart_needed"]
            .as_array()
            .unwrap()
            .contains(&"cluster_key".into()),
        "{answer}"
    );
    assert_eq!(publish(&a, "p", "k 7\n").await, 200);
    let crossed = eventually(WAIT, || async { version_at(&b, "k").await == Some(7) }).await;
    assert!(crossed, "gossip from A refused after the reload");
}

//! Live reload against a real process: a publish token rotated by editing
//! the config file and sending SIGHUP while a client publishes throughout,
//! a broken file refused whole, restart-only keys named.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{eventually, send, Pollgate};
use parking_lot::Mutex;

const ADMIN: &str = "admin-secret";

fn start(file: &Path) -> Pollgate {
    Pollgate::start_args(&[
        "--listen",
        "127.0.0.1:0",
        "--internal-listen",
        "127.0.0.1:0",
        "--upstream",
        "http://127.0.0.1:9",
        "--config",
        file.to_str().unwrap(),
    ])
}

fn write(file: &Path, publish_tokens: &[&str], extra: &str) {
    let tokens: Vec<String> = publish_tokens.iter().map(|t| format!("{t:?}")).collect();
    let text = format!(
        "publish_token = [{}]\nadmin_token = {ADMIN:?}\n{extra}",
        tokens.join(", ")
    );
    std::fs::write(file, text).unwrap();
}

async fn publish(pg: &Pollgate, token: &str, body: &str) -> u16 {
    let auth = format!("Bearer {token}");
    let url = pg.internal_url("/v1/versions");
    let headers = [
        ("authorization", auth.as_str()),
        ("content-type", "text/plain"),
    ];
    send("POST", &url, &headers, body.as_bytes().to_vec())
        .await
        .0
        .as_u16()
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

    // The app publishes continuously with whatever token it holds.
    let token = Arc::new(Mutex::new("old-token".to_string()));
    let (sent, failed) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(Mutex::new(Vec::new())),
    );
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let app = {
        let (pg, token, sent, failed, stop) = (
            pg.clone(),
            token.clone(),
            sent.clone(),
            failed.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            for v in 1..=20_000u64 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let t = token.lock().clone();
                let status = publish(&pg, &t, &format!("k {v}\n")).await;
                sent.fetch_add(1, Ordering::Relaxed);
                if status != 200 {
                    failed.lock().push((v, t, status));
                }
            }
        })
    };
    let progressed = |n: usize| {
        let sent = sent.clone();
        async move {
            eventually(Duration::from_secs(10), || async {
                sent.load(Ordering::Relaxed) >= n
            })
            .await
        }
    };
    assert!(progressed(20).await);

    // 1. Both tokens valid: the new one works once the reload is applied.
    write(&file, &["old-token", "new-token"], "");
    pg.signal("-HUP");
    let both = eventually(Duration::from_secs(10), || accepted(&pg, "new-token")).await;
    assert!(both, "new token accepted after SIGHUP");
    // 2. The app switches to the new token.
    *token.lock() = "new-token".into();
    let at_switch = sent.load(Ordering::Relaxed);
    assert!(progressed(at_switch + 20).await);
    // 3. The old token is retired.
    write(&file, &["new-token"], "");
    pg.signal("-HUP");
    let retired = eventually(Duration::from_secs(10), || async {
        publish(&pg, "old-token", "k 0\n").await == 401
    })
    .await;
    assert!(retired, "old token refused after the second SIGHUP");
    let at_retire = sent.load(Ordering::Relaxed);
    assert!(progressed(at_retire + 20).await);
    stop.store(true, Ordering::Relaxed);
    app.await.unwrap();

    assert_eq!(
        *failed.lock(),
        Vec::new(),
        "no publish failed during the rotation"
    );
    assert!(logged(&pg, "config reloaded"));
}

async fn accepted(pg: &Pollgate, token: &str) -> bool {
    publish(pg, token, "k 1\n").await == 200
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
    assert_eq!(v["changed"], serde_json::json!([]));
    assert!(logged(&pg, "restart_needed"));
    // Reload is an admin action.
    let (s, _, _) = send("POST", &pg.internal_url("/v1/reload"), &[], vec![]).await;
    assert_eq!(s, 401);
}

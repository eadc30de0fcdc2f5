//! A publish token rotated while an app publishes without pause: the
//! scenario the reload and secret-file tests share. Only how the new token
//! list reaches pollgate differs (a config file or a secret file), so the
//! test passes that as `set_tokens`.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::{eventually, send, Pollgate};

const WAIT: Duration = Duration::from_secs(10);

/// `POST /v1/versions` with `token`; the status.
pub async fn publish(pg: &Pollgate, token: &str, body: &str) -> u16 {
    let auth = format!("Bearer {token}");
    let headers = [
        ("authorization", auth.as_str()),
        ("content-type", "text/plain"),
    ];
    let url = pg.internal_url("/v1/versions");
    send("POST", &url, &headers, body.as_bytes().to_vec())
        .await
        .0
        .as_u16()
}

/// Whether `token` may publish now.
pub async fn accepted(pg: &Pollgate, token: &str) -> bool {
    publish(pg, token, "k 1\n").await == 200
}

/// Rotates the publish token from `old-token` to `new-token` in the three
/// steps an operator takes (add the new one, switch the app, retire the
/// old one), each applied by SIGHUP after `set_tokens` wrote the list.
/// Asserts each step took effect and that none of the app's publishes
/// failed meanwhile.
pub async fn rotate_publish_token_under_load(pg: Arc<Pollgate>, set_tokens: impl Fn(&[&str])) {
    let app = App::start(pg.clone(), "old-token");
    assert!(app.progressed(20).await);
    // 1. Both tokens valid: the new one works once the reload is applied.
    set_tokens(&["new-token", "old-token"]);
    pg.signal("-HUP");
    let both = eventually(WAIT, || accepted(&pg, "new-token")).await;
    assert!(both, "new token accepted after SIGHUP");
    // 2. The app switches to the new token.
    *app.token.lock() = "new-token".into();
    assert!(app.progressed(20).await);
    // 3. The old token is retired.
    set_tokens(&["new-token"]);
    pg.signal("-HUP");
    let retired = eventually(WAIT, || async {
        publish(&pg, "old-token", "k 0\n").await == 401
    })
    .await;
    assert!(retired, "old token refused after the second SIGHUP");
    assert!(app.progressed(20).await);
    let failed = app.stop().await;
    assert_eq!(failed, Vec::new(), "no publish failed during the rotation");
}

/// What a refused publish was: its version, token and status.
type Failure = (u64, String, u16);

/// An app publishing `k 1`, `k 2`, … back to back with whatever token it
/// holds, recording every publish that was not 200.
struct App {
    token: Arc<Mutex<String>>,
    sent: Arc<AtomicUsize>,
    failed: Arc<Mutex<Vec<Failure>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl App {
    fn start(pg: Arc<Pollgate>, token: &str) -> App {
        let token = Arc::new(Mutex::new(token.to_string()));
        let sent = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (t, s, f, st) = (token.clone(), sent.clone(), failed.clone(), stop.clone());
        let task = tokio::spawn(async move {
            for v in 1..=50_000u64 {
                if st.load(Ordering::Relaxed) {
                    break;
                }
                let tok = t.lock().clone();
                let status = publish(&pg, &tok, &format!("k {v}\n")).await;
                s.fetch_add(1, Ordering::Relaxed);
                if status != 200 {
                    f.lock().push((v, tok, status));
                }
            }
        });
        App {
            token,
            sent,
            failed,
            stop,
            task,
        }
    }

    /// Whether `n` more publishes went out within the wait.
    async fn progressed(&self, n: usize) -> bool {
        let want = self.sent.load(Ordering::Relaxed) + n;
        eventually(WAIT, || async { self.sent.load(Ordering::Relaxed) >= want }).await
    }

    /// Stops publishing; the publishes that failed.
    async fn stop(self) -> Vec<Failure> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        let failed = self.failed.lock().clone();
        failed
    }
}

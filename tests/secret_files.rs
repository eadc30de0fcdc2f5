//! Secrets from files (`publish_token_file`, …) against a real process: a
//! token read from a file works, rotates through the file with SIGHUP while
//! a client publishes throughout, and is picked up with no signal at all
//! (as the kubelet updates a mounted Secret); a broken file stops start-up
//! with exit 64 naming the key and the path, and a reload that meets one
//! changes nothing.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::rotation::{accepted, publish, rotate_publish_token_under_load};
use common::{eventually, loopback_args, send, Pollgate};

const WAIT: Duration = Duration::from_secs(10);

/// Writes `lines` to `path` as a secret file (mode 0600), replacing it in
/// one rename as the kubelet does, so no reader ever sees half a file.
fn write_secret(path: &Path, lines: &[&str]) {
    write_mode(path, &lines.join("\n"), 0o600);
}

fn write_mode(path: &Path, text: &str, mode: u32) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{text}\n")).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

struct Files {
    _dir: tempfile::TempDir,
    publish: PathBuf,
    admin: PathBuf,
}

impl Files {
    fn new(publish: &[&str], admin: &[&str]) -> Files {
        let dir = tempfile::tempdir().unwrap();
        let files = Files {
            publish: dir.path().join("publish_token"),
            admin: dir.path().join("admin_token"),
            _dir: dir,
        };
        write_secret(&files.publish, publish);
        write_secret(&files.admin, admin);
        files
    }

    fn start(&self) -> Pollgate {
        Pollgate::start_args(&loopback_args(&[
            "--publish-token-file",
            self.publish.to_str().unwrap(),
            "--admin-token-file",
            self.admin.to_str().unwrap(),
        ]))
    }
}

async fn reload(pg: &Pollgate, admin: &str) -> (u16, String) {
    let auth = format!("Bearer {admin}");
    let url = pg.internal_url("/v1/reload");
    let (s, _, b) = send("POST", &url, &[("authorization", &auth)], vec![]).await;
    (s.as_u16(), b)
}

fn logged(pg: &Pollgate, needle: &str) -> bool {
    pg.log.lock().iter().any(|l| l.contains(needle))
}

#[tokio::test]
async fn tokens_from_files_are_used_and_never_printed() {
    let files = Files::new(&["pub-secret"], &["admin-secret"]);
    let pg = files.start();
    assert!(accepted(&pg, "pub-secret").await);
    assert_eq!(publish(&pg, "other", "k 1\n").await, 401);
    assert_eq!(reload(&pg, "admin-secret").await.0, 200);
    assert_eq!(reload(&pg, "pub-secret").await.0, 401);

    let out = Command::new(env!("CARGO_BIN_EXE_pollgate"))
        .args(["--publish-token-file", files.publish.to_str().unwrap()])
        .arg("--print-config")
        .env_remove("POLLGATE_PUBLISH_TOKEN")
        .output()
        .unwrap();
    let printed = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{printed}");
    assert!(!printed.contains("pub-secret"), "{printed}");
    let line = format!("publish_token_file = {:?}", files.publish.to_str().unwrap());
    assert!(printed.contains(&line), "{printed}");
}

#[tokio::test]
async fn a_token_rotates_through_its_file_on_sighup_without_a_failed_publish() {
    let files = Files::new(&["old-token"], &["admin"]);
    let pg = Arc::new(files.start());
    rotate_publish_token_under_load(pg, |tokens| write_secret(&files.publish, tokens)).await;
}

#[tokio::test]
async fn a_file_updated_without_a_signal_is_picked_up() {
    let files = Files::new(&["old-token"], &["admin"]);
    let pg = files.start();
    assert!(accepted(&pg, "old-token").await);
    // As the kubelet updates a mounted Secret: replaced, nobody signalled.
    write_secret(&files.publish, &["new-token"]);
    assert!(eventually(WAIT, || accepted(&pg, "new-token")).await);
    assert_eq!(publish(&pg, "old-token", "k 2\n").await, 401);
    // Logged once applied, and read from stderr by another thread.
    assert!(eventually(WAIT, || async { logged(&pg, "a secret file changed") }).await);
}

#[tokio::test]
async fn a_reload_reads_a_secret_file_the_config_file_now_names() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    write_secret(&a, &["token-a"]);
    write_secret(&b, &["token-b"]);
    let config = dir.path().join("pollgate.toml");
    let write_config = |token_file: &Path| {
        let text = format!(
            "listen = \"127.0.0.1:0\"\ninternal_listen = \"127.0.0.1:0\"\nadmin_token = \"admin\"\npublish_token_file = {:?}\n",
            token_file.to_str().unwrap()
        );
        std::fs::write(&config, text).unwrap();
    };
    write_config(&a);
    let pg = Pollgate::start_args(&["--config", config.to_str().unwrap()]);
    assert!(accepted(&pg, "token-a").await);
    // The periodic check reads the running config's path (a): only a
    // reload, which re-reads the config file, can move to b.
    write_config(&b);
    let (status, body) = reload(&pg, "admin").await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["changed"],
        serde_json::json!(["publish_token", "publish_token_file"]),
        "{body}"
    );
    assert!(accepted(&pg, "token-b").await);
    assert_eq!(publish(&pg, "token-a", "k 2\n").await, 401);
}

#[tokio::test]
async fn a_reload_that_meets_a_broken_file_changes_nothing() {
    let files = Files::new(&["pub"], &["admin"]);
    let pg = files.start();
    // The publish file breaks first, then a new admin token arrives: the
    // admin change must not be applied while the publish file is broken.
    write_mode(&files.publish, "", 0o600);
    write_secret(&files.admin, &["next-admin"]);
    let (status, body) = reload(&pg, "admin").await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("publish_token_file") && body.contains("is empty"),
        "{body}"
    );
    assert!(accepted(&pg, "pub").await, "old publish token still valid");
    assert_eq!(reload(&pg, "next-admin").await.0, 401, "admin not changed");
    pg.signal("-HUP");
    assert!(eventually(WAIT, || async { logged(&pg, "config refused") }).await);
    let checked = eventually(WAIT, || async { logged(&pg, "secret file not re-read") }).await;
    assert!(checked, "the periodic check met the broken file too");
    assert!(accepted(&pg, "pub").await);
    assert_eq!(reload(&pg, "next-admin").await.0, 401);

    // Fixed: both changes land together.
    write_secret(&files.publish, &["pub2"]);
    let (status, body) = reload(&pg, "next-admin").await;
    let landed = status == 200 || eventually(WAIT, || accepted(&pg, "pub2")).await;
    assert!(landed, "{status} {body}");
    assert!(accepted(&pg, "pub2").await);
    assert_eq!(reload(&pg, "admin").await.0, 401);
}

/// Runs pollgate with `args` and expects it to refuse its config.
fn refused(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_pollgate"))
        .args(args)
        .env_remove("POLLGATE_PUBLISH_TOKEN")
        .env_remove("POLLGATE_PUBLISH_TOKEN_FILE")
        .output()
        .unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    stderr
}

#[test]
fn a_broken_secret_file_stops_start_up_with_exit_64_naming_key_and_path() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    write_mode(&empty, "", 0o600);
    let missing = dir.path().join("missing");
    let writable = dir.path().join("writable");
    write_mode(&writable, "k3y", 0o666);
    for (flag, path, why) in [
        ("--publish-token-file", &empty, "is empty"),
        ("--cluster-key-file", &missing, "cannot read"),
        ("--admin-token-file", &writable, "writable by every user"),
    ] {
        let path = path.to_str().unwrap();
        let stderr = refused(&["--listen", "127.0.0.1:0", flag, path]);
        let key = flag[2..].replace('-', "_");
        assert!(
            stderr.contains(&key) && stderr.contains(path) && stderr.contains(why),
            "{flag}: {stderr}"
        );
    }
}

#[test]
fn a_secret_and_its_file_together_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cluster_key");
    write_secret(&file, &["k3y"]);
    let stderr = refused(&[
        "--cluster-key",
        "k3y",
        "--cluster-key-file",
        file.to_str().unwrap(),
    ]);
    assert!(
        stderr.contains("cluster_key (from --cluster-key)")
            && stderr.contains("cluster_key_file (from --cluster-key-file)")
            && stderr.contains("both given"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_world_readable_secret_file_starts_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("publish_token");
    write_mode(&file, "pub", 0o644);
    let path = file.to_str().unwrap();
    let pg = Pollgate::start_args(&[
        "--listen",
        "127.0.0.1:0",
        "--internal-listen",
        "127.0.0.1:0",
        "--publish-token-file",
        path,
        "--admin-token",
        "admin",
    ]);
    assert!(accepted(&pg, "pub").await);
    let (status, body) = reload(&pg, "admin").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("readable by every user"), "{body}");
    let warned =
        pg.log.lock().iter().any(|l| {
            l.contains("WARN") && l.contains(path) && l.contains("readable by every user")
        });
    assert!(warned, "{:?}", pg.log.lock());
}

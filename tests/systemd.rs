//! systemd's notify protocol against a real process: `NOTIFY_SOCKET` names
//! a datagram socket this test binds, and what pollgate sends there is
//! checked against what `/readyz` says at that moment.

mod common;

use std::time::Duration;

use common::{get, loopback_args, Pollgate};
use tokio::net::UnixDatagram;

const WAIT: Duration = Duration::from_secs(20);
const KEY: &str = "cluster-secret";

/// The next datagram as text, or a panic after `WAIT`.
async fn next(sock: &UnixDatagram) -> String {
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(WAIT, sock.recv(&mut buf))
        .await
        .expect("a notification in time")
        .unwrap();
    String::from_utf8(buf[..n].to_vec()).unwrap()
}

async fn readyz(pg: &Pollgate) -> u16 {
    get(&pg.internal_url("/readyz")).await.0.as_u16()
}

/// A directory with `pollgate.toml` (holding `config`) and the socket
/// `notify` bound, as systemd would have it.
fn setup(config: &str) -> (tempfile::TempDir, UnixDatagram) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pollgate.toml"), config).unwrap();
    let sock = UnixDatagram::bind(dir.path().join("notify")).unwrap();
    (dir, sock)
}

/// A replica on port 0 with its default node id (named by the bound port:
/// two replicas here must not clash as `host:0`).
fn replica(config: &std::path::Path, peer: Option<&str>, notify: Option<&str>) -> Pollgate {
    let mut args = loopback_args(&["--cluster-key", KEY, "--config", config.to_str().unwrap()]);
    if let Some(p) = peer {
        args.extend(["--peer", p]);
    }
    let env: Vec<(&str, &str)> = notify.map(|n| ("NOTIFY_SOCKET", n)).into_iter().collect();
    Pollgate::start_env(&args, &env)
}

#[tokio::test]
async fn ready_after_catching_up_reloading_around_a_reload_stopping_at_shutdown() {
    let (dir, sock) = setup("admin_token = \"a\"\n");
    let (config, path) = (dir.path().join("pollgate.toml"), dir.path().join("notify"));
    // A peer to catch up with first: readiness waits for a pull from it.
    let peer = replica(&config, None, None);
    let peer_addr = peer.internal.to_string();
    let mut pg = replica(&config, Some(&peer_addr), path.to_str());

    let first = next(&sock).await;
    assert!(first.contains("STATUS=waiting for peers"), "{first}");
    let ready = next(&sock).await;
    assert!(ready.starts_with("READY=1\n"), "{ready}");
    assert_eq!(
        readyz(&pg).await,
        200,
        "READY=1 only once /readyz answers 200"
    );

    pg.signal("-HUP");
    let reloading = next(&sock).await;
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading}"
    );
    let usec: u64 = reloading.lines().nth(1).unwrap()["MONOTONIC_USEC=".len()..]
        .parse()
        .unwrap();
    assert!(usec > 0);
    assert!(
        next(&sock).await.starts_with("READY=1\n"),
        "ready again after the reload"
    );

    pg.signal("-TERM");
    assert!(next(&sock).await.starts_with("STOPPING=1\n"));
    assert!(pg.wait_exit(WAIT).success());
}

#[tokio::test]
async fn no_ready_while_readyz_says_not_ready() {
    let (dir, sock) = setup("");
    let (config, path) = (dir.path().join("pollgate.toml"), dir.path().join("notify"));
    // A peer nobody answers at: not ready until it gives up (30 s).
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let peer = silent.local_addr().unwrap().to_string();
    drop(silent);
    let pg = replica(&config, Some(&peer), path.to_str());
    assert!(next(&sock).await.contains("STATUS=waiting for peers"));
    assert_eq!(readyz(&pg).await, 503);
    // A negative can only be watched for a while: one second of silence.
    let mut buf = [0u8; 256];
    let quiet = tokio::time::timeout(Duration::from_secs(1), sock.recv(&mut buf)).await;
    assert!(quiet.is_err(), "a notification while not ready: {quiet:?}");
    assert_eq!(readyz(&pg).await, 503);
}

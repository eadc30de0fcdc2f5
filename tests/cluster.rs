//! End-to-end replication: three real pollgate processes on loopback gossiping
//! over HTTP. Peers need each other's internal addresses up front, so the test
//! reserves ephemeral ports by binding `127.0.0.1:0` and closing the socket
//! right before spawning (a tiny race, accepted: no fixed ports).

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use common::{eventually, free_port, get, send, Pollgate, Upstream};
use http::StatusCode;
use pollgate::cluster::auth::{unix_ms, Auth};
use pollgate::cluster::codec::{self, Item, Message, Request};
use pollgate::config::default_node_id;

const KEY: &str = "cluster-secret";
const ADMIN: &str = "admin-secret";

struct Replicas {
    up: Upstream,
    ports: Vec<u16>,
    nodes: Vec<Option<Pollgate>>,
    /// Extra flags per replica (e.g. a `--data-dir`).
    extra: Vec<Vec<String>>,
}

impl Replicas {
    async fn start(n: usize) -> Replicas {
        let mut r = Replicas {
            up: Upstream::start().await,
            ports: (0..n).map(|_| free_port()).collect(),
            nodes: Vec::new(),
            extra: vec![Vec::new(); n],
        };
        for i in 0..n {
            let node = r.spawn(i, KEY);
            r.nodes.push(Some(node));
        }
        r
    }

    fn spawn(&self, i: usize, key: &str) -> Pollgate {
        let internal = format!("127.0.0.1:{}", self.ports[i]);
        let peers: Vec<String> = (0..self.ports.len())
            .filter(|&j| j != i)
            .map(|j| format!("127.0.0.1:{}", self.ports[j]))
            .collect();
        let up = self.up.url();
        let mut args = vec![
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &up,
            "--publish-token",
            common::TOKEN,
            "--internal-listen",
            &internal,
            "--cluster-key",
            key,
            "--admin-token",
            ADMIN,
        ];
        for p in &peers {
            args.extend(["--peer", p]);
        }
        args.extend(self.extra[i].iter().map(String::as_str));
        Pollgate::start_args(&args)
    }

    fn node(&self, i: usize) -> &Pollgate {
        self.nodes[i].as_ref().expect("running")
    }

    fn kill(&mut self, i: usize) {
        let mut pg = self.nodes[i].take().expect("running");
        pg.signal("-KILL");
        pg.wait_exit(Duration::from_secs(5));
    }

    fn restart(&mut self, i: usize) {
        self.nodes[i] = Some(self.spawn(i, KEY));
    }
}

async fn ready(pg: &Pollgate) -> bool {
    get(&pg.internal_url("/readyz")).await.0 == StatusCode::OK
}

/// Every replica ready and seeing both others up.
async fn formed(r: &Replicas) -> bool {
    for i in 0..3 {
        let pg = r.node(i);
        if !ready(pg).await || pg.metric("pollgate_cluster_peers_up").await < 2.0 {
            return false;
        }
    }
    true
}

#[tokio::test]
async fn publish_at_one_is_visible_at_all() {
    let r = Replicas::start(3).await;
    assert!(eventually(Duration::from_secs(10), || formed(&r)).await);
    assert_eq!(r.node(0).publish("proj-1 41\n").await.0, StatusCode::OK);
    let t = Instant::now();
    for i in 1..3 {
        let seen = eventually(Duration::from_secs(5), || async {
            r.node(i).version("proj-1").await == Some(41)
        })
        .await;
        assert!(seen, "replica {i} never saw the publish");
    }
    let took = t.elapsed();
    eprintln!("visible at both peers after {took:?}");
    assert!(
        took < Duration::from_millis(500),
        "pushed, not left to the pull: {took:?}"
    );
    // A poll at another replica is answered from memory.
    let (s, h, _) = get(&r.node(2).url("/projects/proj-1/changes?since=41")).await;
    assert_eq!(
        (s, &h["x-pollgate"]),
        (StatusCode::NOT_MODIFIED, &"hit".parse().unwrap())
    );
    assert_eq!(r.up.hits(), 0);
}

/// Frames built here with the library's own codec and MAC, as a peer would.
fn push_frame(auth: &Auth, ts: u64, to: &Pollgate, key: &str, version: u64) -> Vec<u8> {
    let msg = Message {
        from: "test-peer".into(),
        config: codec::ConfigFrame {
            stamp: Default::default(),
            values: pollgate::tunables::Tunables::from_config(&Default::default()).get(),
        },
        body: Request::Deltas(vec![Item {
            key: key.into(),
            version,
            confirmed_ago_ms: Some(0),
        }]),
    };
    let to = default_node_id(to.internal.port());
    auth.seal_request_at(ts, &to, &codec::encode_message(&msg))
        .0
        .to_vec()
}

async fn post_push(pg: &Pollgate, frame: Vec<u8>) -> StatusCode {
    send("POST", &pg.internal_url("/v1/cluster/deltas"), &[], frame)
        .await
        .0
}

#[tokio::test]
async fn wrong_key_stale_and_replayed_messages_are_refused_and_counted() {
    let r = Replicas::start(1).await; // a peer list of none: still gossip-capable
    let pg = r.node(0);
    let good = Auth::new(&[KEY.to_string()]);
    let frame = push_frame(&good, unix_ms(), pg, "ok-key", 5);
    assert_eq!(post_push(pg, frame.clone()).await, StatusCode::OK);
    assert_eq!(pg.version("ok-key").await, Some(5));
    assert_eq!(
        post_push(pg, frame).await,
        StatusCode::UNAUTHORIZED,
        "replay"
    );
    let wrong = push_frame(
        &Auth::new(&["not-the-key".to_string()]),
        unix_ms(),
        pg,
        "evil",
        9,
    );
    assert_eq!(post_push(pg, wrong).await, StatusCode::UNAUTHORIZED);
    let stale = push_frame(&good, unix_ms() - 120_000, pg, "old", 9);
    assert_eq!(post_push(pg, stale).await, StatusCode::UNAUTHORIZED);
    let future = push_frame(&good, unix_ms() + 120_000, pg, "future", 9);
    assert_eq!(post_push(pg, future).await, StatusCode::UNAUTHORIZED);
    for k in ["evil", "old", "future"] {
        assert_eq!(pg.version(k).await, None, "{k} was merged");
    }
    for (reason, n) in [
        ("replay", 1.0),
        ("bad_mac", 1.0),
        ("stale", 1.0),
        ("future", 1.0),
    ] {
        let name = format!("pollgate_cluster_rejected_total{{reason=\"{reason}\"}}");
        assert_eq!(pg.metric(&name).await, n, "{reason}");
    }
}

#[tokio::test]
async fn a_killed_replica_catches_up_on_100k_versions_before_it_is_ready() {
    let mut r = Replicas::start(3).await;
    for i in 0..3 {
        assert!(eventually(Duration::from_secs(10), || ready(r.node(i))).await);
    }
    r.kill(2);
    const N: usize = 100_000;
    for chunk in 0..10 {
        let body: String = (0..N / 10)
            .map(|i| format!("k{} {}\n", chunk * N / 10 + i, i + 1))
            .collect();
        assert_eq!(r.node(chunk % 2).publish(&body).await.0, StatusCode::OK);
    }
    // Readiness needs one complete pull from one peer, so let the two
    // survivors agree first: then whichever is pulled has everything.
    for i in 0..2 {
        let agreed = eventually(Duration::from_secs(10), || async {
            r.node(i).metric("pollgate_keys").await as usize == N
        })
        .await;
        assert!(agreed, "survivor {i} did not converge");
    }
    r.restart(2);
    let t = Instant::now();
    let pg = r.node(2);
    assert!(
        eventually(Duration::from_secs(20), || ready(pg)).await,
        "never ready"
    );
    let took = t.elapsed();
    // Readiness flips only after the last page merged: every key is there now.
    assert_eq!(pg.metric("pollgate_keys").await as usize, N);
    eprintln!("restarted replica ready (caught up on {N} keys) {took:?} after start");
    assert_eq!(pg.version("k99999").await, Some(10_000));
}

/// Warm restart and gossip together: the snapshot brings back what the
/// replica had, the pull what it missed while it was down.
#[tokio::test]
async fn a_replica_restarts_from_its_snapshot_and_pulls_what_it_missed() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = Replicas::start(2).await;
    r.extra[1] = vec!["--data-dir".into(), dir.path().display().to_string()];
    r.kill(1);
    r.restart(1);
    assert!(eventually(Duration::from_secs(10), || ready(r.node(1))).await);
    let before: String = (0..1000).map(|i| format!("s{i} 1\n")).collect();
    assert_eq!(r.node(0).publish(&before).await.0, StatusCode::OK);
    let pg1 = r.node(1);
    let loaded = eventually(Duration::from_secs(5), || async {
        pg1.metric("pollgate_keys").await as usize == 1000
    });
    assert!(loaded.await);
    let mut pg = r.nodes[1].take().unwrap();
    pg.signal("-TERM"); // graceful: writes the final snapshot
    assert!(pg.wait_exit(Duration::from_secs(15)).success());
    let missed: String = (0..500).map(|i| format!("m{i} 2\n")).collect();
    assert_eq!(r.node(0).publish(&missed).await.0, StatusCode::OK);
    r.restart(1);
    assert!(eventually(Duration::from_secs(10), || ready(r.node(1))).await);
    let pg = r.node(1);
    assert_eq!(pg.metric("pollgate_snapshot_entries_loaded").await, 1000.0);
    assert_eq!(pg.metric("pollgate_keys").await as usize, 1500);
    assert_eq!(pg.version("m499").await, Some(2));
}

async fn config_of(pg: &Pollgate) -> serde_json::Value {
    let (s, _, body) = get(&pg.internal_url("/v1/config")).await;
    assert_eq!(s, StatusCode::OK);
    serde_json::from_str(&body).unwrap()
}

async fn put_config(pg: &Pollgate, token: &str, body: &str) -> (StatusCode, String) {
    let auth = format!("Bearer {token}");
    let (s, _, b) = send(
        "PUT",
        &pg.internal_url("/v1/config"),
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        body.as_bytes().to_vec(),
    )
    .await;
    (s, b)
}

#[tokio::test]
async fn cluster_config_is_lww_everywhere_within_a_second_and_survives_restart() {
    let mut r = Replicas::start(3).await;
    for i in 0..3 {
        assert!(eventually(Duration::from_secs(10), || ready(r.node(i))).await);
    }
    let (s, body) = put_config(r.node(1), "wrong", r#"{"heartbeat_interval_ms": 5000}"#).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{body}");
    let (s, body) = put_config(r.node(1), ADMIN, r#"{"heartbeat_interval_ms": 10}"#).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(body.contains("heartbeat_interval_ms"), "{body}");
    let (s, body) = put_config(r.node(1), ADMIN, r#"{"bogus": 1}"#).await;
    assert!(
        s == StatusCode::BAD_REQUEST && body.contains("bogus"),
        "{body}"
    );

    let (s, body) = put_config(
        r.node(1),
        ADMIN,
        r#"{"heartbeat_interval_ms": 5000, "max_age_s": 30}"#,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let t = Instant::now();
    for i in [0, 2] {
        let applied = eventually(Duration::from_secs(1), || async {
            config_of(r.node(i)).await["heartbeat_interval_ms"] == 5000
        })
        .await;
        assert!(applied, "replica {i} did not apply the config within 1 s");
    }
    eprintln!("config applied at both peers after {:?}", t.elapsed());
    let c = config_of(r.node(0)).await;
    assert_eq!(
        (c["max_age_ms"].as_u64(), c["max_age_s"].as_u64()),
        (Some(30_000), Some(30))
    );
    assert!(c["stamp"]["node"]
        .as_str()
        .unwrap()
        .ends_with(&r.ports[1].to_string()));

    r.kill(2);
    r.restart(2);
    let back = eventually(Duration::from_secs(5), || async {
        config_of(r.node(2)).await["heartbeat_interval_ms"] == 5000
    })
    .await;
    assert!(back, "restarted replica did not pick the config up");
}

#[tokio::test]
async fn peers_without_a_cluster_key_are_a_startup_error() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pollgate"))
        .args(["--peer", "127.0.0.1:9"])
        .env_remove("POLLGATE_CLUSTER_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cluster_key"), "{err}");
}

/// A plain TCP forwarder on 127.0.0.1:0, like a published container port, a
/// Service VIP or a TCP proxy: whoever it forwards to sees the connection
/// arrive on its own address, not on the one the sender dialed.
struct Forwarder {
    addr: SocketAddr,
    target: Arc<OnceLock<SocketAddr>>,
    /// Connections carried to the target.
    carried: Arc<AtomicUsize>,
    /// Owns the accept loop, which owns the connections (a `JoinSet`).
    task: tokio::task::JoinHandle<()>,
}

impl Forwarder {
    async fn bind() -> Forwarder {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (target, carried) = (Arc::new(OnceLock::new()), Arc::new(AtomicUsize::new(0)));
        let (t, c) = (target.clone(), carried.clone());
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                // Before its target is known a connection is refused by
                // closing it; the sender retries.
                let Some(&to) = t.get() else { continue };
                c.fetch_add(1, Ordering::Relaxed);
                conns.spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
            }
        });
        Forwarder {
            addr,
            target,
            carried,
            task,
        }
    }

    fn forward_to(&self, to: SocketAddr) {
        self.target.set(to).unwrap();
    }

    fn carried(&self) -> usize {
        self.carried.load(Ordering::Relaxed)
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Docker port mappings, a Service in front of each replica, a TCP proxy:
/// the receiver sees another local address than the sender dialed. Frames
/// are bound to the recipient's node_id, not its address, so gossip flows.
#[tokio::test]
async fn replicas_behind_a_tcp_forwarder_gossip() {
    let up = Upstream::start().await;
    let (to_a, to_b) = (Forwarder::bind().await, Forwarder::bind().await);
    let peer = |f: &Forwarder| f.addr.to_string();
    let a = Pollgate::start(&up.url(), &["--cluster-key", KEY, "--peer", &peer(&to_b)]);
    let b = Pollgate::start(&up.url(), &["--cluster-key", KEY, "--peer", &peer(&to_a)]);
    to_a.forward_to(a.internal);
    to_b.forward_to(b.internal);
    let formed = eventually(Duration::from_secs(10), || async {
        for pg in [&a, &b] {
            if !ready(pg).await || pg.metric("pollgate_cluster_peers_up").await < 1.0 {
                return false;
            }
        }
        true
    });
    assert!(
        formed.await,
        "never saw each other up through the forwarders"
    );
    assert_eq!(a.publish("via-a 3\n").await.0, StatusCode::OK);
    assert_eq!(b.publish("via-b 4\n").await.0, StatusCode::OK);
    for (pg, key, v) in [(&b, "via-a", 3), (&a, "via-b", 4)] {
        let seen = eventually(Duration::from_secs(5), || async {
            pg.version(key).await == Some(v)
        });
        assert!(seen.await, "{key} did not cross the forwarder");
    }
    assert!(to_a.carried() > 0 && to_b.carried() > 0);
    for pg in [&a, &b] {
        let refused = "pollgate_cluster_rejected_total{reason=\"bad_mac\"}";
        assert_eq!(pg.metric(refused).await, 0.0);
    }
}

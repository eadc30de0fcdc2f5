//! The Redis feed end to end: a real `redis-server` (its own, on a free port,
//! persistence off) and pollgate as a real process reading its channels and
//! streams, restarted, cut off from Redis and run two at a time.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{eventually, free_port, get, Pollgate, Upstream};
use http::StatusCode;
use redis::aio::MultiplexedConnection;

const WAIT: Duration = Duration::from_secs(20);

/// A `redis-server` child on 127.0.0.1, persistence off, killed on drop.
/// redis-server cannot bind port 0, so a port is found by binding a socket
/// to 127.0.0.1:0 and closing it; if someone takes it meanwhile, the server
/// exits at once and another port is tried.
struct RedisServer {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    /// Set: TLS only, with the certificates in this directory (see [`make_certs`]).
    tls: Option<std::path::PathBuf>,
}

impl RedisServer {
    fn start() -> RedisServer {
        Self::start_with(None)
    }

    fn start_with(tls: Option<&Path>) -> RedisServer {
        for _ in 0..20 {
            let (port, dir) = (free_port(), tempfile::tempdir().unwrap());
            if let Some(child) = spawn_redis(port, dir.path(), tls) {
                let tls = tls.map(Path::to_path_buf);
                return RedisServer {
                    child,
                    port,
                    dir,
                    tls,
                };
            }
        }
        panic!("no redis-server could start on a free port");
    }

    fn url(&self) -> String {
        match self.tls {
            None => url_of(self.port),
            Some(_) => format!("rediss://127.0.0.1:{}/0", self.port),
        }
    }

    /// `kill -STOP` / `-CONT`: a Redis that stops answering while its TCP
    /// connections stay open (a frozen VM, a dead NAT entry), and comes back.
    fn signal(&self, sig: &str) {
        let pid = self.child.id().to_string();
        let ok = Command::new("kill").args([sig, &pid]).status();
        assert!(ok.is_ok_and(|s| s.success()), "kill {sig} {pid}");
    }

    /// SIGKILL: gone at once, like a crashed Redis.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A fresh, empty Redis on the same port (as after a crash without persistence).
    fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(child) = spawn_redis(self.port, self.dir.path(), self.tls.as_deref()) {
                self.child = child;
                return;
            }
            assert!(Instant::now() < deadline, "port {} stayed taken", self.port);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    async fn conn(&self) -> MultiplexedConnection {
        client(self.port, self.tls.as_deref())
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}

/// A client for our server on `port`; over TLS trusting `tls`'s CA.
fn client(port: u16, tls: Option<&Path>) -> redis::Client {
    let Some(dir) = tls else {
        return redis::Client::open(url_of(port)).unwrap();
    };
    let certs = redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(std::fs::read(dir.join("ca.pem")).unwrap()),
    };
    redis::Client::build_with_tls(format!("rediss://127.0.0.1:{port}/0"), certs).unwrap()
}

/// Starts redis-server on `port` (TLS only with `tls`) and waits until it
/// answers; `None` if it exits (the port was taken) or never answers.
fn spawn_redis(port: u16, dir: &Path, tls: Option<&Path>) -> Option<Child> {
    let mut cmd = Command::new("redis-server");
    match tls {
        None => cmd.args(["--port", &port.to_string()]),
        Some(certs) => cmd
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .arg("--tls-cert-file")
            .arg(certs.join("server.pem"))
            .arg("--tls-key-file")
            .arg(certs.join("server.key"))
            .arg("--tls-ca-cert-file")
            .arg(certs.join("ca.pem"))
            .args(["--tls-auth-clients", "no"]),
    };
    let mut child = cmd
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server must be installed (apt-get install redis-server)");
    let client = client(port, tls);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return None;
        }
        // Ours, not another test's server that got the port first.
        let info = client
            .get_connection()
            .and_then(|mut c| redis::cmd("INFO").arg("server").query::<String>(&mut c));
        if let Ok(info) = info {
            let pid = format!("process_id:{}", child.id());
            if info.lines().any(|l| l.trim() == pid) {
                return Some(child);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// With openssl: a CA (`ca.pem`), a server certificate for 127.0.0.1 it
/// signed (`server.pem`, `server.key`), and a CA that signed nothing (`other.pem`).
fn make_certs(dir: &Path) {
    let ssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl must be installed");
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    };
    for (key, pem) in [("ca.key", "ca.pem"), ("other.key", "other.pem")] {
        ssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-keyout",
            key,
            "-out",
            pem,
            "-subj",
            "/CN=pollgate test CA",
        ]);
    }
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    ssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    ssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "san.ext",
        "-out",
        "server.pem",
    ]);
}

fn url_of(port: u16) -> String {
    format!("redis://127.0.0.1:{port}/0")
}

async fn has(pg: &Pollgate, key: &str, version: u64) -> bool {
    eventually(WAIT, || async { pg.version(key).await == Some(version) }).await
}

async fn metric_is(pg: &Pollgate, name: &str, want: f64) -> bool {
    eventually(WAIT, || async { pg.metric(name).await == want }).await
}

const CONNECTED: &str = "pollgate_feed_redis_connected";
const STREAM_APPLIED: &str =
    "pollgate_feed_redis_messages_total{source=\"stream\",result=\"applied\"}";
const STREAM_INVALID: &str =
    "pollgate_feed_redis_messages_total{source=\"stream\",result=\"invalid\"}";
const CHANNEL_INVALID: &str =
    "pollgate_feed_redis_messages_total{source=\"channel\",result=\"invalid\"}";
const GAPS: &str = "pollgate_feed_redis_stream_gaps_total";

async fn publish(c: &mut MultiplexedConnection, channel: &str, body: &str) {
    let n: i64 = redis::cmd("PUBLISH")
        .arg(channel)
        .arg(body)
        .query_async(c)
        .await
        .unwrap();
    assert!(n >= 1, "nobody subscribed to {channel}");
}

async fn xadd(c: &mut MultiplexedConnection, stream: &str, fields: &[(&str, &str)]) {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(stream).arg("*");
    for (k, v) in fields {
        cmd.arg(*k).arg(*v);
    }
    let _: String = cmd.query_async(c).await.unwrap();
}

async fn xadd_versions(c: &mut MultiplexedConnection, stream: &str, prefix: &str, n: u64) {
    for i in 0..n {
        let (key, v) = (format!("{prefix}{i}"), (i + 1).to_string());
        xadd(c, stream, &[("key", &key), ("version", &v)]).await;
    }
}

fn start_pg(up: &Upstream, redis: &RedisServer, extra: &[&str]) -> Pollgate {
    let url = redis.url();
    let mut args = vec!["--redis-url", &url];
    args.extend_from_slice(extra);
    Pollgate::start(&up.url(), &args)
}

/// SIGTERM, then a clean exit (which writes the final snapshot).
fn stop(mut pg: Pollgate) {
    pg.signal("-TERM");
    assert!(pg.wait_exit(WAIT).success());
}

fn dir_str(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// Redis, an upstream and a data dir, for the tests that restart pollgate
/// on stream `versions` and need the snapshot to keep its position.
struct StreamRig {
    redis: RedisServer,
    up: Upstream,
    dir: tempfile::TempDir,
}

impl StreamRig {
    async fn start() -> StreamRig {
        StreamRig {
            redis: RedisServer::start(),
            up: Upstream::start().await,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// pollgate on stream `versions` with the rig's data dir, plus `extra`.
    fn pollgate(&self, extra: &[&str]) -> Pollgate {
        let d = dir_str(self.dir.path());
        let mut flags = vec!["--redis-stream", "versions", "--data-dir", &d];
        flags.extend_from_slice(extra);
        start_pg(&self.up, &self.redis, &flags)
    }
}

#[tokio::test]
async fn channel_lines_and_json_apply_and_a_bad_batch_applies_nothing() {
    let redis = RedisServer::start();
    let up = Upstream::start().await;
    let pg = start_pg(&up, &redis, &["--redis-channel", "versions"]);
    assert!(metric_is(&pg, CONNECTED, 1.0).await, "{:?}", pg.log.lock());
    let mut c = redis.conn().await;
    publish(&mut c, "versions", "a 1\nb:x 2\n").await;
    assert!(has(&pg, "a", 1).await && has(&pg, "b:x", 2).await);
    publish(&mut c, "versions", r#"[{"key":"c","version":3}]"#).await;
    assert!(has(&pg, "c", 3).await);
    // One bad line voids the batch; the message after it is applied.
    publish(&mut c, "versions", "d 4\ne notanumber\n").await;
    publish(&mut c, "versions", "f 5").await;
    assert!(has(&pg, "f", 5).await);
    assert_eq!(pg.version("d").await, None, "no part of a bad batch");
    assert_eq!(pg.metric(CHANNEL_INVALID).await, 1.0);
    let learned = "pollgate_versions_learned_total{source=\"redis\"}";
    assert_eq!(pg.metric(learned).await, 4.0);
}

/// The ids of Redis's connections in pub/sub mode (pollgate's channel reader).
async fn pubsub_client_ids(c: &mut MultiplexedConnection) -> Vec<String> {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(c)
        .await
        .unwrap();
    let id = |line: &str| {
        line.split(' ')
            .find_map(|f| f.strip_prefix("id="))
            .map(str::to_owned)
    };
    list.lines().filter_map(id).collect()
}

/// The channel reader pings Redis every 15 s to find a half-open connection.
/// A ping must not end a healthy subscription: it once did, so the channel
/// reconnected every 15 s and lost what was published meanwhile. Waiting out
/// one ping is the point of this test (not synchronisation): the same
/// connection must still be subscribed after it, and deliver.
#[tokio::test]
async fn an_idle_channel_survives_its_keepalive_ping() {
    let redis = RedisServer::start();
    let up = Upstream::start().await;
    let pg = start_pg(&up, &redis, &["--redis-channel", "versions"]);
    assert!(metric_is(&pg, CONNECTED, 1.0).await, "{:?}", pg.log.lock());
    let mut c = redis.conn().await;
    publish(&mut c, "versions", "a 1").await;
    assert!(has(&pg, "a", 1).await);
    let before = pubsub_client_ids(&mut c).await;
    assert_eq!(before.len(), 1, "one channel connection");
    tokio::time::sleep(Duration::from_secs(17)).await;
    assert_eq!(
        pubsub_client_ids(&mut c).await,
        before,
        "{:?}",
        pg.log.lock()
    );
    publish(&mut c, "versions", "b 2").await;
    assert!(has(&pg, "b", 2).await);
}

#[tokio::test]
async fn stream_entries_apply_and_a_restart_loses_none() {
    let rig = StreamRig::start().await;
    let pg = rig.pollgate(&[]);
    let mut c = rig.redis.conn().await;
    xadd_versions(&mut c, "versions", "k", 50).await;
    xadd(&mut c, "versions", &[("body", "batch1 7\nbatch2 8")]).await;
    xadd(&mut c, "versions", &[("key", "bad key"), ("version", "1")]).await;
    xadd(
        &mut c,
        "versions",
        &[("body", "[{\"key\":\"j\",\"version\":9}]")],
    )
    .await;
    assert!(has(&pg, "j", 9).await, "{:?}", pg.log.lock());
    assert!(has(&pg, "k49", 50).await && has(&pg, "batch2", 8).await);
    assert_eq!(pg.metric(STREAM_APPLIED).await, 52.0);
    assert_eq!(pg.metric(STREAM_INVALID).await, 1.0);
    stop(pg);

    // Entries written while pollgate is down are read after the restart,
    // and only those: the snapshot kept the position.
    xadd_versions(&mut c, "versions", "later", 30).await;
    let pg = rig.pollgate(&[]);
    assert!(has(&pg, "later29", 30).await, "{:?}", pg.log.lock());
    assert!(metric_is(&pg, STREAM_APPLIED, 30.0).await);
    for i in 0..30 {
        assert_eq!(pg.version(&format!("later{i}")).await, Some(i + 1));
    }
    assert_eq!(pg.version("k0").await, Some(1), "from the snapshot");
    assert_eq!(pg.metric(GAPS).await, 0.0);
}

#[tokio::test]
async fn a_killed_redis_is_survived_and_reconnected_to() {
    let mut redis = RedisServer::start();
    let up = Upstream::start().await;
    up.set_version("p1", 3);
    let flags = ["--redis-channel", "ch", "--redis-stream", "st"];
    let pg = start_pg(&up, &redis, &flags);
    assert!(metric_is(&pg, CONNECTED, 1.0).await);
    let mut c = redis.conn().await;
    xadd(&mut c, "st", &[("key", "p1"), ("version", "3")]).await;
    assert!(has(&pg, "p1", 3).await);

    redis.kill();
    assert!(metric_is(&pg, CONNECTED, 0.0).await);
    // Still answering polls from memory (max_age bounds how long).
    let (s, _, _) = get(&pg.url("/projects/p1/changes?since=3")).await;
    assert_eq!(s, StatusCode::NOT_MODIFIED);
    let (s, _, _) = get(&pg.internal_url("/readyz")).await;
    assert_eq!(s, StatusCode::OK, "readiness does not depend on Redis");

    redis.restart();
    assert!(metric_is(&pg, CONNECTED, 1.0).await, "{:?}", pg.log.lock());
    let mut c = redis.conn().await;
    publish(&mut c, "ch", "p2 4").await;
    xadd(&mut c, "st", &[("key", "p3"), ("version", "5")]).await;
    assert!(has(&pg, "p2", 4).await && has(&pg, "p3", 5).await);
}

#[tokio::test]
async fn a_stream_trimmed_past_the_position_is_a_counted_gap() {
    let rig = StreamRig::start().await;
    let pg = rig.pollgate(&[]);
    let mut c = rig.redis.conn().await;
    xadd_versions(&mut c, "versions", "k", 5).await;
    assert!(has(&pg, "k4", 5).await);
    stop(pg);

    xadd_versions(&mut c, "versions", "lost", 10).await;
    let _: i64 = redis::cmd("XTRIM")
        .arg("versions")
        .arg("MAXLEN")
        .arg(3)
        .query_async(&mut c)
        .await
        .unwrap();
    let pg = rig.pollgate(&[]);
    assert!(metric_is(&pg, GAPS, 1.0).await, "{:?}", pg.log.lock());
    assert!(has(&pg, "lost9", 10).await);
    assert_eq!(
        pg.version("lost0").await,
        None,
        "trimmed before it was read"
    );
    let logged = eventually(WAIT, || async {
        pg.log
            .lock()
            .iter()
            .any(|l| l.contains("stream trimmed past"))
    })
    .await;
    assert!(logged, "{:?}", pg.log.lock());
}

#[tokio::test]
async fn two_pollgates_on_one_redis_agree() {
    let redis = RedisServer::start();
    let up = Upstream::start().await;
    let flags = ["--redis-stream", "versions", "--redis-channel", "ch"];
    let a = start_pg(&up, &redis, &flags);
    let b = start_pg(&up, &redis, &flags);
    assert!(metric_is(&a, CONNECTED, 1.0).await && metric_is(&b, CONNECTED, 1.0).await);
    let mut c = redis.conn().await;
    let mut rng = fastrand::Rng::with_seed(7);
    let mut want = std::collections::HashMap::new();
    for _ in 0..300 {
        let (key, v) = (format!("k{}", rng.u32(0..40)), rng.u64(1..1000));
        let e = want.entry(key.clone()).or_insert(0);
        *e = (*e).max(v);
        if rng.bool() {
            xadd(
                &mut c,
                "versions",
                &[("key", &key), ("version", &v.to_string())],
            )
            .await;
        } else {
            publish(&mut c, "ch", &format!("{key} {v}")).await;
        }
    }
    for (key, v) in &want {
        assert!(has(&a, key, *v).await && has(&b, key, *v).await, "{key}");
    }
}

/// The app's request rate after a restart: snapshot entries revalidate over
/// `max_age` unless a complete stream resumed without a gap vouches for them.
#[tokio::test]
async fn a_gap_free_complete_stream_spares_the_app_revalidations_after_a_restart() {
    async fn upstream_hits_after_restart(complete: bool) -> usize {
        let rig = StreamRig::start().await;
        let mut flags = vec!["--max-age", "3s"];
        if complete {
            flags.extend(["--redis-stream-complete", "true"]);
        }
        let pg = rig.pollgate(&flags);
        let mut c = rig.redis.conn().await;
        xadd_versions(&mut c, "versions", "p", 100).await;
        assert!(has(&pg, "p99", 100).await);
        stop(pg);
        let pg = rig.pollgate(&flags);
        let up = &rig.up;
        // The app answers with the version, so one revalidation confirms a
        // key (a key whose upstream sends none backs off between tries).
        for i in 0..100 {
            up.set_version(&format!("p{i}"), i + 1);
        }
        assert!(metric_is(&pg, CONNECTED, 1.0).await);
        let before = up.hits();
        // Every key polled as up to date for longer than max_age: every
        // loaded entry expires within it unless something vouches for it.
        // Without a vouching stream, polling goes on until every key went
        // upstream once (a loaded machine takes longer per round of polls).
        let (least, most) = (Duration::from_secs(4), Duration::from_secs(20));
        let started = Instant::now();
        loop {
            for i in 0..100 {
                get(&pg.url(&format!("/projects/p{i}/changes?since={}", i + 1))).await;
            }
            let all_went = up.hits() - before >= 100;
            let t = started.elapsed();
            if t >= most || (t >= least && (complete || all_went)) {
                break;
            }
        }
        up.hits() - before
    }
    let (plain, complete) = tokio::join!(
        upstream_hits_after_restart(false),
        upstream_hits_after_restart(true)
    );
    assert!(plain >= 100, "every loaded key revalidated: {plain}");
    assert_eq!(complete, 0, "the stream vouched for every key");
}

/// A Redis that stops answering with its connections still open (SIGSTOP)
/// must be noticed by both readers: the stream's by its reply deadline, the
/// channel's by its keep-alive ping. A complete stream then stops vouching,
/// so the keys it confirmed expire over `max_age` and go upstream instead of
/// being answered from memory on the word of a feed that is gone. Once Redis
/// answers again, both readers reconnect and the stream resumes without a gap.
#[tokio::test]
async fn a_hung_redis_is_noticed_stops_vouching_and_is_read_again() {
    let rig = StreamRig::start().await;
    let streamed = rig.pollgate(&["--max-age", "3s", "--redis-stream-complete", "true"]);
    let channeled = start_pg(&rig.up, &rig.redis, &["--redis-channel", "versions"]);
    let mut c = rig.redis.conn().await;
    xadd_versions(&mut c, "versions", "h", 3).await;
    assert!(has(&streamed, "h2", 3).await, "{:?}", streamed.log.lock());
    assert!(metric_is(&streamed, CONNECTED, 1.0).await);
    assert!(metric_is(&channeled, CONNECTED, 1.0).await);
    for i in 0..3 {
        rig.up.set_version(&format!("h{i}"), i + 1);
    }
    // Polls every key as up to date until `until` says stop; upstream requests meanwhile.
    let poll_keys = |until: Duration, enough: usize| {
        let (pg, up) = (&streamed, &rig.up);
        async move {
            let (before, started) = (up.hits(), Instant::now());
            while started.elapsed() < until && up.hits() - before < enough {
                for i in 0..3 {
                    get(&pg.url(&format!("/projects/h{i}/changes?since={}", i + 1))).await;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            up.hits() - before
        }
    };
    assert_eq!(
        poll_keys(Duration::from_secs(4), 1).await,
        0,
        "past max_age, the live stream vouches for every key"
    );

    // Both readers report `connected` = `want` within 40 s, or `failed`.
    // Stream: block (1 s) + 5 s reply deadline. Channel: a ping every 15 s,
    // answered within 5 s. A loaded machine gets some slack.
    let both_report = |want: f64, failed: &'static str| {
        let readers = [(&streamed, "stream"), (&channeled, "channel")];
        async move {
            for (pg, what) in readers {
                let seen = eventually(Duration::from_secs(40), || async {
                    pg.metric(CONNECTED).await == want
                })
                .await;
                assert!(seen, "the {what} reader {failed}: {:?}", pg.log.lock());
            }
        }
    };

    rig.redis.signal("-STOP");
    both_report(0.0, "never noticed").await;
    // No longer vouched for: within max_age (3 s) every key goes upstream.
    let revalidated = poll_keys(Duration::from_secs(20), 3).await;
    assert!(
        revalidated >= 3,
        "keys kept on a hung feed's word: {revalidated} upstream"
    );

    rig.redis.signal("-CONT");
    both_report(1.0, "never came back").await;
    xadd(&mut c, "versions", &[("key", "h0"), ("version", "7")]).await;
    publish(&mut c, "versions", "after 2").await;
    assert!(has(&streamed, "h0", 7).await, "{:?}", streamed.log.lock());
    assert!(
        has(&channeled, "after", 2).await,
        "{:?}",
        channeled.log.lock()
    );
    assert_eq!(streamed.metric(GAPS).await, 0.0);
}

#[tokio::test]
async fn a_stream_over_tls_is_read_and_a_server_from_another_ca_is_refused() {
    let certs = tempfile::tempdir().unwrap();
    make_certs(certs.path());
    let redis = RedisServer::start_with(Some(certs.path()));
    let up = Upstream::start().await;
    let ca = |name: &str| dir_str(&certs.path().join(name));
    let (good_ca, other_ca) = (ca("ca.pem"), ca("other.pem"));
    let flags = |ca: &str| -> Vec<String> {
        ["--redis-tls-ca", ca, "--redis-stream", "versions"]
            .map(String::from)
            .to_vec()
    };
    let good_flags = flags(&good_ca);
    let good = start_pg(
        &up,
        &redis,
        &good_flags.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let other_flags = flags(&other_ca);
    let other = start_pg(
        &up,
        &redis,
        &other_flags.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let mut c = redis.conn().await;
    xadd(&mut c, "versions", &[("key", "tls"), ("version", "1")]).await;
    assert!(has(&good, "tls", 1).await, "{:?}", good.log.lock());
    let refused = eventually(WAIT, || async {
        other
            .log
            .lock()
            .iter()
            .any(|l| l.contains("Redis stream connect failed"))
    })
    .await;
    assert!(refused, "{:?}", other.log.lock());
    assert_eq!(other.metric(CONNECTED).await, 0.0);
    assert_eq!(other.version("tls").await, None);
}

/// Changes the `default` user's passwords: `>p` adds one, `<p` removes one,
/// `resetpass` removes all (and "no password").
async fn acl(c: &mut MultiplexedConnection, rules: &[&str]) {
    let mut cmd = redis::cmd("ACL");
    cmd.arg("SETUSER").arg("default").arg(rules);
    let _: String = cmd.query_async(c).await.unwrap();
}

/// `redis_url` with `password` into `file` (0600), replaced in one rename.
fn write_url_file(file: &Path, redis: &RedisServer, password: &str) {
    use std::os::unix::fs::PermissionsExt;
    let tmp = file.with_extension("tmp");
    let url = format!("redis://:{password}@127.0.0.1:{}/0\n", redis.port);
    std::fs::write(&tmp, url).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::rename(&tmp, file).unwrap();
}

#[tokio::test]
async fn a_redis_password_rotates_through_its_file_with_a_reload() {
    let redis = RedisServer::start();
    let up = Upstream::start().await;
    // Opened before the password is set: it stays authenticated.
    let mut c = redis.conn().await;
    acl(&mut c, &["resetpass", ">old-pass"]).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("redis_url");
    write_url_file(&file, &redis, "old-pass");
    let f = dir_str(&file);
    let pg = Pollgate::start(
        &up.url(),
        &[
            "--redis-url-file",
            &f,
            "--redis-channel",
            "versions",
            "--redis-stream",
            "stream",
            "--admin-token",
            "admin",
        ],
    );
    assert!(metric_is(&pg, CONNECTED, 1.0).await, "{:?}", pg.log.lock());
    publish(&mut c, "versions", "a 1").await;
    xadd(&mut c, "stream", &[("key", "b"), ("version", "1")]).await;
    assert!(has(&pg, "a", 1).await && has(&pg, "b", 1).await);

    // Both passwords valid while the file moves to the new one and pollgate reloads.
    acl(&mut c, &[">new-pass"]).await;
    write_url_file(&file, &redis, "new-pass");
    let (status, _, body) = common::send(
        "POST",
        &pg.internal_url("/v1/reload"),
        &[("authorization", "Bearer admin")],
        vec![],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        !body.contains("\"restart_needed\":[\"redis_url\""),
        "{body}"
    );
    // Only the new one now, and every connection of pollgate's is cut: what
    // reconnects must be using the new password.
    acl(&mut c, &["<old-pass"]).await;
    for kind in ["pubsub", "normal"] {
        let _: i64 = redis::cmd("CLIENT")
            .arg(&["KILL", "TYPE", kind, "SKIPME", "yes"])
            .query_async(&mut c)
            .await
            .unwrap();
    }
    xadd(&mut c, "stream", &[("key", "b"), ("version", "2")]).await;
    let applied = eventually(WAIT, || async {
        // Lossy PUB/SUB: publish again until the reconnected reader hears it.
        let _: i64 = redis::cmd("PUBLISH")
            .arg("versions")
            .arg("a 2")
            .query_async(&mut c.clone())
            .await
            .unwrap();
        pg.version("a").await == Some(2) && pg.version("b").await == Some(2)
    })
    .await;
    assert!(applied, "{:?}", pg.log.lock());
}

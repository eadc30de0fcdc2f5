//! Hardening: what an attacker or a bad day can do from outside, each case
//! against real pollgate processes on loopback (issue 9). Every test here
//! failed before its fix.

mod common;

use std::time::Duration;

use common::{get, send, Pollgate, Upstream};
use http::StatusCode;
use pollgate::cluster::auth::{unix_ms, Auth};
use pollgate::cluster::codec::{self, ConfigFrame, Item, Message, Request};
use pollgate::tunables::{Stamp, Tunables};

const KEY: &str = "cluster-secret";
const ADMIN: &str = "admin-secret";

/// A deltas frame as a peer would build it, carrying `stamp` for the config.
fn deltas(auth: &Auth, key: &str, version: u64, stamp: Stamp) -> Vec<u8> {
    let mut values = Tunables::from_config(&Default::default()).get();
    values.max_age_ms = 0;
    let msg = Message {
        from: "test-peer".into(),
        config: ConfigFrame { stamp, values },
        body: Request::Deltas(vec![Item {
            key: key.into(),
            version,
            confirmed_ago_ms: Some(0),
        }]),
    };
    let body = codec::encode_message(&msg);
    auth.seal_at(unix_ms(), &[], &body).0.to_vec()
}

async fn post(pg: &Pollgate, path: &str, frame: Vec<u8>) -> StatusCode {
    send("POST", &pg.internal_url(path), &[], frame).await.0
}

async fn version(pg: &Pollgate, key: &str) -> Option<u64> {
    let (s, _, body) = get(&pg.internal_url(&format!("/v1/versions/{key}"))).await;
    (s == StatusCode::OK).then(|| {
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["version"].as_u64().unwrap()
    })
}

async fn config_of(pg: &Pollgate) -> serde_json::Value {
    let (s, _, body) = get(&pg.internal_url("/v1/config")).await;
    assert_eq!(s, StatusCode::OK);
    serde_json::from_str(&body).unwrap()
}

async fn put_config(pg: &Pollgate, body: &str) -> (StatusCode, String) {
    let auth = format!("Bearer {ADMIN}");
    let h = [("authorization", auth.as_str())];
    let (s, _, b) = send("PUT", &pg.internal_url("/v1/config"), &h, body.into()).await;
    (s, b)
}

fn unused_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

// ---- 1. gossip endpoints exist only when authenticated (or said insecure) ----

#[tokio::test]
async fn without_a_cluster_key_gossip_endpoints_do_not_exist() {
    let up = Upstream::start().await;
    let pg = Pollgate::start(&up.url(), &[]);
    let forged = Auth::new(None); // the empty key anyone can use
    let stamp = Stamp::default();
    for path in ["/v1/cluster/deltas", "/v1/cluster/pull", "/v1/cluster/push"] {
        let frame = deltas(&forged, "victim", u64::MAX, stamp.clone());
        assert_eq!(
            post(&pg, path, frame).await,
            StatusCode::NOT_FOUND,
            "{path}"
        );
    }
    assert_eq!(version(&pg, "victim").await, None);
    assert_ne!(config_of(&pg).await["max_age_ms"], 0);
}

#[tokio::test]
async fn gossip_is_served_with_a_key_or_explicitly_insecure_with_peers() {
    let up = Upstream::start().await;
    let keyed = Pollgate::start(&up.url(), &["--cluster-key", KEY]);
    let frame = deltas(&Auth::new(Some(KEY)), "a", 3, Stamp::default());
    assert_eq!(
        post(&keyed, "/v1/cluster/deltas", frame).await,
        StatusCode::OK
    );
    assert_eq!(version(&keyed, "a").await, Some(3));
    let forged = deltas(&Auth::new(None), "b", 3, Stamp::default());
    let s = post(&keyed, "/v1/cluster/deltas", forged.clone()).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    let peer = unused_port();
    let open = Pollgate::start(&up.url(), &["--insecure-cluster", "--peer", &peer]);
    assert_eq!(
        post(&open, "/v1/cluster/deltas", forged).await,
        StatusCode::OK
    );
    // Insecure without peers is not a cluster: nothing to gossip with.
    let alone = Pollgate::start(&up.url(), &["--insecure-cluster"]);
    let forged = deltas(&Auth::new(None), "c", 3, Stamp::default());
    let s = post(&alone, "/v1/cluster/deltas", forged).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

// ---- 2. config stamps from the future are refused; admin PUT is bounded ----

#[tokio::test]
async fn a_config_stamp_from_the_future_is_refused_and_put_config_still_answers() {
    let up = Upstream::start().await;
    let pg = Pollgate::start(&up.url(), &["--cluster-key", KEY, "--admin-token", ADMIN]);
    let auth = Auth::new(Some(KEY));
    for (i, at_ms) in [u64::MAX, unix_ms() + 10 * 60_000].into_iter().enumerate() {
        // `~` sorts after every hostname: before the fix this stamp could
        // never be beaten and the admin PUT looped forever.
        let stamp = Stamp {
            at_ms,
            node: "~~~~".into(),
        };
        let frame = deltas(&auth, &format!("k{i}"), 1, stamp);
        assert_eq!(post(&pg, "/v1/cluster/deltas", frame).await, StatusCode::OK);
    }
    let cfg = config_of(&pg).await;
    assert_ne!(cfg["max_age_ms"], 0, "future config applied: {cfg}");
    assert!(cfg["stamp"]["at_ms"].as_u64().unwrap() < unix_ms() + 60_000);
    let put = put_config(&pg, r#"{"poll_interval_hint_s": 7}"#);
    let (s, body) = tokio::time::timeout(Duration::from_secs(10), put)
        .await
        .expect("PUT /v1/config must answer, not spin");
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(config_of(&pg).await["poll_interval_hint_s"], 7);
}

//! Authorization and CORS against a real pollgate process and a real
//! upstream. Every token is minted here, with keys this test makes: HS256
//! secrets, and RSA and Ed25519 keys from `openssl genpkey`.

mod common;

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{eventually, get, send, Mode, Pollgate, Upstream};
use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const SECRET_OLD: &str = "old-secret-old-secret-old-secret-0";
const SECRET_NEW: &str = "new-secret-new-secret-new-secret-1";
const WAIT: Duration = Duration::from_secs(10);

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn mint(claims: Value, alg: Algorithm, kid: Option<&str>, key: &EncodingKey) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(String::from);
    jsonwebtoken::encode(&h, &claims, key).unwrap()
}

fn hs(secret: &str, claims: Value) -> String {
    let key = EncodingKey::from_secret(secret.as_bytes()).unwrap();
    mint(claims, Algorithm::HS256, None, &key)
}

fn keys(list: &[&str]) -> Value {
    json!({ "exp": now() + 600, "keys": list })
}

/// An unsigned token: `alg: none` (base64url of `{"alg":"none","typ":"JWT"}`),
/// the claims of a real token, an empty signature.
fn alg_none(claims: Value) -> String {
    let signed = hs(SECRET_OLD, claims);
    let payload = signed.split('.').nth(1).unwrap();
    format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.")
}

async fn poll(
    pg: &Pollgate,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, http::HeaderMap, String) {
    send("GET", &pg.url(path), headers, Vec::new()).await
}

async fn poll_bearer(pg: &Pollgate, path: &str, token: &str) -> (StatusCode, http::HeaderMap) {
    let auth = format!("Bearer {token}");
    let (s, h, _) = poll(pg, path, &[("authorization", &auth)]).await;
    (s, h)
}

fn is_hit(h: &http::HeaderMap) -> bool {
    h.get("x-pollgate").is_some_and(|v| v == "hit")
}

fn assert_not_logged(pg: &Pollgate, tokens: &[&str]) {
    let log = pg.log.lock().join("\n");
    for t in tokens {
        let sig = t.rsplit('.').next().unwrap();
        assert!(!log.contains(sig), "a token reached the log");
    }
}

async fn hs_pollgate(up: &Upstream, extra: &[&str]) -> Pollgate {
    let mut args = vec![
        "--auth-jwt-secret",
        SECRET_OLD,
        "--auth-jwt-secret",
        SECRET_NEW,
    ];
    args.extend_from_slice(extra);
    let pg = Pollgate::start(&up.url(), &args);
    let (s, _) = pg.publish("p1 5\np2 7\norg:7:a 3\n").await;
    assert_eq!(s, StatusCode::OK);
    pg
}

#[tokio::test]
async fn hits_only_for_a_token_covering_the_key() {
    let up = Upstream::start().await;
    let pg = hs_pollgate(&up, &[]).await;
    let p1 = "/projects/p1/changes?since=5";
    let covering = hs(SECRET_OLD, keys(&["p1", "org:7:*"]));

    // No token: the app answers (and decides), not pollgate's memory.
    let (s, h, body) = poll(&pg, p1, &[]).await;
    assert_eq!(s, StatusCode::OK);
    assert!(!is_hit(&h) && body.starts_with("upstream saw"), "{body}");
    assert_eq!(up.hits(), 1);

    let (s, h) = poll_bearer(&pg, p1, &covering).await;
    assert_eq!(s, StatusCode::NOT_MODIFIED);
    assert!(is_hit(&h));
    let (s, h) = poll_bearer(&pg, "/projects/org:7:a/changes?since=3", &covering).await;
    assert!(s == StatusCode::NOT_MODIFIED && is_hit(&h), "prefix grant");
    assert_eq!(up.hits(), 1, "hits never reach the app");

    // A key the token does not cover: forwarded, like no token at all.
    let (s, h) = poll_bearer(&pg, "/projects/p2/changes?since=7", &covering).await;
    assert!(s == StatusCode::OK && !is_hit(&h));
    assert_eq!(up.hits(), 2);

    // Rotation: a token signed with the second secret verifies too.
    let (s, _) = poll_bearer(&pg, p1, &hs(SECRET_NEW, keys(&["p1"]))).await;
    assert_eq!(s, StatusCode::NOT_MODIFIED);

    let refused = [
        hs("some-other-secret-some-other-secret", keys(&["p1"])),
        hs(SECRET_OLD, json!({ "exp": now() - 60, "keys": ["p1"] })),
        hs(SECRET_OLD, json!({ "keys": ["p1"] })),
        hs(
            SECRET_OLD,
            json!({ "exp": now() + 600, "nbf": now() + 300, "keys": ["p1"] }),
        ),
        alg_none(keys(&["p1"])),
        "not-a-jwt".to_string(),
    ];
    for (i, t) in refused.iter().enumerate() {
        let (s, h) = poll_bearer(&pg, p1, t).await;
        assert!(s == StatusCode::OK && !is_hit(&h), "token {i} must not hit");
    }
    assert_eq!(up.hits(), 2 + refused.len());
    let m = |r: &'static str| format!("pollgate_auth_total{{result=\"{r}\"}}");
    assert!(pg.metric(&m("expired")).await >= 1.0);
    assert!(pg.metric(&m("invalid")).await >= 5.0);
    assert!(pg.metric(&m("missing")).await >= 1.0);
    assert!(pg.metric(&m("forbidden")).await >= 1.0);
    assert!(pg.metric(&m("ok")).await >= 2.0);
    let unauth = pg
        .metric("pollgate_requests_total{outcome=\"unauthorized\"}")
        .await;
    assert_eq!(unauth as usize, 2 + refused.len());
    assert_not_logged(&pg, &[&covering]);
}

#[tokio::test]
async fn query_and_cookie_tokens_and_the_query_token_never_reaches_the_app() {
    let up = Upstream::start().await;
    let pg = hs_pollgate(&up, &["--auth-cookie", "sess"]).await;
    let t = hs(SECRET_OLD, keys(&["p1", "p3"]));

    let (s, h, _) = poll(&pg, &format!("/projects/p1/changes?since=5&token={t}"), &[]).await;
    assert!(
        s == StatusCode::NOT_MODIFIED && is_hit(&h),
        "token in the query"
    );
    let cookie = format!("a=b; sess={t}");
    let (s, h, _) = poll(&pg, "/projects/p1/changes?since=5", &[("cookie", &cookie)]).await;
    assert!(
        s == StatusCode::NOT_MODIFIED && is_hit(&h),
        "token in the cookie"
    );

    // Forwarded polls (authorized or not) lose the token from their query.
    up.set_version("p3", 2);
    let (s, _, body) = poll(&pg, &format!("/projects/p3/changes?token={t}&since=1"), &[]).await;
    assert_eq!(s, StatusCode::OK);
    assert!(body.contains("/projects/p3/changes?since=1 "), "{body}");
    let other = hs(SECRET_OLD, keys(&["zzz"]));
    let _ = poll(
        &pg,
        &format!("/projects/p2/changes?since=1&token={other}"),
        &[],
    )
    .await;
    let seen = up.seen.lock().clone();
    assert_eq!(seen.len(), 2);
    assert!(
        seen.iter().all(|(path, _)| !path.contains("token")),
        "{seen:?}"
    );
    assert_not_logged(&pg, &[&t, &other]);
}

#[tokio::test]
async fn an_unauthorized_poll_teaches_only_what_the_app_let_it_see() {
    let up = Upstream::start().await;
    let pg = hs_pollgate(&up, &[]).await;
    up.set_version("secret-project", 41);
    let lookup = pg.internal_url("/v1/versions/secret-project");

    up.set_mode(Mode::Status(403));
    let (s, _, _) = poll(&pg, "/projects/secret-project/changes?since=0", &[]).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "the app's own answer");
    assert_eq!(
        get(&lookup).await.0,
        StatusCode::NOT_FOUND,
        "a refusal teaches nothing"
    );

    up.set_mode(Mode::Normal);
    let (s, _, _) = poll(&pg, "/projects/secret-project/changes?since=0", &[]).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        get(&lookup).await.0,
        StatusCode::OK,
        "the app showed it: learned"
    );
}

#[tokio::test]
async fn audience_is_required_when_configured() {
    let up = Upstream::start().await;
    let pg = hs_pollgate(&up, &["--auth-audience", "tracker"]).await;
    let p1 = "/projects/p1/changes?since=5";
    let with = |aud: Value| {
        hs(
            SECRET_OLD,
            json!({"exp": now() + 600, "aud": aud, "keys": ["p1"]}),
        )
    };
    assert_eq!(
        poll_bearer(&pg, p1, &with(json!("tracker"))).await.0,
        StatusCode::NOT_MODIFIED
    );
    assert_eq!(
        poll_bearer(&pg, p1, &with(json!("other"))).await.0,
        StatusCode::OK
    );
    let none = hs(SECRET_OLD, keys(&["p1"]));
    assert_eq!(poll_bearer(&pg, p1, &none).await.0, StatusCode::OK);
}

/// A private key from `openssl` (PEM), as an app would hold it.
fn openssl_key(dir: &Path, name: &str, args: &[&str]) -> Vec<u8> {
    let path = dir.join(name);
    let out = std::process::Command::new("openssl")
        .arg(args[0])
        .arg("-out")
        .arg(&path)
        .args(&args[1..])
        .output()
        .expect("openssl is installed (scripts/install-deps.sh)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(path).unwrap()
}

fn rsa_key(dir: &Path, name: &str) -> EncodingKey {
    let pem = openssl_key(dir, name, &["genrsa", "-traditional", "2048"]);
    EncodingKey::from_rsa_pem(&pem).unwrap()
}

fn ed_key(dir: &Path, name: &str) -> EncodingKey {
    let pem = openssl_key(dir, name, &["genpkey", "-algorithm", "ed25519"]);
    EncodingKey::from_ed_pem(&pem).unwrap()
}

/// A JWKS of the public halves, each with its `kid`.
fn jwks(keys: &[(&EncodingKey, Algorithm, &str)]) -> String {
    let keys = keys
        .iter()
        .map(|(k, alg, kid)| {
            let mut jwk = Jwk::from_encoding_key(k, *alg).unwrap();
            jwk.common.key_id = Some(kid.to_string());
            jwk
        })
        .collect();
    serde_json::to_string(&JwkSet { keys }).unwrap()
}

/// Writes through a temporary file and a rename, as a deploy would.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

#[tokio::test]
async fn rs256_and_eddsa_from_a_jwks_replaced_while_running() {
    let dir = tempfile::tempdir().unwrap();
    let (rsa1, ed1, rsa2) = (
        rsa_key(dir.path(), "r1.pem"),
        ed_key(dir.path(), "e1.pem"),
        rsa_key(dir.path(), "r2.pem"),
    );
    let file = dir.path().join("jwks.json");
    replace(
        &file,
        &jwks(&[
            (&rsa1, Algorithm::RS256, "r1"),
            (&ed1, Algorithm::EdDSA, "e1"),
        ]),
    );
    let up = Upstream::start().await;
    let pg = Pollgate::start(&up.url(), &["--auth-jwks", file.to_str().unwrap()]);
    pg.publish("p1 5\n").await;
    let p1 = "/projects/p1/changes?since=5";
    let rs = |key: &EncodingKey, kid: &str| mint(keys(&["p1"]), Algorithm::RS256, Some(kid), key);

    // Verified once: remembered by pollgate across connections from here on.
    let old = rs(&rsa1, "r1");
    assert_eq!(poll_bearer(&pg, p1, &old).await.0, StatusCode::NOT_MODIFIED);
    let ed = mint(keys(&["p1"]), Algorithm::EdDSA, Some("e1"), &ed1);
    assert_eq!(poll_bearer(&pg, p1, &ed).await.0, StatusCode::NOT_MODIFIED);
    // The RSA key under the wrong kid, and an unknown key: refused.
    assert_eq!(
        poll_bearer(&pg, p1, &rs(&rsa1, "e1")).await.0,
        StatusCode::OK
    );
    assert_eq!(
        poll_bearer(&pg, p1, &rs(&rsa2, "r1")).await.0,
        StatusCode::OK
    );
    // Algorithm confusion: HS256 "signed" with the public key as the secret.
    let public = std::fs::read(&file).unwrap();
    let confused = mint(
        keys(&["p1"]),
        Algorithm::HS256,
        Some("r1"),
        &EncodingKey::from_secret(&public).unwrap(),
    );
    assert_eq!(poll_bearer(&pg, p1, &confused).await.0, StatusCode::OK);

    // Rotation by replacing the file: r2 in, r1 out, no restart, no signal.
    replace(&file, &jwks(&[(&rsa2, Algorithm::RS256, "r2")]));
    let new = rs(&rsa2, "r2");
    let picked_up = eventually(WAIT, || async {
        poll_bearer(&pg, p1, &new).await.0 == StatusCode::NOT_MODIFIED
    })
    .await;
    assert!(picked_up, "the replaced JWKS was not loaded");
    assert_eq!(
        poll_bearer(&pg, p1, &rs(&rsa1, "r1")).await.0,
        StatusCode::OK
    );
    assert_eq!(
        poll_bearer(&pg, p1, &old).await.0,
        StatusCode::OK,
        "a token remembered under the old keys is verified again, and refused"
    );

    // A broken file keeps the keys loaded before; SIGHUP re-reads at once.
    replace(&file, "{ not json");
    pg.signal("-HUP");
    assert!(
        eventually(WAIT, || async {
            pg.log
                .lock()
                .iter()
                .any(|l| l.contains("JWKS not reloaded"))
        })
        .await
    );
    assert_eq!(poll_bearer(&pg, p1, &new).await.0, StatusCode::NOT_MODIFIED);
}

#[tokio::test]
async fn push_needs_a_token_covering_every_key() {
    let up = Upstream::start().await;
    let pg = hs_pollgate(&up, &[]).await;
    let t = hs(SECRET_OLD, keys(&["p1"]));
    for path in [
        "/pollgate/v1/watch?keys=p1:5",
        "/pollgate/v1/wait?timeout=1&keys=p1:5",
    ] {
        let (s, h, _) = get(&pg.url(path)).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(h["www-authenticate"], "Bearer");
        let (s, _, body) = get(&pg.url(&format!("{path},p2:7&token={t}"))).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{path}");
        assert!(body.contains("\"p2\""), "names the key: {body}");
    }
    match common::ws_connect(pg.public).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED)
        }
        other => panic!("a WebSocket without a token: {other:?}"),
    }

    // Covered: notices flow, over SSE (raw path) and long-poll.
    let mut sse =
        common::Stream::open(&pg.url(&format!("/pollgate/v1/watch?keys=p1:5&token={t}"))).await;
    assert_eq!(sse.status, StatusCode::OK);
    pg.publish("p1 6\n").await;
    let stale = sse.next_stale(WAIT).await.unwrap();
    assert!(stale.contains("\"version\":6"), "{stale}");
    let auth = format!("Bearer {t}");
    let wait_url = pg.url("/pollgate/v1/wait?keys=p1:5&timeout=10");
    let (s, _, body) = send("GET", &wait_url, &[("authorization", &auth)], Vec::new()).await;
    assert_eq!(s, StatusCode::OK);
    assert!(body.contains("\"p1\""), "{body}");
    assert_not_logged(&pg, &[&t]);
}

#[tokio::test]
async fn streams_end_when_their_token_does() {
    let up = Upstream::start().await;
    let pg = hs_pollgate(&up, &[]).await;
    // Past exp but inside the 5 s leeway: valid for 3–4 more seconds. Each
    // transport gets its own: the WebSocket once reused the SSE's token,
    // which the SSE had waited out, and a loaded machine opened it too late.
    let short = || hs(SECRET_OLD, json!({"exp": now() - 1, "keys": ["p1"]}));
    let short_sse = short();
    let mut sse =
        common::Stream::open(&pg.url(&format!("/pollgate/v1/watch?keys=p1:5&token={short_sse}")))
            .await;
    assert_eq!(sse.status, StatusCode::OK);
    let mut expired = false;
    while let Some(block) = sse.next_block(WAIT).await {
        if block.starts_with("event: expired\ndata: ") {
            expired = true;
            break;
        }
    }
    assert!(expired, "SSE said event: expired");
    assert!(sse.ends_within(WAIT).await);

    let mut ws = ws_with_token(&pg, &short()).await;
    let close = next_close(&mut ws).await;
    assert_eq!(close, Some(4001));
}

async fn ws_with_token(pg: &Pollgate, token: &str) -> common::WsClient {
    let tcp = tokio::net::TcpStream::connect(pg.public).await.unwrap();
    let url = format!("ws://{}/pollgate/v1/ws?token={token}", pg.public);
    tokio_tungstenite::client_async(url, tcp).await.unwrap().0
}

async fn next_close(ws: &mut common::WsClient) -> Option<u16> {
    let deadline = tokio::time::Instant::now() + WAIT;
    while let Ok(Some(Ok(m))) = tokio::time::timeout_at(deadline, ws.next()).await {
        if let Message::Close(f) = m {
            return f.map(|f| u16::from(f.code));
        }
    }
    None
}

async fn next_text(ws: &mut common::WsClient) -> String {
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return t.to_string(),
            Ok(Some(Ok(_))) => continue,
            other => panic!("no text message: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_websocket_watch_of_an_uncovered_key_is_refused_and_the_session_goes_on() {
    let up = Upstream::start().await;
    let pg = hs_pollgate(&up, &[]).await;
    let t = hs(SECRET_OLD, keys(&["p1"]));
    let mut ws = ws_with_token(&pg, &t).await;
    let cmd = json!({"op": "watch", "keys": {"p1": 5, "p2": 0}}).to_string();
    ws.send(Message::text(cmd)).await.unwrap();
    let err: Value = serde_json::from_str(&next_text(&mut ws).await).unwrap();
    assert_eq!(err["op"], "error");
    assert_eq!(err["key"], "p2");
    pg.publish("p1 9\np2 9\n").await;
    let stale: Value = serde_json::from_str(&next_text(&mut ws).await).unwrap();
    assert_eq!(stale, json!({"op": "stale", "key": "p1", "version": 9}));
}

#[tokio::test]
async fn cors_preflight_and_headers_for_listed_origins_only() {
    let up = Upstream::start().await;
    let pg = hs_pollgate(&up, &["--cors-origins", "https://app.example"]).await;
    let pre = |origin: &'static str, path: &'static str| {
        let url = pg.url(path);
        async move {
            let h = [
                ("origin", origin),
                ("access-control-request-method", "GET"),
                ("access-control-request-headers", "authorization"),
            ];
            send("OPTIONS", &url, &h, Vec::new()).await
        }
    };
    for path in [
        "/projects/p1/changes?since=5",
        "/pollgate/v1/watch?keys=p1:5",
    ] {
        let (s, h, _) = pre("https://app.example", path).await;
        assert_eq!(s, StatusCode::NO_CONTENT, "{path}");
        assert_eq!(h["access-control-allow-origin"], "https://app.example");
        assert_eq!(h["access-control-allow-credentials"], "true");
        let allowed = h["access-control-allow-headers"].to_str().unwrap();
        assert!(allowed.contains("Authorization") && allowed.contains("If-None-Match"));
        assert!(h.contains_key("access-control-max-age"));
        let (s, h, _) = pre("https://evil.example", path).await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        assert!(!h.contains_key("access-control-allow-origin"), "{path}");
        assert!(!h.contains_key("access-control-allow-methods"));
    }
    assert_eq!(up.hits(), 0, "preflights never reach the app");

    let t = hs(SECRET_OLD, keys(&["p1"]));
    let auth = format!("Bearer {t}");
    let (s, h, _) = poll(
        &pg,
        "/projects/p1/changes?since=5",
        &[("authorization", &auth), ("origin", "https://app.example")],
    )
    .await;
    assert_eq!(s, StatusCode::NOT_MODIFIED);
    assert_eq!(h["access-control-allow-origin"], "https://app.example");
    assert!(h["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .contains("X-Poll-Interval"));
    assert!(h.get_all("vary").iter().any(|v| v == "Origin"));
    let (_, h, _) = poll(
        &pg,
        "/projects/p1/changes?since=5",
        &[("authorization", &auth), ("origin", "https://evil.example")],
    )
    .await;
    assert!(!h.contains_key("access-control-allow-origin"));
    // Push answers carry them too (SSE on the raw path, errors included).
    let url = pg.url(&format!("/pollgate/v1/watch?keys=p1:5&token={t}"));
    let sse = send_head(&url, "https://app.example").await;
    assert!(
        sse.contains("access-control-allow-origin: https://app.example"),
        "{sse}"
    );
    let refused = send_head(
        &pg.url("/pollgate/v1/watch?keys=p1:5"),
        "https://app.example",
    )
    .await;
    assert!(refused.starts_with("http/1.1 401"), "{refused}");
    assert!(
        refused.contains("access-control-allow-origin: https://app.example"),
        "{refused}"
    );
}

/// The response head of a GET sent by hand (the SSE path is raw HTTP/1.1).
async fn send_head(url: &str, origin: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let u: http::Uri = url.parse().unwrap();
    let mut tcp = tokio::net::TcpStream::connect(u.authority().unwrap().as_str())
        .await
        .unwrap();
    let req = format!(
        "GET {} HTTP/1.1\r\nhost: x\r\norigin: {origin}\r\n\r\n",
        u.path_and_query().unwrap()
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, tcp.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&buf).to_lowercase()
}

/// A WebSocket handshake carrying `cookie` from a page of `origin`.
async fn ws_from(
    pg: &Pollgate,
    origin: &str,
    cookie: &str,
) -> Result<common::WsClient, tokio_tungstenite::tungstenite::Error> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let tcp = tokio::net::TcpStream::connect(pg.public).await.unwrap();
    let mut req = format!("ws://{}/pollgate/v1/ws", pg.public)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert("origin", origin.parse().unwrap());
    req.headers_mut().insert("cookie", cookie.parse().unwrap());
    tokio_tungstenite::client_async(req, tcp)
        .await
        .map(|(ws, _)| ws)
}

#[tokio::test]
async fn a_cookie_opens_a_websocket_only_from_a_trusted_origin() {
    let up = Upstream::start().await;
    let pg = hs_pollgate(&up, &["--cors-origins", "https://app.example"]).await;
    let cookie = format!("pollgate_token={}", hs(SECRET_OLD, keys(&["p1"])));
    let own = format!("http://{}", pg.public);
    assert!(ws_from(&pg, &own, &cookie).await.is_ok(), "same origin");
    assert!(
        ws_from(&pg, "https://app.example", &cookie).await.is_ok(),
        "listed"
    );
    match ws_from(&pg, "https://evil.example", &cookie).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED)
        }
        other => panic!("a foreign page used the user's cookie: {other:?}"),
    }
}

fn ec_key(dir: &Path, name: &str) -> EncodingKey {
    let args = [
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
    ];
    EncodingKey::from_ec_pem(&openssl_key(dir, name, &args)).unwrap()
}

/// `GET` on a client the caller keeps, so polls share one keep-alive connection.
async fn poll_on(
    c: &common::HttpClient,
    pg: &Pollgate,
    path: &str,
    token: &str,
) -> (StatusCode, bool) {
    let (s, h, _) = common::send_on(
        c,
        "GET",
        &pg.url(path),
        &[("authorization", &format!("Bearer {token}"))],
        Vec::new(),
    )
    .await;
    (s, is_hit(&h))
}

async fn reload(pg: &Pollgate) -> Value {
    let (s, _, body) = send(
        "POST",
        &pg.internal_url("/v1/reload"),
        &[("authorization", "Bearer admin")],
        Vec::new(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test]
async fn secrets_jwks_and_audience_reload_live_and_es256_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let ec = ec_key(dir.path(), "ec.pem");
    let jwks_file = dir.path().join("jwks.json");
    replace(&jwks_file, &jwks(&[(&ec, Algorithm::ES256, "ec1")]));
    let up = Upstream::start().await;
    let config = dir.path().join("pollgate.toml");
    let base = format!(
        "listen = \"127.0.0.1:0\"\ninternal_listen = \"127.0.0.1:0\"\nupstream = [{:?}]\n\
         publish_token = {:?}\nadmin_token = \"admin\"\n",
        up.url(),
        common::TOKEN
    );
    std::fs::write(
        &config,
        format!("{base}auth_jwt_secret = [{SECRET_OLD:?}]\n"),
    )
    .unwrap();
    let pg = Pollgate::start_args(&["--config", config.to_str().unwrap()]);
    pg.publish("p1 5\n").await;
    let p1 = "/projects/p1/changes?since=5";
    let (old, new) = (hs(SECRET_OLD, keys(&["p1"])), hs(SECRET_NEW, keys(&["p1"])));
    let es = mint(keys(&["p1"]), Algorithm::ES256, Some("ec1"), &ec);
    let c = common::client();
    assert_eq!(
        poll_on(&c, &pg, p1, &old).await,
        (StatusCode::NOT_MODIFIED, true)
    );
    assert!(!poll_on(&c, &pg, p1, &es).await.1, "no JWKS configured yet");
    // A stream opened under the old secret.
    let mut stream =
        common::Stream::open(&pg.url(&format!("/pollgate/v1/watch?keys=p1:5&token={old}"))).await;
    assert_eq!(stream.status, StatusCode::OK);

    // The old secret out, a new one and an ES256 JWKS in.
    let swapped = format!(
        "{base}auth_jwt_secret = [{SECRET_NEW:?}]\nauth_jwks = {:?}\n",
        jwks_file.to_str().unwrap()
    );
    std::fs::write(&config, &swapped).unwrap();
    let answer = reload(&pg).await;
    assert_eq!(
        answer["changed"],
        json!(["auth_jwt_secret", "auth_jwks"]),
        "{answer}"
    );
    // The same keep-alive connection: its remembered old token is checked again.
    assert_eq!(poll_on(&c, &pg, p1, &old).await, (StatusCode::OK, false));
    assert_eq!(
        poll_on(&c, &pg, p1, &new).await,
        (StatusCode::NOT_MODIFIED, true)
    );
    assert_eq!(
        poll_on(&c, &pg, p1, &es).await,
        (StatusCode::NOT_MODIFIED, true),
        "ES256 via JWKS"
    );
    // The stream admitted before goes on until its token's exp.
    pg.publish("p1 6\n").await;
    let notice = stream
        .next_stale(WAIT)
        .await
        .expect("the old stream still delivers");
    assert!(notice.contains("\"version\":6"), "{notice}");

    // An audience, live: a token without `aud` no longer verifies.
    std::fs::write(&config, format!("{swapped}auth_audience = \"app\"\n")).unwrap();
    assert_eq!(reload(&pg).await["changed"], json!(["auth_audience"]));
    let p1 = "/projects/p1/changes?since=6";
    assert!(!poll_on(&c, &pg, p1, &es).await.1);
    let aud = json!({ "exp": now() + 600, "keys": ["p1"], "aud": "app" });
    let es_aud = mint(aud, Algorithm::ES256, Some("ec1"), &ec);
    assert!(poll_on(&c, &pg, p1, &es_aud).await.1);

    // Turning authorization off needs a restart: named, and tokens still needed.
    std::fs::write(&config, &base).unwrap();
    let answer = reload(&pg).await;
    let why = answer["why"]["auth_jwt_secret"]
        .as_str()
        .unwrap_or_default();
    assert!(why.contains("on or off"), "{answer}");
    let (_, h, _) = poll(&pg, p1, &[]).await;
    assert!(!is_hit(&h), "still no hit without a token");
    assert!(
        poll_on(&c, &pg, p1, &es_aud).await.1,
        "the running keys stay"
    );
    assert_not_logged(&pg, &[&old, &new, &es, &es_aud]);
}

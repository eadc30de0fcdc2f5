//! The key table: one row per config key, the one place that says how a key
//! is named, shown in `--help`, parsed into [`Config`] and printed back.
//! Defaults are not written here: they are read from `Config::default()`.

use std::fmt::Write as _;
use std::sync::OnceLock;

use toml::Value;

use super::parse::*;
use super::Config;

/// A value that did not parse: the offending text and what was expected.
#[derive(Debug, PartialEq)]
pub(super) struct Bad {
    pub value: String,
    pub why: String,
}

/// Parses the winning raw value(s) of a key into the config.
type Setter = fn(&mut Config, &[String]) -> Result<(), Bad>;
/// The key's effective value for `--print-config`; `None` when unset.
type Getter = fn(&Config) -> Option<Value>;

/// One config key: everything flags, env, file, help and print need.
pub(super) struct Key {
    pub name: &'static str,
    pub heading: &'static str,
    pub value_name: &'static str,
    pub help: &'static str,
    /// What `--help` says instead of the default value, for a default that
    /// is unset, empty or depends on the machine (`node_id`).
    pub note: Option<&'static str>,
    pub list: bool,
    pub set: Setter,
    pub get: Getter,
}

const fn key(
    name: &'static str,
    heading: &'static str,
    value_name: &'static str,
    help: &'static str,
    set: Setter,
    get: Getter,
) -> Key {
    Key {
        name,
        heading,
        value_name,
        help,
        note: None,
        list: false,
        set,
        get,
    }
}

impl Key {
    /// Repeatable: flags repeat, env is comma-separated, the file takes an array.
    const fn list(self) -> Key {
        Key { list: true, ..self }
    }

    /// Shown as the default in `--help` instead of `Config::default()`'s value.
    const fn note(self, note: &'static str) -> Key {
        Key {
            note: Some(note),
            ..self
        }
    }

    pub fn env_name(&self) -> String {
        format!("{ENV_PREFIX}{}", self.name.to_ascii_uppercase())
    }
}

pub(super) const ENV_PREFIX: &str = "POLLGATE_";
pub(super) const CONFIG_ENV: &str = "POLLGATE_CONFIG";

const NET: &str = "Listeners";
const UP: &str = "Upstream";
const POLL: &str = "Polling";
const AUTH: &str = "Publish and admin";
const CLUSTER: &str = "Cluster";
const OPS: &str = "Storage and logs";
const PUSH: &str = "Push";
const PUBLIC_AUTH: &str = "Public authorization and CORS";
const REDIS: &str = "Redis feed";

#[rustfmt::skip]
pub(super) static KEYS: &[Key] = &[
    key("listen", NET, "ADDR", "Public listener: polls, push, pass-through",
        |c, v| one(v, socket).map(|x| c.listen = x), |c| text(c.listen)),
    key("internal_listen", NET, "ADDR", "Internal listener: publish, admin, metrics, health, gossip; keep it off the public network",
        |c, v| one(v, socket).map(|x| c.internal_listen = x), |c| text(c.internal_listen)),
    key("header_read_timeout", NET, "DURATION", "A client must send its request head within this (slowloris guard)",
        |c, v| one(v, positive_duration).map(|x| c.header_read_timeout = x), |c| dur(c.header_read_timeout)),
    key("max_header_size", NET, "SIZE", "Largest accepted request head, 1KiB to 1MiB",
        |c, v| one(v, header_size).map(|x| c.max_header_size = x), |c| bytes(c.max_header_size as u64)),
    key("grace_period", NET, "DURATION", "On SIGTERM, in-flight requests get this long to finish",
        |c, v| one(v, duration).map(|x| c.grace_period = x), |c| dur(c.grace_period)),
    key("upstream", UP, "URL", "App server as http://host:port; round-robin over healthy ones",
        |c, v| all(v, upstream).map(|x| c.upstream = x), |c| texts(c.upstream.iter().map(upstream_text))).list(),
    key("version_header", UP, "NAME", "Upstream response header carrying the key's current version",
        |c, v| one(v, header_name).map(|x| c.version_header = x), |c| text(header_text(&c.version_header))),
    key("passthrough", UP, "BOOL", "Proxy requests that match no route unchanged; false answers them 404",
        |c, v| one(v, boolean).map(|x| c.passthrough = x), |c| Some(Value::Boolean(c.passthrough))),
    key("upstream_max_inflight", UP, "N", "Cap on concurrent upstream requests, at least 1",
        |c, v| one(v, at_least_one).map(|x| c.upstream_max_inflight = x), |c| int(c.upstream_max_inflight as u64)),
    key("upstream_queue", UP, "N", "Requests that may wait for an upstream slot; beyond that, 503",
        |c, v| one(v, whole).map(|x| c.upstream_queue = x), |c| int(c.upstream_queue as u64)),
    key("upstream_queue_timeout", UP, "DURATION", "Longest wait for an upstream slot before shedding with 503",
        |c, v| one(v, duration).map(|x| c.upstream_queue_timeout = x), |c| dur(c.upstream_queue_timeout)),
    key("upstream_connect_timeout", UP, "DURATION", "TCP connect timeout to an upstream",
        |c, v| one(v, positive_duration).map(|x| c.upstream_connect_timeout = x), |c| dur(c.upstream_connect_timeout)),
    key("upstream_timeout", UP, "DURATION", "Time to the upstream's response head; longer counts as a failure",
        |c, v| one(v, duration).map(|x| c.upstream_timeout = x), |c| dur(c.upstream_timeout)),
    key("client_body_timeout", UP, "DURATION", "A client must send a forwarded request's body within this (408); not an upstream failure",
        |c, v| one(v, positive_duration).map(|x| c.client_body_timeout = x), |c| dur(c.client_body_timeout)),
    key("upstream_host", UP, "HOST", "Host header sent upstream instead of the client's",
        |c, v| one(v, host).map(|x| c.upstream_host = Some(x)), |c| c.upstream_host.as_ref().and_then(text)).note("unset"),
    key("client_rate_per_s", UP, "N", "Forwarded requests + new push connections per second per client (429 beyond); 0 is off",
        |c, v| one(v, whole).map(|x| c.client_rate_per_s = x), |c| int(c.client_rate_per_s)),
    key("client_burst", UP, "N", "Tokens a client may spend at once; 0 means 2 × client_rate_per_s",
        |c, v| one(v, whole).map(|x| c.client_burst = x), |c| int(c.client_burst)),
    key("trusted_proxies", UP, "CIDR", "Proxies whose X-Forwarded-For names the client for client_rate_per_s",
        |c, v| all(v, cidr).map(|x| c.trusted_proxies = x), |c| texts(c.trusted_proxies.iter())).list().note("none"),
    key("breaker_failures", UP, "N", "Consecutive upstream failures that open the circuit breaker, at least 1",
        |c, v| one(v, at_least_one).map(|x| c.breaker_failures = x), |c| int(u64::from(c.breaker_failures))),
    key("breaker_open", UP, "DURATION", "How long the breaker stays open before one half-open probe",
        |c, v| one(v, duration).map(|x| c.breaker_open = x), |c| dur(c.breaker_open)),
    key("route", POLL, "TEMPLATE", "Poll route; {version} sits in the path, a query parameter or header:If-None-Match",
        |c, v| all(v, non_empty).map(|x| c.route = x), |c| texts(c.route.iter())).list(),
    key("host_keys", POLL, "BOOL", "Table key is <host>:<key> for polls, for apps that answer by Host (multi-tenant)",
        |c, v| one(v, boolean).map(|x| c.host_keys = x), |c| Some(Value::Boolean(c.host_keys))),
    key("max_age", POLL, "DURATION", "Revalidate an entry upstream after this long unconfirmed; 0s disables",
        |c, v| one(v, duration).map(|x| c.max_age = x), |c| dur(c.max_age)),
    key("coalesce_wait", POLL, "DURATION", "How long a poll waits for a coalesced upstream request of its key",
        |c, v| one(v, duration).map(|x| c.coalesce_wait = x), |c| dur(c.coalesce_wait)),
    key("poll_interval", POLL, "DURATION", "X-Poll-Interval hint on fresh answers while push is off or refusing; while push is healthy the hint is the cluster-wide poll_interval_hint_s (60s by default, GET/PUT /v1/config)",
        |c, v| one(v, positive_duration).map(|x| c.poll_interval = x), |c| dur(c.poll_interval)),
    key("publish_token", AUTH, "TOKEN", "Bearer token for POST /v1/versions; repeat it to accept several while rotating (reloadable)",
        |c, v| all(v, secret).map(|x| c.publish_token = x), |c| unless_file(&c.publish_token_file, redacted_all(&c.publish_token))).list().note("unset: publishing refused"),
    key("publish_token_file", AUTH, "FILE", "File of publish_token values, one per line, instead of publish_token; re-read on reload and every second",
        |c, v| one(v, non_empty).map(|x| c.publish_token_file = Some(x.into())), |c| path_text(&c.publish_token_file)).note("unset"),
    key("admin_token", AUTH, "TOKEN", "Bearer token for PUT /v1/config and POST /v1/reload; repeat it to accept several while rotating (reloadable)",
        |c, v| all(v, secret).map(|x| c.admin_token = x), |c| unless_file(&c.admin_token_file, redacted_all(&c.admin_token))).list().note("unset: admin refused"),
    key("admin_token_file", AUTH, "FILE", "File of admin_token values, one per line, instead of admin_token; re-read on reload and every second",
        |c, v| one(v, non_empty).map(|x| c.admin_token_file = Some(x.into())), |c| path_text(&c.admin_token_file)).note("unset"),
    key("auth_jwt_secret", PUBLIC_AUTH, "SECRET", "HS256 secret (32+ bytes) the app signs public-listener tokens with; repeat to rotate",
        |c, v| all(v, jwt_secret).map(|x| c.auth_jwt_secret = x), |c| unless_file(&c.auth_jwt_secret_file, redacted_all(&c.auth_jwt_secret))).list().note("none: no HS256 tokens"),
    key("auth_jwt_secret_file", PUBLIC_AUTH, "FILE", "File of auth_jwt_secret values, one per line, instead of auth_jwt_secret; re-read on reload and every second",
        |c, v| one(v, non_empty).map(|x| c.auth_jwt_secret_file = Some(x.into())), |c| path_text(&c.auth_jwt_secret_file)).note("unset"),
    key("auth_jwks", PUBLIC_AUTH, "FILE", "JWKS file of public keys (RS256, ES256, EdDSA), re-read when it changes or on SIGHUP",
        |c, v| one(v, non_empty).map(|x| c.auth_jwks = Some(x.into())), |c| c.auth_jwks.as_ref().and_then(|d| text(d.display()))).note("unset"),
    key("auth_audience", PUBLIC_AUTH, "NAME", "A token's aud must name this",
        |c, v| one(v, word).map(|x| c.auth_audience = Some(x)), |c| c.auth_audience.as_ref().and_then(text)).note("unset: aud not checked"),
    key("auth_cookie", PUBLIC_AUTH, "NAME", "Cookie a public-listener token may travel in",
        |c, v| one(v, word).map(|x| c.auth_cookie = x), |c| text(&c.auth_cookie)),
    key("cors_origins", PUBLIC_AUTH, "ORIGIN", "Origin (https://app.example.com, or *) whose browsers may poll and watch",
        |c, v| all(v, origin).map(|x| c.cors_origins = x), |c| texts(c.cors_origins.iter())).list().note("none: no CORS headers"),
    key("publish_max_body", AUTH, "SIZE", "Publish bodies larger than this get 413",
        |c, v| one(v, body_size).map(|x| c.publish_max_body = x), |c| bytes(c.publish_max_body)),
    key("peer", CLUSTER, "ADDR", "Another replica's internal address as host:port",
        |c, v| all(v, peer).map(|x| c.peer = x), |c| texts(c.peer.iter())).list().note("none"),
    key("node_id", CLUSTER, "NAME", "This replica's name in the cluster",
        |c, v| one(v, word).map(|x| c.node_id = x), |c| text(&c.node_id)).note("hostname:<internal_listen port>"),
    key("cluster_key", CLUSTER, "SECRET", "Shared secret that authenticates gossip; required with --peer; repeat to rotate: the first signs, any verifies (reloadable)",
        |c, v| all(v, secret).map(|x| c.cluster_key = x), |c| unless_file(&c.cluster_key_file, redacted_all(&c.cluster_key))).list().note("unset"),
    key("cluster_key_file", CLUSTER, "FILE", "File of cluster_key values, one per line (the first signs), instead of cluster_key; re-read on reload and every second",
        |c, v| one(v, non_empty).map(|x| c.cluster_key_file = Some(x.into())), |c| path_text(&c.cluster_key_file)).note("unset"),
    key("insecure_cluster", CLUSTER, "BOOL", "Allow peer without cluster_key: unauthenticated gossip, for trusted test networks only",
        |c, v| one(v, boolean).map(|x| c.insecure_cluster = x), |c| Some(Value::Boolean(c.insecure_cluster))),
    key("data_dir", OPS, "DIR", "Where snapshots are written",
        |c, v| one(v, non_empty).map(|x| c.data_dir = Some(x.into())), |c| c.data_dir.as_ref().and_then(|d| text(d.display()))).note("unset: no snapshots"),
    key("snapshot_interval", OPS, "DURATION", "Snapshot the table into data_dir this often when it changed; 0s: only at shutdown",
        |c, v| one(v, duration).map(|x| c.snapshot_interval = x), |c| dur(c.snapshot_interval)),
    key("log_format", OPS, "FORMAT", "Log format: text or json",
        |c, v| one(v, log_format).map(|x| c.log_format = x), |c| text(log_format_text(c.log_format))),
    key("log_level", OPS, "FILTER", "Which log lines are written: info, debug, or a RUST_LOG-style filter (RUST_LOG wins when set; reloadable)",
        |c, v| one(v, log_filter).map(|x| c.log_level = x), |c| text(&c.log_level)),
    key("push", PUSH, "BOOL", "Serve push (SSE, long-poll, WebSocket); false answers 404 there and clients poll",
        |c, v| one(v, boolean).map(|x| c.push = x), |c| Some(Value::Boolean(c.push))),
    key("heartbeat_interval", PUSH, "DURATION", "SSE heartbeat and WebSocket ping interval (cluster-wide seed)",
        |c, v| one(v, positive_duration).map(|x| c.heartbeat_interval = x), |c| dur(c.heartbeat_interval)),
    key("ghost_timeout", PUSH, "DURATION", "Close a WebSocket whose pong is this late (cluster-wide seed)",
        |c, v| one(v, positive_duration).map(|x| c.ghost_timeout = x), |c| dur(c.ghost_timeout)),
    key("push_admission_per_s", PUSH, "N", "New push connections admitted per second (cluster-wide seed)",
        |c, v| one(v, whole).map(|x| c.push_admission_per_s = x), |c| int(c.push_admission_per_s)),
    key("push_admission_burst", PUSH, "N", "New push connections admitted at once before the rate applies",
        |c, v| one(v, whole).map(|x| c.push_admission_burst = x), |c| int(c.push_admission_burst)),
    key("push_max_connections", PUSH, "N", "Cap on open push connections; beyond it, 503 with Retry-After",
        |c, v| one(v, whole).map(|x| c.push_max_connections = x), |c| int(c.push_max_connections as u64)),
    key("max_keys_per_watch", PUSH, "N", "Keys one watch may name, at least 1; more is a 400",
        |c, v| one(v, at_least_one).map(|x| c.max_keys_per_watch = x), |c| int(c.max_keys_per_watch as u64)),
    key("wait_max_timeout", PUSH, "DURATION", "Longest long-poll timeout honoured; longer ones are capped",
        |c, v| one(v, positive_duration).map(|x| c.wait_max_timeout = x), |c| dur(c.wait_max_timeout)),
    key("redis_url", REDIS, "URL", "Redis to read versions from: redis://[:password@]host:port/db, rediss:// for TLS (reloadable: the feed reconnects with it)",
        |c, v| one(v, redis_url).map(|x| c.redis_url = Some(x)), |c| unless_file(&c.redis_url_file, redis_url_text(&c.redis_url))).note("unset: no Redis feed"),
    key("redis_url_file", REDIS, "FILE", "File holding the redis_url (with its password) on one line, instead of redis_url; re-read on reload and every second",
        |c, v| one(v, non_empty).map(|x| c.redis_url_file = Some(x.into())), |c| path_text(&c.redis_url_file)).note("unset"),
    key("redis_channel", REDIS, "NAME", "PUB/SUB channel whose messages are publish bodies (lossy while disconnected)",
        |c, v| all(v, non_empty).map(|x| c.redis_channel = x), |c| texts(c.redis_channel.iter())).list().note("none"),
    key("redis_stream", REDIS, "NAME", "Stream of entries key+version or body, read from the last applied ID (kept in the snapshot)",
        |c, v| all(v, stream_name).map(|x| c.redis_stream = x), |c| texts(c.redis_stream.iter())).list().note("none"),
    key("redis_stream_complete", REDIS, "BOOL", "The app writes every change to redis_stream: a caught-up gap-free reader keeps entries confirmed",
        |c, v| one(v, boolean).map(|x| c.redis_stream_complete = x), |c| Some(Value::Boolean(c.redis_stream_complete))),
    key("redis_tls_ca", REDIS, "FILE", "PEM CA certificate(s) to verify a rediss:// server with instead of the system roots",
        |c, v| one(v, non_empty).map(|x| c.redis_tls_ca = Some(x.into())), |c| c.redis_tls_ca.as_ref().and_then(|d| text(d.display()))).note("unset: system roots"),
];

pub(super) fn key_index(name: &str) -> Option<usize> {
    KEYS.iter().position(|k| k.name == name)
}

/// Parses the single value of a scalar key.
fn one<T>(v: &[String], parse: fn(&str) -> Result<T, String>) -> Result<T, Bad> {
    let s = v.first().map_or("", String::as_str);
    parse(s).map_err(|why| Bad {
        value: s.to_string(),
        why,
    })
}

/// Parses every item of a list key; the first bad item is reported.
fn all<T>(v: &[String], parse: fn(&str) -> Result<T, String>) -> Result<Vec<T>, Bad> {
    v.iter()
        .map(|s| one(std::slice::from_ref(s), parse))
        .collect()
}

/// Each key's default as `--help` and `--print-config` show it: the key's
/// note, or `Config::default()` printed the way `--print-config` prints it.
pub(super) fn default_texts() -> &'static [String] {
    static TEXTS: OnceLock<Vec<String>> = OnceLock::new();
    TEXTS.get_or_init(|| {
        let defaults = Config::default();
        let shown = |k: &Key| (k.get)(&defaults).map_or_else(String::new, |v| plain(&v));
        KEYS.iter()
            .map(|k| k.note.map_or_else(|| shown(k), String::from))
            .collect()
    })
}

/// A printed value as prose: strings unquoted, list items joined by `, `.
fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(plain).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    }
}

/// What `--print-config` shows instead of a secret: stdout ends up in logs
/// and tickets, so a token printed there is a token leaked.
pub const REDACTED: &str = "<set>";

/// The effective config as TOML, loadable again with `--config`. Secrets are
/// shown as [`REDACTED`] (loading that placeholder back is refused, so it can
/// never become the real token by accident); unset keys are commented out.
pub fn to_toml(cfg: &Config) -> String {
    let mut out = String::from(TOML_HEADER);
    for (key, default) in KEYS.iter().zip(default_texts()) {
        let _ = writeln!(out, "\n# {} [default: {default}]", key.help);
        let _ = match (key.get)(cfg) {
            Some(value) => writeln!(out, "{} = {value}", key.name),
            None => writeln!(out, "# {} is unset", key.name),
        };
    }
    out
}

const TOML_HEADER: &str = "# pollgate effective configuration (--print-config).\n\
# Secrets are shown as \"<set>\", never their value: replace them before reuse.\n";

/// Keys whose effective value differs between two configs: what a reload
/// compares. Secrets are compared by value (their printed form is redacted).
pub fn changed_keys(old: &Config, new: &Config) -> Vec<&'static str> {
    let secret_changed = |name: &str| match name {
        "publish_token" => old.publish_token != new.publish_token,
        "admin_token" => old.admin_token != new.admin_token,
        "cluster_key" => old.cluster_key != new.cluster_key,
        "auth_jwt_secret" => old.auth_jwt_secret != new.auth_jwt_secret,
        "redis_url" => old.redis_url != new.redis_url,
        _ => false,
    };
    KEYS.iter()
        .filter(|k| (k.get)(old) != (k.get)(new) || secret_changed(k.name))
        .map(|k| k.name)
        .collect()
}

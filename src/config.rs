//! Configuration: built-in default < TOML file < `POLLGATE_*` env < flags.
//! Every key is parsed and every bad one reported at once, before any port is bound.
//!
//! One table, [`KEYS`], describes every key: its flag, help, default text, how
//! to parse a value into [`Config`] and how to print it back. Flags, env vars,
//! file keys, `--help` and `--print-config` all come from that table, so a key
//! cannot exist in one of them and be missing from another.
//!
//! Values are gathered as raw text first (the highest layer wins, lists are
//! replaced, never appended) and only the winning text is parsed: a bad value
//! in the file that a flag overrides is not in effect, so it is not an error.
//! Unknown names (flag, `POLLGATE_*` variable, file key) always are.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use clap::{Arg, ArgAction, ArgMatches, ColorChoice, Command};
use toml::Value;

/// The effective configuration. Field docs give the default and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `127.0.0.1:8080`. Public listener: polls, push, pass-through.
    pub listen: SocketAddr,
    /// `127.0.0.1:8081`. Internal listener: publish, admin, metrics, health.
    /// Separate so it can stay off the public network.
    pub internal_listen: SocketAddr,
    /// `http://127.0.0.1:3000`. App servers, round-robin over healthy ones.
    pub upstream: Vec<http::Uri>,
    /// `/projects/{key}/changes?since={version}`. Poll route templates.
    pub route: Vec<String>,
    /// `X-Pollgate-Version`. Upstream response header carrying the key's version.
    pub version_header: http::HeaderName,
    /// Unset: publishing refused (403) rather than open to anyone.
    pub publish_token: Option<String>,
    /// Unset: admin refused.
    pub admin_token: Option<String>,
    /// `60s`. An entry unconfirmed this long is revalidated upstream; bounds
    /// how long a lost publish can hide a change. Zero disables.
    pub max_age: Duration,
    /// `256`. Cap on concurrent upstream requests, so pollgate can never
    /// become the stampede it exists to prevent.
    pub upstream_max_inflight: usize,
    /// None. Other replicas' internal addresses.
    pub peer: Vec<String>,
    /// Hostname + port. This replica's name in the cluster.
    pub node_id: String,
    /// Unset. Shared secret for gossip.
    pub cluster_key: Option<String>,
    /// `false`. Allows `peer` without `cluster_key` (unauthenticated gossip);
    /// must be said explicitly so nobody runs an open cluster by accident.
    pub insecure_cluster: bool,
    /// Unset: no snapshots.
    pub data_dir: Option<PathBuf>,
    /// `5s`. How often the table is snapshotted into `data_dir` (only when
    /// something changed): bounds what a crash loses to this much, at the
    /// cost of one table scan per interval. Zero: only at shutdown.
    pub snapshot_interval: Duration,

    /// `true`. Requests matching no route are proxied unchanged; `false` → 404.
    pub passthrough: bool,
    /// `1MiB`. Publish bodies larger than this get 413.
    pub publish_max_body: u64,
    /// `5s`. How long a poll waits for a coalesced upstream request of the
    /// same key before it is forwarded on its own.
    pub coalesce_wait: Duration,
    /// `1024`. Requests that may wait for an upstream slot; beyond → 503.
    pub upstream_queue: usize,
    /// `1s`. Longest wait for an upstream slot before shedding with 503.
    pub upstream_queue_timeout: Duration,
    /// `1s`. TCP connect timeout to an upstream.
    pub upstream_connect_timeout: Duration,
    /// `10s`. Time to the upstream's response head; a hung upstream is an error.
    pub upstream_timeout: Duration,
    /// `30s`. Longest a client may take to send a forwarded request's body
    /// (408 beyond). Separate from `upstream_timeout`, which starts once the
    /// body is sent: a slow client is not a slow app and must not open the breaker.
    pub client_body_timeout: Duration,
    /// `5`. Consecutive upstream failures that open the circuit breaker.
    pub breaker_failures: u32,
    /// `5s`. How long the breaker stays open before one half-open probe.
    pub breaker_open: Duration,
    /// `5s`. `X-Poll-Interval` hint on fresh answers.
    pub poll_interval: Duration,
    /// `10s`. A client must send its request head within this (slowloris).
    pub header_read_timeout: Duration,
    /// `16KiB`. Largest accepted request head.
    pub max_header_size: usize,
    /// `10s`. On SIGTERM, in-flight requests get this long to finish.
    pub grace_period: Duration,
    /// `text`. Log format: `text` or `json`.
    pub log_format: LogFormat,

    /// `true`. Push (SSE, long-poll, WebSocket) on; off → 404 there and the
    /// short poll hint, so clients fall back to polling.
    pub push: bool,
    /// `25s`. Seed of the cluster-wide heartbeat (SSE comment, WebSocket
    /// ping): under the 30–60 s idle timeouts of common proxies.
    pub heartbeat_interval: Duration,
    /// `50s`. Seed of the cluster-wide ghost timeout: a WebSocket without a
    /// pong this long is closed. 2× heartbeat so one lost pong is forgiven.
    pub ghost_timeout: Duration,
    /// `2000`. Seed of the cluster-wide rate of new push connections per
    /// replica: a reconnect storm is admitted at this pace, not all at once.
    pub push_admission_per_s: u64,
    /// `2000`. Token bucket size: new push connections admitted at once.
    pub push_admission_burst: u64,
    /// `100000`. Cap on open push connections per replica (memory, fds).
    pub push_max_connections: usize,
    /// `100`. Keys one watch may name: a subscription stays O(keys) cheap.
    pub max_keys_per_watch: usize,
    /// `60s`. Longest long-poll `timeout` honoured; larger ones are capped.
    pub wait_max_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".parse().expect("literal"),
            internal_listen: "127.0.0.1:8081".parse().expect("literal"),
            upstream: vec![http::Uri::from_static("http://127.0.0.1:3000")],
            route: vec!["/projects/{key}/changes?since={version}".to_string()],
            version_header: http::HeaderName::from_static("x-pollgate-version"),
            publish_token: None,
            admin_token: None,
            max_age: Duration::from_secs(60),
            upstream_max_inflight: 256,
            peer: Vec::new(),
            node_id: default_node_id(8081),
            cluster_key: None,
            insecure_cluster: false,
            data_dir: None,
            snapshot_interval: Duration::from_secs(5),
            passthrough: true,
            publish_max_body: 1 << 20,
            coalesce_wait: Duration::from_secs(5),
            upstream_queue: 1024,
            upstream_queue_timeout: Duration::from_secs(1),
            upstream_connect_timeout: Duration::from_secs(1),
            upstream_timeout: Duration::from_secs(10),
            client_body_timeout: Duration::from_secs(30),
            breaker_failures: 5,
            breaker_open: Duration::from_secs(5),
            poll_interval: Duration::from_secs(5),
            header_read_timeout: Duration::from_secs(10),
            max_header_size: 16 << 10,
            grace_period: Duration::from_secs(10),
            log_format: LogFormat::Text,
            push: true,
            heartbeat_interval: Duration::from_secs(25),
            ghost_timeout: Duration::from_secs(50),
            push_admission_per_s: 2000,
            push_admission_burst: 2000,
            push_max_connections: 100_000,
            max_keys_per_watch: 100,
            wait_max_timeout: Duration::from_secs(60),
        }
    }
}

/// `hostname:port` of the internal listener: unique per replica on one host.
pub fn default_node_id(port: u16) -> String {
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    format!("{host}:{port}")
}

/// What the command line asked for.
#[derive(Debug)]
pub struct Cli {
    pub config: Config,
    /// `--print-config`: print the effective config as TOML and exit 0.
    pub print_config: bool,
}

/// Why `load` did not produce a config.
#[derive(Debug)]
pub enum LoadError {
    /// `--help` / `--version`: print this to stdout, exit 0.
    Display(String),
    /// Every bad key and value, one line each: print to stderr, exit 64.
    Invalid(Vec<String>),
}

/// Layers default < `--config` file < env (`POLLGATE_*`, given as pairs so
/// tests never touch the process environment) < flags.
pub fn load(
    args: impl IntoIterator<Item = OsString>,
    env: &[(String, String)],
) -> Result<Cli, LoadError> {
    load_inner(args, env, true)
}

/// `load`, with route checking optional so tests do not depend on `route.rs`.
fn load_inner(
    args: impl IntoIterator<Item = OsString>,
    env: &[(String, String)],
    check_routes: bool,
) -> Result<Cli, LoadError> {
    let matches = parse_args(args)?;
    let mut errs = Vec::new();
    let mut raws: Vec<Option<Raw>> = vec![None; KEYS.len()];
    if let Some((path, from)) = config_path(&matches, env) {
        read_file(&path, &from, &mut raws, &mut errs);
    }
    read_env(env, &mut raws, &mut errs);
    read_flags(&matches, &mut raws);
    let config = build(&raws, &mut errs);
    errs.extend(config.validate_fields());
    if check_routes {
        errs.extend(config.validate_routes());
    }
    match errs.is_empty() {
        true => Ok(Cli {
            config,
            print_config: matches.get_flag("print_config"),
        }),
        false => Err(LoadError::Invalid(errs)),
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
    for key in KEYS {
        let _ = writeln!(out, "\n# {} [default: {}]", key.help, key.default);
        let _ = match (key.get)(cfg) {
            Some(value) => writeln!(out, "{} = {value}", key.name),
            None => writeln!(out, "# {} is unset", key.name),
        };
    }
    out
}

const TOML_HEADER: &str = "# pollgate effective configuration (--print-config).\n\
# Secrets are shown as \"<set>\", never their value: replace them before reuse.\n";

impl Config {
    /// Cross-field checks, route templates included. Empty when valid.
    pub fn validate(&self) -> Vec<String> {
        let mut errs = self.validate_fields();
        errs.extend(self.validate_routes());
        errs
    }

    /// Checks that span several keys (each key alone was checked when parsed).
    pub fn validate_fields(&self) -> Vec<String> {
        let failed = [
            self.listeners_clash().then(|| self.clash_message()),
            self.upstream
                .is_empty()
                .then(|| "upstream: at least one is required".into()),
            self.route
                .is_empty()
                .then(|| "route: at least one is required".into()),
            self.upstream_timeout
                .is_zero()
                .then(|| "upstream_timeout: must be longer than 0s".into()),
            (!self.peer.is_empty() && self.cluster_key.is_none() && !self.insecure_cluster)
                .then(|| PEER_WITHOUT_KEY.into()),
            (self.ghost_timeout <= self.heartbeat_interval).then(|| GHOST_TOO_SHORT.into()),
        ];
        failed.into_iter().flatten().collect()
    }

    /// Each route template must parse; one line per bad template.
    pub fn validate_routes(&self) -> Vec<String> {
        let parse = |t: &String| crate::route::Routes::parse(std::slice::from_ref(t)).err();
        let mut errs: Vec<String> = self
            .route
            .iter()
            .filter_map(parse)
            .map(|e| e.to_string())
            .collect();
        // The set as a whole too, so `app::run` never meets a route error after binding.
        if errs.is_empty() {
            errs.extend(
                crate::route::Routes::parse(&self.route)
                    .err()
                    .map(|e| e.to_string()),
            );
        }
        errs
    }

    /// Both listeners on one port of one address (or of the wildcard).
    fn listeners_clash(&self) -> bool {
        let (a, b) = (self.listen, self.internal_listen);
        let overlap = a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified();
        a.port() != 0 && a.port() == b.port() && overlap
    }

    fn clash_message(&self) -> String {
        format!(
            "listen {} and internal_listen {} overlap: the internal listener (publish, admin) must be separate",
            self.listen, self.internal_listen
        )
    }
}

const GHOST_TOO_SHORT: &str =
    "ghost_timeout must be longer than heartbeat_interval: a pong can only follow a ping";
const PEER_WITHOUT_KEY: &str =
    "peer given but cluster_key unset: gossip must be authenticated (set cluster_key, or insecure_cluster = true to run without)";

// ---------------------------------------------------------------------------
// The key table.

/// A value that did not parse: the offending text and what was expected.
#[derive(Debug, PartialEq)]
struct Bad {
    value: String,
    why: String,
}

/// Parses the winning raw value(s) of a key into the config.
type Setter = fn(&mut Config, &[String]) -> Result<(), Bad>;
/// The key's effective value for `--print-config`; `None` when unset.
type Getter = fn(&Config) -> Option<Value>;

/// One config key: everything flags, env, file, help and print need.
struct Key {
    name: &'static str,
    heading: &'static str,
    value_name: &'static str,
    default: &'static str,
    help: &'static str,
    list: bool,
    set: Setter,
    get: Getter,
}

const fn key(
    name: &'static str,
    heading: &'static str,
    value_name: &'static str,
    default: &'static str,
    help: &'static str,
    set: Setter,
    get: Getter,
) -> Key {
    Key {
        name,
        heading,
        value_name,
        default,
        help,
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

    fn env_name(&self) -> String {
        format!("{ENV_PREFIX}{}", self.name.to_ascii_uppercase())
    }
}

const ENV_PREFIX: &str = "POLLGATE_";
const CONFIG_ENV: &str = "POLLGATE_CONFIG";

const NET: &str = "Listeners";
const UP: &str = "Upstream";
const POLL: &str = "Polling";
const AUTH: &str = "Publish and admin";
const CLUSTER: &str = "Cluster";
const OPS: &str = "Storage and logs";
const PUSH: &str = "Push";

#[rustfmt::skip]
static KEYS: &[Key] = &[
    key("listen", NET, "ADDR", "127.0.0.1:8080", "Public listener: polls, push, pass-through",
        |c, v| one(v, socket).map(|x| c.listen = x), |c| text(c.listen)),
    key("internal_listen", NET, "ADDR", "127.0.0.1:8081",
        "Internal listener: publish, admin, metrics, health, gossip; keep it off the public network",
        |c, v| one(v, socket).map(|x| c.internal_listen = x), |c| text(c.internal_listen)),
    key("header_read_timeout", NET, "DURATION", "10s", "A client must send its request head within this (slowloris guard)",
        |c, v| one(v, positive_duration).map(|x| c.header_read_timeout = x), |c| dur(c.header_read_timeout)),
    key("max_header_size", NET, "SIZE", "16KiB", "Largest accepted request head, 1KiB to 1MiB",
        |c, v| one(v, header_size).map(|x| c.max_header_size = x), |c| bytes(c.max_header_size as u64)),
    key("grace_period", NET, "DURATION", "10s", "On SIGTERM, in-flight requests get this long to finish",
        |c, v| one(v, duration).map(|x| c.grace_period = x), |c| dur(c.grace_period)),
    key("upstream", UP, "URL", "http://127.0.0.1:3000", "App server as http://host:port; round-robin over healthy ones",
        |c, v| all(v, upstream).map(|x| c.upstream = x), |c| texts(c.upstream.iter().map(upstream_text))).list(),
    key("version_header", UP, "NAME", "X-Pollgate-Version", "Upstream response header carrying the key's current version",
        |c, v| one(v, header_name).map(|x| c.version_header = x), |c| text(&c.version_header)),
    key("passthrough", UP, "BOOL", "true", "Proxy requests that match no route unchanged; false answers them 404",
        |c, v| one(v, boolean).map(|x| c.passthrough = x), |c| Some(Value::Boolean(c.passthrough))),
    key("upstream_max_inflight", UP, "N", "256", "Cap on concurrent upstream requests, at least 1",
        |c, v| one(v, at_least_one).map(|x| c.upstream_max_inflight = x), |c| int(c.upstream_max_inflight as u64)),
    key("upstream_queue", UP, "N", "1024", "Requests that may wait for an upstream slot; beyond that, 503",
        |c, v| one(v, whole).map(|x| c.upstream_queue = x), |c| int(c.upstream_queue as u64)),
    key("upstream_queue_timeout", UP, "DURATION", "1s", "Longest wait for an upstream slot before shedding with 503",
        |c, v| one(v, duration).map(|x| c.upstream_queue_timeout = x), |c| dur(c.upstream_queue_timeout)),
    key("upstream_connect_timeout", UP, "DURATION", "1s", "TCP connect timeout to an upstream",
        |c, v| one(v, positive_duration).map(|x| c.upstream_connect_timeout = x), |c| dur(c.upstream_connect_timeout)),
    key("upstream_timeout", UP, "DURATION", "10s", "Time to the upstream's response head; longer counts as a failure",
        |c, v| one(v, duration).map(|x| c.upstream_timeout = x), |c| dur(c.upstream_timeout)),
    key("client_body_timeout", UP, "DURATION", "30s", "A client must send a forwarded request's body within this (408); not an upstream failure",
        |c, v| one(v, positive_duration).map(|x| c.client_body_timeout = x), |c| dur(c.client_body_timeout)),
    key("breaker_failures", UP, "N", "5", "Consecutive upstream failures that open the circuit breaker, at least 1",
        |c, v| one(v, at_least_one).map(|x| c.breaker_failures = x), |c| int(u64::from(c.breaker_failures))),
    key("breaker_open", UP, "DURATION", "5s", "How long the breaker stays open before one half-open probe",
        |c, v| one(v, duration).map(|x| c.breaker_open = x), |c| dur(c.breaker_open)),
    key("route", POLL, "TEMPLATE", "/projects/{key}/changes?since={version}",
        "Poll route; {version} sits in the path, a query parameter or header:If-None-Match",
        |c, v| all(v, non_empty).map(|x| c.route = x), |c| texts(c.route.iter())).list(),
    key("max_age", POLL, "DURATION", "60s", "Revalidate an entry upstream after this long unconfirmed; 0s disables",
        |c, v| one(v, duration).map(|x| c.max_age = x), |c| dur(c.max_age)),
    key("coalesce_wait", POLL, "DURATION", "5s", "How long a poll waits for a coalesced upstream request of its key",
        |c, v| one(v, duration).map(|x| c.coalesce_wait = x), |c| dur(c.coalesce_wait)),
    key("poll_interval", POLL, "DURATION", "5s", "X-Poll-Interval hint sent with fresh answers",
        |c, v| one(v, positive_duration).map(|x| c.poll_interval = x), |c| dur(c.poll_interval)),
    key("publish_token", AUTH, "TOKEN", "unset: publishing refused", "Bearer token for POST /v1/versions",
        |c, v| one(v, secret).map(|x| c.publish_token = Some(x)), |c| redacted(&c.publish_token)),
    key("admin_token", AUTH, "TOKEN", "unset: admin refused", "Bearer token for PUT /v1/config",
        |c, v| one(v, secret).map(|x| c.admin_token = Some(x)), |c| redacted(&c.admin_token)),
    key("publish_max_body", AUTH, "SIZE", "1MiB", "Publish bodies larger than this get 413",
        |c, v| one(v, body_size).map(|x| c.publish_max_body = x), |c| bytes(c.publish_max_body)),
    key("peer", CLUSTER, "ADDR", "none", "Another replica's internal address as host:port",
        |c, v| all(v, peer).map(|x| c.peer = x), |c| texts(c.peer.iter())).list(),
    key("node_id", CLUSTER, "NAME", "hostname:<internal_listen port>", "This replica's name in the cluster",
        |c, v| one(v, word).map(|x| c.node_id = x), |c| text(&c.node_id)),
    key("cluster_key", CLUSTER, "SECRET", "unset", "Shared secret that authenticates gossip; required with --peer",
        |c, v| one(v, secret).map(|x| c.cluster_key = Some(x)), |c| redacted(&c.cluster_key)),
    key("insecure_cluster", CLUSTER, "BOOL", "false", "Allow peer without cluster_key: unauthenticated gossip, for trusted test networks only",
        |c, v| one(v, boolean).map(|x| c.insecure_cluster = x), |c| Some(Value::Boolean(c.insecure_cluster))),
    key("data_dir", OPS, "DIR", "unset: no snapshots", "Where snapshots are written",
        |c, v| one(v, non_empty).map(|x| c.data_dir = Some(x.into())), |c| c.data_dir.as_ref().and_then(|d| text(d.display()))),
    key("snapshot_interval", OPS, "DURATION", "5s", "Snapshot the table into data_dir this often when it changed; 0s: only at shutdown",
        |c, v| one(v, duration).map(|x| c.snapshot_interval = x), |c| dur(c.snapshot_interval)),
    key("log_format", OPS, "FORMAT", "text", "Log format: text or json",
        |c, v| one(v, log_format).map(|x| c.log_format = x), |c| text(log_format_text(c.log_format))),
    key("push", PUSH, "BOOL", "true", "Serve push (SSE, long-poll, WebSocket); false answers 404 there and clients poll",
        |c, v| one(v, boolean).map(|x| c.push = x), |c| Some(Value::Boolean(c.push))),
    key("heartbeat_interval", PUSH, "DURATION", "25s", "SSE heartbeat and WebSocket ping interval (cluster-wide seed)",
        |c, v| one(v, positive_duration).map(|x| c.heartbeat_interval = x), |c| dur(c.heartbeat_interval)),
    key("ghost_timeout", PUSH, "DURATION", "50s", "Close a WebSocket whose pong is this late (cluster-wide seed)",
        |c, v| one(v, positive_duration).map(|x| c.ghost_timeout = x), |c| dur(c.ghost_timeout)),
    key("push_admission_per_s", PUSH, "N", "2000", "New push connections admitted per second (cluster-wide seed)",
        |c, v| one(v, whole).map(|x| c.push_admission_per_s = x), |c| int(c.push_admission_per_s)),
    key("push_admission_burst", PUSH, "N", "2000", "New push connections admitted at once before the rate applies",
        |c, v| one(v, whole).map(|x| c.push_admission_burst = x), |c| int(c.push_admission_burst)),
    key("push_max_connections", PUSH, "N", "100000", "Cap on open push connections; beyond it, 503 with Retry-After",
        |c, v| one(v, whole).map(|x| c.push_max_connections = x), |c| int(c.push_max_connections as u64)),
    key("max_keys_per_watch", PUSH, "N", "100", "Keys one watch may name, at least 1; more is a 400",
        |c, v| one(v, at_least_one).map(|x| c.max_keys_per_watch = x), |c| int(c.max_keys_per_watch as u64)),
    key("wait_max_timeout", PUSH, "DURATION", "60s", "Longest long-poll timeout honoured; longer ones are capped",
        |c, v| one(v, positive_duration).map(|x| c.wait_max_timeout = x), |c| dur(c.wait_max_timeout)),
];

fn key_index(name: &str) -> Option<usize> {
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

// ---------------------------------------------------------------------------
// Layers: each writes the raw text of the keys it sets, replacing lower layers.

/// The winning raw text of one key and where it came from (for errors).
#[derive(Debug, Clone)]
struct Raw {
    values: Vec<String>,
    from: String,
}

/// Parses each key's winning text into a config, starting from the default.
fn build(raws: &[Option<Raw>], errs: &mut Vec<String>) -> Config {
    let mut config = Config::default();
    for (key, raw) in KEYS.iter().zip(raws) {
        let Some(raw) = raw else { continue };
        if let Err(bad) = (key.set)(&mut config, &raw.values) {
            errs.push(format!(
                "{}: {:?} (from {}) {}",
                key.name, bad.value, raw.from, bad.why
            ));
        }
    }
    // After layering, so the default name follows the port actually used.
    if key_index("node_id").is_some_and(|i| raws[i].is_none()) {
        config.node_id = default_node_id(config.internal_listen.port());
    }
    config
}

/// `--config` beats `POLLGATE_CONFIG`; returns the path and its source.
fn config_path(m: &ArgMatches, env: &[(String, String)]) -> Option<(String, String)> {
    if let Some(path) = m.get_one::<String>("config") {
        return Some((path.clone(), "--config".into()));
    }
    let (_, path) = env.iter().find(|(k, v)| k == CONFIG_ENV && !v.is_empty())?;
    Some((path.clone(), CONFIG_ENV.into()))
}

fn read_file(path: &str, from: &str, raws: &mut [Option<Raw>], errs: &mut Vec<String>) {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => {
            return errs.push(format!(
                "config file {path:?} (from {from}): cannot read: {e}"
            ))
        }
    };
    let table = match text.parse::<toml::Table>() {
        Ok(table) => table,
        Err(e) => return errs.push(format!("config file {path:?}: {}", toml_error(&text, &e))),
    };
    for (name, value) in table {
        match file_entry(&name, value) {
            Ok((i, values)) => {
                raws[i] = Some(Raw {
                    values,
                    from: format!("file {path}"),
                })
            }
            Err(e) => errs.push(format!("config file {path:?}: {e}")),
        }
    }
}

/// One line: where in the file and what the parser expected.
fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let at = e.span().map_or(0, |s| s.start).min(text.len());
    let line = text[..at].matches('\n').count() + 1;
    let column = at - text[..at].rfind('\n').map_or(0, |n| n + 1) + 1;
    format!(
        "invalid TOML at line {line}, column {column}: {}",
        e.message().trim()
    )
}

/// A file key's index and its values as text (arrays only for list keys).
fn file_entry(name: &str, value: Value) -> Result<(usize, Vec<String>), String> {
    let i = key_index(name).ok_or_else(|| unknown("key", name, name, ""))?;
    let values = match value {
        Value::Array(items) if KEYS[i].list => items.into_iter().map(scalar_text).collect(),
        Value::Array(_) => Err("takes a single value, not an array".into()),
        value => scalar_text(value).map(|s| vec![s]),
    };
    values
        .map(|v| (i, v))
        .map_err(|why| format!("{name}: {why}"))
}

fn scalar_text(value: Value) -> Result<String, String> {
    match value {
        Value::String(s) => Ok(s),
        Value::Integer(n) => Ok(n.to_string()),
        Value::Float(n) => Ok(n.to_string()),
        Value::Boolean(b) => Ok(b.to_string()),
        other => Err(format!("{other} is not a string, number or boolean")),
    }
}

fn read_env(env: &[(String, String)], raws: &mut [Option<Raw>], errs: &mut Vec<String>) {
    for (name, value) in env {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        if name == CONFIG_ENV {
            continue;
        }
        let lower = rest.to_ascii_lowercase();
        match key_index(&lower).filter(|_| rest == lower.to_ascii_uppercase()) {
            Some(i) => {
                raws[i] = Some(Raw {
                    values: env_values(&KEYS[i], value),
                    from: name.clone(),
                })
            }
            None => errs.push(unknown("environment variable", name, &lower, ENV_PREFIX)),
        }
    }
}

/// Lists are comma-separated in env (so a route with a comma needs a flag or
/// the file); blanks are dropped, so an empty variable means an empty list.
fn env_values(key: &Key, value: &str) -> Vec<String> {
    match key.list {
        true => value
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
        false => vec![value.to_string()],
    }
}

fn read_flags(m: &ArgMatches, raws: &mut [Option<Raw>]) {
    for (i, key) in KEYS.iter().enumerate() {
        if let Some(values) = m.get_many::<String>(key.name) {
            let from = format!("--{}", flag_names()[i]);
            raws[i] = Some(Raw {
                values: values.cloned().collect(),
                from,
            });
        }
    }
}

/// `what name: unknown, did you mean X?`, where X is the nearest key.
fn unknown(what: &str, name: &str, as_key: &str, prefix: &str) -> String {
    match nearest(as_key) {
        Some(k) => format!(
            "{name}: unknown {what}, did you mean {prefix}{}?",
            cased(k, prefix)
        ),
        None => format!("{name}: unknown {what} (pollgate --help lists them all)"),
    }
}

/// A key name as written in the place it came from (`POLLGATE_` is upper case).
fn cased(name: &str, prefix: &str) -> String {
    match prefix.is_empty() {
        true => name.to_string(),
        false => name.to_ascii_uppercase(),
    }
}

/// The key closest to a typo, if it is close enough to be what was meant.
fn nearest(name: &str) -> Option<&'static str> {
    let (d, best) = KEYS
        .iter()
        .map(|k| (edit_distance(name, k.name), k.name))
        .min()?;
    (d <= 2.max(best.len() / 4)).then_some(best)
}

/// Levenshtein distance, one row at a time.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut row = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            row.push(
                (prev[j] + usize::from(ca != *cb))
                    .min(prev[j + 1] + 1)
                    .min(row[j] + 1),
            );
        }
        prev = row;
    }
    prev[b.len()]
}

// ---------------------------------------------------------------------------
// Command line. Built from KEYS with the builder API rather than a derive
// struct: a derive would repeat every key (and their help) a second time.

/// `--foo-bar` for key `foo_bar`; clap wants `&'static str` names.
fn flag_names() -> &'static [String] {
    static NAMES: OnceLock<Vec<String>> = OnceLock::new();
    NAMES.get_or_init(|| KEYS.iter().map(|k| k.name.replace('_', "-")).collect())
}

fn parse_args(args: impl IntoIterator<Item = OsString>) -> Result<ArgMatches, LoadError> {
    command()
        .try_get_matches_from(args)
        .map_err(|e| match e.kind() {
            clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                LoadError::Display(e.to_string())
            }
            _ => LoadError::Invalid(vec![clap_message(&e)]),
        })
}

/// clap's message and tip on one line, without its `error: ` prefix and usage.
fn clap_message(e: &clap::Error) -> String {
    let text = e.to_string();
    let lines = text
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:"));
    let kept: Vec<&str> = lines.filter(|l| !l.is_empty()).collect();
    format!(
        "{} (see --help)",
        kept.join("; ").trim_start_matches("error: ")
    )
}

fn command() -> Command {
    let keys = KEYS
        .iter()
        .zip(flag_names())
        .map(|(k, flag)| key_arg(k, flag));
    Command::new("pollgate")
        .version(env!("CARGO_PKG_VERSION"))
        .about("Answers \"anything new since version V?\" polls from memory; forwards only the stale ones")
        .color(ColorChoice::Never)
        .after_help(AFTER_HELP)
        .next_help_heading("Configuration")
        .arg(Arg::new("config").long("config").value_name("FILE").help(CONFIG_HELP))
        .arg(Arg::new("print_config").long("print-config").action(ArgAction::SetTrue).help(PRINT_HELP))
        .args(keys)
}

/// Every flag takes plain strings: clap never rejects a value, we parse it
/// (so every bad value is reported at once, in our words).
fn key_arg(key: &'static Key, flag: &'static str) -> Arg {
    let action = if key.list {
        ArgAction::Append
    } else {
        ArgAction::Set
    };
    let env = match key.list {
        true => format!("{}, comma-separated; repeatable", key.env_name()),
        false => key.env_name(),
    };
    // A bare boolean flag means true (`--insecure-cluster`), as the issue spells it.
    let bare = match key.value_name {
        "BOOL" => Some("true"),
        _ => None,
    };
    Arg::new(key.name)
        .long(flag)
        .value_name(key.value_name)
        .action(action)
        .num_args(if bare.is_some() { 0..=1 } else { 1..=1 })
        .default_missing_value(bare)
        .help_heading(key.heading)
        .help(format!(
            "{} [default: {}] [env: {env}]",
            key.help, key.default
        ))
}

const CONFIG_HELP: &str = "TOML file with the same keys as the flags, written with _ (max_age = \"30s\") [env: POLLGATE_CONFIG]";
const PRINT_HELP: &str = "Print the effective config as TOML and exit (secrets shown as \"<set>\")";
const AFTER_HELP: &str = "\
Precedence, highest first: flags, then environment variables POLLGATE_<KEY>
(POLLGATE_MAX_AGE=30s), then the --config FILE (max_age = \"30s\"), then the
built-in defaults. A higher layer replaces a repeatable key's whole list. In the
environment lists are comma-separated (POLLGATE_UPSTREAM=http://a:3000,http://b:3000),
so a route containing a comma must come from a flag or the file.

Durations: 250ms, 60s, 5m, 1h, 1h 30m (0s disables max_age).
Sizes: 512 (bytes), 1KB (1000), 16KiB (16384), 1MiB; units B, KB, KiB, MB, MiB,
GB, GiB in any case. Booleans: true/false, yes/no, on/off, 1/0.

--print-config never prints secrets (tokens, cluster_key): it shows \"<set>\",
which is refused when loaded again, so put the real values back before reuse.";

// ---------------------------------------------------------------------------
// Value parsers: `Err` says what was expected, the caller adds key and source.

const DURATION: &str = "is not a duration like 250ms, 60s, 1h";
const SIZE: &str = "is not a size like 512, 16KiB, 1MiB, 1KB";

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|_| DURATION.into())
}

fn positive_duration(s: &str) -> Result<Duration, String> {
    let d = duration(s)?;
    match d.is_zero() {
        true => Err("must be longer than 0s".into()),
        false => Ok(d),
    }
}

/// `512`, `1KB` (1000), `16KiB` (16384), … up to GiB, any case.
fn size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let unit = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "kib" => 1 << 10,
        "mb" => 1_000_000,
        "mib" => 1 << 20,
        "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        _ => return Err(SIZE.into()),
    };
    let n: u64 = digits.parse().map_err(|_| SIZE.to_string())?;
    n.checked_mul(unit).ok_or_else(|| "is too large".into())
}

/// Largest exact binary unit, so printing and parsing round-trip.
fn size_text(n: u64) -> String {
    let units = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    match units.iter().find(|(u, _)| n != 0 && n.is_multiple_of(*u)) {
        Some((u, name)) => format!("{}{name}", n / u),
        None => format!("{n}B"),
    }
}

fn header_size(s: &str) -> Result<usize, String> {
    match size(s)? {
        n @ 1024..=1_048_576 => Ok(n as usize),
        _ => Err("must be between 1KiB and 1MiB".into()),
    }
}

fn body_size(s: &str) -> Result<u64, String> {
    match size(s)? {
        0 => Err("must be at least 1 byte".into()),
        n => Ok(n),
    }
}

fn whole<T: std::str::FromStr>(s: &str) -> Result<T, String> {
    s.trim()
        .parse()
        .map_err(|_| "is not a whole number in range".into())
}

fn at_least_one<T: std::str::FromStr + Default + PartialEq>(s: &str) -> Result<T, String> {
    let n: T = whole(s)?;
    match n == T::default() {
        true => Err("must be at least 1".into()),
        false => Ok(n),
    }
}

fn boolean(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err("is not a boolean (true/false, yes/no, on/off, 1/0)".into()),
    }
}

/// `127.0.0.1:8080`, `[::1]:8080`, `localhost:8080` (→ 127.0.0.1), `:8080` (→ 0.0.0.0).
fn socket(s: &str) -> Result<SocketAddr, String> {
    const WHY: &str =
        "is not a socket address like 127.0.0.1:8080, [::1]:8080, localhost:8080 or :8080";
    if let Ok(addr) = s.parse() {
        return Ok(addr);
    }
    let (host, port) = s.rsplit_once(':').ok_or(WHY)?;
    let port: u16 = port.parse().map_err(|_| WHY)?;
    match host {
        "" => Ok(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))),
        h if h.eq_ignore_ascii_case("localhost") => {
            Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
        }
        _ => Err(WHY.into()),
    }
}

/// `http://host:port` (port defaults to 80); no TLS, path, query or credentials.
fn upstream(s: &str) -> Result<http::Uri, String> {
    const WHY: &str = "is not an upstream URL like http://127.0.0.1:3000";
    let uri: http::Uri = s.trim().parse().map_err(|_| WHY)?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err("https upstreams are not supported; terminate TLS in front".into())
        }
        _ => return Err(WHY.into()),
    }
    let auth = uri.authority().ok_or(WHY)?;
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() || auth.as_str().contains('@') {
        return Err("must be just http://host:port, with no path, query or credentials".into());
    }
    let authority = format!("{}:{}", auth.host(), auth.port_u16().unwrap_or(80));
    let built = http::Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query("/")
        .build();
    built.map_err(|_| WHY.into())
}

fn upstream_text(uri: &http::Uri) -> String {
    let authority = uri.authority().map_or("", |a| a.as_str());
    format!("{}://{authority}", uri.scheme_str().unwrap_or("http"))
}

fn header_name(s: &str) -> Result<http::HeaderName, String> {
    http::HeaderName::from_bytes(s.as_bytes()).map_err(|_| "is not a valid HTTP header name".into())
}

/// Another replica: `host:port`, a name is fine (resolved by the gossip layer).
fn peer(s: &str) -> Result<String, String> {
    const WHY: &str = "is not a peer address like 10.0.0.2:8081 or pollgate-1:8081";
    let (host, port) = s.rsplit_once(':').ok_or(WHY)?;
    let bad_host = host.is_empty() || host.contains(|c: char| c == '/' || c.is_whitespace());
    match bad_host || port.parse::<u16>().map_or(true, |p| p == 0) {
        true => Err(WHY.into()),
        false => Ok(s.to_string()),
    }
}

fn non_empty(s: &str) -> Result<String, String> {
    match s.trim().is_empty() {
        true => Err("must not be empty".into()),
        false => Ok(s.to_string()),
    }
}

/// A name that goes into logs and gossip: visible characters, no spaces.
fn word(s: &str) -> Result<String, String> {
    match s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        true => Err("must be non-empty, without spaces".into()),
        false => Ok(s.to_string()),
    }
}

/// A token is compared with an `Authorization` header, so it must fit one.
fn secret(s: &str) -> Result<String, String> {
    if s == REDACTED {
        return Err(
            "is the placeholder --print-config shows for a secret; put the real value here".into(),
        );
    }
    match s.is_empty() || !s.bytes().all(|b| b.is_ascii_graphic()) {
        true => Err("must be a non-empty string of visible ASCII without spaces".into()),
        false => Ok(s.to_string()),
    }
}

fn log_format(s: &str) -> Result<LogFormat, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        _ => Err("is not a log format: text or json".into()),
    }
}

fn log_format_text(f: LogFormat) -> &'static str {
    match f {
        LogFormat::Text => "text",
        LogFormat::Json => "json",
    }
}

// ---------------------------------------------------------------------------
// Printers for `--print-config`: each writes what its parser reads back.

fn text(s: impl std::fmt::Display) -> Option<Value> {
    Some(Value::String(s.to_string()))
}

fn texts<T: std::fmt::Display>(items: impl Iterator<Item = T>) -> Option<Value> {
    Some(Value::Array(
        items.map(|s| Value::String(s.to_string())).collect(),
    ))
}

fn dur(d: Duration) -> Option<Value> {
    text(humantime::format_duration(d))
}

fn bytes(n: u64) -> Option<Value> {
    text(size_text(n))
}

/// An integer, or its text when it does not fit TOML's i64 (parsed back alike).
fn int(n: u64) -> Option<Value> {
    Some(i64::try_from(n).map_or_else(|_| Value::String(n.to_string()), Value::Integer))
}

fn redacted(secret: &Option<String>) -> Option<Value> {
    secret.as_ref().and_then(|_| text(REDACTED))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Runs `load` without route checking (route.rs is built separately).
    fn run(args: &[&str], env: &[(&str, &str)]) -> Result<Cli, LoadError> {
        let args = std::iter::once("pollgate")
            .chain(args.iter().copied())
            .map(OsString::from);
        let env: Vec<_> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        load_inner(args, &env, false)
    }

    fn ok(args: &[&str], env: &[(&str, &str)]) -> Config {
        match run(args, env) {
            Ok(cli) => cli.config,
            Err(e) => panic!("expected a config, got {e:?}"),
        }
    }

    fn errs(args: &[&str], env: &[(&str, &str)]) -> Vec<String> {
        match run(args, env) {
            Err(LoadError::Invalid(errs)) => errs,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    /// Exactly one error, containing every one of `parts`.
    fn one_error(args: &[&str], env: &[(&str, &str)], parts: &[&str]) {
        let e = errs(args, env);
        assert_eq!(e.len(), 1, "{e:#?}");
        assert!(
            parts.iter().all(|p| e[0].contains(p)),
            "{parts:?} not in {e:#?}"
        );
    }

    /// A TOML file under the temp dir, removed on drop.
    struct TempToml(PathBuf);

    impl TempToml {
        fn new(text: &str) -> TempToml {
            static N: AtomicUsize = AtomicUsize::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let name = format!("pollgate-config-test-{}-{n}.toml", std::process::id());
            let path = std::env::temp_dir().join(name);
            std::fs::write(&path, text).expect("write temp config");
            TempToml(path)
        }

        fn path(&self) -> &str {
            self.0.to_str().expect("utf-8 temp path")
        }
    }

    impl Drop for TempToml {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn no_arguments_gives_the_default() {
        assert_eq!(ok(&[], &[]), Config::default());
        assert!(!run(&[], &[]).unwrap().print_config);
    }

    #[test]
    fn flag_beats_env_beats_file_beats_default() {
        let file = TempToml::new(
            "max_age = \"1s\"\npoll_interval = \"2s\"\ngrace_period = \"3s\"\ncoalesce_wait = \"4s\"\n",
        );
        let env = [
            ("POLLGATE_MAX_AGE", "10s"),
            ("POLLGATE_POLL_INTERVAL", "20s"),
            ("POLLGATE_GRACE_PERIOD", "30s"),
        ];
        let c = ok(&["--config", file.path(), "--max-age", "100s"], &env);
        assert_eq!(c.max_age, secs(100));
        assert_eq!(c.poll_interval, secs(20));
        assert_eq!(c.grace_period, secs(30));
        assert_eq!(c.coalesce_wait, secs(4));
        assert_eq!(c.breaker_open, Config::default().breaker_open);
    }

    #[test]
    fn config_file_from_env_and_flag_beats_it() {
        let a = TempToml::new("max_age = \"1s\"");
        let b = TempToml::new("max_age = \"2s\"");
        assert_eq!(ok(&[], &[("POLLGATE_CONFIG", a.path())]).max_age, secs(1));
        let c = ok(&["--config", b.path()], &[("POLLGATE_CONFIG", a.path())]);
        assert_eq!(c.max_age, secs(2));
    }

    #[test]
    fn lists_come_from_every_layer() {
        let file = TempToml::new("upstream = [\"http://a:1\", \"http://b:2\"]\npeer = \"p:1\"");
        let env = [(
            "POLLGATE_ROUTE",
            "/x/{key}?v={version}, /y/{key}?v={version}",
        )];
        let args = [
            "--config",
            file.path(),
            "--cluster-key",
            "k",
            "--peer",
            "q:2",
            "--peer",
            "r:3",
        ];
        let c = ok(&args, &env);
        assert_eq!(
            c.upstream.iter().map(upstream_text).collect::<Vec<_>>(),
            ["http://a:1", "http://b:2"]
        );
        assert_eq!(c.route, ["/x/{key}?v={version}", "/y/{key}?v={version}"]);
        assert_eq!(c.peer, ["q:2", "r:3"]);
    }

    #[test]
    fn a_higher_layer_replaces_the_list() {
        let file = TempToml::new("upstream = [\"http://a:1\", \"http://b:2\"]");
        let env = [("POLLGATE_UPSTREAM", "http://c:3")];
        let c = ok(&["--config", file.path()], &env);
        assert_eq!(c.upstream, [http::Uri::from_static("http://c:3/")]);
        let c = ok(&["--config", file.path(), "--upstream", "http://d:4"], &env);
        assert_eq!(c.upstream, [http::Uri::from_static("http://d:4/")]);
        let c = ok(
            &["--peer", "a:1", "--cluster-key", "k"],
            &[("POLLGATE_PEER", "")],
        );
        assert_eq!(c.peer, ["a:1"]);
        assert!(ok(&[], &[("POLLGATE_PEER", "")]).peer.is_empty());
    }

    #[test]
    fn every_bad_value_is_reported_at_once() {
        let file = TempToml::new("max_header_size = \"10MiB\"");
        let env = [("POLLGATE_LISTEN", "nope")];
        let e = errs(&["--config", file.path(), "--max-age", "abc"], &env);
        assert_eq!(e.len(), 3, "{e:#?}");
        let has = |parts: &[&str]| e.iter().any(|l| parts.iter().all(|p| l.contains(p)));
        assert!(
            has(&["max_age", "\"abc\"", "--max-age", "duration like 250ms"]),
            "{e:#?}"
        );
        assert!(
            has(&["listen", "\"nope\"", "POLLGATE_LISTEN", "socket address"]),
            "{e:#?}"
        );
        assert!(
            has(&["max_header_size", "\"10MiB\"", file.path(), "1KiB and 1MiB"]),
            "{e:#?}"
        );
    }

    #[test]
    fn the_exact_error_line() {
        let e = errs(&["--max-age", "abc"], &[]);
        assert_eq!(
            e,
            [r#"max_age: "abc" (from --max-age) is not a duration like 250ms, 60s, 1h"#]
        );
    }

    #[test]
    fn unknown_flag_is_invalid() {
        let e = errs(&["--max-agee", "1s"], &[]);
        assert_eq!(
            e,
            ["unexpected argument '--max-agee' found; \
              tip: a similar argument exists: '--max-age' (see --help)"]
        );
        assert!(!e[0].starts_with("error:"), "{e:?}");
    }

    #[test]
    fn unknown_env_var_is_invalid_with_a_suggestion() {
        let e = errs(&[], &[("POLLGATE_LISTN", ":1"), ("OTHER_THING", "x")]);
        assert_eq!(
            e,
            ["POLLGATE_LISTN: unknown environment variable, did you mean POLLGATE_LISTEN?"]
        );
        one_error(
            &[],
            &[("POLLGATE_max_age", "1s")],
            &["did you mean POLLGATE_MAX_AGE?"],
        );
        let e = errs(&[], &[("POLLGATE_ZZZZZZZZZZZZ", "1")]);
        assert!(
            e[0].contains("unknown") && !e[0].contains("did you mean"),
            "{e:?}"
        );
    }

    #[test]
    fn unknown_file_key_is_invalid_with_a_suggestion() {
        let file = TempToml::new("max-age = \"1s\"\n");
        let want = "max-age: unknown key, did you mean max_age?";
        one_error(&["--config", file.path()], &[], &[want]);
    }

    #[test]
    fn unreadable_or_invalid_file_names_the_file() {
        let missing = std::env::temp_dir().join("pollgate-surely-missing.toml");
        let parts = ["pollgate-surely-missing.toml", "cannot read"];
        one_error(&["--config", missing.to_str().unwrap()], &[], &parts);
        let file = TempToml::new("max_age = \n");
        one_error(&["--config", file.path()], &[], &[file.path(), "line 1"]);
    }

    #[test]
    fn file_shapes() {
        let file = TempToml::new("max_age = [\"1s\"]\npassthrough = false\n");
        one_error(
            &["--config", file.path()],
            &[],
            &["max_age: takes a single value"],
        );
        let file = TempToml::new("passthrough = false\nupstream_queue = 7\nroute = \"/a/{key}\"");
        let c = ok(&["--config", file.path()], &[]);
        assert!(!c.passthrough);
        assert_eq!(c.upstream_queue, 7);
        assert_eq!(c.route, ["/a/{key}"]);
    }

    #[test]
    fn help_and_version_are_display() {
        let Err(LoadError::Display(help)) = run(&["--help"], &[]) else {
            panic!("help")
        };
        for needle in [
            "--max-age",
            "--upstream",
            "--internal-listen",
            "--print-config",
            "--config",
        ] {
            assert!(help.contains(needle), "{needle} missing from help:\n{help}");
        }
        for needle in [
            "[default: 60s]",
            "POLLGATE_MAX_AGE",
            "DURATION",
            "Precedence",
            "KiB",
        ] {
            assert!(help.contains(needle), "{needle} missing from help:\n{help}");
        }
        let Err(LoadError::Display(v)) = run(&["--version"], &[]) else {
            panic!("version")
        };
        assert!(v.contains(env!("CARGO_PKG_VERSION")));
    }

    #[test]
    fn every_key_has_a_flag_and_an_env_var() {
        let help = command().render_long_help().to_string();
        for (key, flag) in KEYS.iter().zip(flag_names()) {
            assert!(help.contains(&format!("--{flag} ")), "--{flag}");
            assert!(help.contains(&key.env_name()), "{}", key.env_name());
        }
    }

    fn unusual() -> Vec<&'static str> {
        let args = "--listen 0.0.0.0:9000 --internal-listen 127.0.0.1:9001 --header-read-timeout 3s
            --max-header-size 32KiB --grace-period 1m --upstream http://10.0.0.1:3000
            --upstream http://[::1]:3001 --version-header X-App-Version --passthrough no
            --upstream-max-inflight 9 --upstream-queue 0 --upstream-queue-timeout 250ms
            --upstream-connect-timeout 2s --upstream-timeout 1h --breaker-failures 3
            --breaker-open 90s --route /a/{key}?since={version} --route /b/{key}/{version}
            --max-age 0s --coalesce-wait 1s --poll-interval 7s --publish-max-body 1000
            --node-id me --data-dir /var/lib/pollgate --log-format json";
        args.split_whitespace().collect()
    }

    #[test]
    fn print_config_round_trips() {
        let c = ok(&unusual(), &[]);
        assert_ne!(c, Config::default());
        let file = TempToml::new(&to_toml(&c));
        assert_eq!(ok(&["--config", file.path()], &[]), c, "{}", to_toml(&c));
        let c = ok(
            &["--peer", "p:1", "--peer", "q:2", "--cluster-key", "k3y"],
            &[],
        );
        let file = TempToml::new(&to_toml(&c).replace(REDACTED, "k3y"));
        assert_eq!(ok(&["--config", file.path()], &[]), c);
        let file = TempToml::new(&to_toml(&Config::default()));
        assert_eq!(ok(&["--config", file.path()], &[]), Config::default());
    }

    #[test]
    fn print_config_redacts_secrets() {
        let args = [
            "--publish-token",
            "s3cret-p",
            "--admin-token",
            "s3cret-a",
            "--print-config",
        ];
        let cli = run(&args, &[("POLLGATE_CLUSTER_KEY", "s3cret-c")]).unwrap();
        assert!(cli.print_config);
        let out = to_toml(&cli.config);
        assert!(!out.contains("s3cret"), "{out}");
        assert!(out.contains("publish_token = \"<set>\""), "{out}");
        assert!(out.contains("cluster_key = \"<set>\""), "{out}");
        assert!(!to_toml(&Config::default()).contains("\npublish_token ="));
        let file = TempToml::new(&out);
        let e = errs(&["--config", file.path()], &[]);
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(e.iter().all(|l| l.contains("placeholder")), "{e:?}");
    }

    #[test]
    fn node_id_follows_the_internal_port() {
        let c = ok(&["--internal-listen", "127.0.0.1:9555"], &[]);
        assert_eq!(c.node_id, default_node_id(9555));
        let c = ok(
            &["--internal-listen", "127.0.0.1:9555", "--node-id", "n1"],
            &[],
        );
        assert_eq!(c.node_id, "n1");
    }

    #[test]
    fn peer_needs_a_cluster_key() {
        let e = errs(&["--peer", "10.0.0.2:8081"], &[]);
        assert_eq!(e, [PEER_WITHOUT_KEY]);
        ok(&["--peer", "10.0.0.2:8081", "--cluster-key", "k"], &[]);
        let c = ok(
            &["--peer", "10.0.0.2:8081", "--insecure-cluster", "true"],
            &[],
        );
        assert!(c.insecure_cluster && c.cluster_key.is_none());
        let c = ok(&["--insecure-cluster", "--peer", "10.0.0.2:8081"], &[]);
        assert!(c.insecure_cluster, "a bare boolean flag means true");
        assert!(!ok(&["--insecure-cluster", "false"], &[]).insecure_cluster);
    }

    #[test]
    fn cross_field_checks() {
        let e = errs(&["--listen", "127.0.0.1:8081"], &[]);
        assert!(e[0].contains("overlap"), "{e:?}");
        let e = errs(
            &["--listen", ":9000", "--internal-listen", "127.0.0.1:9000"],
            &[],
        );
        assert!(e[0].contains("overlap"), "{e:?}");
        ok(
            &[
                "--listen",
                "127.0.0.1:0",
                "--internal-listen",
                "127.0.0.1:0",
            ],
            &[],
        );
        let e = errs(
            &["--upstream-timeout", "0s"],
            &[("POLLGATE_UPSTREAM", " , ")],
        );
        assert_eq!(e.len(), 2, "{e:?}");
    }

    #[test]
    fn range_checks() {
        let args = [
            "--upstream-max-inflight",
            "0",
            "--breaker-failures",
            "0",
            "--max-header-size",
            "512",
            "--publish-max-body",
            "0",
            "--upstream-queue=-1",
            "--upstream-connect-timeout",
            "0s",
        ];
        assert_eq!(errs(&args, &[]).len(), 6);
        let c = ok(&["--upstream-queue", "0", "--max-header-size", "1MiB"], &[]);
        assert_eq!((c.upstream_queue, c.max_header_size), (0, 1 << 20));
    }

    #[test]
    fn durations() {
        for (text, want) in [
            ("250ms", Some(Duration::from_millis(250))),
            ("60s", Some(secs(60))),
            ("1h", Some(secs(3600))),
            ("1h 30m", Some(secs(5400))),
            ("0s", Some(secs(0))),
            ("60", None),
            ("abc", None),
            ("", None),
            ("-1s", None),
        ] {
            assert_eq!(duration(text).ok(), want, "{text:?}");
        }
        for d in [secs(0), secs(90), Duration::from_millis(1500), secs(86_400)] {
            assert_eq!(duration(&humantime::format_duration(d).to_string()), Ok(d));
        }
    }

    #[test]
    fn sizes() {
        for (text, want) in [
            ("512", Some(512)),
            ("1KB", Some(1000)),
            ("16KiB", Some(16384)),
            ("1mib", Some(1 << 20)),
            ("2 MB", Some(2_000_000)),
            ("1GiB", Some(1 << 30)),
            ("7b", Some(7)),
            ("1.5MiB", None),
            ("MiB", None),
            ("1TiB", None),
            ("", None),
            ("99999999999999999999GiB", None),
            ("18446744073709551615GiB", None),
        ] {
            assert_eq!(size(text).ok(), want, "{text:?}");
        }
        for n in [0, 1, 1000, 1024, 1536, 1 << 20, 3 << 30] {
            assert_eq!(size(&size_text(n)), Ok(n), "{n}");
        }
        assert_eq!(size_text(16 << 10), "16KiB");
    }

    #[test]
    fn socket_addresses() {
        for (text, want) in [
            ("127.0.0.1:8080", Some("127.0.0.1:8080")),
            (":8080", Some("0.0.0.0:8080")),
            ("localhost:1", Some("127.0.0.1:1")),
            ("[::1]:9", Some("[::1]:9")),
            ("8080", None),
            ("example.com:80", None),
            ("1.2.3.4:99999", None),
        ] {
            let want = want.map(|w| w.parse::<SocketAddr>().unwrap());
            assert_eq!(socket(text).ok(), want, "{text:?}");
        }
    }

    #[test]
    fn upstream_urls() {
        assert_eq!(
            upstream_text(&upstream("http://a:1").unwrap()),
            "http://a:1"
        );
        assert_eq!(
            upstream_text(&upstream("http://a/").unwrap()),
            "http://a:80"
        );
        assert_eq!(
            upstream_text(&upstream("http://[::1]:5").unwrap()),
            "http://[::1]:5"
        );
        assert!(upstream("https://a:1")
            .unwrap_err()
            .contains("terminate TLS in front"));
        for bad in [
            "http://a:1/path",
            "http://a:1?q",
            "http://u:p@a:1",
            "a:1",
            "ftp://a:1",
            "",
        ] {
            assert!(upstream(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn small_parsers() {
        for (t, want) in [
            ("true", Some(true)),
            ("ON", Some(true)),
            ("1", Some(true)),
            ("yes", Some(true)),
            ("false", Some(false)),
            ("off", Some(false)),
            ("0", Some(false)),
            ("No", Some(false)),
            ("y", None),
        ] {
            assert_eq!(boolean(t).ok(), want, "{t:?}");
        }
        assert_eq!(log_format("JSON"), Ok(LogFormat::Json));
        assert!(log_format("xml").is_err());
        assert!(header_name("X-Ok").is_ok() && header_name("bad header").is_err());
        assert!(
            peer("h:1").is_ok()
                && peer("h").is_err()
                && peer(":1").is_err()
                && peer("h:0").is_err()
        );
        assert!(secret("t").is_ok() && secret("").is_err() && secret("a b").is_err());
        assert_eq!(nearest("upstream_timout"), Some("upstream_timeout"));
        assert_eq!(nearest("zzzzzz"), None);
    }

    #[test]
    fn default_config_validates_without_routes() {
        assert!(Config::default().validate_fields().is_empty());
        assert!(Path::new(&std::env::temp_dir()).is_dir());
    }
}

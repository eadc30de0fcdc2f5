//! Configuration: built-in default < TOML file < `POLLGATE_*` env < flags.
//! Every key is parsed and every bad one reported at once, before any port is bound.
//!
//! - this file: [`Config`], each field with its default and why, the one
//!   `Default` (every default is written there only), `load` and `validate`;
//! - `keys`: one row per key (name, help, parser, printer): flags, env
//!   vars, file keys, `--help` and `--print-config` all come from that table,
//!   so a key cannot exist in one of them and be missing from another;
//! - `layers`: the file, env and flag layers, gathered as raw text (the
//!   highest layer wins, lists are replaced, never appended); only the winning
//!   text is parsed, so a bad value that a flag overrides is not an error.
//!   Unknown names (flag, `POLLGATE_*` variable, file key) always are;
//! - `cli`: the clap command and `--help`;
//! - `parse`: the value parsers and printers, and "did you mean".
//!
//! Adding a key (the tests check that the steps agree):
//! 1. a field of [`Config`] whose doc opens with its default as `--help`
//!    prints it (`` `30s`. ``, `` `1MiB`. ``; "Unset: …" when it is an
//!    `Option`), then why the field exists and why that default;
//! 2. its value in `impl Default for Config`, the only place it is written;
//! 3. a row in `keys::KEYS` under its heading: name (= the field), value
//!    name, one-line help, the parser from `parse` (or a new one there,
//!    with a test) and the printer (`dur`, `bytes`, `int`, `text`,
//!    `redacted_all` for a secret, every one repeatable); `.list()` if repeatable, `.note("…")` when
//!    the default is unset or machine-dependent (what `--help` says instead);
//! 4. a rule spanning several keys goes in `validate_fields`;
//! 5. outside this folder: the README table and `deploy/pollgate.toml`
//!    (`tests/deploy.rs` requires every key there).

mod cli;
mod files;
mod keys;
mod layers;
mod parse;
#[cfg(test)]
mod tests;

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use files::{has_secret_files, read_secret_files, FileFindings};
pub use keys::{changed_keys, to_toml, REDACTED};
pub use parse::{check_redis_url, MAX_STREAM_NAME};

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
    /// Empty: publishing refused (403) rather than open to anyone. Several:
    /// any of them is accepted, so a token is rotated without a moment in
    /// which the app's old or new token is refused (reloadable).
    pub publish_token: Vec<String>,
    /// Unset: admin refused. Several: any of them is accepted, so it
    /// rotates like `publish_token` (reloadable).
    pub admin_token: Vec<String>,
    /// Unset. Files holding `publish_token` / `admin_token` values, one per
    /// line, instead of the key itself: a systemd credential or a mounted
    /// Kubernetes Secret, kept out of the config and the environment, and
    /// re-read by a reload and every second, so a token rotates without a
    /// restart (the kubelet updates a mounted Secret without signalling).
    pub publish_token_file: Option<PathBuf>,
    /// Unset. As `publish_token_file`, for `admin_token`.
    pub admin_token_file: Option<PathBuf>,
    /// None. HS256 secrets the app signs public-listener tokens with; any
    /// listed one verifies, so a secret rotates by listing old and new.
    pub auth_jwt_secret: Vec<String>,
    /// Unset. As `publish_token_file`, for `auth_jwt_secret`.
    pub auth_jwt_secret_file: Option<PathBuf>,
    /// Unset. JWKS file of public keys (RS256, ES256, EdDSA); re-read when it
    /// changes or on SIGHUP. With a secret or this, a poll is answered from
    /// memory only for a token covering its key, and push needs one.
    pub auth_jwks: Option<PathBuf>,
    /// Unset: `aud` not checked. When set, a token's `aud` must name it.
    pub auth_audience: Option<String>,
    /// `pollgate_token`. Cookie a token may travel in (EventSource cannot
    /// set headers; a cookie keeps the token out of URLs).
    pub auth_cookie: String,
    /// None. Origins (exact, or `*`) whose browsers may poll and watch.
    pub cors_origins: Vec<String>,
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
    /// Unset. Shared secrets for gossip: the first signs, any listed one
    /// verifies, so a key rotates across replicas with two reloads and no
    /// moment in which one replica refuses another (reloadable).
    pub cluster_key: Vec<String>,
    /// Unset. As `publish_token_file`, for `cluster_key` (the first line signs).
    pub cluster_key_file: Option<PathBuf>,
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
    /// Unset: the client's Host is forwarded (checked: one, well formed).
    /// Set: every forwarded request carries this Host instead, so what the
    /// app answers can never depend on a Host the client chose.
    pub upstream_host: Option<String>,
    /// `false`. `true`: a poll's table key is `<host>:<key>` (host lowercased),
    /// for apps whose answer depends on Host (multi-tenant): one tenant's
    /// polls never learn or read another's versions. Publish that form.
    pub host_keys: bool,
    /// `0` (off). Forwarded requests and new push connections per second one
    /// client address may make; beyond, 429 with a jittered `Retry-After`.
    /// With it on, one client also holds at most a quarter of the upstream
    /// slots. Hits from memory are never limited.
    pub client_rate_per_s: u64,
    /// `0` (= 2 × `client_rate_per_s`). Tokens a client may spend at once.
    pub client_burst: u64,
    /// None. Peers (`10.0.0.0/8`, `192.0.2.7`) whose `X-Forwarded-For` names
    /// the client to limit; anyone else is limited by its own address, so a
    /// client cannot pick its own bucket.
    pub trusted_proxies: Vec<Cidr>,
    /// `5`. Consecutive upstream failures that open the circuit breaker.
    pub breaker_failures: u32,
    /// `5s`. How long the breaker stays open before one half-open probe.
    pub breaker_open: Duration,
    /// `5s`. `X-Poll-Interval` hint on fresh answers while push is off or
    /// refusing (clients must poll soon); while push is healthy the hint is
    /// the cluster-wide `poll_interval_hint_s` (60 s) instead.
    pub poll_interval: Duration,
    /// `10s`. A client must send its request head within this (slowloris).
    pub header_read_timeout: Duration,
    /// `16KiB`. Largest accepted request head.
    pub max_header_size: usize,
    /// `10s`. On SIGTERM, in-flight requests get this long to finish.
    pub grace_period: Duration,
    /// `text`. Log format: `text` or `json`.
    pub log_format: LogFormat,
    /// `info`. Which log lines are written, as a `RUST_LOG`-style filter
    /// (`debug`, `info,pollgate::upstream=debug`): a key so that a reload
    /// can turn debug logging on and off in a running process. `RUST_LOG`,
    /// when set, wins (reloadable).
    pub log_level: String,

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

    /// Unset: no Redis feed. `redis://[:password@]host:port/db`, `rediss://`
    /// for TLS: where the app (or anything) writes version changes once for
    /// every pollgate to read. A reload that changes it (a rotated password)
    /// has the readers reconnect with it; turning the feed on or off needs a
    /// restart (reloadable).
    pub redis_url: Option<String>,
    /// Unset. A file holding the `redis_url`, so its password stays out of
    /// the config and the environment; re-read like `publish_token_file`, so
    /// a rotated password needs no restart (the feed reconnects with it).
    pub redis_url_file: Option<PathBuf>,
    /// None. PUB/SUB channels; a message is a publish body. Lossy.
    pub redis_channel: Vec<String>,
    /// None. Streams read from the last applied ID (kept in the snapshot).
    pub redis_stream: Vec<String>,
    /// `false`. The app writes every change to `redis_stream`: a caught-up,
    /// gap-free reader keeps entries confirmed, and a gap-free restart needs
    /// no revalidation wave. Only the app can promise it, so it says so here.
    pub redis_stream_complete: bool,
    /// Unset: the system roots. PEM CA a `rediss://` server is verified with.
    pub redis_tls_ca: Option<PathBuf>,
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
            publish_token: Vec::new(),
            admin_token: Vec::new(),
            publish_token_file: None,
            admin_token_file: None,
            auth_jwt_secret: Vec::new(),
            auth_jwt_secret_file: None,
            auth_jwks: None,
            auth_audience: None,
            auth_cookie: "pollgate_token".to_string(),
            cors_origins: Vec::new(),
            max_age: Duration::from_secs(60),
            upstream_max_inflight: 256,
            peer: Vec::new(),
            node_id: default_node_id(8081),
            cluster_key: Vec::new(),
            cluster_key_file: None,
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
            upstream_host: None,
            host_keys: false,
            client_rate_per_s: 0,
            client_burst: 0,
            trusted_proxies: Vec::new(),
            breaker_failures: 5,
            breaker_open: Duration::from_secs(5),
            poll_interval: Duration::from_secs(5),
            header_read_timeout: Duration::from_secs(10),
            max_header_size: 16 << 10,
            grace_period: Duration::from_secs(10),
            log_format: LogFormat::Text,
            log_level: "info".to_string(),
            push: true,
            heartbeat_interval: Duration::from_secs(25),
            ghost_timeout: Duration::from_secs(50),
            push_admission_per_s: 2000,
            push_admission_burst: 2000,
            push_max_connections: 100_000,
            max_keys_per_watch: 100,
            wait_max_timeout: Duration::from_secs(60),
            redis_url: None,
            redis_url_file: None,
            redis_channel: Vec::new(),
            redis_stream: Vec::new(),
            redis_stream_complete: false,
            redis_tls_ca: None,
        }
    }
}

/// `hostname:port` of the internal listener: unique per replica on one host.
pub fn default_node_id(port: u16) -> String {
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    format!("{host}:{port}")
}

impl Config {
    /// Names a replica whose `internal_listen` asked for port 0 by the port
    /// really bound: the default `host:0` would be the same on every such
    /// replica, and replicas that share a name refuse to gossip ("ourselves").
    /// A `node_id` that was set explicitly is kept.
    pub fn name_by_bound_port(&mut self, bound: u16) {
        if self.named_by_port_zero() {
            self.node_id = default_node_id(bound);
        }
    }

    /// A reloaded config names the replica as it was named at `start` (the
    /// file still says port 0; the port bound then is the one in use).
    pub fn keep_start_name(&mut self, start: &Config) {
        if self.named_by_port_zero() && self.internal_listen == start.internal_listen {
            self.node_id = start.node_id.clone();
        }
    }

    fn named_by_port_zero(&self) -> bool {
        self.internal_listen.port() == 0 && self.node_id == default_node_id(0)
    }
}

/// What the command line asked for.
#[derive(Debug)]
pub struct Cli {
    pub config: Config,
    /// `--print-config`: print the effective config as TOML and exit 0.
    pub print_config: bool,
    /// Keys set by an environment variable or a flag: they beat the file,
    /// so a reload (which can only re-read the file) never changes them.
    pub pinned: Vec<&'static str>,
    /// Worth saying but not refusing (a world-readable secret file): logged
    /// once logging is set up.
    pub warnings: Vec<String>,
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
    let (matches, errs) = cli::parse_args(args)?;
    let mut found = FileFindings {
        errs,
        warnings: Vec::new(),
    };
    let (config, pinned) = layers::layered(&matches, env, &mut found);
    let mut errs = found.errs;
    errs.extend(config.validate_fields());
    if check_routes {
        errs.extend(config.validate_routes());
    }
    match errs.is_empty() {
        true => Ok(Cli {
            config,
            print_config: matches.get_flag("print_config"),
            pinned,
            warnings: found.warnings,
        }),
        false => Err(LoadError::Invalid(errs)),
    }
}

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
            // A `_file` key counts as set: when its file is broken, that
            // error is the one to read, not "unset" after it.
            (!self.peer.is_empty()
                && self.cluster_key.is_empty()
                && self.cluster_key_file.is_none()
                && !self.insecure_cluster)
                .then(|| PEER_WITHOUT_KEY.into()),
            (self.ghost_timeout <= self.heartbeat_interval).then(|| GHOST_TOO_SHORT.into()),
            self.auth_jwks
                .as_deref()
                .and_then(|p| crate::auth::keys::check_file(p).err()),
            self.redis_feed_mismatch(),
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

    /// `redis_url` and something to read come together.
    fn redis_feed_mismatch(&self) -> Option<String> {
        let reads = !(self.redis_channel.is_empty() && self.redis_stream.is_empty());
        let url_given = self.redis_url.is_some() || self.redis_url_file.is_some();
        match (url_given, reads) {
            (true, false) => {
                Some("redis_url set but no redis_channel or redis_stream: nothing to read".into())
            }
            (false, true) => Some("redis_channel/redis_stream given but redis_url unset".into()),
            _ if self.redis_stream_complete && self.redis_stream.is_empty() => {
                Some("redis_stream_complete needs at least one redis_stream".into())
            }
            _ => (self.redis_tls_ca.is_some()
                && (self.redis_url.is_some() || self.redis_url_file.is_none())
                && !self
                    .redis_url
                    .as_deref()
                    .is_some_and(|u| u.starts_with("rediss://")))
            .then(|| "redis_tls_ca needs a rediss:// redis_url".into()),
        }
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

/// An address block: `10.0.0.0/8`, `2001:db8::/32`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: std::net::IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr::{V4, V6};
        match (self.net, ip) {
            (V4(n), V4(a)) => masked(u32::from(n).into(), u32::from(a).into(), self.prefix, 32),
            (V6(n), V6(a)) => masked(u128::from(n), u128::from(a), self.prefix, 128),
            _ => false,
        }
    }
}

fn masked(net: u128, addr: u128, prefix: u8, bits: u8) -> bool {
    let shift = u32::from(bits - prefix);
    shift >= 128 || (net >> shift) == (addr >> shift)
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        const WHY: &str = "is not an address or address/prefix like 10.0.0.0/8";
        let (a, p) = s.split_once('/').map_or((s, None), |(a, p)| (a, Some(p)));
        let net: std::net::IpAddr = a.trim().parse().map_err(|_| WHY.to_string())?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => p.parse::<u8>().ok().filter(|&p| p <= max).ok_or(WHY)?,
        };
        Ok(Cidr { net, prefix })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

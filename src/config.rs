//! Configuration: built-in default < TOML file < `POLLGATE_*` env < flags.
//! Every key is parsed and every bad one reported at once, before any port is bound.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The effective configuration. Field docs give the default and why.
#[derive(Debug, Clone)]
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
    /// Unset: no snapshots.
    pub data_dir: Option<PathBuf>,

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
            data_dir: None,
            passthrough: true,
            publish_max_body: 1 << 20,
            coalesce_wait: Duration::from_secs(5),
            upstream_queue: 1024,
            upstream_queue_timeout: Duration::from_secs(1),
            upstream_connect_timeout: Duration::from_secs(1),
            upstream_timeout: Duration::from_secs(10),
            breaker_failures: 5,
            breaker_open: Duration::from_secs(5),
            poll_interval: Duration::from_secs(5),
            header_read_timeout: Duration::from_secs(10),
            max_header_size: 16 << 10,
            grace_period: Duration::from_secs(10),
            log_format: LogFormat::Text,
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
    _args: impl IntoIterator<Item = std::ffi::OsString>,
    _env: &[(String, String)],
) -> Result<Cli, LoadError> {
    todo!()
}

/// The effective config as TOML, loadable again with `--config`.
pub fn to_toml(_cfg: &Config) -> String {
    todo!()
}

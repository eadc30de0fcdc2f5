//! Live reload: on SIGHUP or `POST /v1/reload`, the command line this process
//! started with is loaded again (so the config file is re-read) and what can
//! change live is applied; a config with any error is refused whole.
//!
//! What changes live ([`LIVE_KEYS`]): the internal listener's tokens, poll
//! routes, upstreams, per-client limits, the log filter, `cluster_key`, how
//! public-listener tokens are verified, CORS origins and `redis_url` (the
//! Redis readers reconnect with it), each also through its `_file` key. Open connections
//! keep going: a push stream stays open (its token was checked when it
//! opened and it still ends at the token's `exp`), a keep-alive client's
//! remembered token is verified again under the new keys. Every other key
//! is fixed for the process's life ([`why_restart`] says why, key by key):
//! when the file changes one, the reload names it in the log and in the
//! answer and the running value stays.
//!
//! The environment is the one the process started with: a reload cannot see
//! a new `POLLGATE_*` variable (nor a new systemd `EnvironmentFile`), and a
//! key set by a variable or a flag beats the file, so it cannot change by
//! reload; the answer names such keys (`pinned`).

use std::ffi::OsString;
use std::sync::{Arc, OnceLock};

use parking_lot::{Mutex, RwLock};

use crate::config::{self, Config, LoadError};

/// The command line and environment the process started with: reloading
/// replays them, so flags and env keep beating the file as at start.
#[derive(Debug, Clone)]
pub struct Source {
    pub args: Vec<OsString>,
    pub env: Vec<(String, String)>,
}

static SOURCE: OnceLock<Source> = OnceLock::new();

/// Set once by `main`; without it (a test embedding the library) reload
/// answers that there is nothing to reload from.
pub fn set_source(source: Source) {
    let _ = SOURCE.set(source);
}

/// Changes the log filter of the running process (`main` sets it up with
/// the subscriber); `Err` names what is wrong with the filter.
pub type LogFilter = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

static LOG_FILTER: OnceLock<LogFilter> = OnceLock::new();

/// Set once by `main`; without it `log_level` needs a restart.
pub fn set_log_filter(f: LogFilter) {
    let _ = LOG_FILTER.set(f);
}

/// Secrets checked on each request; swapped whole by a reload.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Secrets {
    /// Any of these is a valid publish token (several during a rotation).
    pub publish: Vec<String>,
    /// Any of these is a valid admin token.
    pub admin: Vec<String>,
}

impl Secrets {
    pub fn from_config(cfg: &Config) -> Secrets {
        Secrets {
            publish: cfg.publish_token.clone(),
            admin: cfg.admin_token.clone(),
        }
    }
}

/// Keys a reload applies (some only in the cases [`live_now`] allows).
pub const LIVE_KEYS: [&str; 19] = [
    "publish_token",
    "publish_token_file",
    "admin_token",
    "admin_token_file",
    "route",
    "upstream",
    "client_rate_per_s",
    "client_burst",
    "trusted_proxies",
    "log_level",
    "cluster_key",
    "cluster_key_file",
    "auth_jwt_secret",
    "auth_jwt_secret_file",
    "auth_jwks",
    "auth_audience",
    "cors_origins",
    "redis_url",
    "redis_url_file",
];

/// What a reload did.
#[derive(Debug, PartialEq)]
pub struct Applied {
    /// Live keys whose value changed (and now is in effect).
    pub changed: Vec<&'static str>,
    /// Keys the file changed that keep their running value until a restart,
    /// each with why.
    pub restart_needed: Vec<(&'static str, &'static str)>,
    /// Live keys set by an environment variable or a flag: they beat the
    /// file, and the environment is the one the process started with.
    pub pinned: Vec<&'static str>,
    /// Worth logging, not refusing (a world-readable secret file).
    pub warnings: Vec<String>,
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("no command line to reload from")]
    NoSource,
    #[error("config refused, nothing changed: {}", .0.join("; "))]
    Invalid(Vec<String>),
}

/// The tokens in effect, and the configs a reload compares with.
pub struct Live {
    secrets: RwLock<Arc<Secrets>>,
    /// The config the process started with: what restart-only keys still run with.
    start: Config,
    /// The config last applied; held across a whole reload so two (SIGHUP
    /// and POST) cannot interleave.
    current: Mutex<Config>,
}

impl Live {
    pub fn new(cfg: &Config) -> Live {
        Live {
            secrets: RwLock::new(Arc::new(Secrets::from_config(cfg))),
            start: cfg.clone(),
            current: Mutex::new(cfg.clone()),
        }
    }

    /// The secrets in effect; a refcount, no lock held by the caller.
    pub fn secrets(&self) -> Arc<Secrets> {
        self.secrets.read().clone()
    }

    /// Loads the start-up command line again; `apply` puts the new config's
    /// live `changed` keys in force, or refuses the whole reload.
    pub fn reload(
        &self,
        apply: impl FnOnce(&Config, &[&'static str]) -> Result<(), Vec<String>>,
    ) -> Result<Applied, ReloadError> {
        let source = SOURCE.get().ok_or(ReloadError::NoSource)?;
        self.reload_from(source, apply)
    }

    pub fn reload_from(
        &self,
        source: &Source,
        apply: impl FnOnce(&Config, &[&'static str]) -> Result<(), Vec<String>>,
    ) -> Result<Applied, ReloadError> {
        let cli = match config::load(source.args.iter().cloned(), &source.env) {
            Ok(cli) => cli,
            Err(LoadError::Invalid(errs)) => return Err(ReloadError::Invalid(errs)),
            Err(LoadError::Display(_)) => return Err(ReloadError::NoSource),
        };
        let mut new = cli.config;
        new.keep_start_name(&self.start);
        let mut current = self.current.lock();
        let mut applied = self.commit(&mut current, new, rust_log(source), apply)?;
        applied.pinned = cli
            .pinned
            .into_iter()
            .filter(|k| LIVE_KEYS.contains(k))
            .collect();
        applied.warnings = cli.warnings;
        Ok(applied)
    }

    /// Reads the secret files the running config names again (the kubelet
    /// updates a mounted Secret without a signal) and, when one changed,
    /// applies the result as a reload would: all of it or, when a file is
    /// broken, nothing. `None`: nothing changed. The rest of the config is
    /// the running one: the config file is only re-read by a reload.
    pub fn refresh_files(
        &self,
        apply: impl FnOnce(&Config, &[&'static str]) -> Result<(), Vec<String>>,
    ) -> Result<Option<Applied>, ReloadError> {
        let mut current = self.current.lock();
        if !config::has_secret_files(&current) {
            return Ok(None);
        }
        let mut new = current.clone();
        let found = config::read_secret_files(&mut new);
        if !found.errs.is_empty() {
            return Err(ReloadError::Invalid(found.errs));
        }
        if new == *current {
            return Ok(None);
        }
        let env_log = SOURCE.get().is_some_and(rust_log);
        let mut applied = self.commit(&mut current, new, env_log, apply)?;
        applied.warnings = found.warnings;
        Ok(Some(applied))
    }

    /// Puts `new`'s live changes in force (or refuses them all) and makes it
    /// the config the next reload compares with.
    fn commit(
        &self,
        current: &mut Config,
        new: Config,
        rust_log: bool,
        apply: impl FnOnce(&Config, &[&'static str]) -> Result<(), Vec<String>>,
    ) -> Result<Applied, ReloadError> {
        let changed: Vec<_> = config::changed_keys(current, &new)
            .into_iter()
            .filter(|k| live_now(k, &self.start, &new, rust_log).is_ok())
            .collect();
        apply(&new, &changed).map_err(ReloadError::Invalid)?;
        if changed.contains(&"log_level") {
            set_log_level(&new.log_level);
        }
        *self.secrets.write() = Arc::new(Secrets::from_config(&new));
        let restart_needed = config::changed_keys(&self.start, &new)
            .into_iter()
            .filter_map(|k| {
                live_now(k, &self.start, &new, rust_log)
                    .err()
                    .map(|why| (k, why))
            })
            .collect();
        *current = new;
        Ok(Applied {
            changed,
            restart_needed,
            pinned: Vec::new(),
            warnings: Vec::new(),
        })
    }
}

fn rust_log(source: &Source) -> bool {
    source.env.iter().any(|(k, _)| k == "RUST_LOG")
}

/// The filter was parsed when the config was loaded, so this cannot fail
/// for a reason the operator could fix; if it does, the old filter stays.
fn set_log_level(filter: &str) {
    if let Some(Err(e)) = LOG_FILTER.get().map(|set| set(filter)) {
        tracing::warn!(error = %e, "log_level not changed");
    }
}

/// Whether `key` changes live from the process's `start` config to `new`;
/// `Err` says why it needs a restart.
pub fn live_now(
    key: &str,
    start: &Config,
    new: &Config,
    rust_log: bool,
) -> Result<(), &'static str> {
    let auth_on = |c: &Config| !c.auth_jwt_secret.is_empty() || c.auth_jwks.is_some();
    match key {
        "cluster_key" | "cluster_key_file" if start.cluster_key.is_empty() || new.cluster_key.is_empty() => Err(
            "gossip endpoints exist only with a cluster_key: setting the first key or removing the last needs a restart (rotate by listing old and new)",
        ),
        "auth_jwt_secret" | "auth_jwt_secret_file" | "auth_jwks" | "auth_audience" if auth_on(start) != auth_on(new) => Err(
            "turning authorization on or off needs a restart: open push streams and remembered tokens were admitted under the other rule",
        ),
        "redis_url" | "redis_url_file" if start.redis_url.is_none() || new.redis_url.is_none() => Err(
            "the Redis feed is started (or not) at start: turning it on or off needs a restart",
        ),
        "log_level" if rust_log => Err("RUST_LOG is set and wins over log_level"),
        "log_level" if LOG_FILTER.get().is_none() => Err("no reloadable log filter in this process"),
        k if LIVE_KEYS.contains(&k) => Ok(()),
        k => Err(why_restart(k)),
    }
}

/// Why a key is fixed for the process's life.
pub fn why_restart(key: &str) -> &'static str {
    match key {
        "listen" | "internal_listen" => "a listener is bound once, at start",
        "header_read_timeout" | "max_header_size" | "grace_period" => {
            "the listeners' connection settings are fixed at start"
        }
        "upstream_max_inflight" | "upstream_queue" | "upstream_queue_timeout" | "breaker_failures" | "breaker_open" => {
            "the upstream guard (slots, queue, breaker) is sized at start; resizing it under load could drop queued requests"
        }
        "upstream_connect_timeout" | "upstream_timeout" | "client_body_timeout" | "upstream_host" | "version_header" => {
            "the upstream client is built at start"
        }
        "host_keys" => "it changes what every table key means: versions learned before would be read under other keys",
        "max_age" | "heartbeat_interval" | "ghost_timeout" | "push_admission_per_s" => {
            "a seed of a cluster-wide tunable: change it live for the whole cluster with PUT /v1/config"
        }
        "auth_cookie" => "the cookie name is the browser clients' contract, fixed at start",
        "peer" | "node_id" | "insecure_cluster" => "cluster membership is set up at start",
        "data_dir" | "snapshot_interval" => "the snapshot task is started with it",
        "redis_channel" | "redis_stream" | "redis_stream_complete" | "redis_tls_ca" => {
            "the Redis feed connects and subscribes at start"
        }
        "log_format" => "the log output is set up once, at start",
        "push" | "push_admission_burst" | "push_max_connections" | "max_keys_per_watch" | "wait_max_timeout" => {
            "the push hub is set up at start"
        }
        _ => "read once, at start",
    }
}

/// Logs a reload's result the way an operator reads it after `kill -HUP`.
pub fn log(result: &Result<Applied, ReloadError>) {
    for w in result.iter().flat_map(|a| &a.warnings) {
        tracing::warn!("{w}");
    }
    match result {
        Ok(a) if a.restart_needed.is_empty() => {
            tracing::info!(changed = ?a.changed, pinned = ?a.pinned, "config reloaded")
        }
        Ok(a) => tracing::warn!(
            changed = ?a.changed,
            restart_needed = ?a.restart_needed,
            pinned = ?a.pinned,
            "config reloaded; the restart_needed keys changed in the file but keep their running value until a restart"
        ),
        Err(e) => tracing::error!("reload: {e}"),
    }
}

/// Runs `reload` on every SIGHUP until shut down. Takes the action rather
/// than the state, so this module stays below `state` (which holds [`Live`]).
pub struct SighupHandle(tokio::task::JoinHandle<()>);

impl SighupHandle {
    pub fn start(reload: impl Fn() + Send + 'static) -> SighupHandle {
        SighupHandle(tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let Ok(mut hup) = signal(SignalKind::hangup()) else {
                return tracing::warn!("no SIGHUP handler: reload only with POST /v1/reload");
            };
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading the config");
                reload();
            }
        }))
    }

    pub async fn shutdown(self) {
        self.0.abort();
        let _ = self.0.await;
    }
}

/// How often the secret files are read again: a rotation is not
/// latency-critical (the old value stays valid while the app switches), and
/// reading a few small files once a second costs nothing measurable.
pub const CHECK_FILES_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Re-reads the secret files every [`CHECK_FILES_EVERY`] until shut down,
/// logging what changed, and a broken file once (not every second) until
/// it is fixed. Takes the action, like [`SighupHandle`].
pub struct FileCheckHandle(tokio::task::JoinHandle<()>);

impl FileCheckHandle {
    pub fn start(
        check: impl Fn() -> Result<Option<Applied>, ReloadError> + Send + 'static,
    ) -> FileCheckHandle {
        FileCheckHandle(tokio::spawn(async move {
            let mut tick = tokio::time::interval(CHECK_FILES_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_error = None;
            loop {
                tick.tick().await;
                last_error = log_file_check(check(), last_error);
            }
        }))
    }

    pub async fn shutdown(self) {
        self.0.abort();
        let _ = self.0.await;
    }
}

/// Logs one check; returns the error now standing (logged only when new).
fn log_file_check(
    result: Result<Option<Applied>, ReloadError>,
    last_error: Option<String>,
) -> Option<String> {
    match result {
        Ok(None) => None,
        Ok(Some(applied)) => {
            tracing::info!("a secret file changed");
            log(&Ok(applied));
            None
        }
        Err(e) => {
            let e = format!("secret file not re-read, nothing changed: {e}");
            if last_error.as_ref() != Some(&e) {
                tracing::warn!("{e}");
            }
            Some(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(file: &std::path::Path) -> Source {
        let args = ["pollgate", "--config", file.to_str().unwrap()];
        Source {
            args: args.iter().map(OsString::from).collect(),
            env: Vec::new(),
        }
    }

    fn loaded(file: &std::path::Path) -> Config {
        let s = source(file);
        config::load(s.args, &s.env).unwrap().config
    }

    fn nothing(_: &Config, _: &[&'static str]) -> Result<(), Vec<String>> {
        Ok(())
    }

    #[test]
    fn tokens_change_live_and_other_keys_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pg.toml");
        std::fs::write(&file, "publish_token = [\"a\"]\nmax_age = \"60s\"\n").unwrap();
        let live = Live::new(&loaded(&file));
        std::fs::write(&file, "publish_token = [\"a\", \"b\"]\nmax_age = \"5s\"\n").unwrap();
        let applied = live.reload_from(&source(&file), nothing).unwrap();
        assert_eq!(applied.changed, ["publish_token"]);
        assert_eq!(
            applied.restart_needed,
            [("max_age", why_restart("max_age"))]
        );
        assert_eq!(live.secrets().publish, ["a", "b"]);
        // The running max_age did not change, so it is named again.
        let again = live.reload_from(&source(&file), nothing).unwrap();
        assert!(again.changed.is_empty());
        assert_eq!(again.restart_needed.len(), 1);
    }

    #[test]
    fn a_broken_file_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pg.toml");
        std::fs::write(&file, "publish_token = \"a\"\n").unwrap();
        let live = Live::new(&loaded(&file));
        std::fs::write(&file, "publish_token = \"b\"\nmax_age = \"soon\"\n").unwrap();
        let err = live.reload_from(&source(&file), nothing).unwrap_err();
        assert!(err.to_string().contains("max_age"), "{err}");
        assert_eq!(live.secrets().publish, ["a"]);
    }

    #[test]
    fn a_refusal_from_apply_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pg.toml");
        std::fs::write(&file, "publish_token = \"a\"\n").unwrap();
        let live = Live::new(&loaded(&file));
        std::fs::write(
            &file,
            "publish_token = \"b\"\nroute = [\"/x/{key}?v={version}\"]\n",
        )
        .unwrap();
        let refuse = |_: &Config, changed: &[&str]| {
            assert_eq!(changed, ["route", "publish_token"]);
            Err(vec!["route: no".to_string()])
        };
        assert!(live.reload_from(&source(&file), refuse).is_err());
        assert_eq!(live.secrets().publish, ["a"]);
    }

    #[test]
    fn some_keys_are_live_only_in_some_cases() {
        let with = |f: fn(&mut Config)| {
            let mut c = Config::default();
            f(&mut c);
            c
        };
        let off = Config::default();
        let keyed = with(|c| c.cluster_key = vec!["k".into()]);
        let rotated = with(|c| c.cluster_key = vec!["k2".into(), "k".into()]);
        assert!(live_now("cluster_key", &keyed, &rotated, false).is_ok());
        assert!(live_now("cluster_key", &off, &keyed, false).is_err());
        assert!(live_now("cluster_key", &keyed, &off, false).is_err());
        let secret = with(|c| c.auth_jwt_secret = vec!["s".repeat(32)]);
        let audience = with(|c| {
            c.auth_jwt_secret = vec!["t".repeat(32)];
            c.auth_audience = Some("app".into());
        });
        assert!(live_now("auth_jwt_secret", &secret, &audience, false).is_ok());
        assert!(live_now("auth_audience", &secret, &audience, false).is_ok());
        assert!(live_now("auth_jwt_secret", &off, &secret, false).is_err());
        assert!(
            live_now("log_level", &off, &off, true).is_err(),
            "RUST_LOG wins"
        );
        assert!(live_now("listen", &off, &off, false).is_err());
        let old = with(|c| c.redis_url = Some("redis://:a@h/0".into()));
        let new = with(|c| c.redis_url = Some("redis://:b@h/0".into()));
        assert!(live_now("redis_url", &old, &new, false).is_ok());
        assert!(live_now("redis_url_file", &old, &new, false).is_ok());
        assert!(live_now("redis_url", &off, &new, false).is_err(), "feed on");
        assert!(
            live_now("redis_url", &old, &off, false).is_err(),
            "feed off"
        );
    }

    #[test]
    fn secret_files_are_refreshed_all_or_nothing() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (tokens, admin) = (dir.path().join("tokens"), dir.path().join("admin"));
        let put = |f: &std::path::Path, text: &str| {
            std::fs::write(f, text).unwrap();
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o600)).unwrap();
        };
        put(&tokens, "a\n");
        put(&admin, "x\n");
        let file = dir.path().join("pg.toml");
        let toml = format!("publish_token_file = {tokens:?}\nadmin_token_file = {admin:?}\n");
        std::fs::write(&file, toml).unwrap();
        let live = Live::new(&loaded(&file));
        assert_eq!(live.refresh_files(nothing).unwrap(), None, "unchanged");
        put(&tokens, "b\na\n");
        let applied = live.refresh_files(nothing).unwrap().unwrap();
        assert_eq!(applied.changed, ["publish_token"]);
        assert_eq!(live.secrets().publish, ["b", "a"]);
        // One broken file: the other's change waits too.
        put(&tokens, "");
        put(&admin, "y\n");
        let err = live.refresh_files(nothing).unwrap_err().to_string();
        assert!(err.contains("publish_token_file"), "{err}");
        assert_eq!(live.secrets().admin, ["x"]);
        assert_eq!(live.secrets().publish, ["b", "a"]);
    }
}

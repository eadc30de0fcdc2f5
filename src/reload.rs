//! Live reload: on SIGHUP or `POST /v1/reload`, the command line this process
//! started with is loaded again (so the config file is re-read) and what can
//! change live is applied; a config with any error is refused whole.
//!
//! What changes live: the secrets that guard the internal listener
//! (`publish_token`, repeatable so a rotation has an overlap, and
//! `admin_token`). Every other key is fixed for the process's life: when the
//! file changes one of them, the reload names it in the log and in the answer
//! ("needs a restart") and the running value stays.

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

/// Secrets checked on each request; swapped whole by a reload.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Secrets {
    /// Any of these is a valid publish token (several during a rotation).
    pub publish: Vec<String>,
    pub admin: Option<String>,
}

impl Secrets {
    pub fn from_config(cfg: &Config) -> Secrets {
        Secrets {
            publish: cfg.publish_token.clone(),
            admin: cfg.admin_token.clone(),
        }
    }
}

/// Keys applied by a reload; the rest need a restart.
pub const LIVE_KEYS: [&str; 2] = ["publish_token", "admin_token"];

/// What a reload did.
#[derive(Debug, PartialEq)]
pub struct Applied {
    /// Live keys whose value changed (and now is in effect).
    pub changed: Vec<&'static str>,
    /// Keys the file changed that keep their running value until a restart.
    pub restart_needed: Vec<&'static str>,
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("no command line to reload from")]
    NoSource,
    #[error("config refused, nothing changed: {}", .0.join("; "))]
    Invalid(Vec<String>),
}

/// The live part of the config, and the config last loaded (to compare with).
pub struct Live {
    secrets: RwLock<Arc<Secrets>>,
    /// Held across a whole reload so two (SIGHUP and POST) cannot interleave.
    loaded: Mutex<Config>,
}

impl Live {
    pub fn new(cfg: &Config) -> Live {
        Live {
            secrets: RwLock::new(Arc::new(Secrets::from_config(cfg))),
            loaded: Mutex::new(cfg.clone()),
        }
    }

    /// The secrets in effect; a refcount, no lock held by the caller.
    pub fn secrets(&self) -> Arc<Secrets> {
        self.secrets.read().clone()
    }

    /// Loads the start-up command line again and applies what can change live.
    pub fn reload(&self) -> Result<Applied, ReloadError> {
        let source = SOURCE.get().ok_or(ReloadError::NoSource)?;
        self.reload_from(source)
    }

    pub fn reload_from(&self, source: &Source) -> Result<Applied, ReloadError> {
        let new = match config::load(source.args.iter().cloned(), &source.env) {
            Ok(cli) => cli.config,
            Err(LoadError::Invalid(errs)) => return Err(ReloadError::Invalid(errs)),
            Err(LoadError::Display(_)) => return Err(ReloadError::NoSource),
        };
        let mut loaded = self.loaded.lock();
        let applied = Applied {
            changed: changed_secrets(&loaded, &new),
            restart_needed: config::changed_keys(&loaded, &new)
                .into_iter()
                .filter(|k| !LIVE_KEYS.contains(k))
                .collect(),
        };
        *self.secrets.write() = Arc::new(Secrets::from_config(&new));
        // Restart-only keys keep their running value, so compare with that next time.
        let mut kept = loaded.clone();
        kept.publish_token = new.publish_token;
        kept.admin_token = new.admin_token;
        *loaded = kept;
        Ok(applied)
    }
}

fn changed_secrets(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if old.publish_token != new.publish_token {
        changed.push("publish_token");
    }
    if old.admin_token != new.admin_token {
        changed.push("admin_token");
    }
    changed
}

/// Logs a reload's result the way an operator reads it after `kill -HUP`.
pub fn log(result: &Result<Applied, ReloadError>) {
    match result {
        Ok(a) if a.restart_needed.is_empty() => {
            tracing::info!(changed = ?a.changed, "config reloaded")
        }
        Ok(a) => tracing::warn!(
            changed = ?a.changed,
            restart_needed = ?a.restart_needed,
            "config reloaded; these keys changed in the file but keep their running value until a restart"
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

    #[test]
    fn tokens_change_live_and_other_keys_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pg.toml");
        std::fs::write(&file, "publish_token = [\"a\"]\nmax_age = \"60s\"\n").unwrap();
        let live = Live::new(&loaded(&file));
        std::fs::write(&file, "publish_token = [\"a\", \"b\"]\nmax_age = \"5s\"\n").unwrap();
        let applied = live.reload_from(&source(&file)).unwrap();
        assert_eq!(applied.changed, ["publish_token"]);
        assert_eq!(applied.restart_needed, ["max_age"]);
        assert_eq!(live.secrets().publish, ["a", "b"]);
        // The running max_age did not change, so it is named again.
        let again = live.reload_from(&source(&file)).unwrap();
        assert!(again.changed.is_empty());
        assert_eq!(again.restart_needed, ["max_age"]);
    }

    #[test]
    fn a_broken_file_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pg.toml");
        std::fs::write(&file, "publish_token = \"a\"\n").unwrap();
        let live = Live::new(&loaded(&file));
        std::fs::write(&file, "publish_token = \"b\"\nmax_age = \"soon\"\n").unwrap();
        let err = live.reload_from(&source(&file)).unwrap_err();
        assert!(err.to_string().contains("max_age"), "{err}");
        assert_eq!(live.secrets().publish, ["a"]);
    }
}

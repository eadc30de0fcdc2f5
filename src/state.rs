//! The state every request handler shares: config, table, routes, upstream,
//! the push hub, the cluster core and metrics, and `learn`, the one door for trusted versions.

use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::auth::{Auth, Policy};
use crate::cluster::Cluster;
use crate::config::Config;
use crate::cors::Cors;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::reload::{Applied, ReloadError};
use crate::route::{RouteError, Routes};
use crate::table::{Merge, Table};
use crate::tunables::Tunables;
use crate::upstream::backoff::Backoff;
use crate::upstream::{Coalescer, Upstream};

/// Why the state could not be built from a validated config (a route set
/// that does not fit together, a JWKS file gone since validation).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error("{0}")]
    Auth(String),
}

/// The part of the config the public router reads on every request.
pub struct PublicConfig {
    pub routes: Routes,
    /// CORS for listed origins; `None`: no CORS headers at all.
    pub cors: Option<Cors>,
}

impl PublicConfig {
    pub fn new(cfg: &Config) -> Result<PublicConfig, RouteError> {
        Ok(PublicConfig {
            routes: Routes::parse(&cfg.route)?,
            cors: Cors::new(&cfg.cors_origins),
        })
    }
}

/// A trusted source of versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionSource {
    Publish,
    Upstream,
    /// A Redis channel message or stream entry (`feed::redis`).
    Redis,
}

pub struct State {
    pub cfg: Config,
    pub table: Table,
    /// Poll routes and CORS: what the public router reads per request,
    /// loaded once per request (one `ArcSwap` load on the hit path) and
    /// swapped whole by a reload.
    pub public: ArcSwap<PublicConfig>,
    pub metrics: Arc<Metrics>,
    pub upstream: Upstream,
    pub coalescer: Coalescer,
    /// Expired keys whose last revalidation confirmed nothing wait before the next.
    pub backoff: Backoff,
    pub tunables: Tunables,
    /// Watch registry, admission and push stats.
    pub hub: Hub,
    /// Public-listener authorization; `None`: off (no secret, no JWKS).
    pub auth: Option<Arc<Auth>>,
    /// Gossip: inbound handling, outbox, peers, metrics.
    pub cluster: Cluster,
    /// Flips to true when shutdown starts: connections finish, streams close.
    pub shutdown: watch::Sender<bool>,
    /// The running `redis_url`: a reload that changes it (a rotated
    /// password) makes the Redis readers reconnect with the new one.
    pub redis_url: watch::Sender<Option<String>>,
    /// The config a reload compares with, and the internal listener's
    /// tokens (read per request, swapped whole).
    pub live: crate::reload::Live,
}

impl State {
    pub fn new(cfg: Config) -> Result<Arc<State>, StartError> {
        let metrics = Arc::new(Metrics::default());
        let public = PublicConfig::new(&cfg)?;
        let auth = auth(&cfg, &metrics)?;
        let upstream = Upstream::new(&cfg, metrics.clone());
        let table = Table::new();
        let cluster = Cluster::new(&cfg);
        Ok(Arc::new(State {
            live: crate::reload::Live::new(&cfg),
            table,
            cluster,
            public: ArcSwap::from_pointee(public),
            upstream,
            coalescer: Coalescer::new(),
            backoff: Backoff::default(),
            tunables: Tunables::from_config(&cfg),
            hub: Hub::new(&cfg),
            auth,
            shutdown: watch::Sender::new(false),
            redis_url: watch::Sender::new(cfg.redis_url.clone()),
            metrics,
            cfg,
        }))
    }

    /// Ready to serve: peers caught up with. (The snapshot needs no gate:
    /// `app::run` loads it before the listeners serve anything.)
    pub fn is_ready(&self) -> bool {
        self.cluster.caught_up()
    }

    /// Max-merges a version from a trusted source (confirming the entry).
    pub fn learn(&self, key: &str, version: u64, source: VersionSource) -> Merge {
        match source {
            VersionSource::Publish => self.metrics.versions_learned_publish.inc(),
            VersionSource::Upstream => self.metrics.versions_learned_upstream.inc(),
            VersionSource::Redis => self.metrics.versions_learned_redis.inc(),
        }
        let m = self.table.merge(key, version, true);
        if m.advanced() {
            self.metrics.versions_advanced.inc();
        }
        m
    }
}

impl State {
    /// Re-reads the config (SIGHUP, `POST /v1/reload`) and applies what can
    /// change live; a config with any error changes nothing.
    pub fn reload(&self) -> Result<Applied, ReloadError> {
        // Around the reload only once ready: READY=1 must not come early.
        let ready = self.is_ready();
        if ready {
            crate::notify::reloading();
        }
        let result = self.live.reload(|new, changed| self.apply(new, changed));
        if ready {
            crate::notify::ready(READY_STATUS);
        }
        result
    }

    /// Reads the secret files again (see [`crate::reload::Live::refresh_files`]).
    pub fn refresh_secret_files(&self) -> Result<Option<Applied>, ReloadError> {
        self.live
            .refresh_files(|new, changed| self.apply(new, changed))
    }

    /// Resolves once `/readyz` would answer 200 (or at shutdown: `false`).
    pub async fn wait_ready(&self, stop: &mut watch::Receiver<bool>) -> bool {
        loop {
            let changed = self.cluster.caught_up_changed.notified();
            tokio::pin!(changed);
            // Registered before the check, so a change in between still wakes us.
            changed.as_mut().enable();
            if self.is_ready() {
                return true;
            }
            tokio::select! {
                _ = changed => {}
                _ = crate::shutdown::stopping(stop) => return false,
            }
        }
    }

    /// Builds everything that can fail first, then swaps: a bad route set or
    /// JWKS file refuses the reload whole.
    fn apply(&self, new: &Config, changed: &[&str]) -> Result<(), Vec<String>> {
        let has = |k: &str| changed.contains(&k);
        let public = PublicConfig::new(new).map_err(|e| vec![e.to_string()])?;
        let policy = match (&self.auth, AUTH_KEYS.iter().any(|k| has(k))) {
            (Some(_), true) => Some(Policy::new(&settings(new)).map_err(|e| vec![e])?),
            _ => None,
        };
        if has("route") || has("cors_origins") {
            self.public.store(Arc::new(public));
        }
        if let (Some(auth), Some(p)) = (&self.auth, policy) {
            auth.install(p);
        }
        self.upstream.reload(new);
        // Only when live: removing the last key is restart-only, and keys
        // set to none would sign and verify with the empty key meanwhile.
        if has("cluster_key") {
            self.cluster.set_keys(&new.cluster_key);
        }
        if has("redis_url") {
            self.redis_url.send_replace(new.redis_url.clone());
        }
        Ok(())
    }
}

/// `systemctl status` shows this while pollgate serves.
pub const READY_STATUS: &str = "serving; /readyz answers 200";

/// The keys that say how a public-listener token is verified.
pub const AUTH_KEYS: [&str; 3] = ["auth_jwt_secret", "auth_jwks", "auth_audience"];

fn settings(cfg: &Config) -> crate::auth::Settings<'_> {
    crate::auth::Settings {
        secrets: &cfg.auth_jwt_secret,
        jwks: cfg.auth_jwks.as_deref(),
        audience: cfg.auth_audience.as_deref(),
        cookie: &cfg.auth_cookie,
    }
}

/// Authorization as configured, its metrics registered.
fn auth(cfg: &Config, metrics: &Metrics) -> Result<Option<Arc<Auth>>, StartError> {
    let auth = Auth::new(&settings(cfg))
        .map_err(StartError::Auth)?
        .map(Arc::new);
    if let Some(a) = &auth {
        let a = a.clone();
        metrics.register(Box::new(move |o| a.render_metrics(o)));
    }
    Ok(auth)
}

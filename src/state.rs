//! The state every request handler shares: config, table, routes, upstream,
//! the push hub, the cluster core and metrics, and `learn`, the one door for trusted versions.

use std::sync::Arc;

use tokio::sync::watch;

use crate::auth::Auth;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::cors::Cors;
use crate::hub::Hub;
use crate::metrics::Metrics;
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
    pub routes: Routes,
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
    /// CORS for listed origins; `None`: no CORS headers at all.
    pub cors: Option<Cors>,
    /// Gossip: inbound handling, outbox, peers, metrics.
    pub cluster: Cluster,
    /// Flips to true when shutdown starts: connections finish, streams close.
    pub shutdown: watch::Sender<bool>,
    /// What a reload can change (tokens); read per request, swapped whole.
    pub live: crate::reload::Live,
}

impl State {
    pub fn new(cfg: Config) -> Result<Arc<State>, StartError> {
        let metrics = Arc::new(Metrics::default());
        let routes = Routes::parse(&cfg.route)?;
        let auth = auth(&cfg, &metrics)?;
        let upstream = Upstream::new(&cfg, metrics.clone());
        let table = Table::new();
        let cluster = Cluster::new(&cfg);
        Ok(Arc::new(State {
            live: crate::reload::Live::new(&cfg),
            table,
            cluster,
            routes,
            upstream,
            coalescer: Coalescer::new(),
            backoff: Backoff::default(),
            tunables: Tunables::from_config(&cfg),
            hub: Hub::new(&cfg),
            auth,
            cors: Cors::new(&cfg.cors_origins),
            shutdown: watch::Sender::new(false),
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

/// Authorization as configured, its metrics registered.
fn auth(cfg: &Config, metrics: &Metrics) -> Result<Option<Arc<Auth>>, StartError> {
    let settings = crate::auth::Settings {
        secrets: &cfg.auth_jwt_secret,
        jwks: cfg.auth_jwks.as_deref(),
        audience: cfg.auth_audience.as_deref(),
        cookie: &cfg.auth_cookie,
    };
    let auth = Auth::new(&settings)
        .map_err(StartError::Auth)?
        .map(Arc::new);
    if let Some(a) = &auth {
        let a = a.clone();
        metrics.register(Box::new(move |o| a.render_metrics(o)));
    }
    Ok(auth)
}

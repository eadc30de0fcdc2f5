//! The state every request handler shares: config, table, routes, upstream,
//! the push hub, the cluster core and metrics, and `learn`, the one door for trusted versions.

use std::sync::Arc;

use tokio::sync::watch;

use crate::cluster::Cluster;
use crate::config::Config;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::route::{RouteError, Routes};
use crate::table::{Merge, Table};
use crate::tunables::Tunables;
use crate::upstream::{Coalescer, Upstream};

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
    pub tunables: Tunables,
    /// Watch registry, admission and push stats.
    pub hub: Hub,
    /// Gossip: inbound handling, outbox, peers, metrics.
    pub cluster: Cluster,
    /// Flips to true when shutdown starts: connections finish, streams close.
    pub shutdown: watch::Sender<bool>,
}

impl State {
    pub fn new(cfg: Config) -> Result<Arc<State>, RouteError> {
        let metrics = Arc::new(Metrics::default());
        let routes = Routes::parse(&cfg.route)?;
        let upstream = Upstream::new(&cfg, metrics.clone());
        let table = Table::new();
        let cluster = Cluster::new(&cfg);
        Ok(Arc::new(State {
            table,
            cluster,
            routes,
            upstream,
            coalescer: Coalescer::new(),
            tunables: Tunables::from_config(&cfg),
            hub: Hub::new(&cfg),
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

//! The state every request handler shares: config, table, routes, upstream,
//! push, cluster and metrics, and `learn`, the one door for trusted versions.

use std::sync::atomic::AtomicBool;
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
    /// False until the snapshot is loaded. `/readyz` also needs
    /// `cluster.caught_up()` (peers caught up with): two separate gates, ANDed.
    pub ready: AtomicBool,
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
        cluster.hook_into(&table);
        Ok(Arc::new(State {
            table,
            cluster,
            routes,
            upstream,
            coalescer: Coalescer::new(),
            tunables: Tunables::from_config(&cfg),
            hub: Hub::new(&cfg),
            ready: AtomicBool::new(true),
            shutdown: watch::Sender::new(false),
            metrics,
            cfg,
        }))
    }

    /// Ready to serve: snapshot loaded and peers caught up with.
    pub fn is_ready(&self) -> bool {
        self.ready.load(std::sync::atomic::Ordering::Acquire) && self.cluster.caught_up()
    }

    /// Max-merges a version from a trusted source (confirming the entry).
    pub fn learn(&self, key: &str, version: u64, source: VersionSource) -> Merge {
        match source {
            VersionSource::Publish => self.metrics.versions_learned_publish.inc(),
            VersionSource::Upstream => self.metrics.versions_learned_upstream.inc(),
        }
        let m = self.table.merge(key, version, true);
        if m.advanced() {
            self.metrics.versions_advanced.inc();
        }
        m
    }
}

//! Forwarding to the app servers: a pooled client ([`client`]), the guard in
//! front of it ([`guard`]: in-flight cap, queue, shedding, breaker), per-key
//! coalescing ([`coalesce`]) and revalidation back-off ([`backoff`]).

pub mod backoff;
pub mod client;
pub mod coalesce;
pub mod guard;
pub mod upload;

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;

use crate::body::Body;
use crate::config::Config;
use crate::error::Error;
use crate::limit::ClientLimits;
use crate::metrics::Metrics;

pub use coalesce::{Coalescer, Follower, Leader, Role};

/// The upstream side of pollgate: every request that leaves goes through here.
pub struct Upstream {
    client: client::Client,
    guard: guard::Guard,
    /// Per-client rate and slot share (`client_rate_per_s`); push uses it too.
    pub clients: Arc<ClientLimits>,
}

impl Upstream {
    pub fn new(cfg: &Config, metrics: Arc<Metrics>) -> Self {
        Upstream {
            client: client::Client::new(cfg, metrics.clone()),
            clients: ClientLimits::new(cfg, &metrics),
            guard: guard::Guard::new(cfg, metrics),
        }
    }

    /// Forwards `req` (body streamed) through the guard to one healthy upstream.
    /// Errors are already typed for the client: shed/breaker → 503, timeout → 504, else 502.
    pub async fn forward(
        &self,
        req: Request<impl Into<Body>>,
        client_addr: SocketAddr,
    ) -> Result<Response<Incoming>, Error> {
        // Charged before the guard: one client's flood is refused (429) at
        // its own bucket and never queues for the slots everyone shares.
        let _held = match self.clients.enabled() {
            true => self
                .clients
                .admit_forward(self.clients.client_ip(client_addr, req.headers()))?,
            false => None,
        };
        let permit = self.guard.acquire().await?;
        let res = self.client.send(req, client_addr).await;
        permit.record(&res);
        res
    }

    /// Applies a reload's `upstream` list and per-client limits.
    pub fn reload(&self, cfg: &Config) {
        self.client.set_upstreams(&cfg.upstream);
        self.clients.set_rates(cfg);
    }

    /// True while the breaker refuses requests: stale polls get 503 at once.
    pub fn refusing(&self) -> Option<Error> {
        self.guard.refusing()
    }
}

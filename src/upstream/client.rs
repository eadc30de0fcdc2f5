//! The pooled HTTP client to the app servers: round-robin with passive health,
//! hop-by-hop headers stripped, `X-Forwarded-For`/`Via` added, timeouts.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;

use crate::config::Config;
use crate::error::Error;
use crate::metrics::Metrics;

pub struct Client {}

impl Client {
    pub fn new(_cfg: &Config, _metrics: Arc<Metrics>) -> Self {
        todo!()
    }

    /// Sends `req` to the next healthy upstream; times out per config.
    pub async fn send(
        &self,
        _req: Request<Incoming>,
        _client_addr: SocketAddr,
    ) -> Result<Response<Incoming>, Error> {
        todo!()
    }
}

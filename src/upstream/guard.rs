//! The upstream guard: at most `upstream_max_inflight` requests in flight, a
//! bounded wait queue, 503 + jittered `Retry-After` beyond, and a circuit breaker.

use std::sync::Arc;

use http::Response;
use hyper::body::Incoming;

use crate::config::Config;
use crate::error::Error;
use crate::metrics::Metrics;

pub struct Guard {}

/// A slot in flight; `record` feeds the breaker, drop frees the slot.
pub struct Permit {}

impl Guard {
    pub fn new(_cfg: &Config, _metrics: Arc<Metrics>) -> Self {
        todo!()
    }
    /// Waits (bounded) for a slot, or refuses with `Error::Shed` / `Error::BreakerOpen`.
    pub async fn acquire(&self) -> Result<Permit, Error> {
        todo!()
    }
    /// `Some(BreakerOpen)` while the breaker is open and no probe is due.
    pub fn refusing(&self) -> Option<Error> {
        todo!()
    }
}

impl Permit {
    pub fn record(self, _res: &Result<Response<Incoming>, Error>) {
        todo!()
    }
}

//! `GET /pollgate/v1/wait?keys=a:3&timeout=30`: long-poll. `200
//! {"stale":[{"key":"a","version":5}]}` as soon as a key is past the client's
//! version (at once if it already is), `304` when the timeout passes, and an
//! early `304` with a jittered `Retry-After` when the server shuts down.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use http::{header, HeaderValue, Response, StatusCode};

use super::Watch;
use crate::body::Body;
use crate::error::Error;
use crate::hub::{Subscription, Ticket};
use crate::shutdown::stopping;
use crate::state::State;

/// When the client names no `timeout`.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// `timeout` in whole seconds, capped at `max`; absent → 30 s.
pub fn parse_timeout(query: &str, max: Duration) -> Result<Duration, Error> {
    let Some(raw) = crate::route::query_param(query, "timeout") else {
        return Ok(DEFAULT_TIMEOUT.min(max));
    };
    let secs: u64 = crate::route::parse_version(raw)
        .map_err(|_| Error::BadRequest("timeout must be whole seconds, as timeout=30"))?;
    Ok(Duration::from_secs(secs).min(max))
}

/// Holds the request until a watched key advances, the timeout or shutdown.
pub async fn answer(
    state: &Arc<State>,
    keys: &[Watch],
    timeout: Duration,
    _permit: Ticket,
) -> Response<Body> {
    let mut sub = state.hub.registry.subscribe();
    for (k, v) in keys {
        sub.watch(&state.table, k, *v);
    }
    let mut stop = state.shutdown.subscribe();
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    loop {
        if let Some(body) = stale_body(state, &sub) {
            return json(body);
        }
        tokio::select! {
            biased;
            _ = stopping(&mut stop) => return shutting_down(state),
            _ = sub.changed() => {}
            _ = &mut deadline => return not_modified(),
        }
    }
}

/// `{"stale":[…]}` of every pending notice, or `None` when there is none.
fn stale_body(state: &State, sub: &Subscription) -> Option<String> {
    let mut out = String::from("{\"stale\":[");
    let n = sub.drain(|key, version| {
        let sep = if out.ends_with('[') { "" } else { "," };
        let _ = write!(out, "{sep}{{\"key\":\"{key}\",\"version\":{version}}}");
    });
    if n == 0 {
        return None;
    }
    state.hub.stats.notifications.add(n as u64);
    out.push_str("]}\n");
    Some(out)
}

fn json(body: String) -> Response<Body> {
    let mut resp = Response::new(Body::full(body));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn not_modified() -> Response<Body> {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::NOT_MODIFIED;
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Early `304`: nothing changed, come back after a hint spread over the grace period.
fn shutting_down(state: &State) -> Response<Body> {
    let ms = super::shutdown_retry_ms(state.cfg.grace_period);
    let mut resp = not_modified();
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(ms.div_ceil(1000)));
    resp
}

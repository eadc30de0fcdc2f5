//! The public listener's one router: each request is decided once to be a
//! push transport, a poll (hit from memory or forward), or pass-through.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use compact_str::CompactString;
use futures_util::future::{ready, Either, Ready};
use http::{Request, Response};
use hyper::body::Incoming;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::body::Body;
use crate::error::Error;
use crate::metrics::Outcome;
use crate::route::Match;
use crate::state::State;

pub type Answer = Result<Response<Body>, Infallible>;
/// A hit is `Left` (ready at once, nothing boxed); everything else is a boxed
/// future, so the hit path never builds or moves the forwarding state machine.
pub type Reply = Either<Ready<Answer>, Pin<Box<dyn Future<Output = Answer> + Send>>>;

/// Before hyper sees a new connection: SSE watches are taken off hyper
/// (see `push::raw`). `None`: the connection was served or is finished;
/// otherwise the deadline its first request head must meet.
pub async fn intercept(
    state: &Arc<State>,
    tcp: TcpStream,
    stop: &mut watch::Receiver<bool>,
) -> Option<(TcpStream, tokio::time::Instant)> {
    crate::push::raw::intercept(state, tcp, stop).await
}

/// Routes one request from the public listener.
pub fn respond(state: &Arc<State>, remote: SocketAddr, req: Request<Incoming>) -> Reply {
    route(state, remote, req.map(Body::Incoming))
}

/// Routes one request: push transport, poll, or pass-through.
pub fn route(state: &Arc<State>, remote: SocketAddr, req: Request<Body>) -> Reply {
    if let Err(e) = crate::inbound::screen(&req) {
        state.metrics.request(Outcome::BadRequest);
        return now(e.into_response());
    }
    let uri = req.uri();
    if uri.path() == crate::push::client_js::PATH {
        return now(crate::push::client_js::response(
            req.method(),
            req.headers(),
        ));
    }
    if let Some(t) = crate::push::transport(uri.path()) {
        let clients = &state.upstream.clients;
        if let Err(e) = clients.admit_push(clients.client_ip(remote, req.headers())) {
            return now(e.into_response());
        }
        let state = state.clone();
        return boxed(async move { crate::push::handle(&state, req, t).await });
    }
    match state.routes.matches(uri.path(), uri.query(), req.headers()) {
        Match::Poll { key, version, .. } if state.cfg.host_keys => {
            let Some(scoped) = scoped_key(&req, key) else {
                state.metrics.request(Outcome::BadRequest);
                return now(Error::BadRequest("host:key must fit the key rules").into_response());
            };
            if let Some(hit) = hit(state, scoped.as_str(), version) {
                return hit;
            }
            forward(
                state,
                remote,
                req,
                CompactString::new(scoped.as_str()),
                version,
            )
        }
        Match::Poll { key, version, .. } => {
            if let Some(hit) = hit(state, key, version) {
                return hit;
            }
            // Keys are ≤ 128 bytes; ≤ 24 stay inline (no allocation).
            let key = CompactString::new(key);
            forward(state, remote, req, key, version)
        }
        Match::Bad(reason) => {
            state.metrics.request(Outcome::BadRequest);
            now(Error::BadRequest(reason).into_response())
        }
        Match::None if state.cfg.passthrough => {
            let state = state.clone();
            boxed(async move { crate::poll::passthrough(&state, req, remote).await })
        }
        Match::None => now(Error::NotFound.into_response()),
    }
}

/// A hit from memory, answered at once.
fn hit(state: &State, key: &str, version: Option<u64>) -> Option<Reply> {
    version
        .and_then(|v| crate::poll::try_hit(state, key, v))
        .map(now)
}

/// Not a hit: the forward decision (stale, cold, expired), boxed.
fn forward(
    state: &Arc<State>,
    remote: SocketAddr,
    req: Request<Body>,
    key: CompactString,
    version: Option<u64>,
) -> Reply {
    let state = state.clone();
    boxed(async move { crate::poll::poll(&state, req, remote, &key, version).await })
}

/// `<host>:<key>` for `host_keys`; the Host was already screened.
fn scoped_key(req: &Request<Body>, key: &str) -> Option<crate::inbound::ScopedKey> {
    let host = crate::inbound::host(req).ok().flatten();
    let host = host.or_else(|| req.uri().authority().map(|a| a.as_str().as_bytes()))?;
    crate::inbound::ScopedKey::new(host, key)
}

fn now(resp: Response<Body>) -> Reply {
    Either::Left(ready(Ok(resp)))
}

fn boxed(f: impl Future<Output = Response<Body>> + Send + 'static) -> Reply {
    Either::Right(Box::pin(async move { Ok(f.await) }))
}

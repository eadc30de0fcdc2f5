//! The public listener's one router: each request is decided once to be a
//! push transport, a poll (hit from memory or forward), or pass-through.
//! With auth on, a poll is a hit only for a token covering its key; CORS
//! preflights to poll routes and push endpoints are answered here.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use compact_str::CompactString;
use futures_util::future::{ready, Either, Ready};
use http::{header, HeaderValue, Request, Response};
use hyper::body::Incoming;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::auth::ConnCache;
use crate::body::Body;
use crate::cors::Cors;
use crate::error::Error;
use crate::metrics::Outcome;
use crate::route::Match;
use crate::state::{PublicConfig, State};

pub type Answer = Result<Response<Body>, Infallible>;
/// A hit is `Left` (ready at once, nothing boxed); everything else is a boxed
/// future, so the hit path never builds or moves the forwarding state machine.
pub type Reply = Either<Ready<Answer>, Pin<Box<dyn Future<Output = Answer> + Send>>>;

/// Before hyper sees a new connection: SSE watches are taken off hyper
/// (see `push::raw`), the rest is told HTTP/1.1 or HTTP/2 once.
/// `None`: the connection was served or is finished.
pub async fn intercept(
    state: &Arc<State>,
    tcp: TcpStream,
    stop: &mut watch::Receiver<bool>,
) -> Option<(TcpStream, crate::push::raw::Opening)> {
    crate::push::raw::intercept(state, tcp, stop).await
}

/// Routes one request from the public listener. `conn` remembers the
/// connection's last verified token (see [`crate::auth::ConnCache`]).
pub fn respond(
    state: &Arc<State>,
    remote: SocketAddr,
    conn: &Arc<ConnCache>,
    req: Request<Incoming>,
) -> Reply {
    route(state, remote, conn, req.map(Body::Incoming))
}

/// Routes one request: CORS preflight, push transport, poll, or pass-through.
pub fn route(
    state: &Arc<State>,
    remote: SocketAddr,
    conn: &Arc<ConnCache>,
    req: Request<Body>,
) -> Reply {
    // One load per request: routes and CORS as of this moment.
    let public = state.public.load();
    if let Some(cors) = preflight_of_ours(&public, &req) {
        return now(cors.preflight(req.headers()));
    }
    if let Err(e) = crate::inbound::screen(&req) {
        state.metrics.request(Outcome::BadRequest);
        return now(e.into_response());
    }
    let uri = req.uri();
    if uri.path() == crate::push::client_js::PATH {
        let js = crate::push::client_js::response(req.method(), req.headers());
        let origin = req.headers().get(header::ORIGIN).cloned();
        return now(crate::cors::apply(public.cors.as_ref(), origin, js));
    }
    if let Some(t) = crate::push::transport(uri.path()) {
        let clients = &state.upstream.clients;
        if let Err(e) = clients.admit_push(clients.client_ip(remote, req.headers())) {
            return now(e.into_response());
        }
        let (state, conn) = (state.clone(), conn.clone());
        return boxed(async move { crate::push::handle(&state, &conn, req, t).await });
    }
    let cors = public.cors.as_ref();
    match public
        .routes
        .matches(uri.path(), uri.query(), req.headers())
    {
        Match::Poll { key, version, .. } if state.cfg.host_keys => {
            let Some(scoped) = scoped_key(&req, key) else {
                state.metrics.request(Outcome::BadRequest);
                return now(Error::BadRequest("host:key must fit the key rules").into_response());
            };
            poll_route(state, cors, conn, &req, scoped.as_str(), version)
                .unwrap_or_else(|how| how.run(state, remote, req))
        }
        Match::Poll { key, version, .. } => poll_route(state, cors, conn, &req, key, version)
            .unwrap_or_else(|how| how.run(state, remote, req)),
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

/// `<host>:<key>` for `host_keys` (the Host was already screened); with
/// auth on, a token must cover this scoped key.
fn scoped_key(req: &Request<Body>, key: &str) -> Option<crate::inbound::ScopedKey> {
    let host = crate::inbound::host(req).ok().flatten();
    let host = host.or_else(|| req.uri().authority().map(|a| a.as_str().as_bytes()))?;
    crate::inbound::ScopedKey::new(host, key)
}

/// `Some` for a CORS preflight to a poll route or `/pollgate/v1/*` while
/// `cors_origins` is set; anything else (pass-through included) goes on.
fn preflight_of_ours<'a>(public: &'a PublicConfig, req: &Request<Body>) -> Option<&'a Cors> {
    let cors = public.cors.as_ref()?;
    if !Cors::is_preflight(req.method(), req.headers()) {
        return None;
    }
    let uri = req.uri();
    let ours = uri.path().starts_with("/pollgate/v1/")
        || matches!(
            public
                .routes
                .matches(uri.path(), uri.query(), req.headers()),
            Match::Poll { .. }
        );
    ours.then_some(cors)
}

/// How a poll that memory cannot answer goes on (owning what it needs, so
/// the request can move into the future).
struct Onward {
    key: CompactString,
    version: Option<u64>,
    authorized: bool,
    origin: Option<HeaderValue>,
}

/// A poll: `Ok` when memory answers it now (the hit path: no allocation
/// beyond the answer's headers), `Err` with how it goes upstream.
fn poll_route(
    state: &State,
    cors: Option<&Cors>,
    conn: &ConnCache,
    req: &Request<Body>,
    key: &str,
    version: Option<u64>,
) -> Result<Reply, Onward> {
    let origin = match cors {
        Some(_) => req.headers().get(header::ORIGIN).cloned(),
        None => None,
    };
    let authorized = match &state.auth {
        None => true,
        Some(auth) => {
            let token = auth.token(req.headers(), req.uri().query());
            conn.check(auth, token, key).is_ok()
        }
    };
    if authorized {
        if let Some(hit) = version.and_then(|v| crate::poll::try_hit(state, key, v)) {
            return Ok(now(crate::cors::apply(cors, origin, hit)));
        }
    }
    Err(Onward {
        // Keys are ≤ 128 bytes; ≤ 24 stay inline (no allocation).
        key: CompactString::new(key),
        version,
        authorized,
        origin,
    })
}

impl Onward {
    /// Forwards (the token taken out of the query first); a caller without
    /// a token covering the key goes to the app as it came, and the app's
    /// own auth decides.
    fn run(self, state: &Arc<State>, remote: SocketAddr, req: Request<Body>) -> Reply {
        let state = state.clone();
        boxed(async move {
            let req = without_token(&state, req);
            let resp = match self.authorized {
                true => crate::poll::poll(&state, req, remote, &self.key, self.version).await,
                false => crate::poll::unauthorized(&state, req, remote, &self.key).await,
            };
            with_cors(&state, self.origin, resp)
        })
    }
}

/// The request with any `token=` taken out of its query (when auth is on).
fn without_token(state: &State, mut req: Request<Body>) -> Request<Body> {
    if state.auth.is_some() {
        if let Some(uri) = crate::auth::carrier::strip_token(req.uri()) {
            *req.uri_mut() = uri;
        }
    }
    req
}

/// Adds CORS headers for a listed `origin` to one of pollgate's answers.
pub fn with_cors(
    state: &State,
    origin: Option<HeaderValue>,
    resp: Response<Body>,
) -> Response<Body> {
    crate::cors::apply(state.public.load().cors.as_ref(), origin, resp)
}

fn now(resp: Response<Body>) -> Reply {
    Either::Left(ready(Ok(resp)))
}

fn boxed(f: impl Future<Output = Response<Body>> + Send + 'static) -> Reply {
    Either::Right(Box::pin(async move { Ok(f.await) }))
}

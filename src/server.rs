//! Listeners, the connection loop (HTTP/1.1 keep-alive + h2c, upgrades for
//! WebSocket) and graceful shutdown: stop accepting, drain within the grace period.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::Either;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::auth::ConnCache;
use crate::config::Config;
use crate::heads::{Busy, Clock, Heads, Registry, Stop, Tracked};
use crate::public::Reply;
use crate::push::raw::Opening;
use crate::shutdown::stopping;
use crate::state::State;

/// The two bound sockets. Bound before `run` so tests can bind port 0 and
/// read the address, and so config errors surface before any port is taken.
pub struct Listeners {
    pub public: TcpListener,
    pub internal: TcpListener,
}

impl Listeners {
    pub async fn bind(cfg: &Config) -> std::io::Result<Listeners> {
        let public = bind(cfg.listen, "listen").await?;
        let internal = bind(cfg.internal_listen, "internal_listen").await?;
        Ok(Listeners { public, internal })
    }

    pub fn public_addr(&self) -> SocketAddr {
        self.public
            .local_addr()
            .expect("bound listener has an address")
    }

    pub fn internal_addr(&self) -> SocketAddr {
        self.internal
            .local_addr()
            .expect("bound listener has an address")
    }
}

async fn bind(addr: SocketAddr, key: &str) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("{key} {addr}: {e}")))
}

#[derive(Clone, Copy)]
enum Side {
    Public,
    Internal,
}

/// Serves both listeners until `shutdown` resolves, then drains.
pub async fn run(listeners: Listeners, state: Arc<State>, shutdown: impl Future<Output = ()>) {
    let heads = Heads::start(state.cfg.header_read_timeout, state.shutdown.subscribe());
    let builders = Arc::new(Builders::new(&state.cfg, heads.registry().clone()));
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (accepted, side) = tokio::select! {
            _ = &mut shutdown => break,
            r = listeners.public.accept() => (r, Side::Public),
            r = listeners.internal.accept() => (r, Side::Internal),
        };
        match accepted {
            Ok((stream, remote)) => {
                let stop = state.shutdown.subscribe();
                let conn = Accepted {
                    builders: builders.clone(),
                    state: state.clone(),
                    remote,
                    side,
                };
                conns.spawn(conn.serve(stream, stop));
            }
            Err(e) => accept_error(e).await,
        }
        while conns.try_join_next().is_some() {}
    }
    drop(listeners);
    drain(&state, conns).await;
    drop(heads);
}

/// EMFILE and friends: log and back off briefly rather than spin.
async fn accept_error(e: std::io::Error) {
    tracing::warn!(error = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(10)).await;
}

async fn drain(state: &State, mut conns: JoinSet<()>) {
    let open = conns.len();
    tracing::info!(open, "shutting down: draining connections");
    state.shutdown.send_replace(true);
    let grace = state.cfg.grace_period;
    let all_done = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(grace, all_done).await.is_err() {
        tracing::warn!(
            left = conns.len(),
            ?grace,
            "grace period expired; closing the rest"
        );
        conns.abort_all();
    }
}

/// The HTTP servers, configured once. The public listener's connections
/// are told HTTP/1.1 or HTTP/2 by sniffing and get that server directly;
/// their head deadline is [`Heads`]'s, not a hyper timer per request. The
/// internal listener keeps hyper's auto-detection and header timer.
struct Builders {
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
    internal: auto::Builder<TokioExecutor>,
    /// Where public connections served by hyper register their [`Clock`].
    heads: Arc<Registry>,
}

impl Builders {
    fn new(cfg: &Config, heads: Arc<Registry>) -> Builders {
        let mut h1 = http1::Builder::new();
        h1.header_read_timeout(None)
            .max_buf_size(cfg.max_header_size.max(8192))
            .keep_alive(true);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_header_list_size(cfg.max_header_size as u32);
        Builders {
            h1,
            h2,
            internal: internal_builder(cfg),
            heads,
        }
    }
}

fn internal_builder(cfg: &Config) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.header_read_timeout)
        .max_buf_size(cfg.max_header_size.max(8192))
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(cfg.max_header_size as u32);
    b
}

/// A connection just accepted: what the accept loop knows of it.
struct Accepted {
    builders: Arc<Builders>,
    state: Arc<State>,
    remote: SocketAddr,
    side: Side,
}

impl Accepted {
    /// Serves requests until the connection closes or shutdown asks it to finish.
    async fn serve(self, stream: TcpStream, mut stop: watch::Receiver<bool>) {
        let _ = stream.set_nodelay(true);
        let accepted = Instant::now();
        let remote = self.remote;
        let res = match self.side {
            Side::Public => match crate::public::intercept(&self.state, stream, &mut stop).await {
                Some((stream, opening)) => {
                    let conn = self.into_conn();
                    conn.watched(accepted, &stop);
                    conn.public(stream, opening).await
                }
                None => return,
            },
            Side::Internal => self.into_conn().internal(stream, stop).await,
        };
        if let Err(e) = res {
            tracing::debug!(%remote, error = %e, "connection ended with an error");
        }
    }

    /// Served by hyper from now on (a raw SSE watch never gets here).
    fn into_conn(self) -> Conn {
        Conn {
            builders: self.builders,
            state: self.state,
            remote: self.remote,
            side: self.side,
            clock: Arc::default(),
        }
    }
}

/// A connection served by hyper and what serving it needs.
struct Conn {
    builders: Arc<Builders>,
    state: Arc<State>,
    remote: SocketAddr,
    side: Side,
    /// What [`Heads`] reads to time this connection's heads and tells it
    /// to stop by (public only; the internal listener's is never watched).
    clock: Arc<Clock>,
}

impl Conn {
    /// Registers with [`Heads`]; told of a shutdown that already started.
    fn watched(&self, accepted: Instant, stop: &watch::Receiver<bool>) {
        self.builders.heads.watch(self.clock.clone(), accepted);
        if *stop.borrow() {
            self.clock.stop(Stop::Shutdown);
        }
    }

    /// Told of shutdown by [`Heads`] (through the connection's [`Clock`]).
    async fn public(self, stream: TcpStream, opening: Opening) -> Result<(), String> {
        let io = TokioIo::new(stream);
        let (builders, clock) = (self.builders.clone(), self.clock.clone());
        let (first, drain) = (clock.stopping(None), clock.stopping(Some(Stop::Shutdown)));
        // Either protocol: a connection with nothing answered and nothing
        // in flight for the timeout is closed (hyper's h2 server has no
        // header timeout of its own).
        clock.arm();
        if opening == Opening::Http2 {
            let conn = builders.h2.serve_connection(io, self.service());
            return until_stopped(conn, first, drain, |c| c.graceful_shutdown()).await;
        }
        let conn = builders
            .h1
            .serve_connection(io, self.service())
            .with_upgrades();
        until_stopped(conn, first, drain, |c| c.graceful_shutdown()).await
    }

    async fn internal(
        self,
        stream: TcpStream,
        mut stop: watch::Receiver<bool>,
    ) -> Result<(), String> {
        let builders = self.builders.clone();
        let io = TokioIo::new(stream);
        let conn = builders
            .internal
            .serve_connection_with_upgrades(io, self.service());
        let first = async {
            stopping(&mut stop).await;
            Stop::Shutdown
        };
        let drain = std::future::pending();
        until_stopped(conn, first, drain, |c| c.graceful_shutdown()).await
    }

    /// The connection's service. Per connection: a keep-alive client's
    /// token is verified once ([`ConnCache`]).
    fn service(
        self,
    ) -> impl hyper::service::Service<
        Request<Incoming>,
        Response = Response<Tracked>,
        Error = Infallible,
        Future = Answering,
    > {
        let conn_cache = Arc::new(ConnCache::default());
        service_fn(move |req| self.respond(&conn_cache, req))
    }

    /// The internal listener's requests are never hits: always a boxed future.
    fn respond(&self, conn: &Arc<ConnCache>, req: Request<Incoming>) -> Answering {
        let reply: Reply = match self.side {
            Side::Public => crate::public::respond(&self.state, self.remote, conn, req),
            Side::Internal => {
                let state = self.state.clone();
                Either::Right(Box::pin(async move {
                    Ok(crate::internal::handle(&state, req).await)
                }))
            }
        };
        let busy = match &reply {
            Either::Left(_) => {
                self.clock.served_now();
                None
            }
            Either::Right(_) => Some(self.clock.busy()),
        };
        Answering { reply, busy }
    }
}

/// Drives a connection until it ends or `first` says to stop: on a
/// shutdown it is asked to finish what it serves (unless `drain` then says
/// its head is late), on a head timeout it is dropped (closed) at once.
async fn until_stopped<C, E>(
    conn: C,
    first: impl Future<Output = Stop>,
    drain: impl Future<Output = Stop>,
    graceful: fn(Pin<&mut C>),
) -> Result<(), String>
where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    tokio::pin!(conn);
    let why = tokio::select! {
        biased;
        r = conn.as_mut() => return r.map_err(|e| e.to_string()),
        why = first => why,
    };
    if why == Stop::Shutdown {
        graceful(conn.as_mut());
        tokio::select! {
            biased;
            r = conn.as_mut() => return r.map_err(|e| e.to_string()),
            _ = drain => {}
        }
    }
    Err("no request head within header_read_timeout".into())
}

/// A request's answer on its way: a hit is ready at once; anything else
/// keeps the connection [`Busy`] until its response body is dropped.
struct Answering {
    reply: Reply,
    busy: Option<Busy>,
}

impl Future for Answering {
    type Output = Result<Response<Tracked>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let Poll::Ready(Ok(resp)) = Pin::new(&mut this.reply).poll(cx) else {
            return Poll::Pending;
        };
        let busy = this.busy.take();
        Poll::Ready(Ok(resp.map(|body| Tracked::new(body, busy))))
    }
}

//! Listeners, the connection loop (HTTP/1.1 keep-alive + h2c, upgrades for
//! WebSocket) and graceful shutdown: stop accepting, drain within the grace period.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::Either;
use http::Request;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::auth::ConnCache;
use crate::config::Config;
use crate::inbound::LocalAddr;
use crate::public::Reply;
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
    let builder = Arc::new(http_builder(&state.cfg));
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
                conns.spawn(serve(
                    builder.clone(),
                    state.clone(),
                    stream,
                    remote,
                    side,
                    stop,
                ));
            }
            Err(e) => accept_error(e).await,
        }
        while conns.try_join_next().is_some() {}
    }
    drop(listeners);
    drain(&state, conns).await;
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

fn http_builder(cfg: &Config) -> auto::Builder<TokioExecutor> {
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

/// One connection: serve requests until it closes or shutdown asks it to finish.
async fn serve(
    builder: Arc<auto::Builder<TokioExecutor>>,
    state: Arc<State>,
    stream: TcpStream,
    remote: SocketAddr,
    side: Side,
    mut stop: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr().ok().map(LocalAddr);
    let (stream, builder) = match side {
        Side::Public => match crate::public::intercept(&state, stream, &mut stop).await {
            Some((s, head_by)) => (s, head_within(builder, &state.cfg, head_by)),
            None => return,
        },
        Side::Internal => (stream, builder),
    };
    // Per connection: a keep-alive client's token is verified once.
    let conn_cache = Arc::new(ConnCache::default());
    let svc = service_fn(move |mut req: Request<Incoming>| {
        if let (Side::Internal, Some(l)) = (side, local) {
            req.extensions_mut().insert(l);
        }
        respond(&state, side, remote, &conn_cache, req)
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    let res = tokio::select! {
        r = conn.as_mut() => r,
        _ = stopping(&mut stop) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = res {
        tracing::debug!(%remote, error = %e, "connection ended with an error");
    }
}

/// The builder for a connection whose first head must arrive by `by`: the
/// shared one, unless sniffing (see `push::raw`) already used part of
/// `header_read_timeout` — then a copy with only the rest (rare: only a
/// client stalling inside `GET /pollgate/v1/watch` pays for the copy).
fn head_within(
    builder: Arc<auto::Builder<TokioExecutor>>,
    cfg: &Config,
    by: tokio::time::Instant,
) -> Arc<auto::Builder<TokioExecutor>> {
    let left = by.saturating_duration_since(tokio::time::Instant::now());
    if left + Duration::from_millis(100) >= cfg.header_read_timeout {
        return builder;
    }
    let mut b = (*builder).clone();
    b.http1()
        .header_read_timeout(left.max(Duration::from_millis(1)));
    Arc::new(b)
}

/// The internal listener's requests are never hits: always a boxed future.
fn respond(
    state: &Arc<State>,
    side: Side,
    remote: SocketAddr,
    conn: &Arc<ConnCache>,
    req: Request<Incoming>,
) -> Reply {
    match side {
        Side::Public => crate::public::respond(state, remote, conn, req),
        Side::Internal => {
            let state = state.clone();
            Either::Right(Box::pin(async move {
                Ok(crate::internal::handle(&state, req).await)
            }))
        }
    }
}

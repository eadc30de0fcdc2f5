//! Test support shared by unit tests, integration tests and load tests (not
//! used by pollgate itself): a small HTTP server and a deadline-bound wait.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::time::Instant;

use crate::body::Body;

/// Serves HTTP/1.1 and h2c on 127.0.0.1:0 with `handle`; returns the bound
/// address. The server runs until the runtime ends.
pub async fn serve<F, Fut>(handle: F) -> SocketAddr
where
    F: Fn(Request<Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("bound address");
    tokio::spawn(async move {
        while let Ok((stream, remote)) = listener.accept().await {
            let handle = handle.clone();
            let svc = service_fn(move |req| {
                let fut = handle(req, remote);
                async move { Ok::<_, Infallible>(fut.await) }
            });
            tokio::spawn(async move {
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    addr
}

/// Polls `cond` every `every` until it holds or `max` passes; the last look
/// is taken at the deadline (no sleeps as synchronisation).
pub async fn eventually<F, Fut>(max: Duration, every: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + max;
    while Instant::now() < deadline {
        if cond().await {
            return true;
        }
        tokio::time::sleep(every).await;
    }
    cond().await
}

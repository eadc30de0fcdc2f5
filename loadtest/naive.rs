//! The naive peer for the load test: what a first hyper server answering
//! polls would look like. It parses the id out of `/projects/p<id>/changes`,
//! looks it up in a `DashMap<u64, u64>` and answers 304 when `since` is at
//! least the stored version, else 200 with the version as `ETag` (also the
//! answer when `since` is missing, so Varnish can fetch an object to cache).
//!
//! Same plumbing as `ceiling.rs` (multi-thread runtime, hyper-util `auto`),
//! so ceiling → naive is the price of a lookup and naive → pollgate is
//! pollgate's own work. `loadtest/peers.sh` and `loadtest/instructions.sh`
//! run it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use clap::Parser;
use dashmap::DashMap;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ETAG};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};

#[derive(Parser, Debug)]
#[command(about = "Naive poll server: path parse + DashMap lookup, for pollgate's load test")]
struct Args {
    /// Address to listen on; port 0 picks a free one (printed on line 1).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Ids 0..keys are stored at version 1 before listening.
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
}

type Versions = Arc<DashMap<u64, u64>>;

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()?
        .block_on(serve(args))
}

async fn serve(args: Args) -> std::io::Result<()> {
    let versions: Versions = Arc::new((0..args.keys).map(|id| (id, 1)).collect());
    let listener = TcpListener::bind(args.listen).await?;
    // Line 1 of stdout is the contract with the scripts.
    println!("listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(stream, versions.clone()));
    }
}

async fn connection(stream: TcpStream, versions: Versions) {
    let svc = service_fn(move |req| {
        let answer = poll(&versions, &req);
        async move { Ok::<_, Infallible>(answer) }
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    // Connection errors (client resets at the end of a wrk run) are normal.
    let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
}

fn poll(versions: &DashMap<u64, u64>, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let uri = req.uri();
    let id = uri
        .path()
        .strip_prefix("/projects/p")
        .and_then(|rest| rest.strip_suffix("/changes"))
        .and_then(|id| id.parse::<u64>().ok());
    let Some(version) = id.and_then(|id| versions.get(&id).map(|v| *v)) else {
        return status(StatusCode::NOT_FOUND);
    };
    let since = uri
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("since=")))
        .and_then(|s| s.parse::<u64>().ok());
    let mut res = match since {
        Some(since) if since >= version => status(StatusCode::NOT_MODIFIED),
        _ => Response::new(Full::new(Bytes::from(version.to_string()))),
    };
    let h = res.headers_mut();
    let etag = format!("\"{version}\"");
    h.insert(
        ETAG,
        HeaderValue::from_str(&etag).expect("digits and quotes"),
    );
    h.insert("x-pollgate", HeaderValue::from_static("hit"));
    h.insert("x-poll-interval", HeaderValue::from_static("5"));
    res
}

fn status(code: StatusCode) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::new()));
    *res.status_mut() = code;
    res
}

//! The ceiling for the load test: the least work a hyper server can do to
//! answer a poll the way pollgate answers a hit. pollgate cannot beat it;
//! `loadtest/run.sh` reports how close it gets.
//!
//! It runs the same stack pollgate's connection loop uses — multi-thread
//! tokio runtime with one worker per available core, hyper-util's `auto`
//! connection builder (HTTP/1.1 keep-alive + h2c) — so the gap measured is
//! pollgate's own work (routing, table lookup, header values), not a
//! difference in plumbing. `--h1` switches to the bare HTTP/1.1 builder to
//! see what the protocol sniffing costs.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use clap::Parser;
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ETAG};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};

#[derive(Parser, Debug)]
#[command(about = "Constant 304 server: the throughput ceiling for pollgate's hit path")]
struct Args {
    /// Address to listen on; port 0 picks a free one (printed on line 1).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Serve with hyper's HTTP/1.1-only builder instead of `auto`.
    #[arg(long)]
    h1: bool,
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    // Same sizing as pollgate: one worker per core it may run on. Under
    // `taskset -c 0` available_parallelism() is 1.
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()?
        .block_on(serve(args))
}

async fn serve(args: Args) -> std::io::Result<()> {
    let listener = TcpListener::bind(args.listen).await?;
    // Line 1 of stdout is the contract with run.sh; println! flushes on '\n'.
    println!("listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(stream, args.h1));
    }
}

async fn connection(stream: TcpStream, h1: bool) {
    let io = TokioIo::new(stream);
    let svc = service_fn(hit);
    // Connection errors (client resets at the end of a wrk run) are normal.
    let _ = match h1 {
        true => {
            let builder = hyper::server::conn::http1::Builder::new();
            builder.serve_connection(io, svc).await.map_err(drop)
        }
        false => {
            let builder = auto::Builder::new(TokioExecutor::new());
            builder.serve_connection(io, svc).await.map_err(drop)
        }
    };
}

/// The same answer as pollgate's fresh hit: 304, ETag, X-Pollgate, interval hint.
async fn hit(_req: Request<Incoming>) -> Result<Response<Empty<Bytes>>, Infallible> {
    let mut res = Response::new(Empty::new());
    *res.status_mut() = StatusCode::NOT_MODIFIED;
    let h = res.headers_mut();
    h.insert(ETAG, HeaderValue::from_static("\"1\""));
    h.insert("x-pollgate", HeaderValue::from_static("hit"));
    h.insert("x-poll-interval", HeaderValue::from_static("5"));
    Ok(res)
}

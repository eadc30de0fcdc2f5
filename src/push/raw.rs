//! HTTP/1.1 SSE watches served without hyper. Idle watchers are most of a
//! replica's connections, and hyper keeps ~20 KiB of buffers per connection
//! (an 8–16 KiB read buffer and an 8 KiB header write buffer) for the life of
//! a stream that only ever writes a few bytes; this path keeps a few hundred.
//!
//! Only a connection whose first bytes are `GET /pollgate/v1/watch?` (or
//! `… ` ) is taken, and only after peeking, so everything else reaches hyper
//! untouched. The response is close-delimited (`Connection: close`, no
//! chunking); events are the same [`sse::Stream`] the hyper path sends.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use super::sse::{self, Stream};
use super::Transport;
use crate::auth::ConnCache;
use crate::body::Body;
use crate::error::Error;
use crate::shutdown::stopping;
use crate::state::State;

const PREFIX: &[u8] = b"GET /pollgate/v1/watch";

/// The HTTP/2 prior-knowledge connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How a public connection opens, read once from its first bytes (peeked,
/// not consumed), so hyper gets its HTTP/1.1 or HTTP/2 server directly
/// instead of a wrapper that replays the sniffed bytes on every read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opening {
    Watch,
    Http1,
    Http2,
}

/// Serves the connection here if it opens with an SSE watch; otherwise hands
/// it back (unread) for hyper with its protocol. Sniffing has until
/// `header_read_timeout`; after it, hyper's heads are timed by `heads`
/// from the same accept. `None`: the connection is finished.
pub async fn intercept(
    state: &Arc<State>,
    tcp: TcpStream,
    stop: &mut watch::Receiver<bool>,
) -> Option<(TcpStream, Opening)> {
    let deadline = Instant::now() + state.cfg.header_read_timeout;
    let opening = tokio::select! {
        r = tokio::time::timeout_at(deadline, sniff(&tcp)) => r.ok()?,
        _ = stopping(stop) => return None,
    }?;
    if opening != Opening::Watch || !state.cfg.push {
        return Some((tcp, opening));
    }
    if state.hub.runtime().is_none() {
        serve(state, tcp, deadline).await;
        return None;
    }
    // Moved to the stream runtime and owned by push (shutdown waits for it):
    // the connection task ends here, so an idle watcher costs one task, and
    // a storm of streams ending wakes nothing on the hit path's workers.
    let std = tcp.into_std().ok()?;
    let st = state.clone();
    state.hub.spawn_stream(async move {
        if let Ok(tcp) = TcpStream::from_std(std) {
            serve(&st, tcp, deadline).await;
        }
    });
    None
}

/// Peeks at the first bytes until they say how the connection opens;
/// `None` when the client closed without sending anything. A partly
/// arrived line costs nothing while the client stalls: the task sleeps
/// until more bytes arrive (no timed re-peeking).
async fn sniff(tcp: &TcpStream) -> Option<Opening> {
    let mut buf = [0u8; H2_PREFACE.len()];
    let mut n = tcp.peek(&mut buf).await.ok()?;
    loop {
        if n == 0 {
            return None;
        }
        if let Some(o) = classify(&buf[..n]) {
            return Some(o);
        }
        n = peek_more(tcp, &mut buf, n).await.ok()?;
    }
}

/// The opening these first bytes show, `None` while they could still be
/// either a watch or the HTTP/2 preface.
fn classify(seen: &[u8]) -> Option<Opening> {
    let could_be = |p: &[u8]| p.starts_with(&seen[..seen.len().min(p.len())]);
    if could_be(PREFIX) {
        let next = seen.get(PREFIX.len())?;
        return Some(match next {
            b'?' | b' ' => Opening::Watch,
            _ => Opening::Http1,
        });
    }
    if could_be(H2_PREFACE) {
        return (seen.len() >= H2_PREFACE.len()).then_some(Opening::Http2);
    }
    Some(Opening::Http1)
}

/// Waits until the socket holds more than `have` bytes (or is closed: 0),
/// then peeks them. `try_io` clears the readiness only if no new event came
/// in while we looked, so bytes arriving in between are never missed.
async fn peek_more(tcp: &TcpStream, buf: &mut [u8], have: usize) -> std::io::Result<usize> {
    use std::io::ErrorKind::WouldBlock;
    loop {
        tcp.readable().await?;
        let peeked = tcp.try_io(Interest::READABLE, || match peek_now(tcp, buf)? {
            n if n == have => Err(WouldBlock.into()),
            n => Ok(n),
        });
        match peeked {
            Err(e) if e.kind() == WouldBlock => continue,
            r => return r,
        }
    }
}

/// A non-blocking `MSG_PEEK`: tokio's `peek` awaits, it cannot say "nothing new".
fn peek_now(tcp: &TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    let flags = libc::MSG_PEEK | libc::MSG_DONTWAIT;
    // SAFETY: the fd is owned by `tcp`, alive for this call; `buf` is a valid
    // writable region of `buf.len()` bytes for the duration of the call.
    let n = unsafe { libc::recv(tcp.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), flags) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(n as usize)
}

async fn serve(state: &Arc<State>, mut tcp: TcpStream, deadline: Instant) {
    let head = match tokio::time::timeout_at(deadline, read_head(&mut tcp, state)).await {
        Ok(Ok(head)) => head,
        Ok(Err(e)) => return write_error(state, &mut tcp, e, None).await,
        Err(_) => return,
    };
    let origin = head.headers.get(header::ORIGIN).cloned();
    let stream = match admit(state, &head, tcp.peer_addr().ok()) {
        Ok(s) => s,
        Err(e) => return write_error(state, &mut tcp, e, origin).await,
    };
    drop(head);
    stream_events(state, tcp, stream, origin).await;
}

/// Reads the request head: at most `max_header_size` bytes (431 beyond, as
/// hyper answers), ended by an empty line, CRLF or bare LF (RFC 9112 §2.2
/// lets a recipient accept a bare LF, and hyper does). The rest is ignored.
async fn read_head(tcp: &mut TcpStream, state: &State) -> Result<Head, Error> {
    let max = state.cfg.max_header_size;
    let mut head = Vec::with_capacity(512);
    while head_end(&head).is_none() {
        if head.len() >= max {
            return Err(Error::HeadTooLarge);
        }
        let room = (max - head.len()).min(4096);
        let n = (&mut *tcp)
            .take(room as u64)
            .read_buf(&mut head)
            .await
            // The client's socket failed: its fault, not ours (was a 500).
            .map_err(|_| Error::BadRequest("request head could not be read"))?;
        if n == 0 {
            return Err(Error::BadRequest("request head incomplete"));
        }
    }
    parse_head(&head)
}

/// Where the head ends: after the first empty line (`\n\n` or `\n\r\n`).
pub fn head_end(head: &[u8]) -> Option<usize> {
    head.iter()
        .enumerate()
        .find_map(|(i, &b)| match (b, &head[i + 1..]) {
            (b'\n', [b'\n', ..]) => Some(i + 2),
            (b'\n', [b'\r', b'\n', ..]) => Some(i + 3),
            _ => None,
        })
}

/// Validates and authorizes the watch (a refused one spends no token),
/// then admits it.
fn admit(state: &Arc<State>, head: &Head, peer: Option<SocketAddr>) -> Result<Stream, Error> {
    let query = head.target.split_once('?').map_or("", |(_, q)| q);
    let keys = super::parse_keys(query, state.cfg.max_keys_per_watch)?;
    if let Some(peer) = peer {
        let clients = &state.upstream.clients;
        clients.admit_push(clients.client_ip(peer, &head.headers))?;
    }
    // A fresh cache: this connection makes exactly one request.
    let conn = ConnCache::default();
    let grant = super::authorize(state, &conn, &head.headers, query, &keys, true)?;
    let permit = super::admit(state, Transport::Sse)?;
    Ok(Stream::new(state, &keys, grant.as_deref(), permit))
}

/// The watched keys of a raw head (at most `max`), as this path reads
/// them; for the fuzz targets.
pub fn watch_keys(head: &[u8], max: usize) -> Result<usize, Error> {
    let head = parse_head(head)?;
    let query = head.target.split_once('?').map_or("", |(_, q)| q);
    Ok(super::parse_keys(query, max)?.len())
}

/// The parts of a request head this path reads.
struct Head {
    target: String,
    headers: HeaderMap,
}

/// Most request heads carry fewer; more is refused rather than grown.
const MAX_HEADERS: usize = 64;

fn parse_head(bytes: &[u8]) -> Result<Head, Error> {
    let mut raw = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut raw);
    match req.parse(bytes) {
        Ok(httparse::Status::Complete(_)) if req.version == Some(1) => {}
        _ => return Err(Error::BadRequest("malformed request head")),
    }
    let mut headers = HeaderMap::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes());
        let value = HeaderValue::from_bytes(h.value);
        if let (Ok(n), Ok(v)) = (name, value) {
            headers.append(n, v);
        }
    }
    let target = req.path.unwrap_or("").to_string();
    Ok(Head { target, headers })
}

/// Writes the response head, then events until shutdown or the client leaves.
async fn stream_events(
    state: &State,
    mut tcp: TcpStream,
    mut stream: Stream,
    origin: Option<HeaderValue>,
) {
    let mut head = String::from("HTTP/1.1 200 OK\r\n");
    for (name, value) in sse::HEADERS {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    let mut cors = HeaderMap::new();
    if let Some(c) = &state.public.load().cors {
        c.decorate(origin, &mut cors);
    }
    write_headers(&mut head, &cors);
    head.push_str("connection: close\r\n\r\n");
    if write(state, &mut tcp, head.as_bytes()).await.is_err() {
        return;
    }
    // Reading only notices the client leaving; whatever it sends is ignored.
    let mut scratch = [0u8; 32];
    loop {
        let chunk = tokio::select! {
            biased;
            c = stream.next_chunk() => c,
            r = tcp.read(&mut scratch) => match r {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            },
        };
        let Some(chunk) = chunk else { break };
        if write(state, &mut tcp, &chunk).await.is_err() {
            return;
        }
    }
    let _ = tcp.shutdown().await;
}

/// A write bounded by `ghost_timeout`: a client that stopped reading must not
/// hold the task (or shutdown) forever.
async fn write(state: &State, tcp: &mut TcpStream, bytes: &[u8]) -> Result<(), ()> {
    let limit = state.tunables.ghost_timeout();
    match tokio::time::timeout(limit, tcp.write_all(bytes)).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

/// The same response [`Error::into_response`] gives the hyper path, written by hand.
async fn write_error(state: &State, tcp: &mut TcpStream, e: Error, origin: Option<HeaderValue>) {
    let resp = crate::cors::apply(state.public.load().cors.as_ref(), origin, e.into_response());
    let (parts, body) = resp.into_parts();
    let body = match body {
        Body::Full(Some(b)) => b,
        _ => Bytes::new(),
    };
    let mut head = format!("HTTP/1.1 {}\r\n", parts.status);
    write_headers(&mut head, &parts.headers);
    head.push_str(&format!(
        "content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    ));
    let _ = tcp.write_all(head.as_bytes()).await;
    let _ = tcp.write_all(&body).await;
    let _ = tcp.shutdown().await;
}

fn write_headers(head: &mut String, headers: &HeaderMap) {
    for (name, value) in headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        head.push_str(&format!("{name}: {value}\r\n"));
    }
}

#[cfg(test)]
mod tests {
    use super::{classify, Opening::*};

    #[test]
    fn openings_are_told_apart_as_soon_as_the_bytes_allow() {
        assert_eq!(classify(b""), None);
        assert_eq!(classify(b"G"), None);
        assert_eq!(classify(b"GET /pollgate/v1/watch"), None);
        assert_eq!(classify(b"GET /pollgate/v1/watch?keys=a"), Some(Watch));
        assert_eq!(classify(b"GET /pollgate/v1/watch HTTP/1.1"), Some(Watch));
        assert_eq!(classify(b"GET /pollgate/v1/watchX"), Some(Http1));
        assert_eq!(classify(b"GET /projects/p1/changes"), Some(Http1));
        assert_eq!(classify(b"P"), None);
        assert_eq!(classify(b"PO"), Some(Http1));
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n"), None);
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), Some(Http2));
        assert_eq!(classify(b"PRI * HTTP/1.1\r\n"), Some(Http1));
    }
}

//! The hit path: a poll whose client is not behind a fresh entry is answered
//! from memory; everything else is handed to the upstream, learning the
//! version the upstream reports on the way back.

use std::cell::RefCell;
use std::net::SocketAddr;

use bytes::BytesMut;
use http::{header, HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::body::Body;
use crate::error::Error;
use crate::metrics::Outcome;
use crate::state::{State, VersionSource};
use crate::table::Entry;
use crate::upstream::{Leader, Role};

/// The hit path, synchronous: `Some(304)` when memory answers this poll
/// right now, `None` to go down [`poll`]. Answering here lets the router skip
/// building (and moving) `poll`'s large future.
pub fn try_hit(state: &State, key: &str, client: u64) -> Option<Response<Body>> {
    let entry = state.table.get(key)?;
    (client >= entry.version && is_fresh(state, entry)).then(|| hit(state, entry.version))
}

/// One poll on its way to an answer: what every step of the decision needs.
struct Poll<'a> {
    state: &'a State,
    req: Request<Body>,
    remote: SocketAddr,
    key: &'a str,
}

/// Decides hit / stale / unknown / expired for one poll.
pub async fn poll(
    state: &State,
    req: Request<Body>,
    remote: SocketAddr,
    key: &str,
    client: Option<u64>,
) -> Response<Body> {
    let p = Poll {
        state,
        req,
        remote,
        key,
    };
    let Some(entry) = state.table.get(key) else {
        return p.cold(client).await;
    };
    let Some(client) = client else {
        return p.forward(None, Outcome::NoVersion).await;
    };
    if client < entry.version {
        return p.stale().await;
    }
    if is_fresh(state, entry) {
        return hit(state, entry.version);
    }
    // Expired: one poll revalidates upstream, the rest are answered from memory.
    // While the breaker is open nobody can revalidate, and the version we know
    // is a better answer than a 503. The same while the key backs off after
    // revalidations that confirmed nothing (an upstream sending no version).
    if !state.backoff.due(key, state.table.now_ms()) {
        return hit(state, entry.version);
    }
    match state.coalescer.join(key) {
        Role::Leader(l) if state.upstream.refusing().is_none() => p.revalidate(l).await,
        _ => hit(state, entry.version),
    }
}

fn is_fresh(state: &State, e: Entry) -> bool {
    let max_age = state.tunables.max_age_ms();
    max_age == 0
        || state
            .table
            .now_ms()
            .saturating_sub(state.table.confirmed_as_of(e, max_age))
            < max_age
}

impl Poll<'_> {
    /// The client is behind: it needs the upstream's answer. Fails fast while
    /// the breaker is open so a dead upstream never holds polls.
    async fn stale(self) -> Response<Body> {
        if let Some(err) = self.state.upstream.refusing() {
            self.state.metrics.request(Outcome::Shed);
            return err.into_response();
        }
        self.forward(None, Outcome::Stale).await
    }

    /// Unknown key: one request per key goes upstream, the others wait for the
    /// version it brings and are answered from memory if that makes them fresh.
    async fn cold(self, client: Option<u64>) -> Response<Body> {
        let (state, key) = (self.state, self.key);
        let follower = match state.coalescer.join(key) {
            Role::Leader(l) => return self.forward(Some(l), Outcome::Unknown).await,
            Role::Follower(f) => f,
        };
        if follower.wait(state.cfg.coalesce_wait).await {
            if let (Some(e), Some(c)) = (state.table.get(key), client) {
                if c >= e.version {
                    state.metrics.request(Outcome::Coalesced);
                    return hit_response(state, e.version);
                }
            }
        }
        self.forward(None, Outcome::Stale).await
    }

    /// Forwards an expired key's poll; if the answer left the entry still
    /// unconfirmed, the key backs off before the next revalidation.
    async fn revalidate(self, leader: Leader<'_>) -> Response<Body> {
        let (state, key) = (self.state, self.key);
        let resp = self.forward(Some(leader), Outcome::Revalidate).await;
        match state.table.get(key).is_some_and(|e| is_fresh(state, e)) {
            true => state.backoff.confirmed(key),
            false => {
                let max_age = state.tunables.max_age_ms();
                state.backoff.missed(key, state.table.now_ms(), max_age);
            }
        }
        resp
    }

    /// Sends the poll upstream and learns the version the upstream reports.
    /// `leader` (if any) is dropped once the version is in the table, waking followers.
    async fn forward(self, leader: Option<Leader<'_>>, outcome: Outcome) -> Response<Body> {
        let state = self.state;
        state.metrics.request(outcome);
        let res = state.upstream.forward(self.req, self.remote).await;
        if let Ok(resp) = &res {
            learn_from(state, self.key, resp);
        }
        drop(leader);
        respond(state, res)
    }
}

fn hit(state: &State, version: u64) -> Response<Body> {
    state.metrics.request(Outcome::Hit);
    hit_response(state, version)
}

// Constants: inserting by `&str` name copies the name on every response.
const X_POLLGATE: HeaderName = HeaderName::from_static("x-pollgate");
const X_POLL_INTERVAL: HeaderName = HeaderName::from_static("x-poll-interval");

/// `304` with `ETag: "<version>"`, `X-Pollgate: hit` and the poll-interval hint:
/// long while push is on and admitting (push says when to poll), short otherwise.
pub fn hit_response(state: &State, version: u64) -> Response<Body> {
    let interval = match state.hub.healthy(&state.cfg) {
        true => state.tunables.poll_interval_hint_s(),
        false => state.cfg.poll_interval.as_secs(),
    };
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::NOT_MODIFIED;
    *resp.headers_mut() = hit_headers(interval, etag(version));
    resp
}

thread_local! {
    /// This thread's hit headers for the last interval it answered with, the
    /// ETag a placeholder. Cloning them is two allocations and a copy;
    /// building them is those plus three hashed inserts and a formatted
    /// value. Per thread, so the shared `X-Poll-Interval` bytes are counted
    /// by one core, not bounced between them.
    static HIT_HEADERS: RefCell<(u64, HeaderMap)> = RefCell::new((0, HeaderMap::new()));
}

/// The hit headers for `interval` with this `etag`.
fn hit_headers(interval: u64, etag: HeaderValue) -> HeaderMap {
    let mut h = HIT_HEADERS.with_borrow_mut(|(cached, h)| {
        if *cached != interval || h.is_empty() {
            *h = hit_template(interval);
            *cached = interval;
        }
        h.clone()
    });
    if let Some((_, v)) = h.iter_mut().find(|(k, _)| *k == header::ETAG) {
        *v = etag;
    }
    h
}

fn hit_template(interval: u64) -> HeaderMap {
    // Sized once: growing the map would reallocate on the hot path.
    let mut h = HeaderMap::with_capacity(4);
    // First, so the hot path finds it at once.
    h.insert(header::ETAG, HeaderValue::from_static("\"0\""));
    h.insert(X_POLLGATE, HeaderValue::from_static("hit"));
    // Shared (not a copy per clone): a refcount per hit, no allocation.
    h.insert(X_POLL_INTERVAL, shared(decimal(interval, false)));
    h
}

/// The same bytes, in a buffer whose clones share it.
fn shared(v: HeaderValue) -> HeaderValue {
    let b = bytes::Bytes::from(v.as_bytes().to_vec());
    HeaderValue::from_maybe_shared(b).expect("the bytes of a header value")
}

thread_local! {
    /// Where this thread writes its hits' ETag values: each is a slice of
    /// one shared buffer (a refcount, not an allocation per hit). A new
    /// buffer is started when this one is full; the old one is freed when
    /// the last response using it has been written.
    static ETAGS: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// Room for ~200 ETags of a 64-bit version (22 bytes each at most).
const ETAG_BUFFER: usize = 4096;

/// `"<version>"` as a header value, without an allocation of its own.
fn etag(version: u64) -> HeaderValue {
    let mut buf = [0u8; 22];
    let digits = format_decimal(version, true, &mut buf);
    let value = ETAGS.with_borrow_mut(|arena| {
        if arena.capacity() < digits.len() {
            *arena = BytesMut::with_capacity(ETAG_BUFFER);
        }
        arena.extend_from_slice(digits);
        arena.split().freeze()
    });
    digits_value(value)
}

/// `n` (or `"n"`) formatted on the stack; the header value is the only allocation.
fn decimal(n: u64, quoted: bool) -> HeaderValue {
    let mut buf = [0u8; 22];
    digits_value(bytes::Bytes::copy_from_slice(format_decimal(
        n, quoted, &mut buf,
    )))
}

/// A header value of [`format_decimal`]'s bytes, without checking them again.
fn digits_value(digits: bytes::Bytes) -> HeaderValue {
    // SAFETY: not memory safety: `from_maybe_shared_unchecked` only skips
    // the byte check, and digits and quotes are valid header value bytes
    // (debug builds check anyway).
    unsafe { HeaderValue::from_maybe_shared_unchecked(digits) }
}

/// `n` (or `"n"`) written at the end of `buf`; the written part.
fn format_decimal(n: u64, quoted: bool, buf: &mut [u8; 22]) -> &[u8] {
    let mut i = buf.len();
    if quoted {
        i -= 1;
        buf[i] = b'"';
    }
    let mut v = n;
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if quoted {
        i -= 1;
        buf[i] = b'"';
    }
    &buf[i..]
}

/// Reads the configured version header; a missing or malformed one teaches nothing.
fn learn_from(state: &State, key: &str, resp: &Response<Incoming>) {
    let Some(v) = resp.headers().get(&state.cfg.version_header) else {
        return;
    };
    match v
        .to_str()
        .ok()
        .and_then(|s| crate::route::parse_version(s.trim()).ok())
    {
        Some(v) => {
            state.learn(key, v, VersionSource::Upstream);
        }
        None => tracing::debug!(key, "upstream sent an unparsable version header"),
    }
}

fn respond(state: &State, res: Result<Response<Incoming>, Error>) -> Response<Body> {
    match res {
        Ok(resp) => resp.map(Body::Incoming),
        Err(e) => {
            if matches!(e, Error::Shed { .. } | Error::BreakerOpen { .. }) {
                state.metrics.request(Outcome::Shed);
            }
            e.into_response()
        }
    }
}

/// A poll whose caller has no token covering its key: the app decides, as
/// if pollgate were not there. Never answered from memory, never coalesced
/// with authorized polls, and the version the app reports is learned only
/// when the app let the caller see it (2xx or 304).
pub async fn unauthorized(
    state: &State,
    req: Request<Body>,
    remote: SocketAddr,
    key: &str,
) -> Response<Body> {
    state.metrics.request(Outcome::Unauthorized);
    let res = state.upstream.forward(req, remote).await;
    if let Ok(resp) = &res {
        let s = resp.status();
        if s.is_success() || s == StatusCode::NOT_MODIFIED {
            learn_from(state, key, resp);
        }
    }
    respond(state, res)
}

/// Not a poll: proxied unchanged (through the same guard).
pub async fn passthrough(state: &State, req: Request<Body>, remote: SocketAddr) -> Response<Body> {
    state.metrics.request(Outcome::Passthrough);
    respond(state, state.upstream.forward(req, remote).await)
}

#[cfg(test)]
mod tests {
    use super::{decimal, etag, ETAG_BUFFER};

    #[test]
    fn decimal_values_plain_and_quoted() {
        assert_eq!(decimal(0, true), "\"0\"");
        assert_eq!(decimal(42, true), "\"42\"");
        assert_eq!(decimal(u64::MAX, true), "\"18446744073709551615\"");
        assert_eq!(decimal(60, false), "60");
        assert_eq!(decimal(u64::MAX, false), "18446744073709551615");
    }

    #[test]
    fn etags_stay_intact_across_shared_buffers() {
        // Enough values to fill several buffers, all alive at once.
        let n = 3 * ETAG_BUFFER / 4;
        let values: Vec<_> = (0..n as u64).map(|v| (v, etag(v * 7919))).collect();
        for (v, value) in values {
            assert_eq!(value, format!("\"{}\"", v * 7919).as_str());
        }
        assert_eq!(etag(u64::MAX), "\"18446744073709551615\"");
    }
}

//! Push: tells watchers "you are stale, poll now" over SSE ([`sse`]),
//! long-poll ([`wait`]) and WebSocket ([`ws`]). A notice is only a hint — the
//! client then polls — so push never costs the upstream anything.
//!
//! The watcher registry and admission control live in [`crate::hub`], which
//! the shared state holds; this module is the handlers and tasks above it:
//!
//! - [`client_js`]: serves the browser client module (`client/pollgate.js`).
//! - [`raw`]: HTTP/1.1 SSE watches taken off hyper, so an idle watcher costs
//!   a few hundred bytes instead of hyper's ~20 KiB of connection buffers.
//!
//! Watching names keys with the version the client holds: `keys=a:3,b:7`.
//! The version is required (keys may contain `:`, so `a:3` would be ambiguous
//! without it); a client that holds nothing sends `a:0`. A key already past
//! the given version is reported at once. Subscribing is O(keys): no upstream
//! request, no snapshot.
//!
//! On shutdown every stream ends itself with a retry hint spread over the
//! grace period (SSE `retry:`, WebSocket close reason `retry_ms=N`, long-poll
//! an early `304` with `Retry-After`), so clients do not return together.

pub mod client_js;
pub mod raw;
pub mod sse;
pub mod wait;
pub mod ws;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use compact_str::CompactString;
use http::{header, HeaderMap, Method, Request, Response};

use crate::auth::{ConnCache, Grant, Refusal};
use crate::body::Body;
use crate::error::Error;
use crate::hub::{Admission, NoticeStats, Registry};
use crate::state::State;

pub use crate::hub::{Ticket, Transport};

/// Owns push's start-up wiring and its runtime; `shutdown` waits for
/// WebSocket sessions to close, then stops the runtime.
pub struct PushHandle {
    state: Arc<State>,
    runtime: Option<tokio::runtime::Runtime>,
}

/// Niceness of the stream threads. A reconnect storm is mostly tens of
/// thousands of cheap tasks (EOF, close, 503, re-subscribe) woken at once;
/// on the same threads they queue ahead of the hit path (measured: hit-path
/// p99 ~160-300 ms during a 19k-watcher storm). On their own lower-priority
/// threads the kernel runs the hit path first; idle, push gets every core.
const STREAM_NICE: i32 = 10;

fn stream_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("pollgate-push")
        .enable_all()
        .on_thread_start(|| {
            // SAFETY: setpriority only reads its integer arguments; on Linux
            // PRIO_PROCESS with who = 0 applies to the calling thread only.
            let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, STREAM_NICE) };
            if r != 0 {
                tracing::debug!("could not lower the push threads' priority");
            }
        })
        .build()
}

/// Starts push's metrics and the
/// stream runtime (without one, streams run on the caller's runtime).
pub fn start(state: &Arc<State>) -> PushHandle {
    let runtime = stream_runtime()
        .inspect_err(
            |e| tracing::warn!(error = %e, "push runtime not started; streams share the main one"),
        )
        .ok();
    if let Some(rt) = &runtime {
        state.hub.set_runtime(rt.handle().clone());
    }
    let (a, s, r) = (
        state.hub.admission.clone(),
        state.hub.stats.clone(),
        state.hub.registry.clone(),
    );
    state
        .metrics
        .register(Box::new(move |o| render_metrics(o, &a, &s, &r)));
    PushHandle {
        state: state.clone(),
        runtime,
    }
}

impl PushHandle {
    /// After the server has drained: streams and sessions saw the shutdown
    /// signal with everyone else; give them the grace period to say goodbye.
    pub async fn shutdown(mut self) {
        let mut set = self.state.hub.take_sessions();
        let grace = self.state.cfg.grace_period;
        let all = async { while set.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!(
                left = set.len(),
                "push streams still open after the grace period"
            );
            set.abort_all();
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for PushHandle {
    /// Dropping a runtime blocks, which panics inside another runtime.
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

fn render_metrics(o: &mut String, a: &Admission, s: &NoticeStats, r: &Registry) {
    use crate::metrics::{counter, family, gauge};
    let open =
        crate::hub::admission::TRANSPORTS.map(|(t, name)| (name, a.open[t as usize].load(Relaxed)));
    #[rustfmt::skip]
    family(o, "gauge", "pollgate_push_connections", "Open push connections by transport.", "transport", open);
    counter(
        o,
        "pollgate_push_admitted_total",
        "Push connections admitted.",
        a.admitted.get(),
    );
    let refused =
        crate::hub::admission::REFUSALS.map(|(why, name)| (name, a.refused[why as usize].get()));
    #[rustfmt::skip]
    family(o, "counter", "pollgate_push_refused_total", "Push connections refused by reason.", "reason", refused);
    let sent = s.notifications.get();
    counter(
        o,
        "pollgate_push_notifications_total",
        "Stale notices sent to clients.",
        sent,
    );
    let reaped = s.ghosts_reaped.get();
    counter(
        o,
        "pollgate_push_ghosts_reaped_total",
        "WebSockets closed for missing pongs.",
        reaped,
    );
    gauge(
        o,
        "pollgate_push_watched_keys",
        "Keys with at least one watcher.",
        r.keys() as i64,
    );
}

/// The push transport a public path names, if any (checked before routes).
pub fn transport(path: &str) -> Option<Transport> {
    match path.strip_prefix("/pollgate/v1/")? {
        "watch" => Some(Transport::Sse),
        "wait" => Some(Transport::Wait),
        "ws" => Some(Transport::Ws),
        _ => None,
    }
}

/// Public entry for `/pollgate/v1/{watch,wait,ws}`; `conn` remembers the
/// connection's verified token.
pub async fn handle(
    state: &Arc<State>,
    conn: &ConnCache,
    req: Request<Body>,
    t: Transport,
) -> Response<Body> {
    let origin = req.headers().get(header::ORIGIN).cloned();
    let resp = serve(state, conn, req, t)
        .await
        .unwrap_or_else(Error::into_response);
    crate::cors::apply(state.public.load().cors.as_ref(), origin, resp)
}

/// Validates and authorizes first (a refused request spends no admission
/// token), then admits.
async fn serve(
    state: &Arc<State>,
    conn: &ConnCache,
    req: Request<Body>,
    t: Transport,
) -> Result<Response<Body>, Error> {
    if !state.cfg.push {
        return Err(Error::NotFound);
    }
    if req.method() != Method::GET {
        return Err(Error::MethodNotAllowed);
    }
    let query = req.uri().query().unwrap_or("");
    let grant = |keys: &[Watch]| authorize(state, conn, req.headers(), query, keys, true);
    match t {
        Transport::Sse => {
            let keys = parse_keys(query, state.cfg.max_keys_per_watch)?;
            let grant = grant(&keys)?;
            let permit = admit(state, t)?;
            Ok(sse::response(state, &keys, grant.as_deref(), permit))
        }
        Transport::Wait => {
            let keys = parse_keys(query, state.cfg.max_keys_per_watch)?;
            let mut timeout = wait::parse_timeout(query, state.cfg.wait_max_timeout)?;
            let grant = grant(&keys)?;
            // A long-poll never outlives its token: it ends (304) when it expires.
            if let Some(g) = &grant {
                timeout = timeout.min(g.remaining());
            }
            let permit = admit(state, t)?;
            Ok(wait::answer(state, &keys, timeout, permit).await)
        }
        Transport::Ws => {
            let accept = ws::check_handshake(&req)?;
            // Keys come later, in watch commands: each is checked then.
            let cookies = same_or_trusted_origin(state, req.headers());
            let grant = authorize(state, conn, req.headers(), query, &[], cookies)?;
            let permit = admit(state, t)?;
            Ok(ws::upgrade(state, req, &accept, grant, permit))
        }
    }
}

/// With auth on: the request's grant (`401` without a valid token), and a
/// `403` naming the first of `keys` it does not cover. `None`: auth is off.
/// `cookies`: whether a token in the cookie counts.
pub(crate) fn authorize(
    state: &State,
    conn: &ConnCache,
    headers: &HeaderMap,
    query: &str,
    keys: &[Watch],
    cookies: bool,
) -> Result<Option<Arc<Grant>>, Error> {
    let Some(auth) = &state.auth else {
        return Ok(None);
    };
    let token = match cookies {
        true => auth.token(headers, Some(query)),
        false => auth.token_not_cookie(headers, Some(query)),
    };
    let grant = conn.grant(auth, token).map_err(|_| Error::Unauthorized)?;
    if let Some(key) = grant.first_uncovered(keys.iter().map(|w| &w.0)) {
        auth.count(Some(Refusal::Forbidden));
        return Err(Error::NotCovered(key.clone()));
    }
    Ok(Some(grant))
}

/// A WebSocket handshake from no page (no `Origin`), a page of pollgate's
/// own origin, or one listed exactly in `cors_origins`: only these may use
/// the user's cookie (cross-site WebSocket hijacking has no CORS to stop it).
fn same_or_trusted_origin(state: &State, headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let host = headers.get(header::HOST).map(|h| h.as_bytes());
    let authority = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .map(|(_, a)| a.as_bytes());
    (host.is_some() && host == authority)
        || state
            .public
            .load()
            .cors
            .as_ref()
            .is_some_and(|c| c.trusts(origin))
}

pub(crate) fn admit(state: &State, t: Transport) -> Result<Ticket, Error> {
    let per_s = state.tunables.push_admission_per_s();
    state.hub.admission.admit(t, per_s)
}

/// A key and the version its client holds.
pub type Watch = (CompactString, u64);

/// Parses `keys=a:3,b:7` from a query string (`%3A`/`%2C` escapes accepted,
/// as `URLSearchParams` writes them). Every problem is a 400 naming the item.
pub fn parse_keys(query: &str, max: usize) -> Result<Vec<Watch>, Error> {
    let raw = crate::route::query_param(query, "keys")
        .ok_or(Error::BadRequest("keys is required, as keys=a:3,b:7"))?;
    let value = percent_decode(raw)?;
    let items: Vec<&str> = value.split(',').collect();
    if items.len() > max {
        return Err(Error::BadRequestOwned(format!(
            "too many keys: at most {max} per watch"
        )));
    }
    items.into_iter().map(parse_item).collect()
}

/// `key:version`; the version is after the last `:` (keys may contain `:`).
fn parse_item(item: &str) -> Result<Watch, Error> {
    let bad = |why: &str| Error::BadRequestOwned(format!("{:?}: {why}", clip(item)));
    let (key, version) = item
        .rsplit_once(':')
        .ok_or_else(|| bad("each key needs the version the client holds, as key:version"))?;
    crate::route::check_key(key).map_err(bad)?;
    let version = crate::route::parse_version(version).map_err(bad)?;
    Ok((CompactString::new(key), version))
}

/// At most 64 bytes of client input echoed back in an error.
fn clip(s: &str) -> &str {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn percent_decode(s: &str) -> Result<String, Error> {
    const BAD: Error = Error::BadRequest("keys: malformed percent-escape");
    if !s.contains('%') {
        return Ok(s.to_string());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'%' {
            out.push(b[i]);
            i += 1;
            continue;
        }
        // from_str_radix alone would take a sign: `%+f` is not an escape.
        let hex = b
            .get(i + 1..i + 3)
            .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
            .ok_or(BAD)?;
        let hex = std::str::from_utf8(hex).map_err(|_| BAD)?;
        out.push(u8::from_str_radix(hex, 16).map_err(|_| BAD)?);
        i += 3;
    }
    String::from_utf8(out).map_err(|_| BAD)
}

/// A retry hint in `[lo, hi)` milliseconds, so clients do not return together.
pub(crate) fn spread_ms(lo: Duration, hi: Duration) -> u64 {
    let lo = lo.as_millis() as u64;
    let hi = (hi.as_millis() as u64).max(lo + 1);
    fastrand::u64(lo..hi)
}

/// The retry hint sent as a stream closes on shutdown: spread over the grace
/// period (from a tenth of it), so reconnects land over that window, not at once.
pub(crate) fn shutdown_retry_ms(grace: Duration) -> u64 {
    spread_ms(grace / 10, grace.max(Duration::from_millis(100)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(q: &str) -> Result<Vec<(String, u64)>, String> {
        parse_keys(q, 3)
            .map(|v| v.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn keys_with_versions_and_escapes() {
        let want = vec![("a".to_string(), 3), ("b:x".to_string(), 7)];
        assert_eq!(keys("keys=a:3,b:x:7").unwrap(), want);
        assert_eq!(keys("_=1&keys=a%3A3%2Cb%3ax%3A7").unwrap(), want);
        let e = keys("keys=a%+f:3").unwrap_err();
        assert!(e.contains("malformed percent-escape"), "{e}");
    }

    #[test]
    fn bad_watches_name_the_problem() {
        assert!(keys("").unwrap_err().contains("keys is required"));
        assert!(keys("keys=a")
            .unwrap_err()
            .contains("\"a\": each key needs"));
        assert!(keys("keys=a:x").unwrap_err().contains("version must be"));
        assert!(keys("keys=a/b:1").unwrap_err().contains("key must be"));
        assert!(keys("keys=a:1,,b:2").unwrap_err().contains("\"\""));
        assert!(keys("keys=a:1,b:1,c:1,d:1")
            .unwrap_err()
            .contains("at most 3"));
        assert!(keys("keys=a%3").unwrap_err().contains("percent"));
        assert!(keys("keys=a:99999999999999999999")
            .unwrap_err()
            .contains("version"));
    }

    #[test]
    fn only_push_paths_are_push() {
        assert_eq!(transport("/pollgate/v1/watch"), Some(Transport::Sse));
        assert_eq!(transport("/pollgate/v1/ws"), Some(Transport::Ws));
        assert_eq!(transport("/pollgate/v1/wait"), Some(Transport::Wait));
        assert_eq!(transport("/pollgate/v1/waitx"), None);
        assert_eq!(transport("/projects/a/changes"), None);
    }

    #[test]
    fn shutdown_hints_spread_over_the_grace_period() {
        let grace = Duration::from_secs(10);
        let hints: Vec<u64> = (0..1000).map(|_| shutdown_retry_ms(grace)).collect();
        assert!(hints.iter().all(|&h| (1000..10_000).contains(&h)));
        let (lo, hi) = (hints.iter().min().unwrap(), hints.iter().max().unwrap());
        assert!(hi - lo > 5000, "spread out: {lo}..{hi}");
    }
}

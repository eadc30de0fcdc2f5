//! `GET /pollgate/v1/watch?keys=a:3,b:7`: Server-Sent Events. Opens with a
//! jittered `retry:`, then `event: stale` / `data: {"key":"a","version":5}`
//! per notice, a `: hb` comment every heartbeat, and on shutdown a last
//! `retry:` spread over the grace period before the stream ends. With auth
//! on, a stream ends with `event: expired` when its token does.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response};
use http_body::Frame;
use http_body_util::StreamBody;
use tokio::sync::watch;
use tokio::time::Instant;

use super::Watch;
use crate::auth::Grant;
use crate::body::Body;
use crate::hub::{Subscription, Ticket};
use crate::shutdown::stopping;
use crate::state::State;

/// The first `retry:` a client gets: where it reconnects after a network
/// blip, spread so a dropped load balancer's clients do not return at once.
const RETRY_LO: Duration = Duration::from_secs(1);
const RETRY_HI: Duration = Duration::from_secs(5);

/// Response headers, shared with the hyper-less path in [`super::raw`].
pub const HEADERS: [(&str, &str); 3] = [
    ("content-type", "text/event-stream"),
    ("cache-control", "no-cache"),
    // nginx and friends buffer responses unless told not to.
    ("x-accel-buffering", "no"),
];

/// Starts a stream for `keys` as a hyper body; `permit` is held until the
/// client goes away, `grant` (auth on) ends the stream when it expires.
pub fn response(
    state: &Arc<State>,
    keys: &[Watch],
    grant: Option<&Grant>,
    permit: Ticket,
) -> Response<Body> {
    let stream = Stream::new(state, keys, grant, permit);
    let frames = futures_util::stream::unfold(stream, |mut s| async move {
        let chunk = s.next_chunk().await?;
        Some((Ok::<_, Infallible>(Frame::data(chunk)), s))
    });
    let mut resp = Response::new(Body::boxed(StreamBody::new(frames)));
    let h = resp.headers_mut();
    for (name, value) in HEADERS {
        h.insert(name, HeaderValue::from_static(value));
    }
    resp
}

/// The last event of a stream whose token ran out: the client fetches a
/// fresh token and reconnects.
const EXPIRED: &str = "event: expired\ndata: {\"reason\":\"token expired\"}\n\n";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Start,
    Open,
    Done,
}

/// One SSE connection: everything it holds is bounded by the keys it watches.
pub struct Stream {
    state: Arc<State>,
    sub: Subscription,
    stop: watch::Receiver<bool>,
    next_heartbeat: Instant,
    /// When the token runs out: the stream says `event: expired` and ends.
    expires: Option<Instant>,
    phase: Phase,
    _permit: Ticket,
}

impl Stream {
    /// Subscribes to `keys`; a key already past its version is pending at once.
    pub fn new(
        state: &Arc<State>,
        keys: &[Watch],
        grant: Option<&Grant>,
        permit: Ticket,
    ) -> Stream {
        let mut sub = state.hub.registry.subscribe();
        for (k, v) in keys {
            sub.watch(&state.table, k, *v);
        }
        Stream {
            state: state.clone(),
            sub,
            stop: state.shutdown.subscribe(),
            next_heartbeat: Instant::now() + state.tunables.heartbeat_interval(),
            expires: grant.map(|g| Instant::now() + g.remaining()),
            phase: Phase::Start,
            _permit: permit,
        }
    }

    /// The next chunk to write, or `None` once the stream has said goodbye.
    /// Cancel-safe: pending notices stay in the watcher until drained.
    pub async fn next_chunk(&mut self) -> Option<Bytes> {
        let chunk = match self.phase {
            Phase::Start => {
                self.phase = Phase::Open;
                format!("retry: {}\n\n", super::spread_ms(RETRY_LO, RETRY_HI))
            }
            Phase::Open => self.wait().await,
            Phase::Done => return None,
        };
        Some(Bytes::from(chunk))
    }

    /// Waits for notices, the heartbeat, the token's expiry or shutdown,
    /// whichever comes first.
    async fn wait(&mut self) -> String {
        let expires = self.expires;
        let expiry = async move {
            match expires {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(expiry);
        loop {
            tokio::select! {
                biased;
                _ = stopping(&mut self.stop) => {
                    self.phase = Phase::Done;
                    let ms = super::shutdown_retry_ms(self.state.cfg.grace_period);
                    return format!("retry: {ms}\n: server shutting down, reconnect later\n\n");
                }
                _ = &mut expiry => {
                    // `data` is required: EventSource drops an event without it.
                    self.phase = Phase::Done;
                    return EXPIRED.to_string();
                }
                _ = self.sub.changed() => {
                    let events = self.events();
                    if !events.is_empty() {
                        return events;
                    }
                }
                _ = tokio::time::sleep_until(self.next_heartbeat) => {
                    self.next_heartbeat = Instant::now() + self.state.tunables.heartbeat_interval();
                    return ": hb\n\n".to_string();
                }
            }
        }
    }

    /// Every pending notice as `event: stale` lines, in one chunk.
    fn events(&self) -> String {
        let mut out = String::new();
        let n = self.sub.drain(|key, version| {
            // Keys are [A-Za-z0-9._:-]: nothing to escape in JSON.
            let _ = write!(
                out,
                "event: stale\ndata: {{\"key\":\"{key}\",\"version\":{version}}}\n\n"
            );
        });
        self.state.hub.stats.notifications.add(n as u64);
        out
    }
}

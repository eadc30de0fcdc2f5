//! `GET /pollgate/v1/watch?keys=a:3,b:7`: Server-Sent Events. Opens with a
//! jittered `retry:`, then `event: stale` / `data: {"key":"a","version":5}`
//! per notice, a `: hb` comment every heartbeat, and on shutdown a last
//! `retry:` spread over the grace period before the stream ends.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response};
use http_body::Frame;
use http_body_util::StreamBody;
use tokio::sync::watch;
use tokio::time::Instant;

use super::{Permit, Subscription, Watch};
use crate::body::Body;
use crate::server::stopping;
use crate::state::State;

/// The first `retry:` a client gets: where it reconnects after a network
/// blip, spread so a dropped load balancer's clients do not return at once.
const RETRY_LO: Duration = Duration::from_secs(1);
const RETRY_HI: Duration = Duration::from_secs(5);

/// Starts a stream for `keys`; `permit` is held until the client goes away.
pub fn response(state: &Arc<State>, keys: &[Watch], permit: Permit) -> Response<Body> {
    let mut sub = state.push.registry.subscribe();
    for (k, v) in keys {
        sub.watch(&state.table, k, *v);
    }
    let stream = Stream {
        state: state.clone(),
        sub,
        stop: state.shutdown.subscribe(),
        next_heartbeat: Instant::now() + state.tunables.heartbeat_interval(),
        phase: Phase::Start,
        _permit: permit,
    };
    let frames = futures_util::stream::unfold(stream, Stream::next);
    let mut resp = Response::new(Body::boxed(StreamBody::new(frames)));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // nginx and friends buffer responses unless told not to.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Start,
    Open,
    Done,
}

/// One SSE connection: everything it holds is bounded by the keys it watches.
struct Stream {
    state: Arc<State>,
    sub: Subscription,
    stop: watch::Receiver<bool>,
    next_heartbeat: Instant,
    phase: Phase,
    _permit: Permit,
}

type Item = Result<Frame<Bytes>, Infallible>;

impl Stream {
    /// The next chunk to write, or `None` once the stream has said goodbye.
    async fn next(mut self) -> Option<(Item, Self)> {
        let chunk = match self.phase {
            Phase::Start => {
                self.phase = Phase::Open;
                format!("retry: {}\n\n", super::spread_ms(RETRY_LO, RETRY_HI))
            }
            Phase::Open => self.wait().await,
            Phase::Done => return None,
        };
        Some((Ok(Frame::data(Bytes::from(chunk))), self))
    }

    /// Waits for notices, the heartbeat or shutdown, whichever comes first.
    async fn wait(&mut self) -> String {
        loop {
            tokio::select! {
                biased;
                _ = stopping(&mut self.stop) => {
                    self.phase = Phase::Done;
                    let ms = super::shutdown_retry_ms(self.state.cfg.grace_period);
                    return format!("retry: {ms}\n: server shutting down, reconnect later\n\n");
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
        self.state.push.stats.notifications.add(n as u64);
        out
    }
}

//! `GET /pollgate/v1/ws`: WebSocket. The client sends
//! `{"op":"watch","keys":{"a":3}}` and `{"op":"unwatch","keys":["a"]}`; the
//! server sends `{"op":"stale","key":"a","version":5}` and pings every
//! heartbeat. No frame from the client within `ghost_timeout` (a pong
//! answers each ping) → closed and counted as a ghost. Anything malformed →
//! a close frame with a reason (1003 binary, 1007 bad UTF-8, 1008 bad
//! command, 1009 too big), never a panic. On shutdown: close 1012 with
//! reason `retry_ms=N`, N spread over the grace period.
//!
//! With auth on, the token is checked at the handshake (`401` without one);
//! a watch of a key it does not cover gets `{"op":"error","key":..,
//! "error":"forbidden"}` and the session goes on; when the token expires
//! the session is closed with 4001.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use crate::auth::Grant;
use crate::body::Body;
use crate::error::Error;
use crate::hub::{Subscription, Ticket};
use crate::shutdown::stopping;
use crate::state::State;

/// Largest client message: a watch of 100 max-length keys is ~14 KiB.
const MAX_MESSAGE: usize = 64 << 10;
/// tungstenite's default read buffer is 128 KiB; commands are tiny and a
/// replica holds many sockets, so start small (it grows when needed).
const READ_BUFFER: usize = 4 << 10;
/// How long a closing handshake may take before the socket is dropped.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Checks the upgrade request; returns the `Sec-WebSocket-Accept` value.
pub fn check_handshake(req: &Request<Body>) -> Result<String, Error> {
    let h = req.headers();
    let has = |name: header::HeaderName, token: &str| {
        h.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if !has(header::UPGRADE, "websocket") || !has(header::CONNECTION, "upgrade") {
        return Err(Error::BadRequest(
            "a WebSocket upgrade needs Upgrade: websocket and Connection: Upgrade",
        ));
    }
    if h.get(header::SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()) != Some(b"13") {
        return Err(Error::BadRequest("Sec-WebSocket-Version must be 13"));
    }
    let key = h
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or(Error::BadRequest("Sec-WebSocket-Key is required"))?;
    Ok(derive_accept_key(key.as_bytes()))
}

/// Answers `101` and starts the session once hyper hands over the socket.
pub fn upgrade(
    state: &Arc<State>,
    req: Request<Body>,
    accept: &str,
    grant: Option<Arc<Grant>>,
    permit: Ticket,
) -> Response<Body> {
    let upgrading = hyper::upgrade::on(req);
    let st = state.clone();
    state.hub.spawn_stream(async move {
        match upgrading.await {
            Ok(io) => session(st, io, grant, permit).await,
            Err(e) => tracing::debug!(error = %e, "WebSocket upgrade failed"),
        }
    });
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Ok(v) = HeaderValue::from_str(accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    resp
}

type Ws = WebSocketStream<TokioIo<Upgraded>>;

async fn session(state: Arc<State>, io: Upgraded, grant: Option<Arc<Grant>>, _permit: Ticket) {
    let cfg = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE));
    let ws = WebSocketStream::from_raw_socket(TokioIo::new(io), Role::Server, Some(cfg)).await;
    let now = Instant::now();
    let mut s = Session {
        sub: state.hub.registry.subscribe(),
        stop: state.shutdown.subscribe(),
        next_ping: now + state.tunables.heartbeat_interval(),
        last_seen: now,
        expires: grant.as_ref().map(|g| now + g.remaining()),
        grant,
        refused: Vec::new(),
        state,
        ws,
    };
    let end = s.run().await;
    s.finish(end).await;
}

/// Why a session ends, and so how it says goodbye.
#[derive(Debug)]
enum End {
    /// The client closed or the socket failed: nothing left to say.
    Gone,
    /// No frame from the client within `ghost_timeout`.
    Ghost,
    /// The server is shutting down.
    Shutdown,
    /// The token ran out: close 4001, the client reconnects with a fresh one.
    Expired,
    /// The client broke the protocol: close with this code and reason.
    Refuse(CloseCode, String),
}

struct Session {
    state: Arc<State>,
    ws: Ws,
    sub: Subscription,
    stop: watch::Receiver<bool>,
    next_ping: Instant,
    /// Last frame of any kind from the client (pongs included).
    last_seen: Instant,
    /// Auth on: what the token covers; watches of other keys are refused.
    grant: Option<Arc<Grant>>,
    /// When the token runs out (auth on).
    expires: Option<Instant>,
    /// Error messages for refused watches, sent before anything else.
    refused: Vec<String>,
}

impl Session {
    async fn run(&mut self) -> End {
        loop {
            if !self.refused.is_empty() {
                let r = send_refusals(&mut self.ws, &mut self.refused, &self.state).await;
                if let Err(end) = r {
                    return end;
                }
            }
            let ghost_at = self.last_seen + self.state.tunables.ghost_timeout();
            let wake = self.next_ping.min(ghost_at);
            let expires = self.expires;
            let expiry = async move {
                match expires {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let step = tokio::select! {
                biased;
                _ = stopping(&mut self.stop) => Err(End::Shutdown),
                _ = expiry => Err(End::Expired),
                msg = self.ws.next() => self.on_message(msg),
                _ = self.sub.changed() => self.send_notices().await,
                _ = tokio::time::sleep_until(wake) => self.on_timer(ghost_at).await,
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    fn on_message(&mut self, msg: Option<Result<Message, WsError>>) -> Result<(), End> {
        self.last_seen = Instant::now();
        match msg {
            None => Err(End::Gone),
            Some(Ok(Message::Text(t))) => self.on_command(t.as_str()),
            Some(Ok(Message::Binary(_))) => Err(refuse(
                CloseCode::Unsupported,
                "binary frames are not supported; send JSON text",
            )),
            Some(Ok(Message::Close(_))) => Err(End::Gone),
            // Pings are answered by tungstenite; pongs only prove liveness.
            Some(Ok(_)) => Ok(()),
            Some(Err(e)) => Err(read_error(e)),
        }
    }

    fn on_command(&mut self, text: &str) -> Result<(), End> {
        let cmd: Command = serde_json::from_str(text)
            .map_err(|e| refuse(CloseCode::Policy, &format!("bad command: {e}")))?;
        match cmd {
            Command::Watch { keys } => self.watch(keys),
            Command::Unwatch { keys } => {
                keys.iter().for_each(|k| self.sub.unwatch(k));
                Ok(())
            }
        }
    }

    /// Validates the whole command before applying any of it.
    fn watch(&mut self, keys: BTreeMap<String, u64>) -> Result<(), End> {
        for k in keys.keys() {
            crate::route::check_key(k).map_err(|why| {
                refuse(CloseCode::Policy, &format!("{:?}: {why}", super::clip(k)))
            })?;
        }
        let max = self.state.cfg.max_keys_per_watch;
        let added = keys.keys().filter(|k| !self.sub.watching(k)).count();
        if self.sub.len() + added > max {
            let why = format!("too many keys: at most {max} per connection");
            return Err(refuse(CloseCode::Policy, &why));
        }
        for (k, v) in keys {
            match &self.grant {
                Some(g) if !g.covers(&k) => self.refuse_key(&k),
                _ => self.sub.watch(&self.state.table, &k, v),
            }
        }
        Ok(())
    }

    /// A key the token does not cover: an error message, and the session
    /// goes on for the keys it may watch.
    fn refuse_key(&mut self, key: &str) {
        if let Some(auth) = &self.state.auth {
            auth.count(Some(crate::auth::Refusal::Forbidden));
        }
        // Keys passed check_key: [A-Za-z0-9._:-], nothing to escape.
        self.refused.push(format!(
            "{{\"op\":\"error\",\"key\":\"{key}\",\"error\":\"forbidden\",\"message\":\"token does not cover key\"}}"
        ));
    }

    /// Writes every pending notice. A client too slow to take them within
    /// `ghost_timeout` is treated as a ghost.
    async fn send_notices(&mut self) -> Result<(), End> {
        let mut msgs = Vec::new();
        self.sub.drain(|key, version| {
            msgs.push(format!(
                "{{\"op\":\"stale\",\"key\":\"{key}\",\"version\":{version}}}"
            ))
        });
        if msgs.is_empty() {
            return Ok(());
        }
        let n = msgs.len() as u64;
        let ws = &mut self.ws;
        let send = async {
            for m in msgs {
                ws.feed(Message::text(m)).await?;
            }
            ws.flush().await
        };
        bounded(self.state.tunables.ghost_timeout(), send).await?;
        self.state.hub.stats.notifications.add(n);
        Ok(())
    }

    /// Reaps the ghost, or sends the next ping.
    async fn on_timer(&mut self, ghost_at: Instant) -> Result<(), End> {
        let now = Instant::now();
        if now >= ghost_at {
            return Err(End::Ghost);
        }
        if now >= self.next_ping {
            self.next_ping = now + self.state.tunables.heartbeat_interval();
            let ping = self.ws.send(Message::Ping(Default::default()));
            bounded(self.state.tunables.ghost_timeout(), ping).await?;
        }
        Ok(())
    }

    async fn finish(mut self, end: End) {
        let (code, reason) = match end {
            End::Gone => return,
            End::Ghost => {
                self.state.hub.stats.ghosts_reaped.inc();
                tracing::debug!("WebSocket ghost reaped: no pong in time");
                (CloseCode::Away, "ping timeout".to_string())
            }
            End::Shutdown => {
                let ms = super::shutdown_retry_ms(self.state.cfg.grace_period);
                (CloseCode::Restart, format!("retry_ms={ms}"))
            }
            End::Expired => (CloseCode::from(TOKEN_EXPIRED), "token expired".to_string()),
            End::Refuse(code, reason) => (code, reason),
        };
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        // Send our close, then let the client answer it (bounded either way).
        let ws = &mut self.ws;
        let _ = tokio::time::timeout(CLOSE_WAIT, async {
            if ws.close(Some(frame)).await.is_ok() {
                while let Some(Ok(_)) = ws.next().await {}
            }
        })
        .await;
    }
}

/// Client commands. Unknown ops and fields are refused, not ignored, so a
/// client bug shows up at once instead of as a silent missing notice.
#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
enum Command {
    Watch { keys: BTreeMap<String, u64> },
    Unwatch { keys: Vec<String> },
}

/// Parses and checks one client command as the connection would (its JSON
/// shape and every key), without a connection: for the fuzz targets.
pub fn check_command(text: &str) -> Result<usize, String> {
    let cmd: Command = serde_json::from_str(text).map_err(|e| e.to_string())?;
    match cmd {
        Command::Watch { keys } => {
            for k in keys.keys() {
                crate::route::check_key(k).map_err(|why| why.to_string())?;
            }
            Ok(keys.len())
        }
        Command::Unwatch { keys } => Ok(keys.len()),
    }
}

/// Close code for "your token expired": the client refreshes and reconnects.
const TOKEN_EXPIRED: u16 = 4001;

/// Sends the queued refusals (bounded like every write).
async fn send_refusals(ws: &mut Ws, refused: &mut Vec<String>, state: &State) -> Result<(), End> {
    let msgs = std::mem::take(refused);
    let send = async {
        for m in msgs {
            ws.feed(Message::text(m)).await?;
        }
        ws.flush().await
    };
    bounded(state.tunables.ghost_timeout(), send).await
}

/// A write that may take at most `limit` (`ghost_timeout`): a client that
/// stops reading fills its socket buffer and would otherwise block us forever.
async fn bounded(
    limit: Duration,
    write: impl std::future::Future<Output = Result<(), WsError>>,
) -> Result<(), End> {
    match tokio::time::timeout(limit, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(End::Gone),
        Err(_) => Err(End::Ghost),
    }
}

/// A close reason must fit a control frame: at most 123 bytes.
fn refuse(code: CloseCode, why: &str) -> End {
    let mut end = why.len().min(123);
    while !why.is_char_boundary(end) {
        end -= 1;
    }
    End::Refuse(code, why[..end].to_string())
}

fn read_error(e: WsError) -> End {
    use tokio_tungstenite::tungstenite::error::CapacityError;
    match e {
        WsError::Capacity(CapacityError::MessageTooLong { .. }) => {
            refuse(CloseCode::Size, "message too big: at most 64 KiB")
        }
        WsError::Capacity(_) => refuse(CloseCode::Size, "frame too big"),
        WsError::Utf8 => refuse(CloseCode::Invalid, "text frame is not valid UTF-8"),
        WsError::Protocol(p) => refuse(CloseCode::Protocol, &p.to_string()),
        _ => End::Gone,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_and_bad_ones_say_why() {
        let ok: Command = serde_json::from_str(r#"{"op":"watch","keys":{"a":3}}"#).unwrap();
        assert!(matches!(ok, Command::Watch { keys } if keys["a"] == 3));
        let ok: Command = serde_json::from_str(r#"{"op":"unwatch","keys":["a"]}"#).unwrap();
        assert!(matches!(ok, Command::Unwatch { keys } if keys == ["a"]));
        for bad in [
            r#"{"op":"dance"}"#,
            r#"{"keys":{"a":1}}"#,
            r#"{"op":"watch","keys":{"a":-1}}"#,
            r#"{"op":"watch","keys":{"a":1},"extra":1}"#,
            "not json",
        ] {
            assert!(serde_json::from_str::<Command>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn close_reasons_fit_a_control_frame() {
        let long = "é".repeat(200);
        match refuse(CloseCode::Policy, &long) {
            End::Refuse(_, r) => assert!(r.len() <= 123 && r.starts_with('é')),
            _ => unreachable!(),
        }
    }
}

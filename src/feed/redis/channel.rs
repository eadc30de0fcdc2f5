//! PUB/SUB: one connection subscribed to every `redis_channel`; each message
//! is a whole publish body. Lossy by nature: what is published while the
//! connection is down is gone, so only `max_age` bounds staleness then.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};
use tokio::sync::watch;

use super::backoff::Backoff;
use super::stats::{Source, Stats};
use super::Target;
use crate::state::State;

/// Connecting (TCP, TLS, AUTH, SUBSCRIBE) longer than this is a failure.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A half-open connection (Redis host gone without a FIN) delivers nothing
/// and reports nothing: a PING this often finds it.
const PING_EVERY: Duration = Duration::from_secs(15);

pub struct Reader {
    pub state: Arc<State>,
    pub target: Target,
    pub channels: Vec<String>,
    pub stats: Arc<Stats>,
}

impl Reader {
    /// Subscribes, applies messages until the connection drops, then waits a
    /// backoff step and starts over (at once when a reload changed
    /// `redis_url`); returns when `stop` turns true.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut backoff = Backoff::new();
        while !*stop.borrow() {
            let mut new_url = false;
            match tokio::time::timeout(CONNECT_TIMEOUT, self.connect()).await {
                Ok(Ok((sink, stream))) => {
                    backoff.reset();
                    self.stats.set_connected(Source::Channel, true);
                    tracing::info!(channels = ?self.channels, "Redis channels subscribed");
                    new_url = self.serve(sink, stream, &mut stop).await;
                    self.stats.set_connected(Source::Channel, false);
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "Redis subscribe failed; retrying"),
                Err(_) => tracing::warn!("Redis subscribe timed out; retrying"),
            }
            if new_url {
                continue;
            }
            let wait = backoff.next_delay();
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => {}
            }
        }
    }

    async fn connect(&mut self) -> Result<(PubSubSink, PubSubStream), String> {
        let client = self.target.client()?;
        let pubsub = client.get_async_pubsub().await;
        let (mut sink, stream) = pubsub.map_err(|e| e.to_string())?.split();
        sink.subscribe(&self.channels)
            .await
            .map_err(|e| e.to_string())?;
        Ok((sink, stream))
    }

    /// Until the connection ends, a ping fails, `stop` turns true or a
    /// reload changes `redis_url` (then `true`: reconnect at once).
    async fn serve(
        &self,
        mut sink: PubSubSink,
        mut stream: PubSubStream,
        stop: &mut watch::Receiver<bool>,
    ) -> bool {
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        let mut target = self.target.clone();
        loop {
            tokio::select! {
                msg = stream.next() => match msg {
                    Some(m) => self.apply(m.get_channel_name(), m.get_payload_bytes()),
                    None => break tracing::warn!("Redis channel connection lost; reconnecting"),
                },
                _ = ping.tick() => {
                    let alive = tokio::time::timeout(CONNECT_TIMEOUT, sink.ping::<redis::Value>()).await;
                    if !matches!(alive, Ok(Ok(_))) {
                        break tracing::warn!("Redis channel connection stopped answering; reconnecting");
                    }
                }
                _ = target.changed() => {
                    tracing::info!("redis_url changed: Redis channels reconnect with it");
                    return true;
                }
                _ = stop.changed() => break,
            }
        }
        false
    }

    fn apply(&self, channel: &str, body: &[u8]) {
        match super::apply_body(&self.state, body) {
            Ok(_) => self.stats.count_applied(Source::Channel, 1),
            Err(e) => self.stats.bad(Source::Channel, channel, "", &e),
        }
    }
}

//! Gossip between replicas: the tasks that send deltas ([`deltas`]), pull
//! anti-entropy ([`pull`]) and track peers ([`membership`]), and the HTTP
//! endpoints ([`api`]). They work on the shared core in `cluster`.

pub mod api;
mod deltas;
mod membership;
mod pull;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cluster::auth::{self, Reject};
use crate::cluster::codec::{self, Message, Reply, Request};
use crate::cluster::transport::{self, Link};
use crate::cluster::{current_config, Cluster};
use crate::state::State;

/// Owns every gossip task; `shutdown` stops and awaits them.
pub struct GossipHandle {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl GossipHandle {
    /// Starts gossip for `state` over `link`. Without peers it starts
    /// nothing (a lone replica) but still registers its metrics.
    pub fn start<T: Link>(state: Arc<State>, link: Arc<T>) -> GossipHandle {
        let weak = Arc::downgrade(&state);
        state.metrics.register(Box::new(move |o| {
            if let Some(s) = weak.upgrade() {
                s.cluster.render(o);
            }
        }));
        let (stop, _) = watch::channel(false);
        let mut tasks = Vec::new();
        if state.cluster.enabled {
            let ctx = Ctx {
                state,
                link,
                stop: stop.subscribe(),
            };
            tasks.push(tokio::spawn(membership::run(ctx.clone())));
            tasks.push(tokio::spawn(deltas::flush_loop(ctx)));
        }
        GossipHandle { stop, tasks }
    }

    pub async fn shutdown(self) {
        self.stop.send_replace(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// What every gossip task needs.
struct Ctx<T> {
    state: Arc<State>,
    link: Arc<T>,
    stop: watch::Receiver<bool>,
}

impl<T> Clone for Ctx<T> {
    fn clone(&self) -> Self {
        Ctx {
            state: self.state.clone(),
            link: self.link.clone(),
            stop: self.stop.clone(),
        }
    }
}

impl<T: Link> Ctx<T> {
    fn cluster(&self) -> &Cluster {
        &self.state.cluster
    }

    /// Sleeps `d`; false when shutdown started meanwhile.
    async fn sleep(&mut self, d: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => !*self.stop.borrow(),
            _ = crate::shutdown::stopping(&mut self.stop) => false,
        }
    }

    /// Seals, sends and opens the reply of one exchange.
    async fn exchange(&self, peer: &str, msg: &Message) -> Result<Reply, transport::SendError> {
        use transport::Path;
        let path = match msg.body {
            Request::Deltas(_) => Path::Deltas,
            Request::Pull { .. } => Path::Pull,
        };
        let c = self.cluster();
        let (frame, mac) = c.auth.seal(peer, &codec::encode_message(msg));
        c.metrics.bytes_sent.add(frame.len() as u64);
        let reply = self.link.send(peer, path, frame).await?;
        self.open(reply, &mac)
    }

    /// Verifies and decodes the reply to the request whose MAC is `mac`.
    fn open(&self, reply: Bytes, mac: &[u8; auth::MAC_LEN]) -> Result<Reply, transport::SendError> {
        use transport::SendError;
        let c = self.cluster();
        c.metrics.bytes_received.add(reply.len() as u64);
        let body = c.auth.open_reply(reply, mac).map_err(|r| {
            c.reject(r);
            SendError::Refused(format!("reply: {r}"))
        })?;
        codec::decode_reply(&body).map_err(|e| {
            c.reject(Reject::Malformed);
            SendError::Refused(format!("reply: {e}"))
        })
    }

    fn message(&self, body: Request) -> Message {
        Message {
            from: self.cluster().node_id.clone(),
            config: current_config(&self.state.tunables),
            body,
        }
    }
}

//! Gossip between replicas: the tasks that send deltas ([`deltas`]), pull
//! anti-entropy ([`pull`]) and track peers ([`membership`]), and the HTTP
//! endpoints ([`api`]). They work on the shared core in `cluster`.

pub mod api;
mod deltas;
mod membership;
mod pull;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cluster::auth::{self, Reject};
use crate::cluster::codec::{self, Identity, Message, Reply, Request};
use crate::cluster::peer::Peer;
use crate::cluster::transport::{Link, Path, SendError};
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

/// Addresses `peer`'s requests to `id` from now on.
fn remember(peer: &Peer, id: &Identity) {
    peer.clash.store(false, Ordering::Relaxed);
    let was = peer.set_recipient(id.node_id.clone());
    let (addr, now) = (&peer.addr, &id.node_id);
    match was.is_empty() {
        true => tracing::debug!(peer = %addr, node_id = %now, "peer identified"),
        false => {
            tracing::info!(peer = %addr, %was, %now, "another replica answers at this peer address now")
        }
    }
}

/// Another process answers at `peer` with our `node_id`: it would accept
/// frames sealed for us, so it is never gossiped with, and said loudly
/// (once per clash). The address stays probed, unaddressed, to see a rename.
fn clash(peer: &Peer, node_id: &str) -> SendError {
    peer.set_recipient(String::new());
    if !peer.clash.swap(true, Ordering::Relaxed) {
        tracing::error!(peer = %peer.addr, node_id, "another replica answers with this replica's node_id: it could accept frames meant for us; give every replica its own node_id. Not gossiping with it");
    }
    SendError::Refused(format!("node_id clash: it is named {node_id} too"))
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

    /// One exchange with the replica at `peer`: the encoded message `body`
    /// sealed for its `node_id`, the reply opened. While that is unknown, or
    /// when another replica answers there now, the reply is its `Identity`:
    /// learnt, and the body sent again, addressed (once). `Ok(Identity)`
    /// means the address is this replica (`peer.is_self` is set).
    async fn exchange(&self, peer: &Peer, path: Path, body: &Bytes) -> Result<Reply, SendError> {
        for _ in 0..2 {
            match self.send(peer, path, body).await? {
                Reply::Identity(id) => {
                    if !self.learn(peer, &id)? {
                        return Ok(Reply::Identity(id));
                    }
                }
                reply => return Ok(reply),
            }
        }
        Err(SendError::Refused(
            "answered as another replica twice in a row (a load balancer between replicas?)".into(),
        ))
    }

    async fn send(&self, peer: &Peer, path: Path, body: &Bytes) -> Result<Reply, SendError> {
        let c = self.cluster();
        let (frame, mac) = c.auth.seal(&peer.recipient(), body);
        c.metrics.bytes_sent.add(frame.len() as u64);
        let reply = self.link.send(&peer.addr, path, frame).await?;
        self.open(reply, &mac)
    }

    /// Takes in who answers at `peer`: true when it is another replica (now
    /// addressed), false when it is this one; a clash is an error.
    fn learn(&self, peer: &Peer, id: &Identity) -> Result<bool, SendError> {
        let c = self.cluster();
        match (id.node_id == c.node_id, id.instance == c.instance) {
            (false, _) => {
                remember(peer, id);
                Ok(true)
            }
            (true, true) => {
                peer.is_self.store(true, Ordering::Relaxed);
                Ok(false)
            }
            (true, false) => Err(clash(peer, &c.node_id)),
        }
    }

    /// Verifies and decodes the reply to the request whose MAC is `mac`.
    fn open(&self, reply: Bytes, mac: &[u8; auth::MAC_LEN]) -> Result<Reply, SendError> {
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

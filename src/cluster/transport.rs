//! How sealed gossip frames reach a peer. The engine only sees [`Link`]:
//! [`Http`] posts to the peer's internal listener; [`mem::Network`] delivers
//! in-process with scripted loss, duplication, delay and partitions (tests).

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

/// Which endpoint a frame goes to; the frame itself names the message too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    Deltas,
    Pull,
}

impl Path {
    pub fn as_str(self) -> &'static str {
        match self {
            Path::Deltas => "/v1/cluster/deltas",
            Path::Pull => "/v1/cluster/pull",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No answer: connect failure, timeout, lost message.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The peer answered but refused the frame (wrong key, replay, ...).
    #[error("refused: {0}")]
    Refused(String),
}

/// Sends one sealed frame and returns the sealed reply frame.
pub trait Link: Send + Sync + 'static {
    fn send(
        &self,
        peer: &str,
        path: Path,
        frame: Bytes,
    ) -> impl Future<Output = Result<Bytes, SendError>> + Send;

    /// The addresses a configured peer stands for right now (a DNS name may
    /// stand for several replicas, e.g. a Kubernetes headless service).
    fn resolve(&self, peer: &str) -> impl Future<Output = Vec<String>> + Send;
}

/// Longest wait for one gossip exchange. A 1M-key pull page is a few MiB,
/// well under a second on any LAN; beyond this the peer counts as failing.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Largest reply accepted: a pull page is budgeted far below this.
const MAX_REPLY: usize = 64 << 20;

/// HTTP/1.1 over a pooled hyper client to `http://{peer}/v1/cluster/...`.
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for Http {
    fn default() -> Self {
        let mut conn = HttpConnector::new();
        conn.set_nodelay(true);
        conn.set_connect_timeout(Some(Duration::from_secs(1)));
        Http {
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(conn),
        }
    }
}

impl Http {
    async fn exchange(&self, peer: &str, path: Path, frame: Bytes) -> Result<Bytes, SendError> {
        let req = Request::post(format!("http://{peer}{}", path.as_str()))
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(Full::new(frame))
            .map_err(|e| SendError::Unreachable(e.to_string()))?;
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| SendError::Unreachable(e.to_string()))?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_REPLY)
            .collect()
            .await
            .map_err(|e| SendError::Unreachable(e.to_string()))?
            .to_bytes();
        match status {
            StatusCode::OK => Ok(body),
            s => Err(SendError::Refused(format!(
                "{s}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)]).trim()
            ))),
        }
    }
}

impl Link for Http {
    async fn send(&self, peer: &str, path: Path, frame: Bytes) -> Result<Bytes, SendError> {
        match tokio::time::timeout(TIMEOUT, self.exchange(peer, path, frame)).await {
            Ok(r) => r,
            Err(_) => Err(SendError::Unreachable("timed out".into())),
        }
    }

    async fn resolve(&self, peer: &str) -> Vec<String> {
        match tokio::net::lookup_host(peer).await {
            Ok(addrs) => {
                let mut v: Vec<String> = addrs.map(|a| a.to_string()).collect();
                v.sort();
                v.dedup();
                v
            }
            Err(e) => {
                tracing::warn!(peer, error = %e, "cannot resolve peer");
                Vec::new()
            }
        }
    }
}

pub mod mem {
    //! In-process network for the simulator (chitchat's `ChannelTransport`):
    //! each node registers a handler; faults are scripted per network.

    use std::collections::{HashMap, HashSet};
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;
    use parking_lot::Mutex;

    use super::{Link, Path, SendError};

    /// A node's inbound side: takes a sealed frame, returns a sealed reply.
    pub type Handler = Arc<dyn Fn(Bytes) -> Result<Bytes, String> + Send + Sync>;

    /// What goes wrong on the wire, per message.
    #[derive(Debug, Clone, Default)]
    pub struct Faults {
        /// Chance a request or its reply is lost (each leg separately).
        pub loss: f64,
        /// Chance a request is delivered twice.
        pub duplicate: f64,
        /// Each leg is delayed uniformly up to this (so messages reorder).
        pub max_delay: Duration,
    }

    #[derive(Default)]
    pub struct Network {
        nodes: Mutex<HashMap<String, Handler>>,
        faults: Mutex<Faults>,
        /// Unordered pairs that cannot reach each other.
        cut: Mutex<HashSet<(String, String)>>,
        rng: Mutex<Option<fastrand::Rng>>,
        /// Names that stand for several nodes (a DNS name with many records).
        names: Mutex<HashMap<String, Vec<String>>>,
    }

    impl Network {
        pub fn new(seed: u64) -> Arc<Network> {
            let n = Network::default();
            *n.rng.lock() = Some(fastrand::Rng::with_seed(seed));
            Arc::new(n)
        }

        pub fn register(&self, node: &str, h: Handler) {
            self.nodes.lock().insert(node.to_string(), h);
        }

        /// A stopped node: its address no longer answers.
        pub fn unregister(&self, node: &str) {
            self.nodes.lock().remove(node);
        }

        pub fn set_faults(&self, f: Faults) {
            *self.faults.lock() = f;
        }

        /// Splits the nodes in two groups that cannot talk to each other.
        pub fn partition(&self, a: &[&str], b: &[&str]) {
            let mut cut = self.cut.lock();
            for x in a {
                for y in b {
                    cut.insert(pair(x, y));
                }
            }
        }

        pub fn heal(&self) {
            self.cut.lock().clear();
        }

        /// Makes `name` resolve to `nodes` from now on (like a DNS change).
        pub fn set_name(&self, name: &str, nodes: &[&str]) {
            let nodes = nodes.iter().map(|n| n.to_string()).collect();
            self.names.lock().insert(name.to_string(), nodes);
        }

        /// The transport one node sends with.
        pub fn transport(self: &Arc<Self>, from: &str) -> Mem {
            Mem {
                net: self.clone(),
                from: from.to_string(),
            }
        }

        fn roll(&self, p: f64) -> bool {
            p > 0.0 && self.rng.lock().as_mut().expect("seeded").f64() < p
        }

        fn delay(&self) -> Duration {
            let max = self.faults.lock().max_delay;
            let f = self.rng.lock().as_mut().expect("seeded").f64();
            max.mul_f64(f)
        }
    }

    fn pair(a: &str, b: &str) -> (String, String) {
        match a < b {
            true => (a.to_string(), b.to_string()),
            false => (b.to_string(), a.to_string()),
        }
    }

    pub struct Mem {
        net: Arc<Network>,
        from: String,
    }

    impl Mem {
        async fn leg(&self, to: &str) -> Result<(), SendError> {
            tokio::time::sleep(self.net.delay()).await;
            let lost = self.net.roll(self.net.faults.lock().loss);
            let cut = self.net.cut.lock().contains(&pair(&self.from, to));
            match lost || cut {
                true => Err(SendError::Unreachable("lost".into())),
                false => Ok(()),
            }
        }
    }

    impl Link for Mem {
        async fn send(&self, peer: &str, _path: Path, frame: Bytes) -> Result<Bytes, SendError> {
            self.leg(peer).await?;
            let handler = self.net.nodes.lock().get(peer).cloned();
            let handler = handler.ok_or_else(|| SendError::Unreachable("down".into()))?;
            let reply = handler(frame.clone()).map_err(SendError::Refused);
            if self.net.roll(self.net.faults.lock().duplicate) {
                let _ = handler(frame);
            }
            let reply = reply?;
            self.leg(peer).await?;
            Ok(reply)
        }

        async fn resolve(&self, peer: &str) -> Vec<String> {
            let names = self.net.names.lock();
            names
                .get(peer)
                .cloned()
                .unwrap_or_else(|| vec![peer.to_string()])
        }
    }
}

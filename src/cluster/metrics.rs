//! The cluster's Prometheus metrics. Peer labels are the configured peer
//! names (not the addresses they resolve to, which churn with pods), never keys.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::auth::{self, Reject};
use super::peer::Peer;
use super::Cluster;
use crate::metrics::{counter, family, gauge, Counter};

#[derive(Default)]
pub struct ClusterMetrics {
    pub versions_received: Counter,
    /// Indexed by `Reject as usize`.
    pub rejected: [Counter; Reject::ALL.len()],
    /// Frame bytes (not HTTP framing), requests and replies, both directions.
    pub bytes_sent: Counter,
    pub bytes_received: Counter,
    pub deltas_dropped: Counter,
}

pub fn render(c: &Cluster, peers: &[Arc<Peer>], o: &mut String) {
    render_peers(c, peers, o);
    render_ages(peers, o);
    render_counters(&c.metrics, o);
}

fn render_peers(c: &Cluster, peers: &[Arc<Peer>], o: &mut String) {
    let known = peers
        .iter()
        .filter(|p| !p.is_self.load(Ordering::Relaxed))
        .count();
    let up = peers.iter().filter(|p| p.is_up()).count();
    let behind = peers.iter().map(|p| p.behind()).max().unwrap_or(0);
    let clashes = peers
        .iter()
        .filter(|p| p.clash.load(Ordering::Relaxed))
        .count();
    #[rustfmt::skip]
    let gauges = [
        ("pollgate_cluster_peers", "Peer addresses known (configured, resolved, not self).", known as i64),
        ("pollgate_cluster_peers_up", "Peers passing the health window (3 of the last 8 pulls).", up as i64),
        ("pollgate_cluster_caught_up", "1 once a first complete pull from a peer finished.", i64::from(c.caught_up())),
        ("pollgate_cluster_keys_behind", "Estimated changes at peers not yet pulled (max over peers).", behind as i64),
        ("pollgate_cluster_node_id_clashes", "Peer addresses answering with this replica's node_id from another process (node_id must be unique).", clashes as i64),
    ];
    for (name, help, v) in gauges {
        gauge(o, name, help, v);
    }
}

/// Reads one of a peer's last-success times (unix ms, 0 = never).
type Stamp = fn(&Peer) -> u64;

/// Seconds since the last success per configured peer name (the oldest of
/// its addresses that ever succeeded); absent before the first success.
fn render_ages(peers: &[Arc<Peer>], o: &mut String) {
    let now = auth::unix_ms();
    #[rustfmt::skip]
    let ages: [(&str, &str, Stamp); 2] = [
        ("pollgate_cluster_last_push_seconds", "Seconds since deltas were last sent to the peer successfully (the oldest of the addresses the peer name resolves to).", Peer::last_deltas),
        ("pollgate_cluster_last_pull_seconds", "Seconds since the last complete pull from the peer (the oldest of the addresses the peer name resolves to).", Peer::last_pull),
    ];
    for (name, help, get) in ages {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (peer, age) in oldest_by_name(peers, now, get) {
            let _ = writeln!(o, "{name}{{peer=\"{peer}\"}} {age}");
        }
    }
}

/// Per peer name, the largest age in seconds over its addresses with a success.
fn oldest_by_name(peers: &[Arc<Peer>], now: u64, get: Stamp) -> BTreeMap<&str, f64> {
    let mut by_name = BTreeMap::new();
    for p in peers.iter().filter(|p| get(p) > 0) {
        let age = now.saturating_sub(get(p)) as f64 / 1000.0;
        let oldest = by_name.entry(p.name.as_str()).or_insert(age);
        *oldest = f64::max(*oldest, age);
    }
    by_name
}

fn render_counters(m: &ClusterMetrics, o: &mut String) {
    #[rustfmt::skip]
    let counters = [
        ("pollgate_cluster_versions_received_total", "Versions received from peers (deltas and pull).", &m.versions_received),
        ("pollgate_cluster_sent_bytes_total", "Gossip frame bytes sent (requests and replies).", &m.bytes_sent),
        ("pollgate_cluster_received_bytes_total", "Gossip frame bytes received (requests and replies).", &m.bytes_received),
        ("pollgate_cluster_push_dropped_total", "Delta batches dropped on a full peer queue (pull repairs).", &m.deltas_dropped),
    ];
    for (name, help, c) in counters {
        counter(o, name, help, c.get());
    }
    let rejected = Reject::ALL.map(|r| (r.label(), m.rejected[r as usize].get()));
    #[rustfmt::skip]
    family(o, "counter", "pollgate_cluster_rejected_total", "Gossip messages refused, by reason.", "reason", rejected);
}

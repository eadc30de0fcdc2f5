//! The gossip engine over an in-memory network that loses, duplicates,
//! delays (so reorders) and partitions messages: N in-process replicas, each
//! a real `State` (table, tunables, cluster) with its real gossip tasks, and
//! tokio's paused clock so virtual seconds cost nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use pollgate::cluster::auth::Reject;
use pollgate::cluster::transport::mem::{Faults, Network};
use pollgate::config::Config;
use pollgate::gossip::GossipHandle;
use pollgate::state::{State, VersionSource};
use pollgate::tunables::Stamp;

const KEY: &str = "sim-key";

struct Node {
    name: String,
    state: Arc<State>,
    handle: Option<GossipHandle>,
}

struct Sim {
    net: Arc<Network>,
    nodes: Vec<Node>,
    names: Vec<String>,
}

impl Sim {
    fn new(n: usize, seed: u64) -> Sim {
        let names: Vec<String> = (0..n).map(|i| format!("n{i}")).collect();
        let mut sim = Sim {
            net: Network::new(seed),
            nodes: Vec::new(),
            names,
        };
        for i in 0..n {
            let node = sim.spawn(i, KEY);
            sim.nodes.push(node);
        }
        sim
    }

    fn spawn(&self, i: usize, key: &str) -> Node {
        let name = &self.names[i];
        let peers = self.names.iter().filter(|n| *n != name).cloned().collect();
        self.spawn_with(i, key, peers)
    }

    fn spawn_with(&self, i: usize, key: &str, peer: Vec<String>) -> Node {
        self.spawn_named(i, &self.names[i], key, peer)
    }

    /// A node at address `names[i]` whose node_id is `node_id`.
    fn spawn_named(&self, i: usize, node_id: &str, key: &str, peer: Vec<String>) -> Node {
        let name = self.names[i].clone();
        let cfg = Config {
            node_id: node_id.into(),
            peer,
            cluster_key: vec![key.into()],
            ..Config::default()
        };
        let state = State::new(cfg).unwrap();
        let s = state.clone();
        self.net.register(
            &name,
            Arc::new(move |frame| {
                s.cluster
                    .handle(&s.table, &s.tunables, frame)
                    .map_err(|r| r.to_string())
            }),
        );
        let handle = GossipHandle::start(state.clone(), Arc::new(self.net.transport(&name)));
        Node {
            name,
            state,
            handle: Some(handle),
        }
    }

    async fn stop(&mut self, i: usize) {
        self.net.unregister(&self.nodes[i].name);
        if let Some(h) = self.nodes[i].handle.take() {
            h.shutdown().await;
        }
    }

    /// A fresh process at node i's address: empty table, new epoch.
    async fn restart(&mut self, i: usize) {
        self.stop(i).await;
        self.nodes[i] = self.spawn(i, KEY);
    }

    fn publish(&self, i: usize, key: &str, v: u64) {
        self.nodes[i].state.learn(key, v, VersionSource::Publish);
    }

    fn version(&self, i: usize, key: &str) -> Option<u64> {
        self.nodes[i].state.table.get(key).map(|e| e.version)
    }

    fn dump(&self, i: usize) -> HashMap<String, u64> {
        let mut m = HashMap::new();
        self.nodes[i].state.table.for_each(|k, e| {
            m.insert(k.to_string(), e.version);
        });
        m
    }

    /// Waits (virtual time) until every live node holds `want`; false after `max`.
    async fn converge(&self, live: &[usize], want: &HashMap<String, u64>, max: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + max;
        loop {
            if live.iter().all(|&i| self.dump(i) == *want) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn shutdown(mut self) {
        for i in 0..self.nodes.len() {
            self.stop(i).await;
        }
    }
}

fn all(n: usize) -> Vec<usize> {
    (0..n).collect()
}

#[tokio::test(start_paused = true)]
async fn converges_under_30_percent_loss_with_duplicates_and_reordering() {
    let sim = Sim::new(5, 1);
    sim.net.set_faults(Faults {
        loss: 0.3,
        duplicate: 0.1,
        max_delay: Duration::from_millis(40),
    });
    let mut rng = fastrand::Rng::with_seed(2);
    let mut want = HashMap::new();
    for _ in 0..2000 {
        let (node, key, v) = (
            rng.usize(..5),
            format!("k{}", rng.u32(..300)),
            rng.u64(1..10_000),
        );
        sim.publish(node, &key, v);
        let w = want.entry(key).or_insert(0);
        *w = v.max(*w);
        if rng.u8(..10) == 0 {
            tokio::time::sleep(Duration::from_millis(rng.u64(1..30))).await;
        }
    }
    assert!(sim.converge(&all(5), &want, Duration::from_secs(30)).await);
    let received: u64 = sim
        .nodes
        .iter()
        .map(|n| n.state.cluster.metrics.versions_received.get())
        .sum();
    assert!(received > 0);
    sim.shutdown().await;
}

/// Past FANOUT peers each push round reaches a random 8 and receivers
/// relay: the epidemic path, under loss.
#[tokio::test(start_paused = true)]
async fn converges_with_more_peers_than_fanout() {
    let sim = Sim::new(12, 9);
    sim.net.set_faults(Faults {
        loss: 0.2,
        duplicate: 0.0,
        max_delay: Duration::from_millis(20),
    });
    let mut want = HashMap::new();
    for i in 0..300u64 {
        let key = format!("k{}", i % 50);
        sim.publish((i % 12) as usize, &key, i + 1);
        want.insert(key, i + 1);
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    assert!(sim.converge(&all(12), &want, Duration::from_secs(20)).await);
    sim.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_healed_partition_converges() {
    let sim = Sim::new(4, 3);
    sim.net.partition(&["n0", "n1"], &["n2", "n3"]);
    sim.publish(0, "left", 5);
    sim.publish(3, "right", 7);
    sim.publish(1, "both", 3);
    sim.publish(2, "both", 9);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(sim.version(1, "left"), Some(5), "spreads within a side");
    assert_eq!(sim.version(1, "right"), None, "not across the cut");
    assert_eq!(sim.version(0, "both"), Some(3));
    sim.net.heal();
    let want: HashMap<String, u64> = [("left", 5), ("right", 7), ("both", 9)]
        .map(|(k, v)| (k.to_string(), v))
        .into();
    assert!(sim.converge(&all(4), &want, Duration::from_secs(10)).await);
    sim.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_restarted_replica_catches_up_before_it_is_ready() {
    let mut sim = Sim::new(3, 4);
    sim.stop(2).await;
    let mut want = HashMap::new();
    for i in 0..20_000u64 {
        sim.publish((i % 2) as usize, &format!("key{i}"), i + 1);
        want.insert(format!("key{i}"), i + 1);
    }
    sim.restart(2).await;
    assert!(!sim.nodes[2].state.is_ready(), "not ready before a pull");
    assert!(sim.converge(&all(3), &want, Duration::from_secs(5)).await);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(sim.nodes[2].state.is_ready());
    sim.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn config_is_last_writer_wins_everywhere_and_survives_restart() {
    let mut sim = Sim::new(3, 5);
    let t = &sim.nodes[1].state.tunables;
    let mut v = t.get();
    v.heartbeat_interval_ms = 7_000;
    t.apply(
        &v,
        Stamp {
            at_ms: 100,
            node: "n1".into(),
        },
    );
    sim.nodes[1].state.cluster.config_changed();
    // An older write elsewhere loses everywhere, even though it comes later.
    let t0 = &sim.nodes[0].state.tunables;
    let mut old = t0.get();
    old.heartbeat_interval_ms = 9_000;
    t0.apply(
        &old,
        Stamp {
            at_ms: 50,
            node: "n0".into(),
        },
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    for n in &sim.nodes {
        assert_eq!(
            n.state.tunables.get().heartbeat_interval_ms,
            7_000,
            "{}",
            n.name
        );
    }
    sim.restart(2).await;
    assert_eq!(
        sim.nodes[2].state.tunables.get().heartbeat_interval_ms,
        25_000
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        sim.nodes[2].state.tunables.get().heartbeat_interval_ms,
        7_000
    );
    sim.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_node_with_the_wrong_key_is_refused_and_never_merged() {
    let mut sim = Sim::new(3, 6);
    sim.stop(2).await;
    sim.nodes[2] = sim.spawn(2, "wrong-key");
    sim.publish(2, "evil", 1_000_000);
    sim.publish(0, "good", 1);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(sim.version(0, "evil"), None);
    assert_eq!(sim.version(1, "evil"), None);
    assert_eq!(sim.version(2, "good"), None, "its pulls are refused too");
    assert_eq!(sim.version(1, "good"), Some(1));
    let bad_mac = |i: usize| sim.nodes[i].state.cluster.metrics.rejected[0].get();
    assert!(bad_mac(0) > 0 && bad_mac(1) > 0, "counted as bad_mac");
    assert!(
        !sim.nodes[2].state.is_ready(),
        "refused pulls do not make it ready"
    );
    sim.shutdown().await;
}

fn metric(state: &State, name: &str) -> f64 {
    let text = state.metrics.render();
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '));
    line.unwrap_or_else(|| panic!("{name} missing"))
        .parse()
        .unwrap()
}

/// A Kubernetes headless service: one name, every replica's address,
/// including the asking replica's own, and a replica added later.
#[tokio::test(start_paused = true)]
async fn one_name_for_all_replicas_skips_self_and_follows_dns_changes() {
    let mut sim = Sim {
        net: Network::new(7),
        nodes: Vec::new(),
        names: (0..4).map(|i| format!("n{i}")).collect(),
    };
    sim.net.set_name("svc", &["n0", "n1", "n2"]);
    for i in 0..3 {
        let node = sim.spawn_with(i, KEY, vec!["svc".into()]);
        sim.nodes.push(node);
    }
    sim.publish(0, "a", 1);
    let want: HashMap<String, u64> = [("a".to_string(), 1)].into();
    assert!(sim.converge(&all(3), &want, Duration::from_secs(5)).await);
    for n in &sim.nodes {
        assert_eq!(
            metric(&n.state, "pollgate_cluster_peers"),
            2.0,
            "{}: self excluded",
            n.name
        );
    }
    sim.net.set_name("svc", &["n0", "n1", "n2", "n3"]);
    let node = sim.spawn_with(3, KEY, vec!["svc".into()]);
    sim.nodes.push(node);
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(
        metric(&sim.nodes[0].state, "pollgate_cluster_peers"),
        3.0,
        "re-resolved"
    );
    // Labelled by the configured name, not by the addresses behind it: pods
    // coming and going (new IPs) add no series.
    let text = sim.nodes[0].state.metrics.render();
    let labels: std::collections::HashSet<&str> = text
        .lines()
        .filter_map(|l| l.split_once("{peer=\"")?.1.split('"').next())
        .collect();
    assert_eq!(labels, ["svc"].into(), "{text}");
    sim.net.partition(&["n1", "n2"], &["n3"]);
    sim.publish(0, "b", 2);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        sim.version(3, "b"),
        Some(2),
        "the new replica gets versions from n0 while cut off from the others"
    );
    sim.shutdown().await;
}

/// A peer address that reaches another replica from now on (a pod IP
/// reused, a DNS name re-pointed): frames sealed for the old node_id are
/// refused there, the senders learn the new one and gossip goes on.
#[tokio::test(start_paused = true)]
async fn an_address_that_now_reaches_another_replica_is_learned_again() {
    let mut sim = Sim::new(3, 10);
    sim.publish(0, "a", 1);
    let mut want: HashMap<String, u64> = [("a".to_string(), 1)].into();
    assert!(sim.converge(&all(3), &want, Duration::from_secs(5)).await);
    sim.stop(2).await;
    let peers = vec!["n0".to_string(), "n1".to_string()];
    sim.nodes[2] = sim.spawn_named(2, "n2-renamed", KEY, peers);
    sim.publish(0, "b", 2);
    want.insert("b".into(), 2);
    assert!(sim.converge(&all(3), &want, Duration::from_secs(5)).await);
    // Long enough for a peer that kept sealing for "n2" to fail every probe
    // of the health window and be down.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let misaddressed =
        sim.nodes[2].state.cluster.metrics.rejected[Reject::Misaddressed as usize].get();
    assert!(
        misaddressed > 0,
        "frames sealed for the old name were refused"
    );
    for i in 0..2 {
        assert_eq!(
            metric(&sim.nodes[i].state, "pollgate_cluster_peers_up"),
            2.0
        );
    }
    sim.shutdown().await;
}

/// Two replicas named alike would accept frames sealed for each other: an
/// error both report (log, metric, not ready), until one is renamed.
#[tokio::test(start_paused = true)]
async fn replicas_sharing_a_node_id_refuse_each_other_until_renamed() {
    let mut sim = Sim {
        net: Network::new(11),
        nodes: Vec::new(),
        names: vec!["n0".into(), "n1".into()],
    };
    for (i, peer) in [(0, "n1"), (1, "n0")] {
        let node = sim.spawn_named(i, "same", KEY, vec![peer.into()]);
        sim.nodes.push(node);
    }
    sim.publish(0, "a", 1);
    tokio::time::sleep(Duration::from_secs(31)).await;
    assert_eq!(sim.version(1, "a"), None, "nothing crosses a clash");
    for n in &sim.nodes {
        assert_eq!(metric(&n.state, "pollgate_cluster_node_id_clashes"), 1.0);
        assert!(
            !n.state.is_ready(),
            "{}: a clash is not a lone replica",
            n.name
        );
    }
    sim.stop(1).await;
    sim.nodes[1] = sim.spawn_named(1, "renamed", KEY, vec!["n0".into()]);
    let want: HashMap<String, u64> = [("a".to_string(), 1)].into();
    assert!(sim.converge(&all(2), &want, Duration::from_secs(5)).await);
    // The clashing address is still probed: the rename is noticed, and the
    // peer is up again after 3 good pulls (the health window).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let n0 = &sim.nodes[0].state;
    assert_eq!(metric(n0, "pollgate_cluster_node_id_clashes"), 0.0);
    assert_eq!(metric(n0, "pollgate_cluster_peers_up"), 1.0);
    sim.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_replica_whose_peers_never_answer_is_ready_after_a_bound() {
    let sim = Sim {
        net: Network::new(8),
        nodes: Vec::new(),
        names: vec!["n0".into()],
    };
    let node = sim.spawn_with(0, KEY, vec!["gone-1".into(), "gone-2".into()]);
    tokio::time::sleep(Duration::from_secs(29)).await;
    assert!(!node.state.is_ready(), "still waiting for a peer");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(node.state.is_ready(), "a lone survivor serves");
    node.handle.unwrap().shutdown().await;
}

mod props {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Publish { node: usize, key: u8, version: u64 },
        Partition(Vec<bool>),
        Heal,
        Restart(usize),
        Wait(u64),
    }

    const N: usize = 3;

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0..N, 0u8..6, 1u64..50).prop_map(|(node, key, version)| Op::Publish { node, key, version }),
            1 => prop::collection::vec(any::<bool>(), N).prop_map(Op::Partition),
            1 => Just(Op::Heal),
            1 => (0..N).prop_map(Op::Restart),
            2 => (1u64..1500).prop_map(Op::Wait),
        ]
    }

    /// Every replica's view only ever grows (except a restart, which starts
    /// empty), and after healing everyone holds the max of what was published
    /// at replicas that were not lost to a restart before passing it on.
    async fn check(ops: Vec<Op>, seed: u64) -> Result<(), TestCaseError> {
        let mut sim = Sim::new(N, seed);
        sim.net.set_faults(Faults {
            loss: 0.2,
            duplicate: 0.1,
            max_delay: Duration::from_millis(20),
        });
        let mut seen: Vec<HashMap<String, u64>> = vec![HashMap::new(); N];
        let mut want: HashMap<String, u64> = HashMap::new();
        for op in ops {
            match op {
                Op::Publish { node, key, version } => {
                    let key = format!("k{key}");
                    sim.publish(node, &key, version);
                    let w = want.entry(key).or_insert(0);
                    *w = version.max(*w);
                }
                Op::Partition(side) => {
                    sim.net.heal();
                    let (a, b): (Vec<_>, Vec<_>) = (0..N).partition(|&i| side[i]);
                    let name =
                        |v: Vec<usize>| v.iter().map(|&i| sim.names[i].clone()).collect::<Vec<_>>();
                    let (a, b) = (name(a), name(b));
                    let a: Vec<&str> = a.iter().map(String::as_str).collect();
                    let b: Vec<&str> = b.iter().map(String::as_str).collect();
                    sim.net.partition(&a, &b);
                }
                Op::Heal => sim.net.heal(),
                Op::Restart(i) => {
                    // Only restart a node whose every key another node also
                    // has; otherwise the data is legitimately gone.
                    let mine = sim.dump(i);
                    let others: Vec<_> = (0..N).filter(|&j| j != i).map(|j| sim.dump(j)).collect();
                    let covered = mine
                        .iter()
                        .all(|(k, v)| others.iter().any(|o| o.get(k) >= Some(v)));
                    if covered {
                        sim.restart(i).await;
                        seen[i].clear();
                    }
                }
                Op::Wait(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
            }
            for (i, s) in seen.iter_mut().enumerate() {
                for (k, v) in sim.dump(i) {
                    let before = s.insert(k.clone(), v).unwrap_or(0);
                    prop_assert!(v >= before, "n{i} {k} went back from {before} to {v}");
                }
            }
        }
        sim.net.heal();
        sim.net.set_faults(Faults::default());
        prop_assert!(
            sim.converge(&all(N), &want, Duration::from_secs(10)).await,
            "did not converge"
        );
        sim.shutdown().await;
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn versions_never_go_back_and_all_converge_to_the_max(
            ops in prop::collection::vec(op(), 1..60),
            seed in any::<u64>(),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            rt.block_on(check(ops, seed))?;
        }
    }
}

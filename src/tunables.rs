//! Cluster-wide tunables: values every replica must agree on (a heartbeat
//! changed on one node only once closed healthy sockets everywhere).
//! Read lock-free on the hot path; replaced whole by admin or gossip.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::config::Config;

/// One consistent set of values, as shown by `GET /v1/config`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Values {
    pub heartbeat_interval_ms: u64,
    pub ghost_timeout_ms: u64,
    /// `X-Poll-Interval` while push is healthy (long: push says when to poll).
    pub poll_interval_hint_s: u64,
    pub push_admission_per_s: u64,
    pub max_age_ms: u64,
}

/// Last-writer-wins stamp: later `at_ms` wins, `node` breaks ties.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Stamp {
    pub at_ms: u64,
    pub node: String,
}

pub struct Tunables {
    heartbeat_interval_ms: AtomicU64,
    ghost_timeout_ms: AtomicU64,
    poll_interval_hint_s: AtomicU64,
    push_admission_per_s: AtomicU64,
    max_age_ms: AtomicU64,
    /// Serialises writers and holds the stamp of the current values.
    stamp: Mutex<Stamp>,
}

impl Tunables {
    /// Starts from the local config with the zero stamp, so any value set
    /// anywhere in the cluster wins over a replica's own defaults.
    pub fn from_config(cfg: &Config) -> Self {
        let t = Tunables {
            heartbeat_interval_ms: AtomicU64::new(0),
            ghost_timeout_ms: AtomicU64::new(0),
            poll_interval_hint_s: AtomicU64::new(0),
            push_admission_per_s: AtomicU64::new(0),
            max_age_ms: AtomicU64::new(0),
            stamp: Mutex::new(Stamp::default()),
        };
        t.store(&Values {
            heartbeat_interval_ms: cfg.heartbeat_interval.as_millis() as u64,
            ghost_timeout_ms: cfg.ghost_timeout.as_millis() as u64,
            poll_interval_hint_s: 60,
            push_admission_per_s: cfg.push_admission_per_s,
            max_age_ms: cfg.max_age.as_millis() as u64,
        });
        t
    }

    pub fn get(&self) -> Values {
        Values {
            heartbeat_interval_ms: self.heartbeat_interval_ms.load(Relaxed),
            ghost_timeout_ms: self.ghost_timeout_ms.load(Relaxed),
            poll_interval_hint_s: self.poll_interval_hint_s.load(Relaxed),
            push_admission_per_s: self.push_admission_per_s.load(Relaxed),
            max_age_ms: self.max_age_ms.load(Relaxed),
        }
    }

    pub fn stamp(&self) -> Stamp {
        self.stamp.lock().clone()
    }

    /// Applies `v` if `stamp` is newer than the current one (LWW). Returns whether it did.
    pub fn apply(&self, v: &Values, stamp: Stamp) -> bool {
        let mut cur = self.stamp.lock();
        if stamp <= *cur {
            return false;
        }
        self.store(v);
        *cur = stamp;
        true
    }

    fn store(&self, v: &Values) {
        self.heartbeat_interval_ms
            .store(v.heartbeat_interval_ms, Relaxed);
        self.ghost_timeout_ms.store(v.ghost_timeout_ms, Relaxed);
        self.poll_interval_hint_s
            .store(v.poll_interval_hint_s, Relaxed);
        self.push_admission_per_s
            .store(v.push_admission_per_s, Relaxed);
        self.max_age_ms.store(v.max_age_ms, Relaxed);
    }

    /// `max_age` in ms; 0 disables revalidation.
    pub fn max_age_ms(&self) -> u64 {
        self.max_age_ms.load(Relaxed)
    }

    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms.load(Relaxed))
    }

    pub fn ghost_timeout(&self) -> Duration {
        Duration::from_millis(self.ghost_timeout_ms.load(Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_writer_wins_with_node_tiebreak() {
        let t = Tunables::from_config(&Config::default());
        let mut v = t.get();
        v.max_age_ms = 1;
        assert!(t.apply(
            &v,
            Stamp {
                at_ms: 10,
                node: "a".into()
            }
        ));
        v.max_age_ms = 2;
        assert!(
            !t.apply(
                &v,
                Stamp {
                    at_ms: 9,
                    node: "z".into()
                }
            ),
            "older loses"
        );
        assert!(
            t.apply(
                &v,
                Stamp {
                    at_ms: 10,
                    node: "b".into()
                }
            ),
            "tie: higher node wins"
        );
        assert!(
            !t.apply(
                &v,
                Stamp {
                    at_ms: 10,
                    node: "b".into()
                }
            ),
            "same stamp is a no-op"
        );
        assert_eq!(t.max_age_ms(), 2);
    }
}

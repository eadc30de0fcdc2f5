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

/// A stamp further ahead of this replica's clock than this is refused: the
/// skew replicas may have, and no more. Without the bound one stamp of
/// `u64::MAX` would win every later comparison and freeze the config for
/// good (no admin change could ever be newer).
pub const MAX_STAMP_SKEW_MS: u64 = 60_000;

fn from_the_future(stamp: &Stamp) -> bool {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    stamp.at_ms > now.saturating_add(MAX_STAMP_SKEW_MS)
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

    /// Applies `v` if `stamp` is newer than the current one (LWW) and not
    /// from the future (see [`MAX_STAMP_SKEW_MS`]). Returns whether it did.
    pub fn apply(&self, v: &Values, stamp: Stamp) -> bool {
        let mut cur = self.stamp.lock();
        if stamp <= *cur || from_the_future(&stamp) {
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

    #[test]
    fn stamps_from_the_future_are_refused() {
        let t = Tunables::from_config(&Config::default());
        let mut v = t.get();
        v.max_age_ms = 7;
        let far = Stamp {
            at_ms: u64::MAX,
            node: "evil".into(),
        };
        assert!(!t.apply(&v, far), "u64::MAX must not win");
        assert_eq!(t.stamp(), Stamp::default());
    }
}

// ---- validation: the one place that says which values are acceptable ----

/// The accepted fields and their ranges (inclusive).
const FIELDS: [(&str, u64, u64); 6] = [
    ("heartbeat_interval_ms", 1_000, 300_000),
    ("ghost_timeout_ms", 1_000, 3_600_000),
    ("poll_interval_hint_s", 1, 3_600),
    ("push_admission_per_s", 1, 1_000_000),
    ("max_age_ms", 0, 86_400_000),
    ("max_age_s", 0, 86_400),
];

/// Applies `fields` to `cur`; the error names the first bad field.
pub fn update(
    mut cur: Values,
    fields: &serde_json::Map<String, serde_json::Value>,
) -> Result<Values, String> {
    let mut max_age: Option<(u64, &str)> = None;
    for (name, value) in fields {
        let (_, lo, hi) = FIELDS
            .iter()
            .find(|(n, ..)| n == name)
            .ok_or_else(|| format!("{name}: unknown field (known: {})", known()))?;
        let n = value
            .as_u64()
            .ok_or_else(|| format!("{name}: must be a whole number, got {value}"))?;
        if n < *lo || n > *hi {
            return Err(format!("{name}: {n} is out of range {lo}..={hi}"));
        }
        let ms = if name == "max_age_s" { n * 1000 } else { n };
        match name.as_str() {
            "heartbeat_interval_ms" => cur.heartbeat_interval_ms = n,
            "ghost_timeout_ms" => cur.ghost_timeout_ms = n,
            "poll_interval_hint_s" => cur.poll_interval_hint_s = n,
            "push_admission_per_s" => cur.push_admission_per_s = n,
            _ => match max_age {
                Some((prev, other)) if prev != ms => {
                    return Err(format!("{name}: disagrees with {other}"))
                }
                _ => max_age = Some((ms, name)),
            },
        }
    }
    if let Some((ms, _)) = max_age {
        cur.max_age_ms = ms;
    }
    check(&cur)?;
    Ok(cur)
}

/// Cross-field rules, also applied to values arriving by gossip.
pub fn check(v: &Values) -> Result<(), String> {
    // Strictly longer, as the `ghost_timeout` config key requires: a pong
    // can only follow a ping.
    if v.ghost_timeout_ms <= v.heartbeat_interval_ms {
        return Err(format!(
            "ghost_timeout_ms: {} must be longer than heartbeat_interval_ms ({})",
            v.ghost_timeout_ms, v.heartbeat_interval_ms
        ));
    }
    Ok(())
}

/// Longest timer gossip may set: far beyond any real setting, far below
/// where `Instant + Duration` overflows.
const MAX_TIMER_MS: u64 = 365 * 86_400_000;

/// What gossip must never apply, whatever the sender: a timer of 0 spins
/// every socket's ping loop, one near u64::MAX panics in `Instant + Duration`.
/// Deliberately looser than the PUT ranges: a PUT carries the replica's
/// local seeds for the fields it does not name (e.g. a 100 ms heartbeat from
/// config), and refusing those here would split the cluster's values.
pub fn sane(v: &Values) -> Result<(), String> {
    for (name, ms) in [
        ("heartbeat_interval_ms", v.heartbeat_interval_ms),
        ("ghost_timeout_ms", v.ghost_timeout_ms),
    ] {
        if !(1..=MAX_TIMER_MS).contains(&ms) {
            return Err(format!("{name}: {ms} is out of range 1..={MAX_TIMER_MS}"));
        }
    }
    check(v)
}

fn known() -> String {
    FIELDS.map(|(n, ..)| n).join(", ")
}

#[cfg(test)]
mod validation_tests {
    use super::*;

    fn values() -> Values {
        Values {
            heartbeat_interval_ms: 25_000,
            ghost_timeout_ms: 50_000,
            poll_interval_hint_s: 60,
            push_admission_per_s: 2000,
            max_age_ms: 60_000,
        }
    }

    fn up(json: &str) -> Result<Values, String> {
        update(values(), &serde_json::from_str(json).unwrap())
    }

    #[test]
    fn partial_updates_keep_the_rest() {
        let v = up(r#"{"heartbeat_interval_ms": 5000}"#).unwrap();
        assert_eq!(v.heartbeat_interval_ms, 5000);
        assert_eq!(v.ghost_timeout_ms, 50_000);
        assert_eq!(up(r#"{"max_age_s": 30}"#).unwrap().max_age_ms, 30_000);
        assert_eq!(
            up(r#"{"max_age_s": 30, "max_age_ms": 30000}"#)
                .unwrap()
                .max_age_ms,
            30_000
        );
    }

    #[test]
    fn bad_fields_are_named() {
        for (json, field) in [
            (r#"{"nope": 1}"#, "nope: unknown field"),
            (
                r#"{"heartbeat_interval_ms": 10}"#,
                "heartbeat_interval_ms: 10 is out of range",
            ),
            (
                r#"{"poll_interval_hint_s": "5"}"#,
                "poll_interval_hint_s: must be a whole number",
            ),
            (
                r#"{"ghost_timeout_ms": 25000}"#,
                "ghost_timeout_ms: 25000 must be longer",
            ),
            (r#"{"max_age_s": 1, "max_age_ms": 5}"#, "disagrees"),
        ] {
            let e = up(json).unwrap_err();
            assert!(e.contains(field), "{json}: {e}");
        }
    }

    #[test]
    fn gossiped_timers_are_sane() {
        let zero_heartbeat = Values {
            heartbeat_interval_ms: 0,
            ..values()
        };
        let e = sane(&zero_heartbeat).unwrap_err();
        assert!(e.contains("heartbeat_interval_ms"), "{e}");
        let huge_ghost = Values {
            ghost_timeout_ms: u64::MAX,
            ..values()
        };
        assert!(sane(&huge_ghost).unwrap_err().contains("ghost_timeout_ms"));
        // A local seed outside the PUT ranges still travels.
        let fast = Values {
            heartbeat_interval_ms: 100,
            ghost_timeout_ms: 300,
            push_admission_per_s: 0,
            ..values()
        };
        assert!(sane(&fast).is_ok());
        assert!(sane(&values()).is_ok());
    }
}

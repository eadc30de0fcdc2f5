//! Cluster-wide tunables: values every replica must agree on (a heartbeat
//! changed on one node only once closed healthy sockets everywhere).
//! Read lock-free on the hot path; replaced whole by admin or gossip.
//!
//! The `tunables!` table below is the one place a tunable is declared: its
//! field in [`Values`], its accessor on [`Tunables`], its `PUT /v1/config`
//! range, what gossip may carry and its seed from the local config. The
//! admin API (`GET`/`PUT /v1/config`) and the gossip codec (fields in table
//! order) follow the table. Adding a tunable: a row there, then its use.

use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};

use crate::config::Config;

/// Declares every tunable from one row each (see the table below).
macro_rules! tunables {
    ($(
        $(#[$doc:meta])*
        $name:ident: put $put:expr, gossip $gossip:expr, seed $seed:expr;
    )*) => {
        /// One consistent set of values, as shown by `GET /v1/config`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct Values {
            $($(#[$doc])* pub $name: u64,)*
        }

        /// A tunable's row in [`FIELDS`] and its place in [`Values::to_array`].
        #[allow(non_camel_case_types)]
        #[derive(Debug, Clone, Copy)]
        enum Idx { $($name),* }

        /// How many tunables there are.
        pub const COUNT: usize = [$(stringify!($name)),*].len();

        /// Every tunable, in table order (the order gossip sends them in).
        pub const FIELDS: [Field; COUNT] = [$(Field {
            name: stringify!($name),
            put: $put,
            gossip: $gossip,
            seed: $seed,
        }),*];

        impl Values {
            /// The values in table order.
            pub fn to_array(&self) -> [u64; COUNT] {
                [$(self.$name),*]
            }

            pub fn from_array(a: [u64; COUNT]) -> Values {
                Values { $($name: a[Idx::$name as usize]),* }
            }
        }

        impl Tunables {
            $(
                $(#[$doc])*
                pub fn $name(&self) -> u64 {
                    self.cells[Idx::$name as usize].load(Relaxed)
                }
            )*
        }
    };
}

tunables! {
    /// SSE heartbeat and WebSocket ping interval, ms.
    heartbeat_interval_ms: put 1_000..=300_000, gossip TIMER, seed |c| ms(c.heartbeat_interval);
    /// A WebSocket without a pong this long is closed, ms.
    ghost_timeout_ms: put 1_000..=3_600_000, gossip TIMER, seed |c| ms(c.ghost_timeout);
    /// `X-Poll-Interval` while push is healthy (long: push says when to poll).
    poll_interval_hint_s: put 1..=3_600, gossip ANY, seed |_| 60;
    /// New push connections admitted per second, per replica.
    push_admission_per_s: put 1..=1_000_000, gossip ANY, seed |c| c.push_admission_per_s;
    /// An entry unconfirmed this long is revalidated upstream, ms; 0 disables.
    max_age_ms: put 0..=86_400_000, gossip ANY, seed |c| ms(c.max_age);
}

/// Other names `GET`/`PUT /v1/config` know a field by, in a coarser unit.
const ALIASES: [Alias; 1] = [Alias {
    name: "max_age_s",
    of: Idx::max_age_ms,
    scale: 1000,
}];

/// One tunable's rules.
#[derive(Debug)]
pub struct Field {
    pub name: &'static str,
    /// What `PUT /v1/config` accepts (inclusive).
    pub put: RangeInclusive<u64>,
    /// What a value arriving by gossip may be.
    pub gossip: RangeInclusive<u64>,
    /// The replica's own starting value, from its config.
    pub seed: fn(&Config) -> u64,
}

struct Alias {
    name: &'static str,
    of: Idx,
    /// The field's value is the alias's times this.
    scale: u64,
}

/// Longest timer gossip may set: far beyond any real setting, far below
/// where `Instant + Duration` overflows.
const MAX_TIMER_MS: u64 = 365 * 86_400_000;

/// Gossip never applies a timer of 0 (it spins every socket's ping loop) or
/// one near u64::MAX (it panics in `Instant + Duration`). Deliberately
/// looser than the PUT ranges: a PUT carries the replica's local seeds for
/// the fields it does not name (e.g. a 100 ms heartbeat from config), and
/// refusing those here would split the cluster's values.
const TIMER: RangeInclusive<u64> = 1..=MAX_TIMER_MS;
const ANY: RangeInclusive<u64> = 0..=u64::MAX;

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

impl Values {
    /// The local config's values, before any change made in the cluster.
    pub fn seed(cfg: &Config) -> Values {
        Values::from_array(std::array::from_fn(|i| (FIELDS[i].seed)(cfg)))
    }

    /// `PUT /v1/config`: `fields` applied on top of `self`; fields not given
    /// keep their values. The error names the first bad field.
    pub fn update(self, fields: &Map<String, Json>) -> Result<Values, String> {
        let mut next = self.to_array();
        let mut given: [Option<&str>; COUNT] = [None; COUNT];
        for (name, value) in fields {
            let (i, n) = put_value(name, value)?;
            match given[i] {
                Some(other) if next[i] != n => {
                    return Err(format!("{name}: disagrees with {other}"))
                }
                _ => (next[i], given[i]) = (n, Some(name.as_str())),
            }
        }
        let next = Values::from_array(next);
        next.check()?;
        Ok(next)
    }

    /// Cross-field rules, also applied to values arriving by gossip.
    pub fn check(&self) -> Result<(), String> {
        // Strictly longer, as the `ghost_timeout` config key requires: a pong
        // can only follow a ping.
        if self.ghost_timeout_ms <= self.heartbeat_interval_ms {
            return Err(format!(
                "ghost_timeout_ms: {} must be longer than heartbeat_interval_ms ({})",
                self.ghost_timeout_ms, self.heartbeat_interval_ms
            ));
        }
        Ok(())
    }

    /// What gossip must never apply, whatever the sender (see `TIMER`).
    pub fn sane(&self) -> Result<(), String> {
        for (f, n) in FIELDS.iter().zip(self.to_array()) {
            if !f.gossip.contains(&n) {
                return Err(out_of_range(f.name, n, &f.gossip));
            }
        }
        self.check()
    }

    /// `GET /v1/config`: every field, every alias, and the stamp.
    pub fn document(&self, stamp: &Stamp) -> Json {
        let values = self.to_array();
        let mut doc = Map::new();
        for (f, n) in FIELDS.iter().zip(values) {
            doc.insert(f.name.into(), n.into());
        }
        for a in &ALIASES {
            doc.insert(a.name.into(), (values[a.of as usize] / a.scale).into());
        }
        let stamp = serde_json::json!({"at_ms": stamp.at_ms, "node": stamp.node});
        doc.insert("stamp".into(), stamp);
        Json::Object(doc)
    }
}

/// A PUT field's row and its value in the field's unit, range-checked.
fn put_value(name: &str, value: &Json) -> Result<(usize, u64), String> {
    let (i, scale) = lookup(name).ok_or_else(|| {
        let known: Vec<&str> = FIELDS.iter().map(|f| f.name).collect();
        let aliases = ALIASES.iter().map(|a| a.name);
        let known = known.into_iter().chain(aliases).collect::<Vec<_>>();
        format!("{name}: unknown field (known: {})", known.join(", "))
    })?;
    let n = value
        .as_u64()
        .ok_or_else(|| format!("{name}: must be a whole number, got {value}"))?;
    let put = &FIELDS[i].put;
    let range = put.start().div_ceil(scale)..=put.end() / scale;
    match range.contains(&n) {
        true => Ok((i, n * scale)),
        false => Err(out_of_range(name, n, &range)),
    }
}

/// A field's row and the scale of the name it was given by.
fn lookup(name: &str) -> Option<(usize, u64)> {
    let field = FIELDS.iter().position(|f| f.name == name).map(|i| (i, 1));
    let alias = || ALIASES.iter().find(|a| a.name == name);
    field.or_else(|| alias().map(|a| (a.of as usize, a.scale)))
}

fn out_of_range(name: &str, n: u64, range: &RangeInclusive<u64>) -> String {
    format!(
        "{name}: {n} is out of range {}..={}",
        range.start(),
        range.end()
    )
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
    stamp.at_ms > crate::clock::unix_ms().saturating_add(MAX_STAMP_SKEW_MS)
}

pub struct Tunables {
    /// One per row of the table, in table order.
    cells: [AtomicU64; COUNT],
    /// Serialises writers and holds the stamp of the current values.
    stamp: Mutex<Stamp>,
}

impl Tunables {
    /// Starts from the local config with the zero stamp, so any value set
    /// anywhere in the cluster wins over a replica's own defaults.
    pub fn from_config(cfg: &Config) -> Self {
        let t = Tunables {
            cells: std::array::from_fn(|_| AtomicU64::new(0)),
            stamp: Mutex::new(Stamp::default()),
        };
        t.store(&Values::seed(cfg));
        t
    }

    pub fn get(&self) -> Values {
        Values::from_array(std::array::from_fn(|i| self.cells[i].load(Relaxed)))
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
        for (cell, n) in self.cells.iter().zip(v.to_array()) {
            cell.store(n, Relaxed);
        }
    }

    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms())
    }

    pub fn ghost_timeout(&self) -> Duration {
        Duration::from_millis(self.ghost_timeout_ms())
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
        values().update(&serde_json::from_str(json).unwrap())
    }

    #[test]
    fn seeds_come_from_the_config() {
        let t = Tunables::from_config(&Config::default());
        assert_eq!(t.get(), values());
        assert_eq!(t.poll_interval_hint_s(), 60);
        assert_eq!(t.heartbeat_interval(), Duration::from_secs(25));
        assert_eq!(Values::from_array(values().to_array()), values());
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
    fn the_exact_range_and_unknown_messages() {
        assert_eq!(
            up(r#"{"max_age_s": 86401}"#).unwrap_err(),
            "max_age_s: 86401 is out of range 0..=86400"
        );
        assert_eq!(
            up(r#"{"push_admission_per_s": 0}"#).unwrap_err(),
            "push_admission_per_s: 0 is out of range 1..=1000000"
        );
        assert_eq!(
            up(r#"{"nope": 1}"#).unwrap_err(),
            "nope: unknown field (known: heartbeat_interval_ms, ghost_timeout_ms, \
             poll_interval_hint_s, push_admission_per_s, max_age_ms, max_age_s)"
        );
    }

    #[test]
    fn the_document_shows_every_field_alias_and_the_stamp() {
        let stamp = Stamp {
            at_ms: 7,
            node: "n1".into(),
        };
        assert_eq!(
            values().document(&stamp).to_string(),
            r#"{"ghost_timeout_ms":50000,"heartbeat_interval_ms":25000,"max_age_ms":60000,"max_age_s":60,"poll_interval_hint_s":60,"push_admission_per_s":2000,"stamp":{"at_ms":7,"node":"n1"}}"#
        );
    }

    #[test]
    fn gossiped_timers_are_sane() {
        let zero_heartbeat = Values {
            heartbeat_interval_ms: 0,
            ..values()
        };
        let e = zero_heartbeat.sane().unwrap_err();
        assert!(e.contains("heartbeat_interval_ms"), "{e}");
        let huge_ghost = Values {
            ghost_timeout_ms: u64::MAX,
            ..values()
        };
        assert!(huge_ghost.sane().unwrap_err().contains("ghost_timeout_ms"));
        // A local seed outside the PUT ranges still travels.
        let fast = Values {
            heartbeat_interval_ms: 100,
            ghost_timeout_ms: 300,
            push_admission_per_s: 0,
            ..values()
        };
        assert!(fast.sane().is_ok());
        assert!(values().sane().is_ok());
    }
}

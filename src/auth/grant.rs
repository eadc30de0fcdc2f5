//! A verified token: the keys its bearer may learn versions of, and when it
//! stops being valid. Matching allocates nothing (it runs on the hit path).

use serde::Deserialize;

/// What a token grants, after its signature and claims were checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// `exp`, in Unix seconds (the leeway is added by [`Grant::live`]).
    exp: u64,
    /// `keys` entries without `*`: matched exactly.
    exact: Box<[Box<str>]>,
    /// `keys` entries ending in `*`, the `*` removed: matched as prefixes.
    prefixes: Box<[Box<str>]>,
}

/// The claims pollgate reads; anything else in the token is the app's business.
#[derive(Deserialize)]
pub(super) struct Claims {
    exp: u64,
    #[serde(default)]
    keys: Vec<String>,
}

#[cfg(test)]
impl Claims {
    pub(super) fn new(exp: u64, keys: Vec<String>) -> Claims {
        Claims { exp, keys }
    }
}

impl Grant {
    pub(super) fn from_claims(c: Claims) -> Grant {
        let (prefixes, exact): (Vec<String>, Vec<String>) =
            c.keys.into_iter().partition(|k| k.ends_with('*'));
        let prefixes = prefixes
            .into_iter()
            .map(|mut p| {
                p.pop();
                p.into_boxed_str()
            })
            .collect();
        Grant {
            exp: c.exp,
            exact: exact.into_iter().map(String::into_boxed_str).collect(),
            prefixes,
        }
    }

    /// Does the token cover `key`? An exact entry, or a prefix entry (`org:7:*`).
    pub fn covers(&self, key: &str) -> bool {
        self.exact.iter().any(|k| **k == *key)
            || self.prefixes.iter().any(|p| key.starts_with(&**p))
    }

    /// The first of `keys` the token does not cover.
    pub fn first_uncovered<'a, K: AsRef<str> + 'a>(
        &self,
        keys: impl IntoIterator<Item = &'a K>,
    ) -> Option<&'a K> {
        keys.into_iter().find(|k| !self.covers(k.as_ref()))
    }

    /// `exp` in Unix seconds.
    pub fn expires(&self) -> u64 {
        self.exp
    }

    /// How long from now until it stops being valid (leeway included).
    pub fn remaining(&self) -> std::time::Duration {
        let end = self.exp.saturating_add(super::LEEWAY_S);
        std::time::Duration::from_secs(end.saturating_sub(super::now_unix()))
    }

    /// Would a verification at `now` accept it? As `jsonwebtoken` judges
    /// `exp`: up to and including the last second of the leeway. For a
    /// remembered token, so that remembering changes nothing.
    pub fn verifiable(&self, now: u64) -> bool {
        now <= self.exp.saturating_add(super::LEEWAY_S)
    }

    /// Still valid at `now` (Unix seconds), allowing `leeway` for clock skew.
    pub fn live(&self, now: u64) -> bool {
        now < self.exp.saturating_add(super::LEEWAY_S)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(keys: &[&str]) -> Grant {
        Grant::from_claims(Claims {
            exp: 100,
            keys: keys.iter().map(|k| k.to_string()).collect(),
        })
    }

    #[test]
    fn exact_keys_and_prefixes() {
        let g = grant(&["project:42", "org:7:*"]);
        assert!(g.covers("project:42"));
        assert!(!g.covers("project:420"));
        assert!(!g.covers("project:4"));
        assert!(g.covers("org:7:a"));
        assert!(g.covers("org:7:"));
        assert!(!g.covers("org:70:a"));
        assert!(!g.covers("org:7"));
        assert_eq!(g.first_uncovered(&["project:42", "p2", "p3"]), Some(&"p2"));
        assert_eq!(g.first_uncovered(&["org:7:x"]), None);
    }

    #[test]
    fn no_keys_covers_nothing_and_a_bare_star_covers_everything() {
        assert!(!grant(&[]).covers("a"));
        assert!(grant(&["*"]).covers("anything"));
    }

    #[test]
    fn expiry_allows_the_leeway_and_no_more() {
        let g = grant(&[]);
        assert!(g.live(100));
        assert!(g.live(100 + super::super::LEEWAY_S - 1));
        assert!(!g.live(100 + super::super::LEEWAY_S));
    }
}

//! Tokens verified recently, shared by every connection. A keep-alive
//! client's token is remembered by its connection ([`super::ConnCache`]);
//! this catches the rest: a client that reconnects, several tabs with one
//! token, and every raw SSE watch (a new connection each time). A remembered
//! token costs a hash and a compare instead of a signature check.
//!
//! Keyed by the whole token, not its signature alone: a lookup compares
//! every byte, so a token with a valid signature and a changed payload is a
//! miss and gets verified (and refused).

use std::sync::Arc;

use hashbrown::HashMap;
use parking_lot::Mutex;

use super::Grant;

/// Tokens kept at most: a few hundred KiB at ~250 bytes per token and its
/// grant. Past it, expired tokens go first, then the whole cache (a burst
/// of verifications, no unbounded growth however many tokens are minted).
const MAX: usize = 4096;

type Tokens = HashMap<Box<str>, Arc<Grant>, foldhash::fast::RandomState>;

#[derive(Default)]
pub struct Verified {
    /// The tokens, and how many times the keys changed: a verification that
    /// started before a change must not be remembered after it.
    tokens: Mutex<(Tokens, u64)>,
}

impl Verified {
    /// The grant remembered for `token`, or the key generation to pass to
    /// [`Verified::insert`] after verifying it.
    pub fn get(&self, token: &str) -> Result<Arc<Grant>, u64> {
        let t = self.tokens.lock();
        t.0.get(token).cloned().ok_or(t.1)
    }

    /// Remembers a grant verified with the keys of `generation`.
    pub fn insert(&self, token: &str, grant: Arc<Grant>, generation: u64, now: u64) {
        let mut guard = self.tokens.lock();
        let (tokens, current) = &mut *guard;
        if *current != generation {
            return;
        }
        if tokens.len() >= MAX {
            tokens.retain(|_, g| g.live(now));
        }
        if tokens.len() >= MAX {
            tokens.clear();
        }
        tokens.insert(token.into(), grant);
    }

    /// The keys changed (JWKS reloaded): a token verified with a key that
    /// is gone must be verified again.
    pub fn clear(&self) {
        let mut t = self.tokens.lock();
        t.0.clear();
        t.1 += 1;
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.tokens.lock().0.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::grant::Claims;

    fn grant(exp: u64) -> Arc<Grant> {
        Arc::new(Grant::from_claims(Claims::new(exp, vec!["a".into()])))
    }

    #[test]
    fn remembers_exact_tokens_and_stays_bounded() {
        let v = Verified::default();
        v.insert("a.b.c", grant(100), 0, 50);
        assert!(v.get("a.b.c").is_ok());
        assert!(v.get("a.b.x").is_err());
        assert!(v.get("a.b.").is_err());
        for i in 0..MAX {
            v.insert(&format!("t.{i}.s"), grant(10), 0, 50);
        }
        assert!(v.len() <= MAX);
        v.insert("late", grant(100), 0, 50);
        assert!(v.get("late").is_ok());
        assert!(v.len() <= MAX);
    }

    #[test]
    fn a_key_change_forgets_tokens_and_verifications_begun_before_it() {
        let v = Verified::default();
        v.insert("a.b.c", grant(100), 0, 50);
        let before = v.get("x.y.z").unwrap_err();
        v.clear();
        assert!(v.get("a.b.c").is_err());
        v.insert("x.y.z", grant(100), before, 50);
        assert!(v.get("x.y.z").is_err(), "verified with the old keys");
        let now = v.get("x.y.z").unwrap_err();
        v.insert("x.y.z", grant(100), now, 50);
        assert!(v.get("x.y.z").is_ok());
    }
}

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

/// Each token with its grant and the [`super::Auth`] generation (keys and
/// policy) it was verified under: after a reload it no longer counts.
type Tokens = HashMap<Box<str>, (Arc<Grant>, u64), foldhash::fast::RandomState>;

#[derive(Default)]
pub struct Verified {
    tokens: Mutex<Tokens>,
}

impl Verified {
    /// The grant remembered for `token`, verified under `generation`.
    pub fn get(&self, token: &str, generation: u64) -> Option<Arc<Grant>> {
        let tokens = self.tokens.lock();
        let (g, verified_under) = tokens.get(token)?;
        (*verified_under == generation).then(|| g.clone())
    }

    /// Remembers a grant verified under `generation` (read before verifying,
    /// so a reload during the check leaves a stale entry that never counts).
    pub fn insert(&self, token: &str, grant: Arc<Grant>, generation: u64, now: u64) {
        let mut tokens = self.tokens.lock();
        if tokens.len() >= MAX {
            tokens.retain(|_, (g, gen)| g.live(now) && *gen == generation);
        }
        if tokens.len() >= MAX {
            tokens.clear();
        }
        tokens.insert(token.into(), (grant, generation));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.tokens.lock().len()
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
        assert!(v.get("a.b.c", 0).is_some());
        assert!(v.get("a.b.x", 0).is_none());
        assert!(v.get("a.b.", 0).is_none());
        for i in 0..MAX {
            v.insert(&format!("t.{i}.s"), grant(10), 0, 50);
        }
        assert!(v.len() <= MAX);
        v.insert("late", grant(100), 0, 50);
        assert!(v.get("late", 0).is_some());
        assert!(v.len() <= MAX);
    }

    #[test]
    fn a_token_verified_under_other_keys_does_not_count() {
        let v = Verified::default();
        v.insert("a.b.c", grant(100), 3, 50);
        assert!(v.get("a.b.c", 4).is_none());
        assert!(v.get("a.b.c", 3).is_some());
    }
}

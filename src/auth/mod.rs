//! Authorization on the public listener: a JWT issued by the app says which
//! keys its bearer may learn versions of. Without one a hit is never
//! answered from memory (the poll goes to the app, whose auth decides) and
//! push refuses to watch.
//!
//! - [`keys`]: the verification keys (HS256 secrets; a JWKS file, re-read
//!   when it changes or on SIGHUP by [`ReloadHandle`]).
//! - [`grant`]: a verified token's `keys` and expiry; allocation-free matching.
//! - [`carrier`]: where a token travels (header, `token` query parameter,
//!   cookie), and removing it from a query before forwarding.
//!
//! A verified token is cached per connection ([`ConnCache`]): a keep-alive
//! client pays for the signature once, then a string compare per poll; and
//! in a bounded cache shared by all connections ([`verified`]), so a
//! reconnecting client or a raw SSE watch does not pay it again either.
//! A token is never logged: errors name the failure, never the token.

pub mod carrier;
pub mod grant;
pub mod keys;
mod reload;
mod verified;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use http::HeaderMap;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use parking_lot::Mutex;

use crate::metrics::Counter;
pub use grant::Grant;
pub use keys::Keys;
pub use reload::ReloadHandle;

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY_S: u64 = 5;

/// Why a request is not authorized; also the `result` label of
/// `pollgate_auth_total` (with `ok`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No token in the header, the query or the cookie.
    Missing,
    /// Malformed, wrong signature, unknown key, wrong audience, not yet valid.
    Invalid,
    /// Past `exp` (plus the leeway).
    Expired,
    /// Valid, but it does not cover the key asked for.
    Forbidden,
}

const RESULTS: [&str; 5] = ["ok", "missing", "invalid", "expired", "forbidden"];

/// What the config says about authorization.
pub struct Settings<'a> {
    pub secrets: &'a [String],
    pub jwks: Option<&'a Path>,
    pub audience: Option<&'a str>,
    pub cookie: &'a str,
}

pub struct Auth {
    /// What verifies a token: swapped whole by a reload.
    policy: ArcSwap<Policy>,
    /// Bumped whenever `policy` or the JWKS keys change: a grant a
    /// connection remembers from before is verified again, so a secret or
    /// key taken out stops working on keep-alive connections too.
    generation: AtomicU64,
    /// Fixed for the process: the clients' contract, not a secret.
    cookie: String,
    /// Tokens verified recently, for every connection (bounded).
    verified: verified::Verified,
    /// `ok` counts tokens verified (once per connection that keeps its
    /// token); refusals count requests.
    results: [Counter; RESULTS.len()],
}

/// The keys and the audience a token is verified with (`auth_jwt_secret`,
/// `auth_jwks`, `auth_audience`): built before a reload commits, so a bad
/// file refuses the reload instead of leaving authorization half changed.
pub struct Policy {
    keys: Keys,
    audience: Option<String>,
}

impl Policy {
    pub fn new(s: &Settings) -> Result<Policy, String> {
        Ok(Policy {
            keys: Keys::new(s.secrets, s.jwks)?,
            audience: s.audience.map(str::to_string),
        })
    }
}

impl Settings<'_> {
    /// Whether these settings turn authorization on.
    pub fn enabled(&self) -> bool {
        !self.secrets.is_empty() || self.jwks.is_some()
    }
}

impl Auth {
    /// `None` when no secret and no JWKS is configured: authorization is off.
    pub fn new(s: &Settings) -> Result<Option<Auth>, String> {
        if !s.enabled() {
            return Ok(None);
        }
        Ok(Some(Auth {
            policy: ArcSwap::from_pointee(Policy::new(s)?),
            generation: AtomicU64::new(0),
            cookie: s.cookie.to_string(),
            verified: Default::default(),
            results: Default::default(),
        }))
    }

    /// Puts a reload's policy in force; remembered grants are verified again.
    pub fn install(&self, policy: Policy) {
        self.policy.store(Arc::new(policy));
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Whether a JWKS file is configured (then it is watched for changes).
    pub fn has_jwks(&self) -> bool {
        self.policy.load().keys.has_jwks()
    }

    /// Re-reads the JWKS file (see [`Keys::reload`]); a change makes
    /// remembered grants be verified again.
    pub fn reload_jwks(&self) -> Result<bool, String> {
        let changed = self.policy.load().keys.reload()?;
        if changed {
            self.generation.fetch_add(1, Ordering::Release);
        }
        Ok(changed)
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The request's token, wherever it travels (see [`carrier::find`]).
    pub fn token<'a>(&self, headers: &'a HeaderMap, query: Option<&'a str>) -> Option<&'a [u8]> {
        carrier::find(headers, query, &self.cookie)
    }

    /// The token from the header or the query only. For a WebSocket opened
    /// by a page of a foreign origin: the browser sends the user's cookies
    /// along, and no CORS check stands between that page and the notices.
    pub fn token_not_cookie<'a>(
        &self,
        headers: &'a HeaderMap,
        query: Option<&'a str>,
    ) -> Option<&'a [u8]> {
        carrier::find(headers, query, "")
    }

    /// Verifies a token (signature, `exp`, `nbf`, `aud`) into a grant;
    /// counts `ok` (the caller counts refusals, with the ones it adds).
    pub fn verify(&self, token: &str) -> Result<Grant, Refusal> {
        let g = self.verify_uncounted(token)?;
        self.count(None);
        Ok(g)
    }

    /// [`Auth::verify`], or the grant of the same token verified before on
    /// any connection under the same `generation` of keys and policy.
    fn verify_shared(&self, token: &str, generation: u64) -> Result<Arc<Grant>, Refusal> {
        if let Some(g) = self.verified.get(token, generation) {
            if !g.verifiable(now_unix()) {
                return Err(Refusal::Expired);
            }
            self.count(None);
            return Ok(g);
        }
        let g = Arc::new(self.verify(token)?);
        self.verified
            .insert(token, g.clone(), generation, now_unix());
        Ok(g)
    }

    fn verify_uncounted(&self, token: &str) -> Result<Grant, Refusal> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| Refusal::Invalid)?;
        let policy = self.policy.load();
        let candidates = policy.keys.candidates(header.alg, header.kid.as_deref());
        let mut verdict = Err(Refusal::Invalid);
        for (alg, key) in &candidates.keys {
            let validation = validation(*alg, policy.audience.as_deref());
            match jsonwebtoken::decode::<grant::Claims>(token, key, &validation) {
                Ok(data) => return Ok(Grant::from_claims(data.claims)),
                // The signature verified before the claims were checked.
                Err(e) if *e.kind() == ErrorKind::ExpiredSignature => {
                    verdict = Err(Refusal::Expired)
                }
                Err(_) => {}
            }
        }
        verdict
    }

    /// Counts one result: `None` is `ok`.
    pub fn count(&self, r: Option<Refusal>) {
        let i = match r {
            None => 0,
            Some(r) => r as usize + 1,
        };
        self.results[i].inc();
    }

    pub fn render_metrics(&self, o: &mut String) {
        let rows = RESULTS
            .iter()
            .zip(&self.results)
            .map(|(n, c)| (*n, c.get()));
        #[rustfmt::skip]
        crate::metrics::family(o, "counter", "pollgate_auth_total", "Token checks on the public listener by result.", "result", rows);
    }
}

fn validation(alg: Algorithm, audience: Option<&str>) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = LEEWAY_S;
    v.validate_nbf = true;
    if let Some(aud) = audience {
        v.set_audience(&[aud]);
        v.set_required_spec_claims(&["exp", "aud"]);
    }
    v
}

/// Unix seconds now: `exp` and `nbf` are in those. The coarse clock (the
/// kernel's last tick, a few ms old, read without the TSC): whole seconds
/// are all expiry needs, and a remembered token's expiry is checked per hit.
pub fn now_unix() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) };
    if r != 0 {
        return SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
    }
    ts.tv_sec.max(0) as u64
}

/// The token a connection last presented and what it grants. A keep-alive
/// client sends the same token on every poll: comparing it with this one
/// costs a `memcmp`, verifying it again would cost a signature check.
#[derive(Default)]
pub struct ConnCache {
    last: Mutex<Option<Remembered>>,
}

/// A verified token, its grant, and the [`Auth`] generation it was verified under.
struct Remembered {
    token: Box<str>,
    grant: Arc<Grant>,
    generation: u64,
}

impl ConnCache {
    /// The grant for this request's token (verified, or remembered); a
    /// refusal is counted.
    pub fn grant(&self, auth: &Auth, token: Option<&[u8]>) -> Result<Arc<Grant>, Refusal> {
        counted(auth, self.grant_uncounted(auth, token))
    }

    /// The hit path's check: is `key` covered by this request's token?
    /// No allocation and no refcount traffic when the token is remembered.
    pub fn check(&self, auth: &Auth, token: Option<&[u8]>, key: &str) -> Result<(), Refusal> {
        let known =
            token.and_then(|t| self.with_known(auth, t, |g| (g.live(now_unix()), g.covers(key))));
        let r = match known {
            Some((true, true)) => return Ok(()),
            Some((false, _)) => Err(Refusal::Expired),
            Some((true, false)) => Err(Refusal::Forbidden),
            None => self
                .grant_uncounted(auth, token)
                .and_then(|g| g.covers(key).then_some(()).ok_or(Refusal::Forbidden)),
        };
        counted(auth, r)
    }

    fn grant_uncounted(&self, auth: &Auth, token: Option<&[u8]>) -> Result<Arc<Grant>, Refusal> {
        let t = token.ok_or(Refusal::Missing)?;
        if let Some(g) = self.with_known(auth, t, Arc::clone) {
            return g.live(now_unix()).then_some(g).ok_or(Refusal::Expired);
        }
        let t = std::str::from_utf8(t).map_err(|_| Refusal::Invalid)?;
        // Read before verifying: a reload during the check leaves a stale
        // generation behind, so the next request verifies again.
        let generation = auth.generation();
        let g = auth.verify_shared(t, generation)?;
        *self.last.lock() = Some(Remembered {
            token: t.into(),
            grant: g.clone(),
            generation,
        });
        Ok(g)
    }

    /// `f` of the grant remembered for `token`, if it is the last one seen
    /// and nothing that verifies tokens changed since.
    fn with_known<R>(
        &self,
        auth: &Auth,
        token: &[u8],
        f: impl FnOnce(&Arc<Grant>) -> R,
    ) -> Option<R> {
        let last = self.last.lock();
        let r = last.as_ref()?;
        (r.token.as_bytes() == token && r.generation == auth.generation()).then(|| f(&r.grant))
    }
}

fn counted<T>(auth: &Auth, r: Result<T, Refusal>) -> Result<T, Refusal> {
    if let Err(e) = &r {
        auth.count(Some(*e));
    }
    r
}

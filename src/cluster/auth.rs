//! Message authentication: HMAC-SHA256 with `cluster_key` over a timestamp
//! and the body, a replay window, and a cache of recently seen MACs so a
//! captured message cannot be played back inside the window either.
//!
//! Frame: `[ts_ms: u64 LE][nonce: u64][mac: 32][body]`. A request's MAC
//! covers `ts ‖ nonce ‖ body`; a reply's covers `ts ‖ nonce ‖ request MAC ‖
//! body`, binding the reply to the request it answers (an old reply cannot be
//! replayed to a new pull). The random nonce keeps two honest messages with
//! the same body in the same millisecond from looking like a replay.

use std::collections::VecDeque;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use hashbrown::HashSet;
use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

pub const MAC_LEN: usize = 32;
const HEAD: usize = 16 + MAC_LEN;

/// A message older than this (by the sender's clock) is refused: replay
/// window and the clock skew replicas may have.
pub const MAX_AGE_MS: u64 = 30_000;
/// A message this far in the sender's future is refused too.
pub const MAX_FUTURE_MS: u64 = 30_000;
/// Bound on the seen-MAC cache: at ~20 pushes/s per peer plus pulls, 30 s
/// windows of even 100 peers stay well below it. Beyond it the oldest go first.
const SEEN_CAP: usize = 200_000;

/// Why a frame was refused; the label of `pollgate_cluster_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    #[error("bad MAC (wrong cluster_key?)")]
    BadMac,
    #[error("timestamp older than the replay window")]
    Stale,
    #[error("timestamp too far in the future")]
    Future,
    #[error("message already seen (replay)")]
    Replay,
    #[error("malformed message")]
    Malformed,
}

impl Reject {
    pub const ALL: [Reject; 5] = [
        Reject::BadMac,
        Reject::Stale,
        Reject::Future,
        Reject::Replay,
        Reject::Malformed,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Reject::BadMac => "bad_mac",
            Reject::Stale => "stale",
            Reject::Future => "future",
            Reject::Replay => "replay",
            Reject::Malformed => "malformed",
        }
    }
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub struct Auth {
    /// Keyed once; cloned per message (cheaper than re-keying).
    mac: HmacSha256,
    seen: Mutex<Seen>,
}

/// MACs seen within the window, oldest first, for replay refusal.
#[derive(Default)]
struct Seen {
    set: HashSet<[u8; MAC_LEN]>,
    order: VecDeque<(u64, [u8; MAC_LEN])>,
}

/// A verified request: its MAC (to bind the reply) and body.
pub struct Opened {
    pub mac: [u8; MAC_LEN],
    pub body: Bytes,
}

impl Auth {
    /// `None` (only with `insecure_cluster`): an empty key, so frames still
    /// carry integrity and replay checks but anyone can forge them.
    pub fn new(key: Option<&str>) -> Self {
        let key = key.unwrap_or("").as_bytes();
        Auth {
            mac: HmacSha256::new_from_slice(key).expect("HMAC takes any key length"),
            seen: Mutex::new(Seen::default()),
        }
    }

    /// Frames a request body. Returns the frame and its MAC (to check the reply).
    pub fn seal(&self, body: &[u8]) -> (Bytes, [u8; MAC_LEN]) {
        self.seal_at(unix_ms(), &[], body)
    }

    /// Frames a reply to the request whose MAC is `req_mac`.
    pub fn seal_reply(&self, req_mac: &[u8; MAC_LEN], body: &[u8]) -> Bytes {
        self.seal_at(unix_ms(), req_mac, body).0
    }

    pub fn seal_at(&self, ts: u64, bound: &[u8], body: &[u8]) -> (Bytes, [u8; MAC_LEN]) {
        let nonce = fastrand::u64(..);
        let tag = self.tag(ts, nonce, bound, body);
        let mut b = BytesMut::with_capacity(HEAD + body.len());
        b.put_u64_le(ts);
        b.put_u64_le(nonce);
        b.put_slice(&tag);
        b.put_slice(body);
        (b.freeze(), tag)
    }

    /// Verifies a request frame: MAC, window and not seen before.
    pub fn open(&self, frame: Bytes) -> Result<Opened, Reject> {
        let (ts, mac) = self.verify(&frame, &[])?;
        let now = unix_ms();
        // Saturating: a forged `ts` near u64::MAX (insecure_cluster) must be
        // refused, not overflow.
        if ts.saturating_add(MAX_AGE_MS) < now {
            return Err(Reject::Stale);
        }
        if ts > now.saturating_add(MAX_FUTURE_MS) {
            return Err(Reject::Future);
        }
        self.first_sighting(ts, now, mac)?;
        Ok(Opened {
            mac,
            body: frame.slice(HEAD..),
        })
    }

    /// Verifies a reply to the request whose MAC is `req_mac`. The binding
    /// makes replay impossible, so no window or cache is needed.
    pub fn open_reply(&self, frame: Bytes, req_mac: &[u8; MAC_LEN]) -> Result<Bytes, Reject> {
        self.verify(&frame, req_mac)?;
        Ok(frame.slice(HEAD..))
    }

    fn verify(&self, frame: &[u8], bound: &[u8]) -> Result<(u64, [u8; MAC_LEN]), Reject> {
        if frame.len() < HEAD {
            return Err(Reject::Malformed);
        }
        let ts = u64::from_le_bytes(frame[..8].try_into().expect("8 bytes"));
        let given: [u8; MAC_LEN] = frame[16..HEAD].try_into().expect("32 bytes");
        let mut m = self.mac.clone();
        m.update(&frame[..16]);
        m.update(bound);
        m.update(&frame[HEAD..]);
        // verify_slice compares in constant time.
        m.verify_slice(&given).map_err(|_| Reject::BadMac)?;
        Ok((ts, given))
    }

    fn tag(&self, ts: u64, nonce: u64, bound: &[u8], body: &[u8]) -> [u8; MAC_LEN] {
        let mut m = self.mac.clone();
        m.update(&ts.to_le_bytes());
        m.update(&nonce.to_le_bytes());
        m.update(bound);
        m.update(body);
        m.finalize().into_bytes().into()
    }

    fn first_sighting(&self, ts: u64, now: u64, mac: [u8; MAC_LEN]) -> Result<(), Reject> {
        let mut seen = self.seen.lock();
        let Seen { set, order } = &mut *seen;
        while let Some(&(t, m)) = order.front() {
            if t.saturating_add(MAX_AGE_MS) >= now && order.len() < SEEN_CAP {
                break;
            }
            set.remove(&m);
            order.pop_front();
        }
        if !set.insert(mac) {
            return Err(Reject::Replay);
        }
        order.push_back((ts.max(now), mac));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_frame_opens_once() {
        let a = Auth::new(Some("k"));
        let (frame, _) = a.seal(b"hello");
        assert_eq!(&a.open(frame.clone()).unwrap().body[..], b"hello");
        assert_eq!(a.open(frame).err(), Some(Reject::Replay));
    }

    #[test]
    fn wrong_key_and_tampering_are_refused() {
        let (frame, _) = Auth::new(Some("k1")).seal(b"hello");
        assert_eq!(
            Auth::new(Some("k2")).open(frame.clone()).err(),
            Some(Reject::BadMac)
        );
        let mut t = frame.to_vec();
        *t.last_mut().unwrap() ^= 1;
        let a = Auth::new(Some("k1"));
        assert_eq!(a.open(t.into()).err(), Some(Reject::BadMac));
        assert_eq!(
            a.open(Bytes::from_static(b"short")).err(),
            Some(Reject::Malformed)
        );
    }

    #[test]
    fn same_body_same_millisecond_is_not_a_replay() {
        let a = Auth::new(Some("k"));
        let ts = unix_ms();
        assert!(a.open(a.seal_at(ts, &[], b"x").0).is_ok());
        assert!(a.open(a.seal_at(ts, &[], b"x").0).is_ok());
    }

    #[test]
    fn window_refuses_old_and_future() {
        let a = Auth::new(Some("k"));
        let old = a.seal_at(unix_ms() - MAX_AGE_MS - 1000, &[], b"x").0;
        assert_eq!(a.open(old).err(), Some(Reject::Stale));
        let future = a.seal_at(unix_ms() + MAX_FUTURE_MS + 1000, &[], b"x").0;
        assert_eq!(a.open(future).err(), Some(Reject::Future));
        // Forgeable with insecure_cluster: must be refused, not overflow.
        let forged = Auth::new(None).seal_at(u64::MAX, &[], b"x").0;
        assert_eq!(Auth::new(None).open(forged).err(), Some(Reject::Future));
    }

    #[test]
    fn reply_is_bound_to_its_request() {
        let a = Auth::new(Some("k"));
        let (_, m1) = a.seal(b"req1");
        let (_, m2) = a.seal(b"req2");
        let reply = a.seal_reply(&m1, b"answer");
        assert_eq!(&a.open_reply(reply.clone(), &m1).unwrap()[..], b"answer");
        assert_eq!(a.open_reply(reply, &m2).err(), Some(Reject::BadMac));
    }
}

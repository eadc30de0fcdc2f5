//! Message authentication: HMAC-SHA256 with `cluster_key` over a timestamp
//! and the body, a replay window, and a cache of recently seen MACs so a
//! captured message cannot be played back inside the window either.
//!
//! Request: `[ts_ms: u64 LE][nonce: u64][mac: 32][len: u16 LE][to][body]`,
//! its MAC covering `ts ‖ nonce ‖ len ‖ to ‖ body`; `to` is the recipient's
//! `node_id` (empty while the sender does not know it), checked by the
//! cluster, so a frame captured on its way to one replica is refused by every
//! other whatever addresses and proxies lie between them. Reply:
//! `[ts][nonce][mac][body]`, its MAC covering `ts ‖ nonce ‖ request MAC ‖ body`,
//! binding the reply to the request it answers (an old reply cannot be
//! replayed to a new pull). The random nonce keeps two honest messages with
//! the same body in the same millisecond from looking like a replay.

use std::collections::VecDeque;
use std::sync::Arc;

use arc_swap::ArcSwap;
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
    #[error("bad MAC (wrong cluster_key, or tampered with)")]
    BadMac,
    #[error("timestamp older than the replay window")]
    Stale,
    #[error("timestamp too far in the future")]
    Future,
    #[error("message already seen (replay)")]
    Replay,
    #[error("malformed message")]
    Malformed,
    /// Checked by the cluster, which knows its `node_id`; counted here too.
    #[error("addressed to another replica's node_id")]
    Misaddressed,
}

impl Reject {
    pub const ALL: [Reject; 6] = [
        Reject::BadMac,
        Reject::Stale,
        Reject::Future,
        Reject::Replay,
        Reject::Malformed,
        Reject::Misaddressed,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Reject::BadMac => "bad_mac",
            Reject::Stale => "stale",
            Reject::Future => "future",
            Reject::Replay => "replay",
            Reject::Malformed => "malformed",
            Reject::Misaddressed => "misaddressed",
        }
    }
}

/// A request's recipient field, carried and MACed: length-prefixed, so no
/// two names run together. Names longer than a u16 are cut (config keeps
/// `node_id` far shorter).
fn bound_to(recipient: &str) -> Vec<u8> {
    let name = &recipient.as_bytes()[..recipient.len().min(usize::from(u16::MAX))];
    let mut b = Vec::with_capacity(2 + name.len());
    b.extend_from_slice(&(name.len() as u16).to_le_bytes());
    b.extend_from_slice(name);
    b
}

/// Bytes of a request's recipient field (length prefix included).
fn bound_len(frame: &[u8]) -> Result<usize, Reject> {
    let len = frame.get(HEAD..HEAD + 2).ok_or(Reject::Malformed)?;
    let len = 2 + usize::from(u16::from_le_bytes([len[0], len[1]]));
    match frame.len() >= HEAD + len {
        true => Ok(len),
        false => Err(Reject::Malformed),
    }
}

pub use crate::clock::unix_ms;

pub struct Auth {
    /// One per `cluster_key`, keyed once and cloned per message (cheaper
    /// than re-keying). The first signs; any of them verifies, so a key
    /// rotates with no moment in which two replicas refuse each other.
    /// Swapped whole by a reload.
    macs: ArcSwap<Vec<HmacSha256>>,
    seen: Mutex<Seen>,
}

/// MACs seen within the window, oldest first, for replay refusal.
#[derive(Default)]
struct Seen {
    set: HashSet<[u8; MAC_LEN]>,
    order: VecDeque<(u64, [u8; MAC_LEN])>,
}

/// A verified request: its MAC (to bind the reply), recipient and body.
pub struct Opened {
    pub mac: [u8; MAC_LEN],
    /// The `node_id` the sender sealed it for; empty: it did not know ours.
    pub to: Bytes,
    pub body: Bytes,
}

impl Auth {
    /// No key (only with `insecure_cluster`): an empty key, so frames still
    /// carry integrity and replay checks but anyone can forge them.
    pub fn new(keys: &[String]) -> Self {
        Auth {
            macs: ArcSwap::from_pointee(keyed(keys)),
            seen: Mutex::new(Seen::default()),
        }
    }

    /// Replaces the keys (a reload); frames in flight under a key still
    /// listed keep verifying.
    pub fn set_keys(&self, keys: &[String]) {
        self.macs.store(Arc::new(keyed(keys)));
    }

    /// Frames a request body for the replica whose `node_id` is `to` (empty
    /// when unknown). Returns the frame and its MAC (to check the reply).
    pub fn seal(&self, to: &str, body: &[u8]) -> (Bytes, [u8; MAC_LEN]) {
        self.seal_request_at(unix_ms(), to, body)
    }

    /// [`Auth::seal`] with a given timestamp (tests forge old and future ones).
    pub fn seal_request_at(&self, ts: u64, to: &str, body: &[u8]) -> (Bytes, [u8; MAC_LEN]) {
        let to = bound_to(to);
        self.seal_at(ts, &to, &to, body)
    }

    /// Frames a reply to the request whose MAC is `req_mac`.
    pub fn seal_reply(&self, req_mac: &[u8; MAC_LEN], body: &[u8]) -> Bytes {
        self.seal_at(unix_ms(), req_mac, &[], body).0
    }

    /// The frame: head, MAC over `bound`, then `carried` (what of `bound`
    /// the receiver cannot know by itself) and the body.
    fn seal_at(
        &self,
        ts: u64,
        bound: &[u8],
        carried: &[u8],
        body: &[u8],
    ) -> (Bytes, [u8; MAC_LEN]) {
        let nonce = fastrand::u64(..);
        let tag = self.tag(ts, nonce, bound, body);
        let mut b = BytesMut::with_capacity(HEAD + carried.len() + body.len());
        b.put_u64_le(ts);
        b.put_u64_le(nonce);
        b.put_slice(&tag);
        b.put_slice(carried);
        b.put_slice(body);
        (b.freeze(), tag)
    }

    /// Verifies a request frame: MAC, window and not seen before. Whom it
    /// was sealed for is the caller's to check ([`Opened::to`]).
    pub fn open(&self, frame: Bytes) -> Result<Opened, Reject> {
        let to_end = HEAD + bound_len(&frame)?;
        let (ts, mac) = self.verify(&frame, &frame[HEAD..to_end], to_end)?;
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
            to: frame.slice(HEAD + 2..to_end),
            body: frame.slice(to_end..),
        })
    }

    /// Verifies a reply to the request whose MAC is `req_mac`. The binding
    /// makes replay impossible, so no window or cache is needed.
    pub fn open_reply(&self, frame: Bytes, req_mac: &[u8; MAC_LEN]) -> Result<Bytes, Reject> {
        self.verify(&frame, req_mac, HEAD)?;
        Ok(frame.slice(HEAD..))
    }

    /// Checks the MAC over the head, `bound` and the body starting at `body_at`.
    fn verify(
        &self,
        frame: &[u8],
        bound: &[u8],
        body_at: usize,
    ) -> Result<(u64, [u8; MAC_LEN]), Reject> {
        if frame.len() < HEAD {
            return Err(Reject::Malformed);
        }
        let ts = u64::from_le_bytes(frame[..8].try_into().expect("8 bytes"));
        let given: [u8; MAC_LEN] = frame[16..HEAD].try_into().expect("32 bytes");
        let verifies = |mac: &HmacSha256| {
            let mut m = mac.clone();
            m.update(&frame[..16]);
            m.update(bound);
            m.update(&frame[body_at..]);
            // verify_slice compares in constant time.
            m.verify_slice(&given).is_ok()
        };
        match self.macs.load().iter().any(verifies) {
            true => Ok((ts, given)),
            false => Err(Reject::BadMac),
        }
    }

    fn tag(&self, ts: u64, nonce: u64, bound: &[u8], body: &[u8]) -> [u8; MAC_LEN] {
        let mut m = self.macs.load()[0].clone();
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

/// One keyed MAC per key; the empty key when there is none.
fn keyed(keys: &[String]) -> Vec<HmacSha256> {
    let mac =
        |k: &str| HmacSha256::new_from_slice(k.as_bytes()).expect("HMAC takes any key length");
    match keys.is_empty() {
        true => vec![mac("")],
        false => keys.iter().map(|k| mac(k)).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(k: &[&str]) -> Vec<String> {
        k.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_key_rotates_without_a_refusal() {
        let (old, both_old_first, both_new_first, new) = (
            Auth::new(&keys(&["old"])),
            Auth::new(&keys(&["old", "new"])),
            Auth::new(&keys(&["new", "old"])),
            Auth::new(&keys(&["new"])),
        );
        // Neighbouring steps of the rotation understand each other both ways.
        for (a, b) in [
            (&old, &both_old_first),
            (&both_old_first, &both_new_first),
            (&both_new_first, &new),
        ] {
            assert!(b.open(a.seal("b", b"x").0).is_ok());
            assert!(a.open(b.seal("b", b"y").0).is_ok());
        }
        assert_eq!(new.open(old.seal("b", b"z").0).err(), Some(Reject::BadMac));
        old.set_keys(&keys(&["new"]));
        assert!(
            new.open(old.seal("b", b"w").0).is_ok(),
            "set_keys took effect"
        );
    }

    #[test]
    fn sealed_frame_opens_once() {
        let a = Auth::new(&keys(&["k"]));
        let (frame, _) = a.seal("b", b"hello");
        assert_eq!(&a.open(frame.clone()).unwrap().body[..], b"hello");
        assert_eq!(a.open(frame).err(), Some(Reject::Replay));
    }

    #[test]
    fn wrong_key_and_tampering_are_refused() {
        let (frame, _) = Auth::new(&keys(&["k1"])).seal("b", b"hello");
        assert_eq!(
            Auth::new(&keys(&["k2"])).open(frame.clone()).err(),
            Some(Reject::BadMac)
        );
        let mut t = frame.to_vec();
        *t.last_mut().unwrap() ^= 1;
        let a = Auth::new(&keys(&["k1"]));
        assert_eq!(a.open(t.into()).err(), Some(Reject::BadMac));
        assert_eq!(
            a.open(Bytes::from_static(b"short")).err(),
            Some(Reject::Malformed)
        );
    }

    #[test]
    fn same_body_same_millisecond_is_not_a_replay() {
        let a = Auth::new(&keys(&["k"]));
        let ts = unix_ms();
        assert!(a.open(a.seal_request_at(ts, "b", b"x").0).is_ok());
        assert!(a.open(a.seal_request_at(ts, "b", b"x").0).is_ok());
    }

    #[test]
    fn window_refuses_old_and_future() {
        let a = Auth::new(&keys(&["k"]));
        let old = a
            .seal_request_at(unix_ms() - MAX_AGE_MS - 1000, "b", b"x")
            .0;
        assert_eq!(a.open(old).err(), Some(Reject::Stale));
        let future = a
            .seal_request_at(unix_ms() + MAX_FUTURE_MS + 1000, "b", b"x")
            .0;
        assert_eq!(a.open(future).err(), Some(Reject::Future));
        // Forgeable with insecure_cluster: must be refused, not overflow.
        let forged = Auth::new(&[]).seal_request_at(u64::MAX, "b", b"x").0;
        assert_eq!(Auth::new(&[]).open(forged).err(), Some(Reject::Future));
    }

    #[test]
    fn reply_is_bound_to_its_request() {
        let a = Auth::new(&keys(&["k"]));
        let (_, m1) = a.seal("b", b"req1");
        let (_, m2) = a.seal("b", b"req2");
        let reply = a.seal_reply(&m1, b"answer");
        assert_eq!(&a.open_reply(reply.clone(), &m1).unwrap()[..], b"answer");
        assert_eq!(a.open_reply(reply, &m2).err(), Some(Reject::BadMac));
    }

    #[test]
    fn the_recipient_is_carried_and_covered_by_the_mac() {
        let a = Auth::new(&keys(&["k"]));
        let (frame, _) = a.seal("node-1", b"x");
        let opened = a.open(frame.clone()).unwrap();
        assert_eq!(
            (&opened.to[..], &opened.body[..]),
            (&b"node-1"[..], &b"x"[..])
        );
        // Readdressed on the way ("node-2"): the MAC no longer verifies.
        let mut t = frame.to_vec();
        let at = HEAD + 2 + "node-".len();
        t[at] = b'2';
        assert_eq!(a.open(t.into()).err(), Some(Reject::BadMac));
        // Unknown recipient: empty `to`.
        assert!(a.open(a.seal("", b"y").0).unwrap().to.is_empty());
        // A length running past the frame is malformed, not a panic.
        let mut t = frame[..HEAD + 4].to_vec();
        t[HEAD..HEAD + 2].copy_from_slice(&100u16.to_le_bytes());
        assert_eq!(a.open(t.into()).err(), Some(Reject::Malformed));
    }
}

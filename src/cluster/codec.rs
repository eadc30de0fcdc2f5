//! Compact binary encoding of gossip messages: LEB128 varints and
//! length-prefixed strings. Decoding checks every length and every key, and
//! returns an error rather than panicking on any input.

use bytes::{BufMut, Bytes, BytesMut};
use compact_str::CompactString;

use crate::tunables::{self, Stamp, Values};

/// Bumped on any incompatible change; a peer speaking another one is refused.
pub const FORMAT: u8 = 1;

const TAG_DELTAS: u8 = 1;
const TAG_PULL: u8 = 2;
const TAG_ACK: u8 = 3;
const TAG_PULL_REPLY: u8 = 4;
// 5 was `IsSelf`, answered before requests were addressed by node_id.
const TAG_IDENTITY: u8 = 6;

/// One key's state as gossiped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// Inline up to 24 bytes: decoding a 1M-key pull allocates no key.
    pub key: CompactString,
    pub version: u64,
    /// How long ago a trusted source confirmed it; `None`: never confirmed.
    pub confirmed_ago_ms: Option<u64>,
}

/// The cluster-wide tunables as carried by every message (LWW register).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigFrame {
    pub stamp: Stamp,
    pub values: Values,
}

/// What a replica sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Sender's `node_id`: a replica ignores its own messages.
    pub from: String,
    pub config: ConfigFrame,
    pub body: Request,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Keys that advanced at the sender.
    Deltas(Vec<Item>),
    /// "What changed since": the epoch the requester last saw from this peer
    /// and, per shard, the change count it has seen up to.
    Pull { epoch: u64, seqs: Vec<u64> },
}

/// What a replica answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Deltas merged; carries the responder's config so LWW flows both ways.
    Ack {
        config: ConfigFrame,
    },
    Pull(PullReply),
    /// The request was not addressed to the responder (`to` empty or another
    /// node_id), or came from its own node_id: nothing in it was used. Says
    /// who answers at that address, so the sender can address it.
    Identity(Identity),
}

/// Who a replica is: its `node_id`, and its process's random `instance`
/// (our own node_id with another instance is a clash, not ourselves).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub node_id: String,
    pub instance: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullReply {
    pub config: ConfigFrame,
    pub epoch: u64,
    /// Shards fully covered by `items`, with the count each is now complete to.
    pub covered: Vec<(u32, u64)>,
    /// Every shard's current count (for the keys-behind estimate).
    pub current: Vec<u64>,
    /// True when the byte budget cut the page short: ask again at once.
    pub more: bool,
    pub items: Vec<Item>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("truncated message")]
    Truncated,
    #[error("unknown message tag {0}")]
    Tag(u8),
    #[error("format {0} not supported (this node speaks {FORMAT})")]
    Format(u8),
    #[error("invalid key: {0}")]
    Key(&'static str),
    #[error("invalid UTF-8 string")]
    Utf8,
    #[error("length {0} out of bounds")]
    Length(u64),
    #[error("trailing bytes")]
    Trailing,
}

// ---------------------------------------------------------------------------
// Encoding.

pub fn encode_message(m: &Message) -> Bytes {
    let mut b = BytesMut::with_capacity(256);
    b.put_u8(FORMAT);
    match &m.body {
        Request::Deltas(items) => {
            b.put_u8(TAG_DELTAS);
            header(&mut b, &m.from, &m.config);
            put_items(&mut b, items);
        }
        Request::Pull { epoch, seqs } => {
            b.put_u8(TAG_PULL);
            header(&mut b, &m.from, &m.config);
            put_u64(&mut b, *epoch);
            put_list(&mut b, seqs);
        }
    }
    b.freeze()
}

pub fn encode_reply(r: &Reply) -> Bytes {
    let mut b = BytesMut::with_capacity(256);
    b.put_u8(FORMAT);
    match r {
        Reply::Ack { config } => {
            b.put_u8(TAG_ACK);
            put_config(&mut b, config);
        }
        Reply::Identity(id) => {
            b.put_u8(TAG_IDENTITY);
            put_str(&mut b, &id.node_id);
            put_u64(&mut b, id.instance);
        }
        Reply::Pull(p) => {
            let mut w = PullWriter::new(&p.config, p.epoch);
            p.items.iter().for_each(|i| w.item(i));
            p.covered.iter().for_each(|&(s, q)| w.cover(s, q));
            return w.finish(&p.current, p.more);
        }
    }
    b.freeze()
}

/// Builds a pull reply while scanning the table, without an intermediate Vec
/// of items: the scan of a 1M-key table goes straight into the buffer.
pub struct PullWriter {
    items: BytesMut,
    count: u64,
    head: BytesMut,
    covered: Vec<(u32, u64)>,
}

impl PullWriter {
    pub fn new(config: &ConfigFrame, epoch: u64) -> Self {
        let mut head = BytesMut::with_capacity(128);
        head.put_u8(FORMAT);
        head.put_u8(TAG_PULL_REPLY);
        put_config(&mut head, config);
        put_u64(&mut head, epoch);
        PullWriter {
            items: BytesMut::with_capacity(4096),
            count: 0,
            head,
            covered: Vec::new(),
        }
    }

    pub fn item(&mut self, i: &Item) {
        put_item(&mut self.items, &i.key, i.version, i.confirmed_ago_ms);
        self.count += 1;
    }

    pub fn item_parts(&mut self, key: &str, version: u64, confirmed_ago_ms: Option<u64>) {
        put_item(&mut self.items, key, version, confirmed_ago_ms);
        self.count += 1;
    }

    pub fn cover(&mut self, shard: u32, seq: u64) {
        self.covered.push((shard, seq));
    }

    /// Bytes of items so far (the page budget is checked against this).
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn finish(mut self, current: &[u64], more: bool) -> Bytes {
        put_u64(&mut self.head, self.covered.len() as u64);
        for &(s, q) in &self.covered {
            put_u64(&mut self.head, u64::from(s));
            put_u64(&mut self.head, q);
        }
        put_list(&mut self.head, current);
        self.head.put_u8(u8::from(more));
        put_u64(&mut self.head, self.count);
        self.head.extend_from_slice(&self.items);
        self.head.freeze()
    }
}

fn header(b: &mut BytesMut, from: &str, config: &ConfigFrame) {
    put_str(b, from);
    put_config(b, config);
}

fn put_config(b: &mut BytesMut, c: &ConfigFrame) {
    put_u64(b, c.stamp.at_ms);
    put_str(b, &c.stamp.node);
    // Every tunable, in the order of the table in `tunables.rs`.
    for x in c.values.to_array() {
        put_u64(b, x);
    }
}

fn put_items(b: &mut BytesMut, items: &[Item]) {
    put_u64(b, items.len() as u64);
    for i in items {
        put_item(b, &i.key, i.version, i.confirmed_ago_ms);
    }
}

/// `ago` is sent as 0 for "never confirmed", else ago + 1.
fn put_item(b: &mut BytesMut, key: &str, version: u64, ago: Option<u64>) {
    put_str(b, key);
    put_u64(b, version);
    put_u64(b, ago.map_or(0, |a| a.saturating_add(1)));
}

fn put_list(b: &mut BytesMut, xs: &[u64]) {
    put_u64(b, xs.len() as u64);
    xs.iter().for_each(|&x| put_u64(b, x));
}

fn put_str(b: &mut BytesMut, s: &str) {
    put_u64(b, s.len() as u64);
    b.put_slice(s.as_bytes());
}

pub fn put_u64(b: &mut BytesMut, mut x: u64) {
    while x >= 0x80 {
        b.put_u8((x as u8) | 0x80);
        x >>= 7;
    }
    b.put_u8(x as u8);
}

// ---------------------------------------------------------------------------
// Decoding.

/// Longest node id or string we accept; keys are checked against their own rule.
const MAX_STR: u64 = 1024;
/// More shards than any table has: bounds the allocation a bad length can cause.
const MAX_SHARDS: u64 = 1 << 16;

pub fn decode_message(buf: &[u8]) -> Result<Message, DecodeError> {
    let mut r = Reader { buf };
    let tag = r.start()?;
    let from = r.string()?;
    let config = r.config()?;
    let body = match tag {
        TAG_DELTAS => Request::Deltas(r.items()?),
        TAG_PULL => Request::Pull {
            epoch: r.u64()?,
            seqs: r.list(MAX_SHARDS)?,
        },
        t => return Err(DecodeError::Tag(t)),
    };
    r.end()?;
    Ok(Message { from, config, body })
}

pub fn decode_reply(buf: &[u8]) -> Result<Reply, DecodeError> {
    let mut r = Reader { buf };
    let reply = match r.start()? {
        TAG_ACK => Reply::Ack {
            config: r.config()?,
        },
        TAG_IDENTITY => Reply::Identity(Identity {
            node_id: r.string()?,
            instance: r.u64()?,
        }),
        TAG_PULL_REPLY => Reply::Pull(r.pull_reply()?),
        t => return Err(DecodeError::Tag(t)),
    };
    r.end()?;
    Ok(reply)
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl Reader<'_> {
    fn start(&mut self) -> Result<u8, DecodeError> {
        match self.u8()? {
            FORMAT => self.u8(),
            f => Err(DecodeError::Format(f)),
        }
    }

    fn end(&self) -> Result<(), DecodeError> {
        match self.buf.is_empty() {
            true => Ok(()),
            false => Err(DecodeError::Trailing),
        }
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        let (&b, rest) = self.buf.split_first().ok_or(DecodeError::Truncated)?;
        self.buf = rest;
        Ok(b)
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        let mut x = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            x |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(x);
            }
        }
        Err(DecodeError::Length(x))
    }

    /// A count of things each at least `min_bytes` long: bounded by what is left.
    fn count(&mut self, min_bytes: usize) -> Result<usize, DecodeError> {
        let n = self.u64()?;
        match n.saturating_mul(min_bytes as u64) <= self.buf.len() as u64 {
            true => Ok(n as usize),
            false => Err(DecodeError::Length(n)),
        }
    }

    fn bytes(&mut self, max: u64) -> Result<&[u8], DecodeError> {
        let n = self.u64()?;
        if n > max || n > self.buf.len() as u64 {
            return Err(DecodeError::Length(n));
        }
        let (s, rest) = self.buf.split_at(n as usize);
        self.buf = rest;
        Ok(s)
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        let b = self.bytes(MAX_STR)?;
        String::from_utf8(b.to_vec()).map_err(|_| DecodeError::Utf8)
    }

    fn list(&mut self, max: u64) -> Result<Vec<u64>, DecodeError> {
        let n = self.count(1)?;
        if n as u64 > max {
            return Err(DecodeError::Length(n as u64));
        }
        (0..n).map(|_| self.u64()).collect()
    }

    fn config(&mut self) -> Result<ConfigFrame, DecodeError> {
        let at_ms = self.u64()?;
        let node = self.string()?;
        let mut values = [0; tunables::COUNT];
        for x in &mut values {
            *x = self.u64()?;
        }
        Ok(ConfigFrame {
            stamp: Stamp { at_ms, node },
            values: Values::from_array(values),
        })
    }

    fn items(&mut self) -> Result<Vec<Item>, DecodeError> {
        // An item is at least 4 bytes: key length, one key byte, version, ago.
        let n = self.count(4)?;
        (0..n).map(|_| self.item()).collect()
    }

    fn item(&mut self) -> Result<Item, DecodeError> {
        let key = self.bytes(MAX_STR)?;
        let key = std::str::from_utf8(key).map_err(|_| DecodeError::Utf8)?;
        crate::route::check_key(key).map_err(DecodeError::Key)?;
        let key = CompactString::new(key);
        let version = self.u64()?;
        let confirmed_ago_ms = self.u64()?.checked_sub(1);
        Ok(Item {
            key,
            version,
            confirmed_ago_ms,
        })
    }

    fn pull_reply(&mut self) -> Result<PullReply, DecodeError> {
        let config = self.config()?;
        let epoch = self.u64()?;
        let n = self.count(2)?;
        let covered = (0..n)
            .map(|_| Ok((self.shard()?, self.u64()?)))
            .collect::<Result<_, DecodeError>>()?;
        let current = self.list(MAX_SHARDS)?;
        let more = self.u8()? != 0;
        let items = self.items()?;
        Ok(PullReply {
            config,
            epoch,
            covered,
            current,
            more,
            items,
        })
    }

    fn shard(&mut self) -> Result<u32, DecodeError> {
        match self.u64()? {
            s if s < MAX_SHARDS => Ok(s as u32),
            s => Err(DecodeError::Length(s)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn config() -> ConfigFrame {
        ConfigFrame {
            stamp: Stamp {
                at_ms: 1_700_000_000_000,
                node: "n1".into(),
            },
            values: Values {
                heartbeat_interval_ms: 25_000,
                ghost_timeout_ms: 50_000,
                poll_interval_hint_s: 60,
                push_admission_per_s: 2000,
                max_age_ms: 60_000,
            },
        }
    }

    fn item(k: &str, v: u64, ago: Option<u64>) -> Item {
        Item {
            key: k.into(),
            version: v,
            confirmed_ago_ms: ago,
        }
    }

    #[test]
    fn messages_round_trip() {
        let msgs = [
            Request::Deltas(vec![item("a", 1, None), item("b:c", u64::MAX, Some(0))]),
            Request::Deltas(vec![]),
            Request::Pull {
                epoch: 42,
                seqs: vec![0, 1, u64::MAX],
            },
        ];
        for body in msgs {
            let m = Message {
                from: "n1".into(),
                config: config(),
                body,
            };
            assert_eq!(decode_message(&encode_message(&m)).unwrap(), m);
        }
    }

    #[test]
    fn replies_round_trip() {
        let replies = [
            Reply::Ack { config: config() },
            Reply::Identity(Identity {
                node_id: "pod-1:8081".into(),
                instance: u64::MAX,
            }),
            Reply::Pull(PullReply {
                config: config(),
                epoch: 7,
                covered: vec![(0, 5), (63, 9)],
                current: vec![5, 0, 9],
                more: true,
                items: vec![item("k", 3, Some(12))],
            }),
        ];
        for r in replies {
            assert_eq!(decode_reply(&encode_reply(&r)).unwrap(), r);
        }
    }

    /// The tunables travel in the order they always have, whatever the
    /// table in `tunables.rs` looks like: a reorder there breaks the wire.
    #[test]
    fn tunables_keep_their_wire_order() {
        let mut want = BytesMut::new();
        want.put_u8(FORMAT);
        want.put_u8(TAG_ACK);
        put_u64(&mut want, 1_700_000_000_000);
        put_str(&mut want, "n1");
        // heartbeat_interval_ms, ghost_timeout_ms, poll_interval_hint_s,
        // push_admission_per_s, max_age_ms
        for x in [25_000, 50_000, 60, 2000, 60_000] {
            put_u64(&mut want, x);
        }
        let got = encode_reply(&Reply::Ack { config: config() });
        assert_eq!(got, want.freeze());
    }

    #[test]
    fn bad_input_is_an_error() {
        let m = Message {
            from: "n1".into(),
            config: config(),
            body: Request::Deltas(vec![item("a", 1, None)]),
        };
        let good = encode_message(&m);
        for cut in 0..good.len() {
            assert!(decode_message(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad_key = good.to_vec();
        let at = bad_key.len() - 3;
        bad_key[at] = b'/';
        let rule = crate::route::check_key("/").unwrap_err();
        assert_eq!(decode_message(&bad_key), Err(DecodeError::Key(rule)));
        let mut other = good.to_vec();
        other[0] = 9;
        assert_eq!(decode_message(&other), Err(DecodeError::Format(9)));
        let mut trailing = good.to_vec();
        trailing.push(0);
        assert_eq!(decode_message(&trailing), Err(DecodeError::Trailing));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(b in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_message(&b);
            let _ = decode_reply(&b);
        }

        #[test]
        fn varints_round_trip(x in any::<u64>()) {
            let mut b = BytesMut::new();
            put_u64(&mut b, x);
            prop_assert_eq!(Reader { buf: &b }.u64().unwrap(), x);
        }
    }
}

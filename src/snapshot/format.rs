//! The snapshot file format (see `src/snapshot.md`): encoding a table into
//! bytes and validating bytes back into entries. Pure: no I/O, no panics on
//! any input.

use crate::route::check_key;

/// `\r\n` so a text-mode transfer that rewrites line endings breaks the magic
/// rather than the payload.
pub const MAGIC: [u8; 8] = *b"PGSNAP\r\n";
/// Bumped on any layout change; a newer file is refused, never guessed at.
/// Version 2 adds the feed positions after the key area; a file without
/// positions is still written as version 1, so an older pollgate reads it.
pub const FORMAT_VERSION: u32 = 2;
/// The oldest format this pollgate still reads.
pub const FIRST_FORMAT_VERSION: u32 = 1;
/// Longest feed name (a Redis stream key) a position is kept for.
pub const MAX_POSITION_NAME: usize = crate::config::MAX_STREAM_NAME;
pub const HEADER_LEN: usize = 48;
/// version u64, key offset u32, key length u16, padding u16 (zero).
pub const RECORD_LEN: usize = 16;
/// Bytes of the header covered by the header checksum (all but the checksum itself).
const HEADER_SUMMED: usize = 44;

/// Why a byte sequence is not a snapshot this pollgate may load.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("truncated: {len} bytes is shorter than the {HEADER_LEN}-byte header")]
    ShortHeader { len: usize },
    #[error("wrong magic: not a pollgate snapshot")]
    Magic,
    #[error("format version {0} is not one this pollgate reads (it reads {FIRST_FORMAT_VERSION} to {FORMAT_VERSION})")]
    Version(u32),
    #[error("header length {0}, expected {HEADER_LEN}")]
    HeaderLen(u32),
    #[error("header checksum mismatch (stored {stored:08x}, computed {computed:08x})")]
    HeaderChecksum { stored: u32, computed: u32 },
    #[error(
        "header says {declared} payload bytes but the file has {actual} (truncated or padded)"
    )]
    PayloadLen { declared: u64, actual: usize },
    #[error("payload checksum mismatch (stored {stored:08x}, computed {computed:08x})")]
    Checksum { stored: u32, computed: u32 },
    #[error("{count} records of {RECORD_LEN} bytes do not fit in {payload} payload bytes")]
    Count { count: u64, payload: usize },
    #[error("record {index}: key bytes are not where the previous key ended or lie outside the key area")]
    KeyBounds { index: u64 },
    #[error("record {index}: padding is not zero")]
    Padding { index: u64 },
    #[error("record {index}: {rule}")]
    Key { index: u64, rule: &'static str },
    #[error("the key area has {extra} bytes after the last key")]
    TrailingKeys { extra: usize },
    #[error("the feed positions section is malformed")]
    Positions,
}

/// A feed's name and where it stands: a Redis stream ID as `(ms, seq)`.
pub type Position = (String, (u64, u64));

/// A validated header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// 1: records and keys; 2: and feed positions after them.
    pub format: u32,
    pub count: u64,
    /// Unix milliseconds when the writer started serialising.
    pub created_ms: u64,
    pub payload_len: u64,
    pub checksum: u32,
}

impl Header {
    pub fn to_bytes(self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..8].copy_from_slice(&MAGIC);
        h[8..12].copy_from_slice(&self.format.to_le_bytes());
        h[12..16].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
        h[16..24].copy_from_slice(&self.count.to_le_bytes());
        h[24..32].copy_from_slice(&self.created_ms.to_le_bytes());
        h[32..40].copy_from_slice(&self.payload_len.to_le_bytes());
        h[40..44].copy_from_slice(&self.checksum.to_le_bytes());
        let sum = crc32c::crc32c(&h[..HEADER_SUMMED]);
        h[44..48].copy_from_slice(&sum.to_le_bytes());
        h
    }

    /// Checks in the order that gives the most useful message: a file from
    /// a newer pollgate says so, rather than "checksum mismatch".
    fn parse(b: &[u8]) -> Result<Header, FormatError> {
        let h: &[u8; HEADER_LEN] = b
            .get(..HEADER_LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or(FormatError::ShortHeader { len: b.len() })?;
        if h[0..8] != MAGIC {
            return Err(FormatError::Magic);
        }
        let format = u32_at(h, 8);
        if !(FIRST_FORMAT_VERSION..=FORMAT_VERSION).contains(&format) {
            return Err(FormatError::Version(format));
        }
        match u32_at(h, 12) {
            n if n as usize == HEADER_LEN => {}
            n => return Err(FormatError::HeaderLen(n)),
        }
        let (stored, computed) = (u32_at(h, 44), crc32c::crc32c(&h[..HEADER_SUMMED]));
        if stored != computed {
            return Err(FormatError::HeaderChecksum { stored, computed });
        }
        Ok(Header {
            format,
            count: u64_at(h, 16),
            created_ms: u64_at(h, 24),
            payload_len: u64_at(h, 32),
            checksum: u32_at(h, 40),
        })
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    let mut a = [0u8; 2];
    a.copy_from_slice(&b[at..at + 2]);
    u16::from_le_bytes(a)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// A snapshot being built: records and key area kept apart so neither is
/// copied again, and written to the file as header, records, keys.
#[derive(Default)]
pub struct Encoder {
    records: Vec<u8>,
    keys: Vec<u8>,
    /// Version 2's tail: the positions, then their length (u32); empty: version 1.
    tail: Vec<u8>,
    count: u64,
    /// Keys the table held that a loader would refuse (never expected: every
    /// source checks keys); left out so one bad key cannot void a whole file.
    pub skipped: u64,
}

impl Encoder {
    pub fn with_capacity(entries: usize) -> Encoder {
        Encoder {
            records: Vec::with_capacity(entries * RECORD_LEN),
            // Typical ids are short; growth past this is amortised.
            keys: Vec::with_capacity(entries * 12),
            ..Encoder::default()
        }
    }

    pub fn push(&mut self, key: &str, version: u64) {
        // u32 offsets bound the key area to 4 GiB (≈ 30M keys of 128 bytes).
        let Ok(offset) = u32::try_from(self.keys.len()) else {
            self.skipped += 1;
            return;
        };
        if check_key(key).is_err() || offset.checked_add(key.len() as u32).is_none() {
            self.skipped += 1;
            return;
        }
        self.records.extend_from_slice(&version.to_le_bytes());
        self.records.extend_from_slice(&offset.to_le_bytes());
        self.records
            .extend_from_slice(&(key.len() as u16).to_le_bytes());
        self.records.extend_from_slice(&[0, 0]);
        self.keys.extend_from_slice(key.as_bytes());
        self.count += 1;
    }

    pub fn len(&self) -> u64 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Where each feed (a Redis stream, by name) stood when the table walk
    /// started: every entry up to there is in the records. Names longer than
    /// [`MAX_POSITION_NAME`] are left out (the feed then starts over from 0).
    pub fn set_positions(&mut self, positions: &[Position]) {
        self.tail.clear();
        for (name, (ms, seq)) in positions
            .iter()
            .filter(|(n, _)| n.len() <= MAX_POSITION_NAME)
        {
            self.tail
                .extend_from_slice(&(name.len() as u16).to_le_bytes());
            self.tail.extend_from_slice(name.as_bytes());
            self.tail.extend_from_slice(&ms.to_le_bytes());
            self.tail.extend_from_slice(&seq.to_le_bytes());
        }
        if !self.tail.is_empty() {
            let len = self.tail.len() as u32;
            self.tail.extend_from_slice(&len.to_le_bytes());
        }
    }

    /// Header, records, key area, positions: the file's parts in order.
    pub fn finish(&self, created_ms: u64) -> ([u8; HEADER_LEN], [&[u8]; 3]) {
        let parts = [&self.records[..], &self.keys, &self.tail];
        let checksum = parts.iter().fold(0, |c, p| crc32c::crc32c_append(c, p));
        let header = Header {
            format: if self.tail.is_empty() { 1 } else { 2 },
            count: self.count,
            created_ms,
            payload_len: parts.iter().map(|p| p.len() as u64).sum(),
            checksum,
        };
        (header.to_bytes(), parts)
    }

    /// The whole file in one buffer (tests, benches).
    pub fn to_vec(&self, created_ms: u64) -> Vec<u8> {
        let (h, [r, k, t]) = self.finish(created_ms);
        [&h[..], r, k, t].concat()
    }
}

/// A fully validated snapshot borrowed from the file's bytes. Only
/// [`Snapshot::parse`] makes one, and it checks every record first, so
/// nothing is ever loaded from a file that turns out bad half-way.
#[derive(Debug)]
pub struct Snapshot<'a> {
    pub header: Header,
    records: &'a [u8],
    keys: &'a [u8],
    /// Feed positions (version 2), validated by `parse`.
    pub positions: Vec<Position>,
}

impl<'a> Snapshot<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<Snapshot<'a>, FormatError> {
        let header = Header::parse(bytes)?;
        let payload = bytes.get(HEADER_LEN..).unwrap_or_default();
        if header.payload_len != payload.len() as u64 {
            return Err(FormatError::PayloadLen {
                declared: header.payload_len,
                actual: payload.len(),
            });
        }
        let computed = crc32c::crc32c(payload);
        if computed != header.checksum {
            return Err(FormatError::Checksum {
                stored: header.checksum,
                computed,
            });
        }
        let (payload, positions) = match header.format {
            1 => (payload, Vec::new()),
            _ => split_positions(payload)?,
        };
        let split = records_len(header.count, payload.len())?;
        let (records, keys) = payload.split_at(split);
        let snap = Snapshot {
            header,
            records,
            keys,
            positions,
        };
        snap.validate()?;
        Ok(snap)
    }

    pub fn len(&self) -> u64 {
        self.header.count
    }

    pub fn is_empty(&self) -> bool {
        self.header.count == 0
    }

    /// Keys must be laid end to end in record order and fill the key area
    /// exactly: no overlaps, no gaps, no hidden bytes.
    fn validate(&self) -> Result<(), FormatError> {
        let mut end = 0usize;
        for index in 0..self.header.count {
            let (key, _) = self.record(index)?;
            let (offset, _) = self.key_span(index)?;
            if offset != end {
                return Err(FormatError::KeyBounds { index });
            }
            // `record` checked offset + len lies inside the key area.
            end = offset + key.len();
        }
        match self.keys.len() - end.min(self.keys.len()) {
            0 => Ok(()),
            extra => Err(FormatError::TrailingKeys { extra }),
        }
    }

    fn raw(&self, index: u64) -> Result<&'a [u8], FormatError> {
        let start = usize::try_from(index)
            .ok()
            .and_then(|i| i.checked_mul(RECORD_LEN));
        start
            .and_then(|s| self.records.get(s..s.checked_add(RECORD_LEN)?))
            .ok_or(FormatError::KeyBounds { index })
    }

    fn key_span(&self, index: u64) -> Result<(usize, usize), FormatError> {
        let r = self.raw(index)?;
        Ok((u32_at(r, 8) as usize, usize::from(u16_at(r, 12))))
    }

    /// Record `index` as `(key, version)`, every read bounds-checked.
    pub fn record(&self, index: u64) -> Result<(&'a str, u64), FormatError> {
        let r = self.raw(index)?;
        if r[14..16] != [0, 0] {
            return Err(FormatError::Padding { index });
        }
        let (offset, len) = self.key_span(index)?;
        let bytes = offset
            .checked_add(len)
            .and_then(|end| self.keys.get(offset..end))
            .ok_or(FormatError::KeyBounds { index })?;
        // check_key admits ASCII only, so the UTF-8 check after it cannot fail.
        let key = std::str::from_utf8(bytes)
            .map_err(|_| FormatError::Key {
                index,
                rule: "key is not UTF-8",
            })
            .and_then(|k| {
                check_key(k)
                    .map(|()| k)
                    .map_err(|rule| FormatError::Key { index, rule })
            })?;
        Ok((key, u64_at(r, 0)))
    }

    /// Every `(key, version)`; after `parse` succeeded none can fail.
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, u64)> + '_ {
        (0..self.header.count).filter_map(|i| self.record(i).ok())
    }
}

/// Version 2: `(records + keys, positions)`. The payload ends with the
/// positions' length (u32) after them; every name must be UTF-8 and the
/// entries must fill the section exactly.
fn split_positions(payload: &[u8]) -> Result<(&[u8], Vec<Position>), FormatError> {
    let len_at = payload.len().checked_sub(4).ok_or(FormatError::Positions)?;
    let len = u32_at(payload, len_at) as usize;
    let start = len_at.checked_sub(len).ok_or(FormatError::Positions)?;
    let mut rest = &payload[start..len_at];
    let mut out = Vec::new();
    while !rest.is_empty() {
        let name_len = usize::from(u16_at(rest.get(..2).ok_or(FormatError::Positions)?, 0));
        let end = 2 + name_len + 16;
        let entry = rest.get(..end).ok_or(FormatError::Positions)?;
        let name =
            std::str::from_utf8(&entry[2..2 + name_len]).map_err(|_| FormatError::Positions)?;
        let at = 2 + name_len;
        out.push((name.to_string(), (u64_at(entry, at), u64_at(entry, at + 8))));
        rest = &rest[end..];
    }
    Ok((&payload[..start], out))
}

/// Bytes taken by `count` records, if they fit in `payload` bytes.
fn records_len(count: u64, payload: usize) -> Result<usize, FormatError> {
    usize::try_from(count)
        .ok()
        .and_then(|c| c.checked_mul(RECORD_LEN))
        .filter(|&n| n <= payload)
        .ok_or(FormatError::Count { count, payload })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encode(entries: &[(String, u64)]) -> Vec<u8> {
        let mut e = Encoder::default();
        for (k, v) in entries {
            e.push(k, *v);
        }
        e.to_vec(1_700_000_000_000)
    }

    fn decode(bytes: &[u8]) -> Result<Vec<(String, u64)>, FormatError> {
        let s = Snapshot::parse(bytes)?;
        Ok(s.iter().map(|(k, v)| (k.to_string(), v)).collect())
    }

    fn small() -> Vec<(String, u64)> {
        vec![
            ("a".into(), 1),
            ("project:42".into(), u64::MAX),
            ("x.y_z-9".into(), 0),
            ("k".repeat(128), 7),
        ]
    }

    /// A file whose checksums are right but whose payload is whatever the test says,
    /// so the checks behind the checksum are exercised too.
    fn forge(count: u64, records: &[[u8; RECORD_LEN]], keys: &[u8]) -> Vec<u8> {
        let payload: Vec<u8> = records
            .iter()
            .flatten()
            .copied()
            .chain(keys.iter().copied())
            .collect();
        let h = Header {
            format: 1,
            count,
            created_ms: 0,
            payload_len: payload.len() as u64,
            checksum: crc32c::crc32c(&payload),
        };
        [&h.to_bytes()[..], &payload].concat()
    }

    fn rec(version: u64, offset: u32, len: u16, pad: u16) -> [u8; RECORD_LEN] {
        let mut r = [0u8; RECORD_LEN];
        r[0..8].copy_from_slice(&version.to_le_bytes());
        r[8..12].copy_from_slice(&offset.to_le_bytes());
        r[12..14].copy_from_slice(&len.to_le_bytes());
        r[14..16].copy_from_slice(&pad.to_le_bytes());
        r
    }

    fn with_positions(entries: &[(String, u64)], pos: &[(String, (u64, u64))]) -> Vec<u8> {
        let mut e = Encoder::default();
        for (k, v) in entries {
            e.push(k, *v);
        }
        e.set_positions(pos);
        e.to_vec(7)
    }

    #[test]
    fn positions_make_a_version_2_file_and_come_back() {
        let pos = vec![
            ("versions".to_string(), (1_700_000_000_000, 3)),
            ("ü".to_string(), (0, 1)),
        ];
        let file = with_positions(&small(), &pos);
        let snap = Snapshot::parse(&file).unwrap();
        assert_eq!(snap.header.format, 2);
        assert_eq!(snap.positions, pos);
        assert_eq!(decode(&file).unwrap(), small());
        let file = with_positions(&[], &pos);
        assert_eq!(Snapshot::parse(&file).unwrap().positions, pos);
        // No positions: a version 1 file, which an older pollgate reads.
        let file = with_positions(&small(), &[]);
        assert_eq!(Snapshot::parse(&file).unwrap().header.format, 1);
    }

    #[test]
    fn every_change_to_a_version_2_file_is_an_error() {
        let file = with_positions(&small(), &[("s".to_string(), (5, 6))]);
        for len in 0..file.len() {
            assert!(Snapshot::parse(&file[..len]).is_err(), "truncated to {len}");
        }
        for i in 0..file.len() {
            let mut f = file.clone();
            f[i] ^= 0x01;
            assert!(Snapshot::parse(&f).is_err(), "byte {i} changed");
        }
    }

    #[test]
    fn checksummed_but_malformed_positions_are_refused() {
        let forge2 = |tail: &[u8]| {
            let payload: Vec<u8> = rec(1, 0, 1, 0)
                .iter()
                .chain(b"a")
                .chain(tail)
                .copied()
                .collect();
            let h = Header {
                format: 2,
                count: 1,
                created_ms: 0,
                payload_len: payload.len() as u64,
                checksum: crc32c::crc32c(&payload),
            };
            [&h.to_bytes()[..], &payload].concat()
        };
        // Length past the start, a name running past the section, bad UTF-8, no length at all.
        for tail in [
            &[0xff, 0, 0, 0][..],
            &[9, 0, b's', 1, 0, 0, 0][..],
            &[
                1, 0, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 19, 0, 0, 0,
            ][..],
        ] {
            assert_eq!(
                Snapshot::parse(&forge2(tail)).unwrap_err(),
                FormatError::Positions,
                "{tail:?}"
            );
        }
        assert!(Snapshot::parse(&forge2(&[1, 0])).is_err());
        let good = [&[1, 0, b's'][..], &[0; 16], &[19, 0, 0, 0]].concat();
        assert_eq!(
            Snapshot::parse(&forge2(&good)).unwrap().positions,
            vec![("s".to_string(), (0, 0))]
        );
    }

    #[test]
    fn round_trip_small_and_empty() {
        assert_eq!(decode(&encode(&small())).unwrap(), small());
        let empty = encode(&[]);
        assert_eq!(empty.len(), HEADER_LEN);
        assert_eq!(decode(&empty).unwrap(), vec![]);
        let s = Snapshot::parse(&empty).unwrap();
        assert_eq!(s.header.created_ms, 1_700_000_000_000);
    }

    #[test]
    fn encoder_skips_keys_a_loader_would_refuse() {
        let mut e = Encoder::default();
        for k in ["ok", "", "a b", "ü", &"k".repeat(129)] {
            e.push(k, 1);
        }
        assert_eq!((e.len(), e.skipped), (1, 4));
        assert_eq!(decode(&e.to_vec(0)).unwrap(), vec![("ok".into(), 1)]);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let file = encode(&small());
        for len in 0..file.len() {
            let err = decode(&file[..len]).unwrap_err();
            let expected = if len < HEADER_LEN {
                matches!(err, FormatError::ShortHeader { .. })
            } else {
                matches!(err, FormatError::PayloadLen { .. })
            };
            assert!(expected, "len {len}: {err}");
        }
        let mut padded = file.clone();
        padded.push(0);
        assert!(matches!(
            decode(&padded),
            Err(FormatError::PayloadLen { .. })
        ));
    }

    /// CRC-32C detects every error burst of up to 32 bits, and the header has
    /// its own: any one changed byte anywhere is refused.
    #[test]
    fn every_single_byte_change_is_an_error() {
        let file = encode(&small());
        for at in 0..file.len() {
            for mask in [0x01, 0x80, 0xff] {
                let mut f = file.clone();
                f[at] ^= mask;
                assert!(decode(&f).is_err(), "byte {at} ^ {mask:#x} loaded");
            }
        }
    }

    #[test]
    fn named_errors() {
        let file = encode(&small());
        let mut f = file.clone();
        f[0] = b'X';
        assert_eq!(decode(&f), Err(FormatError::Magic));
        let mut f = file.clone();
        f[8..12].copy_from_slice(&3u32.to_le_bytes());
        assert_eq!(decode(&f), Err(FormatError::Version(3)));
        let mut f = file.clone();
        f[12] = 64;
        assert_eq!(decode(&f), Err(FormatError::HeaderLen(64)));
        let mut f = file.clone();
        f[20] ^= 1;
        assert!(matches!(
            decode(&f),
            Err(FormatError::HeaderChecksum { .. })
        ));
        let mut f = file;
        *f.last_mut().unwrap() ^= 1;
        assert!(matches!(decode(&f), Err(FormatError::Checksum { .. })));
        assert!(decode(b"").unwrap_err().to_string().contains("truncated"));
    }

    #[test]
    fn checksummed_but_inconsistent_payloads_are_refused() {
        let ok = |v| rec(v, 0, 1, 0);
        assert_eq!(
            decode(&forge(1, &[ok(5)], b"a")).unwrap(),
            vec![("a".into(), 5)]
        );
        let cases: Vec<(Vec<u8>, FormatError)> = vec![
            (
                forge(2, &[ok(5)], b"a"),
                FormatError::Count {
                    count: 2,
                    payload: 17,
                },
            ),
            (
                forge(u64::MAX, &[ok(5)], b"a"),
                FormatError::Count {
                    count: u64::MAX,
                    payload: 17,
                },
            ),
            (
                forge(1, &[rec(5, 1, 1, 0)], b"ab"),
                FormatError::KeyBounds { index: 0 },
            ),
            (
                forge(1, &[rec(5, 0, 9, 0)], b"a"),
                FormatError::KeyBounds { index: 0 },
            ),
            (
                forge(1, &[rec(5, u32::MAX, u16::MAX, 0)], b"a"),
                FormatError::KeyBounds { index: 0 },
            ),
            (
                forge(2, &[ok(1), ok(2)], b"a"),
                FormatError::KeyBounds { index: 1 },
            ),
            (
                forge(1, &[rec(5, 0, 1, 1)], b"a"),
                FormatError::Padding { index: 0 },
            ),
            (
                forge(1, &[ok(5)], b"ab"),
                FormatError::TrailingKeys { extra: 1 },
            ),
            (
                forge(1, &[rec(5, 0, 0, 0)], b""),
                FormatError::Key {
                    index: 0,
                    rule: "key must be 1-128 bytes of [A-Za-z0-9._:-]",
                },
            ),
            (
                forge(1, &[ok(5)], b"/"),
                FormatError::Key {
                    index: 0,
                    rule: "key must be 1-128 bytes of [A-Za-z0-9._:-]",
                },
            ),
            (
                forge(1, &[rec(5, 0, 2, 0)], &[0xff, 0xfe]),
                FormatError::Key {
                    index: 0,
                    rule: "key is not UTF-8",
                },
            ),
        ];
        for (file, want) in cases {
            assert_eq!(decode(&file), Err(want));
        }
    }

    fn key() -> impl Strategy<Value = String> {
        "[A-Za-z0-9._:-]{1,128}"
    }

    proptest! {
        #[test]
        fn round_trip(entries in prop::collection::vec((key(), any::<u64>()), 0..200)) {
            prop_assert_eq!(decode(&encode(&entries)).unwrap(), entries);
        }

        /// Several random flips: refused, or (only if both checksums still
        /// match, which CRC-32C makes vanishingly rare) exactly the same data.
        #[test]
        fn random_flips_never_yield_wrong_data(
            entries in prop::collection::vec((key(), any::<u64>()), 1..20),
            flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..8),
        ) {
            let mut file = encode(&entries);
            for (at, mask) in flips {
                let i = at.index(file.len());
                file[i] ^= mask;
            }
            if let Ok(got) = decode(&file) {
                prop_assert_eq!(got, entries);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes);
            let mut with_header = MAGIC.to_vec();
            with_header.extend_from_slice(&bytes);
            let _ = decode(&with_header);
        }

        /// Arbitrary payloads behind valid checksums reach every structural check.
        #[test]
        fn arbitrary_checksummed_payloads_never_panic(
            count in prop_oneof![0u64..8, any::<u64>()],
            records in prop::collection::vec(any::<[u8; RECORD_LEN]>(), 0..8),
            keys in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            let _ = decode(&forge(count, &records, &keys));
        }
    }
}

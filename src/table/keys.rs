//! A shard's keys, packed into fixed chunks: the key store behind the slots.

/// Bits of a key position that are the offset in its chunk; the rest are the
/// chunk number. A key never spans two chunks.
pub(super) const KEY_CHUNK_BITS: u32 = 14;

/// Bytes per key chunk (16 KiB): what a shard wastes at most on key bytes,
/// and a key longer than this gets a chunk of its own.
pub(super) const KEY_CHUNK: usize = 1 << KEY_CHUNK_BITS;

/// A shard's keys, packed: each is a LEB128 length (one byte below 128) and
/// its bytes. Chunks are never reallocated, so a position stays valid forever
/// and growing never copies. Keys are never removed (see the module doc).
#[derive(Default)]
pub(super) struct Keys {
    pub(super) chunks: Vec<Vec<u8>>,
}

impl Keys {
    /// Appends `key`; returns its position.
    pub(super) fn push(&mut self, key: &str) -> u32 {
        let need = varint_len(key.len()) + key.len();
        let fits = self
            .chunks
            .last()
            .is_some_and(|c| c.len() + need <= KEY_CHUNK.min(c.capacity()));
        if !fits {
            self.chunks.push(Vec::with_capacity(need.max(KEY_CHUNK)));
        }
        let n = self.chunks.len() - 1;
        assert!(
            n < 1 << (32 - KEY_CHUNK_BITS),
            "a shard holds fewer than 4 GiB of keys"
        );
        let chunk = &mut self.chunks[n];
        // Below KEY_CHUNK in a shared chunk; 0 in a chunk of its own.
        let at = chunk.len();
        put_varint(chunk, key.len());
        chunk.extend_from_slice(key.as_bytes());
        ((n << KEY_CHUNK_BITS) | at) as u32
    }

    /// The bytes of the key at `pos`.
    pub(super) fn bytes(&self, pos: u32) -> &[u8] {
        let chunk = &self.chunks[(pos >> KEY_CHUNK_BITS) as usize];
        let at = (pos as usize) & (KEY_CHUNK - 1);
        let (len, head) = get_varint(&chunk[at..]);
        &chunk[at + head..at + head + len]
    }

    pub(super) fn str(&self, pos: u32) -> &str {
        std::str::from_utf8(self.bytes(pos)).expect("keys are copied from a &str")
    }

    pub(super) fn capacity(&self) -> usize {
        self.chunks.iter().map(Vec::capacity).sum()
    }
}

pub(super) fn varint_len(mut n: usize) -> usize {
    let mut len = 1;
    while n >= 0x80 {
        n >>= 7;
        len += 1;
    }
    len
}

pub(super) fn put_varint(out: &mut Vec<u8>, mut n: usize) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// `(value, bytes read)`; only ever reads what [`put_varint`] wrote.
pub(super) fn get_varint(b: &[u8]) -> (usize, usize) {
    let (mut n, mut shift, mut i) = (0usize, 0, 0);
    loop {
        let byte = b[i];
        n |= ((byte & 0x7f) as usize) << shift;
        i += 1;
        if byte < 0x80 {
            return (n, i);
        }
        shift += 7;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys of every length class land in the right chunks and read back,
    /// including one longer than a chunk (a chunk of its own) between short ones.
    #[test]
    fn keys_round_trip_across_chunks() {
        let mut keys = Keys::default();
        let lens = [
            0,
            1,
            8,
            127,
            128,
            300,
            KEY_CHUNK - 2,
            KEY_CHUNK + 5,
            3,
            16_383,
        ];
        let mut stored = Vec::new();
        for round in 0..40 {
            for (i, &len) in lens.iter().enumerate() {
                let key: String = (0..len)
                    .map(|j| (b'a' + ((i + j + round) % 26) as u8) as char)
                    .collect();
                stored.push((keys.push(&key), key));
            }
        }
        for (pos, key) in &stored {
            assert_eq!(keys.str(*pos), key);
        }
        assert!(keys.chunks.iter().all(|c| c.len() <= c.capacity()));
    }
}

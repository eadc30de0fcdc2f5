//! The snapshot loader: any bytes are a snapshot or an error, never a panic
//! or an out-of-bounds read; every record of an accepted one is readable.
//!
//! Two kinds of input, by the first byte: odd = `count, format, payload`
//! under a header made valid for it (right lengths and CRCs), so the fuzzer
//! explores records, keys and positions instead of stopping at a checksum;
//! even = the rest as a whole file (header checks included).
#![no_main]
use libfuzzer_sys::fuzz_target;
use pollgate::snapshot::format::{Header, Snapshot};

fuzz_target!(|data: &[u8]| {
    match data {
        [mode, count, format, payload @ ..] if mode & 1 == 1 => {
            let header = Header {
                format: u32::from(*format),
                count: u64::from(*count),
                created_ms: 0,
                payload_len: payload.len() as u64,
                checksum: crc32c::crc32c(payload),
            };
            check(&[&header.to_bytes()[..], payload].concat());
        }
        [_, file @ ..] => check(file),
        [] => {}
    }
});

fn check(file: &[u8]) {
    if let Ok(s) = Snapshot::parse(file) {
        for i in 0..s.len().min(100_000) {
            let _ = s.record(i);
        }
        let _ = s.iter().count();
    }
}

//! The snapshot loader: any bytes are a snapshot or an error, never a panic
//! or an out-of-bounds read; every record of an accepted one is readable.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pollgate::snapshot::format::Snapshot;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = Snapshot::parse(data) {
        for i in 0..s.len().min(100_000) {
            let _ = s.record(i);
        }
        let _ = s.iter().count();
    }
});

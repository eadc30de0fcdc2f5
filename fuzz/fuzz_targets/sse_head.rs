//! The raw SSE path's head handling: where the head ends and which keys the
//! request line watches.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pollgate::push::raw::{head_end, watch_keys};

fuzz_target!(|data: &[u8]| {
    if let Some(end) = head_end(data) {
        assert!(end <= data.len());
    }
    if let Ok(n) = watch_keys(data, 64) {
        assert!(n <= 64);
    }
});

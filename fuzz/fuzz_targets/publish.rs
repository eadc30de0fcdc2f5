//! The publish body, as text lines and as JSON: never a panic; an accepted
//! batch holds only valid keys.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pollgate::feed::publish::{parse_json, parse_text};

fuzz_target!(|data: &[u8]| {
    for parsed in [parse_text(data), parse_json(data)] {
        if let Ok(updates) = parsed {
            for u in &updates {
                assert!(pollgate::route::check_key(&u.key).is_ok());
            }
        }
    }
});

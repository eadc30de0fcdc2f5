//! WebSocket client messages (`{"op":"watch","keys":{..}}`, `unwatch`).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = pollgate::push::ws::check_command(text);
    }
});

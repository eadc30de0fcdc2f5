//! The gossip frame decoder (requests and replies): never a panic, and what
//! decodes re-encodes to something that decodes to the same message.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pollgate::cluster::codec::{decode_message, decode_reply, encode_message};

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = decode_message(data) {
        let again = decode_message(&encode_message(&m)).expect("round trip");
        assert_eq!(m, again);
    }
    let _ = decode_reply(data);
});

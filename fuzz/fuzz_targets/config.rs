//! Config values: the first byte picks a key, the rest is its value, given
//! as a `POLLGATE_*` variable (the same parsers serve flags and the file).
#![no_main]
use libfuzzer_sys::fuzz_target;

const KEYS: &[&str] = &[
    "LISTEN",
    "INTERNAL_LISTEN",
    "UPSTREAM",
    "ROUTE",
    "VERSION_HEADER",
    "MAX_AGE",
    "UPSTREAM_MAX_INFLIGHT",
    "UPSTREAM_TIMEOUT",
    "CLIENT_BODY_TIMEOUT",
    "UPSTREAM_HOST",
    "PEER",
    "NODE_ID",
    "CLUSTER_KEY",
    "DATA_DIR",
    "MAX_HEADER_SIZE",
    "PUBLISH_MAX_BODY",
    "HEARTBEAT_INTERVAL",
    "GHOST_TIMEOUT",
    "TRUSTED_PROXIES",
    "CLIENT_RATE_PER_S",
    "PUSH",
    "PASSTHROUGH",
    "HOST_KEYS",
    "LOG_FORMAT",
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let Ok(value) = std::str::from_utf8(rest) else {
        return;
    };
    if value.contains('\0') {
        return;
    }
    let key = KEYS[pick as usize % KEYS.len()];
    let env = [(format!("POLLGATE_{key}"), value.to_string())];
    let _ = pollgate::config::load(["pollgate"].map(std::ffi::OsString::from), &env);
});

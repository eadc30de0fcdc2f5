//! Route matching and percent-decoding: `path \n query \n If-None-Match`
//! against templates with the version in the path, a query parameter and a header.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pollgate::route::{Match, Routes};
use std::sync::OnceLock;

fn routes() -> &'static Routes {
    static R: OnceLock<Routes> = OnceLock::new();
    R.get_or_init(|| {
        let t = [
            "/projects/{key}/changes?since={version}".to_string(),
            "/v/{key}/{version}".to_string(),
            "/etag/{key} header:If-None-Match".to_string(),
        ];
        Routes::parse(&t).expect("templates parse")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = s.splitn(3, '\n');
    let (path, query, inm) = (parts.next().unwrap_or(""), parts.next(), parts.next());
    let mut h = http::HeaderMap::new();
    if let Some(v) = inm.and_then(|v| http::HeaderValue::from_str(v).ok()) {
        h.insert(http::header::IF_NONE_MATCH, v);
    }
    if let Match::Poll { key, .. } = routes().matches(path, query, &h) {
        // Whatever matched must be a valid key: keys reach the table as is.
        assert!(pollgate::route::check_key(key).is_ok(), "{key:?}");
    }
});

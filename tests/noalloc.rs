//! Proves `Routes::matches` never touches the heap: a counting global
//! allocator records allocations made by this thread while matching.
//! Lives in its own test binary because a `#[global_allocator]` is per binary.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use http::{HeaderMap, HeaderValue};
use pollgate::route::{Match, Routes};

struct Counting;

thread_local! {
    // Const-initialised and without a destructor, so touching it from inside
    // the allocator cannot itself allocate or recurse.
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded unchanged to `System`; the counter is a
// thread-local `Cell` that neither allocates nor panics (`try_with` tolerates
// thread teardown).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        bump();
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        bump();
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        bump();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn bump() {
    let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
}

fn allocs_during(f: impl FnOnce()) -> u64 {
    let before = ALLOCS.with(Cell::get);
    f();
    ALLOCS.with(Cell::get) - before
}

#[test]
fn matching_never_allocates() {
    let templates = [
        "/projects/{key}/changes?since={version}",
        "/projects/{key}/version/{version}",
        "/projects/{key}/state header:If-None-Match",
    ]
    .map(String::from);
    let routes = Routes::parse(&templates).unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("x-other", HeaderValue::from_static("1"));
    headers.insert("if-none-match", HeaderValue::from_static("W/\"4\", \"5\""));
    let bad_inm = {
        let mut h = HeaderMap::new();
        h.insert("if-none-match", HeaderValue::from_static("\"nope\""));
        h
    };
    let empty = HeaderMap::new();
    let long_key = format!("/projects/{}/changes", "k".repeat(128));

    // Every outcome of every kind: Poll with and without a version, Bad, None.
    let cases: Vec<(&str, Option<&str>, &HeaderMap)> = vec![
        ("/projects/abc/changes", Some("a=1&since=42&b"), &empty),
        ("/projects/abc/changes", Some("since="), &empty),
        ("/projects/abc/changes", None, &empty),
        ("/projects/abc/changes", Some("since=1e3"), &empty),
        ("/projects/a%20b/changes", Some("since=1"), &empty),
        (&long_key, Some("since=7"), &empty),
        ("/projects/abc/version/99", None, &empty),
        ("/projects/abc/version/x", None, &empty),
        ("/projects/abc/state", None, &headers),
        ("/projects/abc/state", None, &bad_inm),
        ("/projects/abc/state", None, &empty),
        ("/elsewhere/abc", None, &headers),
        ("/projects/abc/changes/", Some("since=1"), &empty),
    ];
    // Warm up once so any lazy, one-off initialisation is not counted.
    let mut outcomes = [0u32; 3];
    for &(p, q, h) in &cases {
        std::hint::black_box(routes.matches(p, q, h));
    }
    let n = allocs_during(|| {
        for _ in 0..1_000 {
            for &(p, q, h) in &cases {
                let m = routes.matches(std::hint::black_box(p), q, h);
                outcomes[match m {
                    Match::Poll { .. } => 0,
                    Match::Bad(_) => 1,
                    Match::None => 2,
                }] += 1;
            }
        }
    });
    assert_eq!(n, 0, "matches allocated {n} times");
    // A foreign ETag ("nope") is a poll pollgate cannot judge, not a bad request.
    assert_eq!(outcomes, [8_000, 3_000, 2_000]);

    // The counter really counts: an allocating call is seen.
    assert!(allocs_during(|| drop(std::hint::black_box(String::from("x")))) > 0);
}

/// The hit path (route match → table lookup → 304) allocates only the
/// response's header map: an index table and an entry vector. The ETag
/// values share a per-thread buffer: 100 of them need at most one new
/// buffer (and its refcount block).
const HIT_ALLOCS: u64 = 2;
const ETAG_BUFFERS: u64 = 2;

#[test]
fn a_hit_allocates_only_its_header_map() {
    let total = hit_allocs(pollgate::config::Config::default(), None);
    assert!(
        total <= 100 * HIT_ALLOCS + ETAG_BUFFERS,
        "100 hits allocated {total} times"
    );
}

/// With auth on, a keep-alive client's hit checks its remembered token and
/// the key against its grant: not one allocation more than without auth.
#[test]
fn an_authorized_hit_allocates_no_more() {
    use serde_json::json;
    let secret = "noalloc-test-secret-of-32-bytes!!";
    let cfg = pollgate::config::Config {
        auth_jwt_secret: vec![secret.to_string()],
        ..Default::default()
    };
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let claims = json!({"exp": exp, "keys": ["p4", "p42"]});
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).unwrap(),
    )
    .unwrap();
    let total = hit_allocs(cfg, Some(format!("Bearer {token}")));
    assert!(
        total <= 100 * HIT_ALLOCS + ETAG_BUFFERS,
        "100 authorized hits allocated {total} times"
    );
}

/// The allocations 100 hits of `p42` made (after the first, which verifies
/// the token when there is one).
fn hit_allocs(cfg: pollgate::config::Config, authorization: Option<String>) -> u64 {
    use futures_util::FutureExt;
    use pollgate::body::Body;
    use pollgate::state::{State, VersionSource};
    use std::sync::Arc;

    let state = State::new(cfg).unwrap();
    state.learn("p42", 7, VersionSource::Publish);
    let remote = "127.0.0.1:9".parse().unwrap();
    let conn = Arc::new(pollgate::auth::ConnCache::default());
    let mut total = 0;
    for i in 0..101 {
        // HTTP/1.1 without Host is refused (RFC 9112 §3.2), as on the wire.
        let mut req =
            http::Request::get("/projects/p42/changes?since=7").header("host", "app.example");
        if let Some(a) = &authorization {
            req = req.header("authorization", a.as_str());
        }
        let req = req.body(Body::empty()).unwrap();
        let mut resp = None;
        let n = allocs_during(|| {
            resp = pollgate::public::route(&state, remote, &conn, req)
                .now_or_never()
                .map(|r| r.unwrap_or_else(|e| match e {}));
        });
        let resp = resp.expect("a hit never waits");
        assert_eq!(resp.status(), http::StatusCode::NOT_MODIFIED);
        if i > 0 {
            total += n;
        }
    }
    total
}

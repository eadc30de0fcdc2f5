//! `GET /pollgate/v1/client.js`: the browser client (`client/pollgate.js`),
//! embedded in the binary so an app imports it with no build step.

use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};

use crate::body::Body;

pub const PATH: &str = "/pollgate/v1/client.js";

static SOURCE: &str = include_str!("../../client/pollgate.js");

/// Revalidate after an hour: a new pollgate may ship a new client, and the
/// ETag makes the check a 304.
const CACHE_CONTROL: &str = "public, max-age=3600";

/// `"<hash of the file>"`, computed once: it changes exactly when the file does.
fn etag() -> &'static HeaderValue {
    static ETAG: std::sync::OnceLock<HeaderValue> = std::sync::OnceLock::new();
    ETAG.get_or_init(|| {
        let hash = SOURCE.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        HeaderValue::from_str(&format!("\"{hash:016x}\"")).expect("hex is a valid header")
    })
}

/// The client, or `304` when `If-None-Match` names the current ETag.
pub fn response(method: &Method, headers: &HeaderMap) -> Response<Body> {
    let mut resp = match method {
        &Method::GET | &Method::HEAD if matches(headers) => not_modified(),
        &Method::GET => Response::new(Body::full(SOURCE)),
        &Method::HEAD => Response::new(Body::empty()),
        _ => return crate::error::Error::MethodNotAllowed.into_response(),
    };
    let ok = resp.status() == StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(header::ETAG, etag().clone());
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(CACHE_CONTROL),
    );
    if ok {
        let ct = HeaderValue::from_static("text/javascript; charset=utf-8");
        h.insert(header::CONTENT_TYPE, ct);
    }
    resp
}

fn matches(headers: &HeaderMap) -> bool {
    let tag = etag().as_bytes();
    headers.get_all(header::IF_NONE_MATCH).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .map(|t| t.trim_ascii())
            .any(|t| t == tag || t == b"*" || t.strip_prefix(b"W/") == Some(tag))
    })
}

fn not_modified() -> Response<Body> {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::NOT_MODIFIED;
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_with_an_etag_then_304() {
        let resp = response(&Method::GET, &HeaderMap::new());
        assert_eq!(resp.status(), StatusCode::OK);
        let tag = resp.headers()[header::ETAG].clone();
        let ct = resp.headers()[header::CONTENT_TYPE].to_str().unwrap();
        assert!(ct.starts_with("text/javascript"), "{ct}");
        let mut h = HeaderMap::new();
        h.insert(header::IF_NONE_MATCH, tag.clone());
        assert_eq!(
            response(&Method::GET, &h).status(),
            StatusCode::NOT_MODIFIED
        );
        h.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_static("\"x\", W/\"y\""),
        );
        assert_eq!(response(&Method::GET, &h).status(), StatusCode::OK);
        let post = response(&Method::POST, &HeaderMap::new());
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert!(SOURCE.contains("export function connect"));
    }
}

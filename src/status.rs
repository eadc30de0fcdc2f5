//! The status page on the internal listener (`GET /`): one self-contained
//! HTML page that reads `/metrics`, `/readyz` and `/v1/config` every 2 s.
//!
//! The page does its own arithmetic (rates between two scrapes), so it shows
//! exactly what Prometheus would see and needs nothing from the server but
//! the endpoints that already exist.

use http::{header, HeaderValue, Response};

use crate::body::Body;

const PAGE: &str = include_str!("status.html");

/// Inline script and style only; every fetch goes to this listener. The
/// policy makes "no external assets" a property the browser enforces.
const POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; \
    style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

pub fn page() -> Response<Body> {
    let mut resp = Response::new(Body::full(PAGE));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(POLICY),
    );
    resp
}

//! CORS for browsers on other origins: preflight answers on poll routes and
//! `/pollgate/v1/*`, and the headers that let a page read pollgate's own
//! answers. Only listed origins get any of them; pass-through is the app's.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};

use crate::body::Body;

const METHODS: &str = "GET, HEAD, OPTIONS";
const HEADERS: &str = "Authorization, If-None-Match, Last-Event-ID, Cache-Control";
const EXPOSE: &str = "ETag, X-Poll-Interval, Retry-After, X-Pollgate";
/// How long a browser may reuse a preflight answer (seconds).
const MAX_AGE: &str = "600";

/// The `cors_origins` list.
pub struct Cors {
    /// `*` was listed: every origin is echoed, without credentials.
    any: bool,
    /// Exact origins (`https://app.example.com`): echoed with credentials.
    exact: Vec<Box<[u8]>>,
}

/// How a request's origin is allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Allowed {
    /// Listed exactly: cookies and `Authorization` may be sent.
    WithCredentials,
    /// Allowed by `*`.
    Anonymous,
}

impl Cors {
    /// `None` when no origin is listed: pollgate sends no CORS headers.
    pub fn new(origins: &[String]) -> Option<Cors> {
        if origins.is_empty() {
            return None;
        }
        let any = origins.iter().any(|o| o == "*");
        let exact = origins
            .iter()
            .filter(|o| *o != "*")
            .map(|o| o.trim_end_matches('/').as_bytes().into())
            .collect();
        Some(Cors { any, exact })
    }

    /// Listed exactly: a page there may use the user's cookies with pollgate.
    pub fn trusts(&self, origin: &HeaderValue) -> bool {
        self.allowed(origin) == Some(Allowed::WithCredentials)
    }

    fn allowed(&self, origin: &HeaderValue) -> Option<Allowed> {
        let o = origin.as_bytes();
        if self.exact.iter().any(|e| **e == *o) {
            Some(Allowed::WithCredentials)
        } else {
            self.any.then_some(Allowed::Anonymous)
        }
    }

    /// A CORS preflight: `OPTIONS` with `Origin` and `Access-Control-Request-Method`.
    pub fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
        method == Method::OPTIONS
            && headers.contains_key(header::ORIGIN)
            && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    }

    /// `204`; with the allow headers only for a listed origin.
    pub fn preflight(&self, headers: &HeaderMap) -> Response<Body> {
        let mut resp = Response::new(Body::empty());
        *resp.status_mut() = StatusCode::NO_CONTENT;
        let origin = headers.get(header::ORIGIN);
        let h = resp.headers_mut();
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
        let Some(allowed) = origin.and_then(|o| self.allowed(o)) else {
            return resp;
        };
        self.allow(h, origin.cloned(), allowed);
        #[rustfmt::skip]
        let fixed = [
            (header::ACCESS_CONTROL_ALLOW_METHODS, METHODS),
            (header::ACCESS_CONTROL_ALLOW_HEADERS, HEADERS),
            (header::ACCESS_CONTROL_MAX_AGE, MAX_AGE),
        ];
        for (name, value) in fixed {
            h.insert(name, HeaderValue::from_static(value));
        }
        resp
    }

    /// Adds the CORS headers to one of pollgate's answers to `origin`
    /// (an answer that already has them, from the app, is left alone).
    pub fn decorate(&self, origin: Option<HeaderValue>, h: &mut HeaderMap) {
        let Some(origin) = origin else { return };
        if h.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN) {
            return;
        }
        if let Some(allowed) = self.allowed(&origin) {
            self.allow(h, Some(origin), allowed);
            let expose = HeaderValue::from_static(EXPOSE);
            h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, expose);
        }
    }

    fn allow(&self, h: &mut HeaderMap, origin: Option<HeaderValue>, allowed: Allowed) {
        if let Some(o) = origin {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
        }
        if !h.get_all(header::VARY).iter().any(|v| v == "Origin") {
            h.append(header::VARY, HeaderValue::from_static("Origin"));
        }
        if allowed == Allowed::WithCredentials {
            let yes = HeaderValue::from_static("true");
            h.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, yes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(origin: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ORIGIN, HeaderValue::from_str(origin).unwrap());
        h.insert(
            header::ACCESS_CONTROL_REQUEST_METHOD,
            HeaderValue::from_static("GET"),
        );
        h
    }

    #[test]
    fn listed_origins_get_credentials_star_does_not_unlisted_get_nothing() {
        let c = Cors::new(&["https://a.example".into(), "*".into()]).unwrap();
        let r = c.preflight(&req("https://a.example"));
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        let h = r.headers();
        assert_eq!(h.get_all(header::VARY).iter().count(), 1);
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "https://a.example");
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        assert!(h[header::ACCESS_CONTROL_ALLOW_HEADERS]
            .to_str()
            .unwrap()
            .contains("Authorization"));
        let other = c.preflight(&req("https://b.example"));
        assert_eq!(
            other.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://b.example"
        );
        assert!(!other
            .headers()
            .contains_key(header::ACCESS_CONTROL_ALLOW_CREDENTIALS));

        let only = Cors::new(&["https://a.example".into()]).unwrap();
        let r = only.preflight(&req("https://evil.example"));
        assert!(!r
            .headers()
            .contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));
        assert!(!r
            .headers()
            .contains_key(header::ACCESS_CONTROL_ALLOW_METHODS));
        assert!(Cors::new(&[]).is_none());
    }

    #[test]
    fn decorate_exposes_pollgate_headers_and_keeps_the_apps_own() {
        let c = Cors::new(&["https://a.example".into()]).unwrap();
        let mut h = HeaderMap::new();
        c.decorate(Some(HeaderValue::from_static("https://a.example")), &mut h);
        assert!(h[header::ACCESS_CONTROL_EXPOSE_HEADERS]
            .to_str()
            .unwrap()
            .contains("X-Poll-Interval"));
        let mut app = HeaderMap::new();
        app.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
        c.decorate(
            Some(HeaderValue::from_static("https://a.example")),
            &mut app,
        );
        assert_eq!(app[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert!(!app.contains_key(header::ACCESS_CONTROL_EXPOSE_HEADERS));
    }
}

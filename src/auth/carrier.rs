//! Where a token travels: `Authorization: Bearer`, the `token` query
//! parameter (EventSource cannot set headers) or a cookie. Nothing here
//! allocates, except [`strip_token`], which runs only on the way upstream.

use http::{header, HeaderMap, Uri};

/// The query parameter a token may travel in.
pub const PARAM: &str = "token";

/// The request's token, looked for in the header, the query, then the
/// cookie named `cookie` (`""`: not in a cookie). Bytes as they came: a
/// remembered token is compared byte for byte, and only one that must be
/// verified is checked to be text (a ~200-byte UTF-8 check per hit was
/// half of what authorization cost a keep-alive hit).
pub fn find<'a>(headers: &'a HeaderMap, query: Option<&'a str>, cookie: &str) -> Option<&'a [u8]> {
    bearer(headers)
        .or_else(|| {
            query
                .and_then(|q| crate::route::query_param(q, PARAM))
                .map(str::as_bytes)
        })
        .or_else(|| (!cookie.is_empty()).then(|| from_cookie(headers, cookie))?)
        .filter(|t| !t.is_empty())
}

fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    let v = headers.get(header::AUTHORIZATION)?.as_bytes();
    let (scheme, token) = v.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    Some(token.trim_ascii())
}

/// `name=value` in any `Cookie` header (HTTP/2 may split them into several).
fn from_cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (n, v) = pair.trim().split_once('=')?;
            (n == name).then(|| v.trim_matches('"').as_bytes())
        })
}

/// The request's URI without any `token=` parameter, or `None` when it has
/// none. The app did not ask for the token in its query: it must not see
/// it there (nor write it to its access log).
pub fn strip_token(uri: &Uri) -> Option<Uri> {
    let query = uri.query()?;
    let is_token = |p: &&str| *p == PARAM || p.starts_with("token=");
    if !query.split('&').any(|p| is_token(&p)) {
        return None;
    }
    let kept: Vec<&str> = query.split('&').filter(|p| !is_token(p)).collect();
    let mut pq = uri.path().to_string();
    if !kept.is_empty() {
        pq.push('?');
        pq.push_str(&kept.join("&"));
    }
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(pq.parse().ok()?);
    Uri::from_parts(parts).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn find<'a>(h: &'a HeaderMap, q: Option<&'a str>, c: &str) -> Option<&'a str> {
        super::find(h, q, c).map(|t| std::str::from_utf8(t).unwrap())
    }

    #[test]
    fn header_then_query_then_cookie() {
        let c = "pollgate_token";
        let all = headers(&[
            ("authorization", "Bearer h.h.h"),
            ("cookie", "pollgate_token=c.c.c"),
        ]);
        assert_eq!(find(&all, Some("token=q.q.q"), c), Some("h.h.h"));
        let no_header = headers(&[("cookie", "a=1; pollgate_token=c.c.c")]);
        assert_eq!(
            find(&no_header, Some("since=1&token=q.q.q"), c),
            Some("q.q.q")
        );
        assert_eq!(find(&no_header, Some("since=1"), c), Some("c.c.c"));
        let split = headers(&[("cookie", "a=1"), ("cookie", "pollgate_token=\"d.d.d\"")]);
        assert_eq!(find(&split, None, c), Some("d.d.d"));
        assert_eq!(
            find(&headers(&[("authorization", "Basic eA==")]), None, c),
            None
        );
        assert_eq!(find(&HeaderMap::new(), Some("token="), c), None);
        assert_eq!(
            find(&headers(&[("authorization", "bearer x.y.z")]), None, c),
            Some("x.y.z")
        );
    }

    #[test]
    fn token_is_stripped_from_a_forwarded_query() {
        let strip = |s: &str| strip_token(&s.parse().unwrap()).map(|u| u.to_string());
        assert_eq!(strip("/p/a/changes?since=3"), None);
        assert_eq!(
            strip("/p?since=3&token=a.b.c").as_deref(),
            Some("/p?since=3")
        );
        assert_eq!(
            strip("/p?token=a.b.c&since=3&tokens=x").as_deref(),
            Some("/p?since=3&tokens=x")
        );
        assert_eq!(strip("/p?token=a.b.c").as_deref(), Some("/p"));
        assert_eq!(strip("/p?token&x=1&token=2").as_deref(), Some("/p?x=1"));
    }
}

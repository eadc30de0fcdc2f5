//! Route templates → `(key, client_version)`. Templates are parsed once at
//! config time; matching borrows from the request and never allocates.
//!
//! # Template syntax
//!
//! A route is a path template, optionally with a query part, optionally
//! followed by whitespace and `header:<Name>`:
//!
//! | template | where the version comes from |
//! | --- | --- |
//! | `/projects/{key}/changes?since={version}` | query parameter `since` |
//! | `/projects/{key}/version/{version}` | a path segment |
//! | `/projects/{key}/state header:If-None-Match` | the `If-None-Match` header (an ETag) |
//!
//! Rules, all checked by [`Routes::parse`]:
//! - the path starts with `/`; it is split on `/` and every segment is either
//!   a literal (matched byte for byte, no percent-decoding, trailing slash
//!   significant) or a placeholder occupying the whole segment;
//! - exactly one `{key}` segment;
//! - `{version}` exactly once overall: a path segment, the value of the single
//!   `<name>={version}` query part, or implied by `header:<Name>`;
//! - no other placeholders.
//!
//! # Matching
//!
//! Routes are tried in order; the first whose segment count and literal
//! segments match the request path wins, and no later route is tried even if
//! its key or version then turns out bad. See [`Routes::matches`] for what is
//! done with the key and version.

use http::{HeaderMap, HeaderName};

/// Why a route template is invalid (config time).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("route {template:?}: {reason}")]
pub struct RouteError {
    pub template: String,
    pub reason: String,
}

/// The outcome of matching one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Match<'a> {
    /// Not a poll: pass through.
    None,
    /// A poll. `version` is `None` when the request carries no version
    /// (no query parameter / no `If-None-Match`): pollgate cannot judge it.
    Poll {
        route: usize,
        key: &'a str,
        version: Option<u64>,
    },
    /// Looks like a poll but the key or version breaks the rules: 400 with this reason.
    Bad(&'static str),
}

/// Reason given when a version header is present but holds no usable ETag.
pub const BAD_ETAG: &str =
    "version header must hold an ETag with a decimal version: \"5\", W/\"5\" or 5";

/// The parsed route table. Built once from config; read on every request.
#[derive(Debug)]
pub struct Routes {
    routes: Vec<Route>,
}

/// One parsed template. Everything the matcher needs is precomputed here so
/// that matching is slice comparisons only.
#[derive(Debug)]
struct Route {
    /// Original text, kept for metric labels.
    template: String,
    /// Path segments after the leading `/`.
    segs: Vec<Seg>,
    /// Literal text before the first placeholder (`/projects/`) and after
    /// the last (`/changes`): with many routes of one family, most are
    /// rejected by two `memcmp`s instead of a segment walk.
    prefix: Box<str>,
    suffix: Box<str>,
    /// `{key}` is the only placeholder, so a path matches exactly when it is
    /// `prefix`, a key without `/`, `suffix`: no segment walk (the hit path's case).
    key_only: bool,
    version: VersionFrom,
}

#[derive(Debug)]
enum Seg {
    Lit(Box<str>),
    Key,
    Version,
}

#[derive(Debug)]
enum VersionFrom {
    Path,
    Query(Box<str>),
    /// Already lowercased by `HeaderName`, so lookup is case-insensitive.
    Header(HeaderName),
}

impl Routes {
    /// Parses route templates in order; the first bad one is reported (the
    /// caller collects config errors).
    ///
    /// A template is a path, optionally with a query part, optionally
    /// followed by whitespace and `header:<Name>`:
    ///
    /// - `/projects/{key}/changes?since={version}`: version from the query
    ///   parameter `since` (other parameters ignored, in any order; if it
    ///   appears twice the first wins);
    /// - `/projects/{key}/version/{version}`: version in the path;
    /// - `/projects/{key}/state header:If-None-Match`: version from that
    ///   request header (case-insensitive name), read as an ETag: `"5"`,
    ///   `W/"5"` or bare `5`; of a list (`"4", "5"`) the first element.
    ///
    /// The path must start with `/`. Exactly one `{key}` segment is required
    /// and `{version}` must appear exactly once overall (path segment, query
    /// value, or implied by `header:`). Placeholders occupy a whole path
    /// segment (`foo{key}bar` is an error); literal segments match exactly;
    /// a trailing slash is significant. The query part, if any, must be a
    /// single `<name>={version}`.
    pub fn parse(templates: &[String]) -> Result<Routes, RouteError> {
        let routes = templates
            .iter()
            .map(|t| {
                Route::parse(t).map_err(|reason| RouteError {
                    template: t.clone(),
                    reason,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Routes { routes })
    }

    /// Matches a request against the routes, in order.
    ///
    /// - No route's shape matches the path → [`Match::None`] (pass-through).
    /// - The first route whose shape matches decides: a key breaking
    ///   [`check_key`] or a version present but invalid → [`Match::Bad`];
    ///   a version absent (no parameter, no header, empty value) →
    ///   `Poll { version: None }`; otherwise `Poll { version: Some(v) }`.
    ///
    /// The key is taken raw from the path (no percent-decoding), so a `%`
    /// fails the key rule. Never allocates; the key borrows from `path`.
    pub fn matches<'a>(
        &self,
        path: &'a str,
        query: Option<&'a str>,
        headers: &'a HeaderMap,
    ) -> Match<'a> {
        for (idx, route) in self.routes.iter().enumerate() {
            if let Some((key, path_version)) = route.match_path(path) {
                return route.judge(idx, key, path_version, query, headers);
            }
        }
        Match::None
    }

    /// The template text of route `idx`, for metric labels.
    pub fn template(&self, idx: usize) -> &str {
        &self.routes[idx].template
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Route {
    fn parse(template: &str) -> Result<Route, String> {
        let text = template.trim();
        let (target, header) = match text.split_once(char::is_whitespace) {
            Some((target, rest)) => (target, Some(parse_header_clause(rest.trim_start())?)),
            None => (text, None),
        };
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(parse_query(q)?)),
            None => (target, None),
        };
        let segs = parse_path(path)?;
        let version = choose_version(&segs, query, header)?;
        let (prefix, suffix) = literal_ends(&segs);
        let key_only = !matches!(version, VersionFrom::Path);
        Ok(Route {
            template: template.to_string(),
            segs,
            prefix,
            suffix,
            key_only,
            version,
        })
    }

    /// Shape check: segment count and literals. Returns the raw key segment
    /// and, for path-version routes, the raw version segment.
    fn match_path<'a>(&self, path: &'a str) -> Option<(&'a str, Option<&'a str>)> {
        if !path.starts_with(&*self.prefix) || !path.ends_with(&*self.suffix) {
            return None;
        }
        if self.key_only {
            // None when prefix and suffix overlap: the path is too short.
            let key = path.get(self.prefix.len()..path.len().checked_sub(self.suffix.len())?)?;
            return (!key.contains('/')).then_some((key, None));
        }
        self.walk_segments(path)
    }

    /// The general shape check, segment by segment.
    fn walk_segments<'a>(&self, path: &'a str) -> Option<(&'a str, Option<&'a str>)> {
        let mut parts = path.strip_prefix('/')?.split('/');
        let (mut key, mut version) = ("", None);
        for seg in &self.segs {
            let part = parts.next()?;
            match seg {
                Seg::Lit(lit) if **lit != *part => return None,
                Seg::Lit(_) => {}
                Seg::Key => key = part,
                Seg::Version => version = Some(part),
            }
        }
        match parts.next() {
            Some(_) => None,
            None => Some((key, version)),
        }
    }

    /// The shape matched: check the key, find and check the version.
    fn judge<'a>(
        &self,
        route: usize,
        key: &'a str,
        path_version: Option<&'a str>,
        query: Option<&'a str>,
        headers: &'a HeaderMap,
    ) -> Match<'a> {
        if let Err(reason) = check_key(key) {
            return Match::Bad(reason);
        }
        let raw = match &self.version {
            VersionFrom::Path => Ok(path_version),
            VersionFrom::Query(name) => Ok(query.and_then(|q| query_param(q, name))),
            VersionFrom::Header(name) => header_etag(headers, name),
        };
        let version = match raw {
            Ok(None) | Ok(Some("")) => None,
            Ok(Some(v)) => match parse_version(v) {
                Ok(v) => Some(v),
                Err(reason) => return Match::Bad(reason),
            },
            Err(reason) => return Match::Bad(reason),
        };
        Match::Poll {
            route,
            key,
            version,
        }
    }
}

fn parse_header_clause(clause: &str) -> Result<HeaderName, String> {
    let name = clause
        .strip_prefix("header:")
        .ok_or_else(|| format!("expected `header:<Name>` after the path, found {clause:?}"))?;
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("invalid header name {name:?} in `header:<Name>`"))
}

/// The template query part must be exactly `<name>={version}`.
fn parse_query(query: &str) -> Result<Box<str>, String> {
    match query.split_once('=') {
        Some(("", "{version}")) => Err("query parameter name is empty".into()),
        Some((name, "{version}")) if !name.contains(['&', '=', '{', '}']) => Ok(name.into()),
        _ => Err(format!(
            "query part must be a single <name>={{version}}, found {query:?}"
        )),
    }
}

fn parse_path(path: &str) -> Result<Vec<Seg>, String> {
    let rest = path.strip_prefix('/').ok_or("path must start with /")?;
    rest.split('/').map(parse_segment).collect()
}

/// `/lit/…/` up to the first placeholder and `/…/lit` after the last one.
/// A path that matches has a placeholder between them, so they never overlap.
fn literal_ends(segs: &[Seg]) -> (Box<str>, Box<str>) {
    let lit = |s: &Seg| match s {
        Seg::Lit(l) => Some(l.to_string()),
        _ => None,
    };
    let head: Vec<String> = segs.iter().map_while(lit).collect();
    let mut tail: Vec<String> = segs.iter().rev().map_while(lit).collect();
    tail.reverse();
    let prefix = head.iter().fold(String::from("/"), |acc, l| acc + l + "/");
    let suffix = tail.iter().fold(String::new(), |acc, l| acc + "/" + l);
    (prefix.into(), suffix.into())
}

fn parse_segment(seg: &str) -> Result<Seg, String> {
    match seg {
        "{key}" => Ok(Seg::Key),
        "{version}" => Ok(Seg::Version),
        s if !s.contains(['{', '}']) => Ok(Seg::Lit(s.into())),
        s if is_placeholder(s) => Err(format!("unknown placeholder {s}")),
        s => Err(format!(
            "placeholder must occupy a whole path segment, found {s:?}"
        )),
    }
}

/// `{name}` with no other braces inside.
fn is_placeholder(s: &str) -> bool {
    let inner = s.strip_prefix('{').and_then(|s| s.strip_suffix('}'));
    inner.is_some_and(|i| !i.contains(['{', '}']))
}

/// Enforces "exactly one {key}" and "{version} exactly once overall".
fn choose_version(
    segs: &[Seg],
    query: Option<Box<str>>,
    header: Option<HeaderName>,
) -> Result<VersionFrom, String> {
    let keys = segs.iter().filter(|s| matches!(s, Seg::Key)).count();
    if keys != 1 {
        return Err("needs exactly one {key} segment".into());
    }
    let in_path = segs.iter().filter(|s| matches!(s, Seg::Version)).count();
    let sources = in_path + usize::from(query.is_some()) + usize::from(header.is_some());
    match (sources, query, header) {
        (0, _, _) => Err(
            "needs a {version}: a path segment, a query value (?since={version}) or header:<Name>"
                .into(),
        ),
        (2.., _, _) => Err("{version} given twice".into()),
        (_, Some(name), _) => Ok(VersionFrom::Query(name)),
        (_, _, Some(name)) => Ok(VersionFrom::Header(name)),
        _ => Ok(VersionFrom::Path),
    }
}

/// Value of the first `name=` parameter; a bare `name` counts as empty.
/// Shared with push (`keys=`, `timeout=`), so both read a query alike.
/// One pass over the bytes: this runs on every poll.
pub(crate) fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    let (q, n) = (query.as_bytes(), name.as_bytes());
    // A pair's name ends at its first `=`, so a name holding one never matches.
    if n.contains(&b'=') {
        return None;
    }
    let mut start = 0;
    while start <= q.len() {
        let end = q[start..]
            .iter()
            .position(|&b| b == b'&')
            .map_or(q.len(), |i| start + i);
        let pair = &q[start..end];
        if pair.starts_with(n) {
            match pair.get(n.len()) {
                None => return Some(""),
                Some(b'=') => return Some(&query[start + n.len() + 1..end]),
                _ => {}
            }
        }
        start = end + 1;
    }
    None
}

/// The version text inside the header's ETag; `Ok(None)` when absent.
fn header_etag<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
) -> Result<Option<&'a str>, &'static str> {
    let Some(value) = headers.get(name) else {
        return Ok(None);
    };
    // A browser echoes whatever ETag the app gave it; one that is not a
    // pollgate version is not the client's fault: forward it (cannot judge).
    let Ok(value) = value.to_str() else {
        return Ok(None);
    };
    Ok(etag_version(value).unwrap_or(None))
}

/// `"5"`, `W/"5"`, bare `5`; of a list the first element. Empty → `None`.
fn etag_version(value: &str) -> Result<Option<&str>, &'static str> {
    let first = value.split(',').next().unwrap_or("").trim();
    if first.is_empty() {
        return Ok(None);
    }
    let tag = first.strip_prefix("W/").unwrap_or(first);
    let inner = match tag.strip_prefix('"') {
        Some(rest) => rest.strip_suffix('"').ok_or(BAD_ETAG)?,
        None if tag.contains('"') => return Err(BAD_ETAG),
        None => tag,
    };
    if inner.is_empty() {
        return Ok(None);
    }
    if !inner.bytes().all(|c| c.is_ascii_digit()) {
        return Err(BAD_ETAG);
    }
    Ok(Some(inner))
}

/// Key rule from DESIGN.md: 1–128 bytes of `[A-Za-z0-9._:-]`.
pub fn check_key(key: &str) -> Result<(), &'static str> {
    let b = key.as_bytes();
    if b.is_empty() || b.len() > 128 {
        return Err("key must be 1-128 bytes of [A-Za-z0-9._:-]");
    }
    if b.iter()
        .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b':' | b'-'))
    {
        Ok(())
    } else {
        Err("key must be 1-128 bytes of [A-Za-z0-9._:-]")
    }
}

/// Version rule: a decimal u64.
pub fn parse_version(s: &str) -> Result<u64, &'static str> {
    const RULE: &str = "version must be a decimal integer 0..2^64-1";
    if s.is_empty() {
        return Err(RULE);
    }
    s.bytes().try_fold(0u64, |v, c| {
        let digit = c.wrapping_sub(b'0');
        if digit > 9 {
            return Err(RULE);
        }
        v.checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(digit)))
            .ok_or(RULE)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;

    const KEY_RULE: &str = "key must be 1-128 bytes of [A-Za-z0-9._:-]";
    const VERSION_RULE: &str = "version must be a decimal integer 0..2^64-1";
    const Q: &str = "/projects/{key}/changes?since={version}";
    const P: &str = "/projects/{key}/version/{version}";
    const H: &str = "/projects/{key}/state header:If-None-Match";

    fn routes(ts: &[&str]) -> Routes {
        Routes::parse(&ts.iter().map(|t| t.to_string()).collect::<Vec<_>>()).unwrap()
    }

    fn parse_err(t: &str) -> String {
        Routes::parse(&[t.to_string()]).unwrap_err().reason
    }

    fn no_headers() -> HeaderMap {
        HeaderMap::new()
    }

    fn inm(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("if-none-match", HeaderValue::from_str(value).unwrap());
        h
    }

    fn poll(route: usize, key: &str, version: Option<u64>) -> Match<'_> {
        Match::Poll {
            route,
            key,
            version,
        }
    }

    // --- each template kind ---

    #[test]
    fn query_version() {
        let r = routes(&[Q]);
        let h = no_headers();
        assert_eq!(
            r.matches("/projects/a/changes", Some("since=5"), &h),
            poll(0, "a", Some(5))
        );
    }

    #[test]
    fn query_extra_params_any_order() {
        let r = routes(&[Q]);
        let h = no_headers();
        for q in [
            "x=1&since=7",
            "since=7&x=1",
            "a&since=7&b=2",
            "sincex=1&since=7",
            "since=7&since=9",
        ] {
            assert_eq!(
                r.matches("/projects/k/changes", Some(q), &h),
                poll(0, "k", Some(7)),
                "{q}"
            );
        }
    }

    #[test]
    fn query_version_absent_or_empty() {
        let r = routes(&[Q]);
        let h = no_headers();
        for q in [
            None,
            Some(""),
            Some("x=1"),
            Some("since="),
            Some("since"),
            Some("x=1&since="),
        ] {
            assert_eq!(
                r.matches("/projects/k/changes", q, &h),
                poll(0, "k", None),
                "{q:?}"
            );
        }
    }

    #[test]
    fn query_version_bad() {
        let r = routes(&[Q]);
        let h = no_headers();
        let too_big = "18446744073709551616"; // u64::MAX + 1
        for q in [
            "since=abc",
            "since=-1",
            "since=1e3",
            "since=+5",
            "since=%35",
            "since= 5",
            &format!("since={too_big}"),
        ] {
            assert_eq!(
                r.matches("/projects/k/changes", Some(q), &h),
                Match::Bad(VERSION_RULE),
                "{q}"
            );
        }
        let max = format!("since={}", u64::MAX);
        assert_eq!(
            r.matches("/projects/k/changes", Some(&max), &h),
            poll(0, "k", Some(u64::MAX))
        );
    }

    #[test]
    fn path_version() {
        let r = routes(&[P]);
        let h = no_headers();
        assert_eq!(
            r.matches("/projects/a.b/version/42", None, &h),
            poll(0, "a.b", Some(42))
        );
        assert_eq!(
            r.matches("/projects/a/version/", None, &h),
            poll(0, "a", None)
        );
        assert_eq!(
            r.matches("/projects/a/version/x1", None, &h),
            Match::Bad(VERSION_RULE)
        );
        // The query is not looked at for a path-version route.
        assert_eq!(
            r.matches("/projects/a/version/3", Some("since=9"), &h),
            poll(0, "a", Some(3))
        );
    }

    #[test]
    fn header_version_variants() {
        let r = routes(&[H]);
        let path = "/projects/k/state";
        for (value, want) in [
            ("\"5\"", Some(5)),
            ("W/\"5\"", Some(5)),
            ("5", Some(5)),
            ("  \"5\"  ", Some(5)),
            ("\"4\", \"5\"", Some(4)),
            ("W/\"4\",W/\"5\"", Some(4)),
            ("", None),
            ("\"\"", None),
        ] {
            assert_eq!(
                r.matches(path, None, &inm(value)),
                poll(0, "k", want),
                "{value:?}"
            );
        }
        assert_eq!(r.matches(path, None, &no_headers()), poll(0, "k", None));
    }

    #[test]
    fn header_version_garbage() {
        let r = routes(&[H]);
        let path = "/projects/k/state";
        for value in [
            "abc", "\"abc\"", "W/abc", "\"5", "5\"", "*", "\"-1\"", "\"1e3\"", "W/\"5 \"", "x\"5\"",
        ] {
            assert_eq!(
                r.matches(path, None, &inm(value)),
                poll(0, "k", None),
                "an ETag that is not ours is forwarded: {value:?}"
            );
        }
        let mut h = HeaderMap::new();
        h.insert(
            "if-none-match",
            HeaderValue::from_bytes(b"\"5\xff\"").unwrap(),
        );
        assert_eq!(r.matches(path, None, &h), poll(0, "k", None));
        let too_big = inm("\"18446744073709551616\"");
        assert_eq!(r.matches(path, None, &too_big), Match::Bad(VERSION_RULE));
    }

    #[test]
    fn header_name_case_insensitive() {
        let r = routes(&["/p/{key} header:X-Client-VERSION"]);
        let mut h = HeaderMap::new();
        h.insert("x-client-version", HeaderValue::from_static("9"));
        assert_eq!(r.matches("/p/k", None, &h), poll(0, "k", Some(9)));
    }

    #[test]
    fn template_text_kept_for_labels() {
        let r = routes(&[Q, P, H]);
        assert_eq!((r.len(), r.is_empty()), (3, false));
        assert_eq!([r.template(0), r.template(1), r.template(2)], [Q, P, H]);
        assert!(routes(&[]).is_empty());
    }

    // --- shape: None ---

    #[test]
    fn non_matching_paths_pass_through() {
        let r = routes(&[Q, P, H]);
        let h = inm("\"5\"");
        for path in [
            "",
            "*",
            "/",
            "projects/a/changes",
            "/projects/a",
            "/projects/a/changes/",
            "/projects/a/changes/x",
            "/Projects/a/changes",
            "/projects/a/change",
            "//projects/a/changes",
            "/projects/a/version/1/2",
            "/projects/a/state/",
            "/other/a/changes",
        ] {
            assert_eq!(
                r.matches(path, Some("since=1"), &h),
                Match::None,
                "{path:?}"
            );
        }
    }

    #[test]
    fn trailing_slash_is_significant() {
        let r = routes(&["/p/{key}/?v={version}"]);
        let h = no_headers();
        assert_eq!(r.matches("/p/k/", Some("v=1"), &h), poll(0, "k", Some(1)));
        assert_eq!(r.matches("/p/k", Some("v=1"), &h), Match::None);
    }

    // --- shape matches, key bad ---

    #[test]
    fn bad_keys() {
        let r = routes(&[Q]);
        let h = no_headers();
        let long = "a".repeat(129);
        for key in [
            "",
            long.as_str(),
            "a b",
            "a%2Fb",
            "%41",
            "caf\u{e9}",
            "\u{1f600}",
            "a+b",
            "a\"b",
        ] {
            let path = format!("/projects/{key}/changes");
            assert_eq!(
                r.matches(&path, Some("since=1"), &h),
                Match::Bad(KEY_RULE),
                "{key:?}"
            );
        }
        // A `/` in the key changes the segment count: not a poll at all.
        assert_eq!(
            r.matches("/projects/a/b/changes", Some("since=1"), &h),
            Match::None
        );
        let max = "Az09._:-".repeat(16);
        let path = format!("/projects/{max}/changes");
        assert_eq!(r.matches(&path, None, &h), poll(0, &max, None));
    }

    #[test]
    fn bad_key_wins_over_bad_version() {
        let r = routes(&[Q]);
        assert_eq!(
            r.matches("/projects/a%20/changes", Some("since=x"), &no_headers()),
            Match::Bad(KEY_RULE)
        );
    }

    #[test]
    fn literal_prefix_and_suffix_prefilter() {
        let ends = |t: &str| {
            let r = Route::parse(t).unwrap();
            (r.prefix.to_string(), r.suffix.to_string())
        };
        assert_eq!(ends(Q), ("/projects/".into(), "/changes".into()));
        assert_eq!(ends("/{key}/{version}"), ("/".into(), "".into()));
        assert_eq!(
            ends("/a/b/{key}/c/{version}/d/"),
            ("/a/b/".into(), "/d/".into())
        );
        let r = routes(&["/{key}/{version}", "/a/{key}/?v={version}"]);
        let h = no_headers();
        assert_eq!(r.matches("/k/3", None, &h), poll(0, "k", Some(3)));
        assert_eq!(r.matches("//3", None, &h), Match::Bad(KEY_RULE));
        assert_eq!(r.matches("/a/k/", None, &h), poll(1, "k", None));
        // Two segments: route 0's shape, with an empty version.
        assert_eq!(r.matches("/a/", None, &h), poll(0, "a", None));
        assert_eq!(r.matches("/a//", None, &h), Match::Bad(KEY_RULE));
        assert_eq!(r.matches("/b/k/", None, &h), Match::None);
    }

    // --- ordering ---

    #[test]
    fn first_matching_route_wins() {
        let r = routes(&[
            "/p/{key}/v/{version}",
            "/p/{key}/{version}/x",
            "/p/{key}/v/x?since={version}",
        ]);
        let h = no_headers();
        // `/p/k/v/x` fits routes 0 and 1; 0 wins even though its version `x`
        // is bad, and route 1 is not tried.
        assert_eq!(
            r.matches("/p/k/v/x", Some("since=3"), &h),
            Match::Bad(VERSION_RULE)
        );
        assert_eq!(r.matches("/p/k/7/x", None, &h), poll(1, "k", Some(7)));
        assert_eq!(r.matches("/p/k/v/8", None, &h), poll(0, "k", Some(8)));
    }

    #[test]
    fn later_route_is_tried_when_earlier_shape_differs() {
        let r = routes(&[Q, P, H]);
        let h = inm("W/\"11\"");
        assert_eq!(
            r.matches("/projects/k/changes", Some("since=1"), &h),
            poll(0, "k", Some(1))
        );
        assert_eq!(
            r.matches("/projects/k/version/2", None, &h),
            poll(1, "k", Some(2))
        );
        assert_eq!(
            r.matches("/projects/k/state", None, &h),
            poll(2, "k", Some(11))
        );
    }

    // --- parse errors ---

    #[test]
    fn parse_accepts_valid_forms() {
        routes(&[
            Q,
            P,
            H,
            "/{key}/{version}",
            "/{version}/{key}",
            "/a/{key}/b/  header:etag",
            "  /a/{key}?v={version}  ",
            "/a%20b/{key}?v={version}",
            "/a/{key}\theader:If-None-Match",
        ]);
    }

    #[test]
    fn parse_errors() {
        let cases = [
            ("", "path must start with /"),
            ("projects/{key}/changes?since={version}", "path must start with /"),
            ("?since={version}", "path must start with /"),
            ("/projects/changes?since={version}", "needs exactly one {key} segment"),
            ("/{key}/{key}?since={version}", "needs exactly one {key} segment"),
            ("/p/{version}/{version}/{key}", "{version} given twice"),
            ("/p/{key}/{version}?since={version}", "{version} given twice"),
            ("/p/{key}?since={version} header:If-None-Match", "{version} given twice"),
            ("/p/{key}/{version} header:If-None-Match", "{version} given twice"),
            ("/p/{key}", "needs a {version}: a path segment, a query value (?since={version}) or header:<Name>"),
            ("/p/{foo}/{key}/{version}", "unknown placeholder {foo}"),
            ("/p/{}/{key}/{version}", "unknown placeholder {}"),
            ("/p/foo{key}bar/{version}", "placeholder must occupy a whole path segment, found \"foo{key}bar\""),
            ("/p/{key}x/{version}", "placeholder must occupy a whole path segment, found \"{key}x\""),
            ("/p/{key/{version}", "placeholder must occupy a whole path segment, found \"{key\""),
            ("/p/{{key}}/{version}", "placeholder must occupy a whole path segment, found \"{{key}}\""),
            ("/p/{key}?={version}", "query parameter name is empty"),
            ("/p/{key}?since=5", "query part must be a single <name>={version}, found \"since=5\""),
            ("/p/{key}?since", "query part must be a single <name>={version}, found \"since\""),
            ("/p/{key}?", "query part must be a single <name>={version}, found \"\""),
            ("/p/{key}?a=1&since={version}", "query part must be a single <name>={version}, found \"a=1&since={version}\""),
            ("/p/{key}?since={version}&a=1", "query part must be a single <name>={version}, found \"since={version}&a=1\""),
            ("/p?k={key}&since={version}", "query part must be a single <name>={version}, found \"k={key}&since={version}\""),
            ("/p/{key} If-None-Match", "expected `header:<Name>` after the path, found \"If-None-Match\""),
            ("/p/{key} header:", "invalid header name \"\" in `header:<Name>`"),
            ("/p/{key} header:If None", "invalid header name \"If None\" in `header:<Name>`"),
            ("/p/{key} header:a:b", "invalid header name \"a:b\" in `header:<Name>`"),
        ];
        for (t, reason) in cases {
            assert_eq!(parse_err(t), reason, "{t:?}");
        }
    }

    #[test]
    fn parse_reports_first_bad_template() {
        let ts = [Q.to_string(), "/bad".to_string(), "nope".to_string()];
        let err = Routes::parse(&ts).unwrap_err();
        assert_eq!(err.template, "/bad");
        assert_eq!(
            err.to_string(),
            "route \"/bad\": needs exactly one {key} segment"
        );
    }

    // --- property ---

    const KEY_ALPHABET: &str = "[A-Za-z0-9._:-]{1,128}";

    proptest! {
        #[test]
        fn formatted_path_matches_back(key in KEY_ALPHABET, v in any::<u64>()) {
            let r = routes(&[Q, P, H]);
            let h = no_headers();
            let path = format!("/projects/{key}/changes");
            let q = format!("x=1&since={v}");
            prop_assert_eq!(r.matches(&path, Some(&q), &h), poll(0, &key, Some(v)));
            let path = format!("/projects/{key}/version/{v}");
            prop_assert_eq!(r.matches(&path, None, &h), poll(1, &key, Some(v)));
            let path = format!("/projects/{key}/state");
            let h = inm(&format!("W/\"{v}\""));
            prop_assert_eq!(r.matches(&path, None, &h), poll(2, &key, Some(v)));
        }

        /// The key-only shortcut and the segment walk agree on every path.
        #[test]
        fn key_only_shortcut_equals_segment_walk(
            t in prop::sample::select(vec![
                "/{key}?v={version}",
                "/a/{key}?v={version}",
                "/{key}/b?v={version}",
                "/a/{key}/b header:If-None-Match",
                "/a/b/{key}/c/?v={version}",
            ]),
            path in "[/ab{}]{0,12}",
        ) {
            let r = Route::parse(t).unwrap();
            prop_assert!(r.key_only);
            prop_assert_eq!(r.match_path(&path), r.walk_segments(&path));
        }

        /// The byte scan reads a query as splitting on `&`, then at the first `=`, does.
        #[test]
        fn query_param_equals_split(query in "[ab=&]{0,12}", name in "[ab=]{0,3}") {
            let split = query.split('&').find_map(|pair| match pair.split_once('=') {
                Some((n, v)) if n == name => Some(v),
                None if pair == name => Some(""),
                _ => None,
            });
            prop_assert_eq!(query_param(&query, &name), split);
        }

        #[test]
        fn parse_version_equals_std_parse(s in "[0-9a+ -]{0,3}|[0-9]{18,21}") {
            let std = match s.bytes().all(|c| c.is_ascii_digit()) {
                true => s.parse::<u64>().ok(),
                false => None,
            };
            prop_assert_eq!(parse_version(&s).ok(), std);
        }
    }
}

//! Route templates → `(key, client_version)`. Matching borrows from the
//! request and never allocates.

use http::HeaderMap;

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

pub struct Routes {}

impl Routes {
    pub fn parse(_templates: &[String]) -> Result<Routes, RouteError> {
        todo!()
    }
    pub fn matches<'a>(
        &self,
        _path: &'a str,
        _query: Option<&'a str>,
        _headers: &'a HeaderMap,
    ) -> Match<'a> {
        todo!()
    }
    /// The template text of route `idx`, for metric labels.
    pub fn template(&self, _idx: usize) -> &str {
        todo!()
    }
    pub fn len(&self) -> usize {
        todo!()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
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
    if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
        return Err("version must be a decimal integer 0..2^64-1");
    }
    s.parse()
        .map_err(|_| "version must be a decimal integer 0..2^64-1")
}

//! `POST /v1/versions` and `GET /v1/versions/{key}`: the publish API.
//! A batch is validated whole before any of it is applied.

use http::{header, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::body::json;
use crate::body::Body;
use crate::error::Error;
use crate::inbound::{authorize, read_body};
use crate::route::{check_key, parse_version};
use crate::state::{State, VersionSource};

/// One `key version` pair of a batch. Keys borrow from the body: a 1M-key
/// publish would otherwise leave 1M freed small strings fragmenting the heap
/// that the table then grows into (measured: ~9 B/key more RSS).
#[derive(Debug, serde::Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Update<'a> {
    #[serde(borrow)]
    pub key: std::borrow::Cow<'a, str>,
    pub version: u64,
}

pub async fn post(state: &State, req: Request<Incoming>) -> Result<Response<Body>, Error> {
    let res = accept(state, req).await;
    if res.is_err() {
        state.metrics.publish_rejected.inc();
    }
    res
}

async fn accept(state: &State, req: Request<Incoming>) -> Result<Response<Body>, Error> {
    authorize(&state.live.secrets().publish, &req, "publish_token")?;
    let is_json = is_json(&req);
    let body = read_body(req, state.cfg.publish_max_body).await?;
    let items = if is_json {
        parse_json(&body)?
    } else {
        parse_text(&body)?
    };
    let advanced = items
        .iter()
        .filter(|i| {
            state
                .learn(&i.key, i.version, VersionSource::Publish)
                .advanced()
        })
        .count();
    state.metrics.publish_batches.inc();
    let body = format!("{{\"accepted\":{},\"advanced\":{advanced}}}\n", items.len());
    Ok(json(StatusCode::OK, body))
}

fn is_json<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"))
}

/// `key version` per line; blank lines and `#` comments skipped.
pub fn parse_text(body: &[u8]) -> Result<Vec<Update<'_>>, Error> {
    let text = std::str::from_utf8(body)
        .map_err(|e| Error::BadRequestOwned(format!("body is not UTF-8: {e}")))?;
    let mut items = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        items.push(parse_line(line).map_err(|why| bad_line(n + 1, line, why))?);
    }
    Ok(items)
}

fn parse_line(line: &str) -> Result<Update<'_>, &'static str> {
    let mut parts = line.split_ascii_whitespace();
    let (Some(key), Some(version), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err("expected `key version`");
    };
    check_key(key)?;
    let version = parse_version(version)?;
    Ok(Update {
        key: key.into(),
        version,
    })
}

fn bad_line(n: usize, line: &str, why: &str) -> Error {
    let shown: String = line.chars().take(80).collect();
    Error::BadRequestOwned(format!("line {n}: {why}: {shown:?}"))
}

/// `[{"key":"a","version":5}, ...]`.
pub fn parse_json(body: &[u8]) -> Result<Vec<Update<'_>>, Error> {
    let items: Vec<Update<'_>> = serde_json::from_slice(body).map_err(|e| {
        Error::BadRequestOwned(format!("expected [{{\"key\":..,\"version\":..}}]: {e}"))
    })?;
    for (n, item) in items.iter().enumerate() {
        check_key(&item.key).map_err(|why| {
            Error::BadRequestOwned(format!("item {}: {why}: {:?}", n + 1, item.key))
        })?;
    }
    Ok(items)
}

/// `{"key":..,"version":..,"confirmed_ms_ago":..}` or 404.
pub fn get(state: &State, key: &str) -> Result<Response<Body>, Error> {
    check_key(key).map_err(Error::BadRequest)?;
    let e = state.table.get(key).ok_or(Error::NotFound)?;
    let ago = state.table.now_ms().saturating_sub(e.confirmed_ms);
    let body = serde_json::json!({"key": key, "version": e.version, "confirmed_ms_ago": ago});
    Ok(json(StatusCode::OK, format!("{body}\n")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_lines_parse_and_skip_blanks() {
        let items = parse_text(b"a 1\n\n# comment\n  b:c 22  \n").unwrap();
        assert_eq!(
            items,
            vec![
                Update {
                    key: "a".into(),
                    version: 1
                },
                Update {
                    key: "b:c".into(),
                    version: 22
                },
            ]
        );
    }

    #[test]
    fn text_names_first_bad_line() {
        let err = parse_text(b"a 1\nb x\nc/d 3\n").unwrap_err().to_string();
        assert!(err.starts_with("line 2: version"), "{err}");
        let err = parse_text(b"a 1 2\n").unwrap_err().to_string();
        assert!(err.contains("line 1: expected `key version`"), "{err}");
        let err = parse_text(b"a/b 1\n").unwrap_err().to_string();
        assert!(err.contains("line 1: key must be"), "{err}");
    }

    #[test]
    fn json_checks_keys_and_shape() {
        assert_eq!(
            parse_json(br#"[{"key":"a","version":5}]"#).unwrap().len(),
            1
        );
        assert!(parse_json(br#"[{"key":"a b","version":5}]"#)
            .unwrap_err()
            .to_string()
            .contains("item 1"));
        assert!(parse_json(br#"[{"key":"a","version":-1}]"#).is_err());
        assert!(parse_json(br#"[{"key":"a","version":1,"x":2}]"#).is_err());
        assert!(parse_json(br#"{"key":"a"}"#).is_err());
    }
}

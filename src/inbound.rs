//! Reading trusted requests on the internal listener (publish, admin,
//! gossip): bearer tokens compared in constant time, bodies bounded in size and time.

use http::{header, Request};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use subtle::ConstantTimeEq;

use crate::error::Error;

/// Bearer check in constant time against every accepted token (several
/// during a rotation). None configured → 403 saying how to set one.
pub fn authorize<B>(tokens: &[String], req: &Request<B>, key: &'static str) -> Result<(), Error> {
    if tokens.is_empty() {
        return Err(Error::Forbidden(match key {
            "admin_token" => "admin is disabled: set admin_token (--admin-token or POLLGATE_ADMIN_TOKEN)",
            _ => "publishing is disabled: set publish_token (--publish-token or POLLGATE_PUBLISH_TOKEN)",
        }));
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .unwrap_or(b"");
    // Every token is compared, so the time does not tell which one matched.
    let matched = tokens.iter().fold(subtle::Choice::from(0), |m, t| {
        m | given.ct_eq(t.as_bytes())
    });
    match bool::from(matched) {
        true => Ok(()),
        false => Err(Error::Unauthorized),
    }
}

/// Longest wait for a whole internal-listener body (publish, config, gossip):
/// a 1 MiB batch takes milliseconds on any working link; slower is a stuck sender.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Reads at most `limit` bytes within [`BODY_TIMEOUT`]; a declared or actual larger body → 413.
pub async fn read_body(req: Request<Incoming>, limit: u64) -> Result<bytes::Bytes, Error> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(Error::TooLarge { limit });
    }
    let collect = Limited::new(req.into_body(), limit as usize).collect();
    let collected = tokio::time::timeout(BODY_TIMEOUT, collect)
        .await
        .map_err(|_| Error::BodyTimeout(BODY_TIMEOUT))?;
    match collected {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(Error::TooLarge { limit }),
        Err(e) => Err(Error::BadRequestOwned(format!("could not read body: {e}"))),
    }
}

//! Where an error came from, and the one place that turns it into a status.
//! The client never sees internals: upstream and internal errors get a short
//! fixed message; the detail goes to the log.

use std::time::Duration;

use http::{header, HeaderValue, Response, StatusCode};

use crate::body::Body;

/// Everything that can stop a request from being answered normally.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The client sent something we reject; the message is safe to show.
    #[error("{0}")]
    BadRequest(&'static str),
    #[error("{0}")]
    BadRequestOwned(String),
    #[error("missing or wrong bearer token")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(&'static str),
    /// The caller's token does not cover this key.
    #[error("token does not cover key {0:?}")]
    NotCovered(compact_str::CompactString),
    #[error("not found")]
    NotFound,
    #[error("body larger than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("method not allowed")]
    MethodNotAllowed,
    /// This client is over its per-client limit (`client_rate_per_s`).
    #[error("too many requests from this client")]
    TooManyRequests { retry_after: Duration },
    /// A request form pollgate does not serve or forward.
    #[error("{0}")]
    NotImplemented(&'static str),
    /// The request head is larger than `max_header_size`.
    #[error("request head too large")]
    HeadTooLarge,
    /// The request lost against a concurrent change; retrying may succeed.
    #[error("{0}")]
    Conflict(&'static str),
    /// The body did not arrive in time (a slow sender must not hold a connection).
    #[error("request body not received within {0:?}")]
    BodyTimeout(Duration),
    /// The upstream guard refused: too many requests in flight and queued.
    #[error("upstream busy")]
    Shed { retry_after: Duration },
    /// The circuit breaker is open.
    #[error("upstream unavailable")]
    BreakerOpen { retry_after: Duration },
    #[error("upstream did not answer in time")]
    UpstreamTimeout,
    #[error("upstream failed: {0}")]
    Upstream(String),
    #[error("internal error: {0}")]
    Internal(String),
    /// Push admission refused a new connection (rate or connection cap).
    #[error("push busy, retry later")]
    PushBusy { retry_after: Duration },
    /// A gossip frame failed authentication; the reason names no secret,
    /// and the sending replica logs it.
    #[error("gossip refused: {0}")]
    GossipRefused(String),
}

/// Who is to blame: decides what the client may see and how loudly it is logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    Client,
    Upstream,
    Internal,
    /// This replica is saturated; the message is safe to show.
    Overload,
}

impl Error {
    pub fn blame(&self) -> Blame {
        use Error::*;
        match self {
            BadRequest(_)
            | BadRequestOwned(_)
            | Unauthorized
            | Forbidden(_)
            | NotCovered(_)
            | NotFound
            | TooLarge { .. }
            | MethodNotAllowed
            | HeadTooLarge
            | NotImplemented(_)
            | TooManyRequests { .. }
            | Conflict(_)
            | BodyTimeout(_)
            | GossipRefused(_) => Blame::Client,
            Shed { .. } | BreakerOpen { .. } | UpstreamTimeout | Upstream(_) => Blame::Upstream,
            Internal(_) => Blame::Internal,
            PushBusy { .. } => Blame::Overload,
        }
    }

    pub fn status(&self) -> StatusCode {
        use Error::*;
        match self {
            BadRequest(_) | BadRequestOwned(_) => StatusCode::BAD_REQUEST,
            Unauthorized | GossipRefused(_) => StatusCode::UNAUTHORIZED,
            Forbidden(_) | NotCovered(_) => StatusCode::FORBIDDEN,
            NotFound => StatusCode::NOT_FOUND,
            TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Conflict(_) => StatusCode::CONFLICT,
            HeadTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Shed { .. } | BreakerOpen { .. } | PushBusy { .. } => StatusCode::SERVICE_UNAVAILABLE,
            UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Upstream(_) => StatusCode::BAD_GATEWAY,
            Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The response a client sees. Upstream and internal details stay in the log.
    pub fn into_response(self) -> Response<Body> {
        let status = self.status();
        let blame = self.blame();
        match blame {
            Blame::Internal => tracing::warn!(error = %self, "internal error"),
            Blame::Upstream => tracing::debug!(error = %self, "upstream error"),
            Blame::Client | Blame::Overload => tracing::trace!(error = %self, "refused"),
        }
        let msg = match (&self, blame) {
            // The detail names the backend and the error chain: log only.
            (Error::Upstream(_), _) => "upstream failed".to_string(),
            (_, Blame::Internal) => "internal error".to_string(),
            _ => self.to_string(),
        };
        let mut resp = Response::new(Body::full(format!("{msg}\n")));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if let Error::Shed { retry_after }
        | Error::BreakerOpen { retry_after }
        | Error::PushBusy { retry_after }
        | Error::TooManyRequests { retry_after } = &self
        {
            h.insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after.as_secs().max(1)),
            );
        }
        if matches!(self, Error::Unauthorized) {
            h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

/// A `Retry-After` in whole seconds (the header has no fractions), uniform
/// over `[b, 2b + 1]` where `b` is `base` rounded up to at least 1 s. Jitter
/// below a second would be truncated away and every refused client would
/// come back at the same second; the range widens as `base` (which callers
/// grow with their backlog) does.
pub fn jittered(base: Duration) -> Duration {
    let b = base.as_millis().div_ceil(1000).max(1) as u64;
    Duration::from_secs(fastrand::u64(b..=2 * b + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(e: Error) -> String {
        use http_body_util::BodyExt;
        let bytes = e.into_response().into_body().collect().await.unwrap();
        String::from_utf8(bytes.to_bytes().to_vec()).unwrap()
    }

    #[tokio::test]
    async fn upstream_and_internal_details_stay_in_the_log() {
        let up = Error::Upstream("10.0.0.7:3000 connect: refused: os error 111".into());
        assert_eq!(body_of(up).await, "upstream failed\n");
        let int = Error::Internal("semaphore closed".into());
        assert_eq!(body_of(int).await, "internal error\n");
        let bad = Error::BadRequest("key must be 1-128 bytes");
        assert_eq!(body_of(bad).await, "key must be 1-128 bytes\n");
    }

    #[test]
    fn retry_hints_spread_over_whole_seconds() {
        let seen: std::collections::BTreeSet<u64> = (0..200)
            .map(|_| jittered(Duration::from_millis(100)))
            .inspect(|d| assert_eq!(d.subsec_nanos(), 0))
            .map(|d| d.as_secs())
            .collect();
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), [1, 2, 3]);
        let wide = (0..200).map(|_| jittered(Duration::from_secs(5)).as_secs());
        assert!(wide.clone().all(|s| (5..=11).contains(&s)));
        assert!(wide.max() > Some(8));
    }
}

//! The one response body type: empty and fixed bodies without boxing (the hit
//! path allocates nothing for its body), upstream bodies streamed as they come.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body::{Frame, SizeHint};
use http_body_util::combinators::BoxBody;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub enum Body {
    Empty,
    Full(Option<Bytes>),
    /// Streamed from the upstream as it arrives.
    Incoming(hyper::body::Incoming),
    /// Anything else that streams (push transports).
    Boxed(BoxBody<Bytes, BoxError>),
}

impl Body {
    pub fn empty() -> Self {
        Body::Empty
    }
    pub fn full(b: impl Into<Bytes>) -> Self {
        Body::Full(Some(b.into()))
    }
    pub fn boxed<B>(b: B) -> Self
    where
        B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<BoxError>,
    {
        use http_body_util::BodyExt;
        Body::Boxed(b.map_err(Into::into).boxed())
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Body::Empty => Poll::Ready(None),
            Body::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::Incoming(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Body::Boxed(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Empty => true,
            Body::Full(b) => b.is_none(),
            Body::Incoming(b) => b.is_end_stream(),
            Body::Boxed(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Empty => SizeHint::with_exact(0),
            Body::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Body::Full(None) => SizeHint::with_exact(0),
            Body::Incoming(b) => b.size_hint(),
            Body::Boxed(b) => b.size_hint(),
        }
    }
}

impl From<hyper::body::Incoming> for Body {
    fn from(b: hyper::body::Incoming) -> Self {
        Body::Incoming(b)
    }
}

/// A complete answer with a fixed body and its content type.
pub fn typed(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut resp = Response::new(Body::full(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// A short fixed text answer (health, errors).
pub fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    typed(status, "text/plain; charset=utf-8", body)
}

/// A JSON answer; `body` is already serialised.
pub fn json(status: StatusCode, body: String) -> Response<Body> {
    typed(status, "application/json", body)
}

//! A client's request body on its way upstream. It says when the body has
//! been handed over whole, so the upstream's clock starts there and not while
//! a slow client drips its upload; and it ends a client that takes longer
//! than `client_body_timeout` in total (408: the client's fault, not the app's).

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use tokio::sync::oneshot;
use tokio::time::Sleep;

use crate::body::{Body, BoxError};

/// The client did not deliver its body within the limit.
#[derive(Debug, thiserror::Error)]
#[error("request body not received within {0:?}")]
pub struct SlowUpload(pub Duration);

pub struct Upload {
    inner: Body,
    deadline: Pin<Box<Sleep>>,
    limit: Duration,
    /// Fired once the last frame is handed over (dropped unfired on error).
    sent: Option<oneshot::Sender<()>>,
}

/// Wraps a body that still has to arrive. `None` when there is nothing to
/// wait for (no body, or all of it in memory): the upstream's clock starts at once.
pub fn watch(body: Body, limit: Duration) -> (Body, Option<oneshot::Receiver<()>>) {
    if body.is_end_stream() || matches!(body, Body::Full(_)) {
        return (body, None);
    }
    let (tx, rx) = oneshot::channel();
    let upload = Upload {
        inner: body,
        deadline: Box::pin(tokio::time::sleep(limit)),
        limit,
        sent: Some(tx),
    };
    (Body::boxed(upload), Some(rx))
}

impl Upload {
    fn finish(&mut self) {
        if let Some(tx) = self.sent.take() {
            let _ = tx.send(());
        }
    }
}

impl http_body::Body for Upload {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                this.finish();
                Poll::Ready(None)
            }
            Poll::Ready(Some(frame)) => {
                if this.inner.is_end_stream() {
                    this.finish();
                }
                Poll::Ready(Some(frame))
            }
            Poll::Pending => {
                ready!(this.deadline.as_mut().poll(cx));
                Poll::Ready(Some(Err(Box::new(SlowUpload(this.limit)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Whether `e` (a client error chain) was caused by a [`SlowUpload`].
pub fn slow_upload(e: &(dyn std::error::Error + 'static)) -> Option<Duration> {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if let Some(s) = c.downcast_ref::<SlowUpload>() {
            return Some(s.0);
        }
        cur = c.source();
    }
    None
}

//! The end of a stream at its access token's expiry: a response body that ends with the
//! trailers `grpc-status: 16` (UNAUTHENTICATED) once the caller's token has expired, so a
//! stream opened with a token lives no longer than the token. A stream is cut only
//! between messages; a response that has no expiry passes through untouched.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::SystemTime;

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// The `grpc-message` of a stream ended by its token's expiry.
pub const TOKEN_EXPIRED_MESSAGE: &str =
    "the access token expired; open a new stream with a fresh token";

pin_project_lite::pin_project! {
    /// A response body that ends with UNAUTHENTICATED at its deadline (see the module
    /// docs); with none, exactly the inner body.
    pub struct ExpiringBody<B> {
        #[pin]
        inner: B,
        deadline: Option<Instant>,
        timer: Option<Pin<Box<Sleep>>>,
        expired: bool,
    }
}

impl<B> ExpiringBody<B> {
    /// `inner`, ending at `expires_at` (wall-clock time, as a token's `exp`) when given.
    pub fn new(inner: B, expires_at: Option<SystemTime>) -> Self {
        let deadline = expires_at.map(|at| {
            let left = at.duration_since(SystemTime::now()).unwrap_or_default();
            Instant::now() + left
        });
        Self {
            inner,
            deadline,
            timer: None,
            expired: false,
        }
    }

    /// `inner` with no deadline.
    pub fn unbounded(inner: B) -> Self {
        Self::new(inner, None)
    }
}

impl<B: Default> Default for ExpiringBody<B> {
    fn default() -> Self {
        Self::unbounded(B::default())
    }
}

/// The trailers of a stream whose token expired.
fn expired_trailers() -> HeaderMap {
    let mut trailers = HeaderMap::new();
    trailers.insert(
        "grpc-status",
        http::HeaderValue::from_static("16"), // UNAUTHENTICATED
    );
    trailers.insert(
        "grpc-message",
        // Percent-encoded as the gRPC spec asks (only the space and `;` need it here).
        http::HeaderValue::from_static(
            "the%20access%20token%20expired%3B%20open%20a%20new%20stream%20with%20a%20fresh%20token",
        ),
    );
    trailers
}

impl<B> Body for ExpiringBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        if *this.expired {
            return Poll::Ready(None);
        }
        let Some(deadline) = *this.deadline else {
            return this.inner.poll_frame(cx);
        };
        // Checked before each frame too: a stream that always has a message ready never
        // waits on the timer.
        if Instant::now() < deadline {
            if let Poll::Ready(frame) = this.inner.poll_frame(cx) {
                return Poll::Ready(frame);
            }
            let timer = this
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            ready!(timer.as_mut().poll(cx));
        }
        *this.expired = true;
        tracing::debug!("stream ended: its access token expired");
        Poll::Ready(Some(Ok(Frame::trailers(expired_trailers()))))
    }

    fn is_end_stream(&self) -> bool {
        self.expired || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.deadline.is_some() {
            // It may end early, with trailers the inner body does not know of.
            SizeHint::default()
        } else {
            self.inner.size_hint()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http_body_util::BodyExt as _;

    use super::*;

    #[test]
    fn the_message_is_the_percent_encoded_constant() {
        let trailers = expired_trailers();
        let encoded = trailers
            .get("grpc-message")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert_eq!(
            percent_encoding::percent_decode_str(encoded).decode_utf8_lossy(),
            TOKEN_EXPIRED_MESSAGE
        );
    }

    /// A stream with no message yet.
    struct StillOpen;

    impl Body for StillOpen {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Pending
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_pending_stream_ends_unauthenticated_at_the_deadline() {
        let body = ExpiringBody::new(StillOpen, Some(SystemTime::now() + Duration::from_secs(60)));
        tokio::pin!(body);
        let frame = body
            .frame()
            .await
            .expect("a frame")
            .expect("no error")
            .into_trailers()
            .expect("trailers");
        assert_eq!(
            frame.get("grpc-status").map(http::HeaderValue::as_bytes),
            Some(&b"16"[..])
        );
        assert!(body.frame().await.is_none(), "nothing after the trailers");
    }
}

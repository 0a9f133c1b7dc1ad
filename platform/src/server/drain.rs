//! A layer that ends still-open response streams with UNAVAILABLE once the shutdown drain
//! bound is reached.
//!
//! tonic's graceful shutdown waits with no deadline for every open stream (a health
//! `Watch`, a subscription). When the drain bound passes, [`DrainLayer`]'s token is
//! cancelled and every unfinished response body ends with the trailers
//! `grpc-status: 14` (UNAVAILABLE) — the gRPC spec's status for "try again", so a client
//! reconnects — after the last whole message it already sent.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::{Body, Frame, SizeHint};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tower::{Layer, Service};

/// Wraps services so their response bodies end with UNAVAILABLE when `token` is cancelled.
#[derive(Debug, Clone)]
pub struct DrainLayer {
    token: CancellationToken,
}

impl DrainLayer {
    /// A layer whose bodies end when `token` is cancelled.
    pub fn new(token: CancellationToken) -> Self {
        Self { token }
    }
}

impl<S> Layer<S> for DrainLayer {
    type Service = DrainService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DrainService {
            inner,
            token: self.token.clone(),
        }
    }
}

/// The service made by [`DrainLayer`].
#[derive(Debug, Clone)]
pub struct DrainService<S> {
    inner: S,
    token: CancellationToken,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for DrainService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<DrainBody<ResBody>>;
    type Error = S::Error;
    type Future = DrainFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        DrainFuture {
            inner: self.inner.call(request),
            token: Some(self.token.clone()),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`DrainService`].
    pub struct DrainFuture<F> {
        #[pin]
        inner: F,
        token: Option<CancellationToken>,
    }
}

impl<F, ResBody, E> Future for DrainFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<DrainBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.inner.poll(cx))?;
        let token = this.token.take().unwrap_or_default();
        Poll::Ready(Ok(response.map(|inner| DrainBody {
            inner,
            drained: Box::pin(token.cancelled_owned()),
            finished: false,
        })))
    }
}

pin_project_lite::pin_project! {
    /// A response body that ends with UNAVAILABLE trailers once drained.
    pub struct DrainBody<B> {
        #[pin]
        inner: B,
        drained: Pin<Box<WaitForCancellationFutureOwned>>,
        finished: bool,
    }
}

impl<B: Body> Body for DrainBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        if *this.finished {
            return Poll::Ready(None);
        }
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                *this.finished = frame.is_trailers();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(other) => {
                *this.finished = true;
                Poll::Ready(other)
            }
            Poll::Pending => {
                if this.drained.as_mut().poll(cx).is_ready() {
                    *this.finished = true;
                    Poll::Ready(Some(Ok(Frame::trailers(unavailable_trailers()))))
                } else {
                    Poll::Pending
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finished || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn unavailable_trailers() -> HeaderMap {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("14"));
    trailers.insert(
        "grpc-message",
        HeaderValue::from_static("server%20shutting%20down"),
    );
    trailers
}

/// Completes on the first SIGINT or SIGTERM (Ctrl-C on other platforms).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(mut interrupt), Ok(mut terminate)) => {
                tokio::select! {
                    _ = interrupt.recv() => tracing::info!("received SIGINT"),
                    _ = terminate.recv() => tracing::info!("received SIGTERM"),
                }
            }
            _ => {
                tracing::warn!("cannot install signal handlers; stopping on Ctrl-C only");
                drop(tokio::signal::ctrl_c().await);
            }
        }
    }
    #[cfg(not(unix))]
    drop(tokio::signal::ctrl_c().await);
}

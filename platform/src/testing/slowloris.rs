//! Calls whose request body never arrives: the slowloris client of the admission tests.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tower::Service as _;

/// A request body that never sends a byte (nor its end).
struct Silent;

impl http_body::Body for Silent {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        Poll::Pending
    }
}

/// Sends the headers of a gRPC call to `path` (`/package.Service/Method`) on `channel`
/// and never its body. The task ends with the status the server answers in the response
/// headers (`None`: the call failed, or no status came with the headers).
///
/// # Panics
/// When the channel cannot take a call.
pub async fn call_without_body(
    channel: &mut Channel,
    path: &str,
) -> tokio::task::JoinHandle<Option<Code>> {
    let request = http::Request::post(path)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(tonic::body::Body::new(Silent))
        .expect("a request");
    std::future::poll_fn(|cx| channel.poll_ready(cx))
        .await
        .expect("the channel is ready");
    let response = channel.call(request);
    tokio::spawn(async move {
        let response = response.await.ok()?;
        Status::from_header_map(response.headers()).map(|status| status.code())
    })
}

/// The status each of `calls` (from [`call_without_body`]) ended with, in order, waiting
/// at most `within` for all of them.
///
/// # Panics
/// When they have not all ended within `within`, or a call's task panicked.
pub async fn answers_of(
    calls: Vec<tokio::task::JoinHandle<Option<Code>>>,
    within: std::time::Duration,
) -> Vec<Option<Code>> {
    tokio::time::timeout(within, async {
        let mut codes = Vec::with_capacity(calls.len());
        for call in calls {
            codes.push(call.await.expect("the call's task"));
        }
        codes
    })
    .await
    .expect("every call without a body is answered in time")
}

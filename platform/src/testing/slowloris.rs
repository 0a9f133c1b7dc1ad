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

//! gRPC spans after OpenTelemetry's RPC semantic conventions
//! (<https://opentelemetry.io/docs/specs/semconv/rpc/grpc/>): span name
//! `package.Service/Method`, `rpc.system = "grpc"`, `rpc.service`, `rpc.method`,
//! `rpc.grpc.status_code` (an integer, recorded when the response ends), the error status
//! for the codes the conventions count as errors, and the addresses of both ends.
//!
//! The server's span is made in [`crate::server::trace`]; this module holds what server
//! and client spans share, and the client's span ([`client_span`], [`TracedBody`]) that
//! [`crate::peer::PeerChannel`] wraps every peer call in. Attributes only spans need are
//! set on the OpenTelemetry span, not as `tracing` fields, so log lines stay as they were.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::HeaderMap;
use opentelemetry::trace::Status as SpanStatus;
use tonic::Code;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::propagation::{inject_into_headers, tracing_enabled};

/// `/package.Service/Method` as (`package.Service`, `Method`).
pub fn split_path(path: &str) -> (&str, &str) {
    let path = path.trim_start_matches('/');
    path.split_once('/').unwrap_or((path, ""))
}

/// Which end of the call a span is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The server handling the call.
    Server,
    /// The client making it.
    Client,
}

/// Whether `code` makes the span an error: on a client every non-OK code; on a server
/// only UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE and DATA_LOSS
/// (the semantic conventions: the others are the caller's doing).
pub fn is_error(side: Side, code: Code) -> bool {
    match side {
        Side::Client => code != Code::Ok,
        Side::Server => matches!(
            code,
            Code::Unknown
                | Code::DeadlineExceeded
                | Code::Unimplemented
                | Code::Internal
                | Code::Unavailable
                | Code::DataLoss
        ),
    }
}

/// The status code in `headers` (trailers, or a trailers-only response's headers);
/// UNKNOWN when absent.
pub fn status_code(headers: Option<&HeaderMap>) -> Code {
    headers
        .and_then(crate::status::grpc_status)
        .unwrap_or(Code::Unknown)
}

/// Sets `rpc.grpc.status_code` on `span`, and the error status when `code` is an error
/// for `side`. Nothing while tracing is off.
pub fn record_status(span: &Span, side: Side, code: Code, message: Option<&str>) {
    if !tracing_enabled() {
        return;
    }
    span.set_attribute("rpc.grpc.status_code", i64::from(code as i32));
    if is_error(side, code) {
        let description = message.map_or_else(|| format!("{code:?}"), str::to_owned);
        span.set_status(SpanStatus::error(description));
    }
}

/// Sets the attributes of a server span: `rpc.system`, `server.address`/`server.port`
/// (the local address) and `network.peer.address`/`network.peer.port` (the caller's), the
/// addresses when known. Nothing while tracing is off.
pub fn record_server_attributes(
    span: &Span,
    local: Option<SocketAddr>,
    remote: Option<SocketAddr>,
) {
    if !tracing_enabled() {
        return;
    }
    span.set_attribute("rpc.system", "grpc");
    if let Some(local) = local {
        span.set_attribute("server.address", local.ip().to_string());
        span.set_attribute("server.port", i64::from(local.port()));
    }
    if let Some(remote) = remote {
        span.set_attribute("network.peer.address", remote.ip().to_string());
        span.set_attribute("network.peer.port", i64::from(remote.port()));
    }
}

/// Where a client's calls go, for `server.address` and `server.port`: the host and port
/// of the peer's one address, or the peer's name when calls are spread over several.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerTarget {
    /// `server.address`.
    pub address: String,
    /// `server.port`, when known.
    pub port: Option<u16>,
}

impl PeerTarget {
    /// The target of `peer` reached at `addresses` (base URIs).
    pub fn new(peer: &str, addresses: &[String]) -> Self {
        if let [only] = addresses
            && let Ok(uri) = only.parse::<http::Uri>()
            && let Some(host) = uri.host()
        {
            return Self {
                address: host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned(),
                port: uri.port_u16(),
            };
        }
        Self {
            address: peer.to_owned(),
            port: None,
        }
    }
}

/// The client span of one call to `path` on `target`, a child of the current span, with
/// its trace context written into `headers`; [`Span::none`] (and no work) while tracing is
/// off. Call inside the span (e.g. `.instrument(span)`) and end it with the response:
/// [`finish_client_response`].
pub fn client_span(path: &str, target: &PeerTarget, headers: &mut HeaderMap) -> Span {
    if !tracing_enabled() {
        return Span::none();
    }
    let (service, method) = split_path(path);
    let span = tracing::info_span!(
        "rpc.client",
        otel.name = %path.trim_start_matches('/'),
        otel.kind = "client",
        rpc.service = %service,
        rpc.method = %method,
    );
    span.set_attribute("rpc.system", "grpc");
    span.set_attribute("server.address", target.address.clone());
    if let Some(port) = target.port {
        span.set_attribute("server.port", i64::from(port));
    }
    inject_into_headers(&span, headers);
    span
}

/// Ends `span` with `response`: at once for a trailers-only response (its status is in
/// the headers), otherwise when its body ends, by wrapping the body in a [`TracedBody`].
/// Returns `response` unchanged while tracing is off.
pub fn finish_client_response(
    span: Span,
    response: http::Response<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    if span.is_none() {
        return response;
    }
    if response.headers().contains_key("grpc-status") {
        let code = status_code(Some(response.headers()));
        let message = response
            .headers()
            .get("grpc-message")
            .and_then(|v| v.to_str().ok());
        record_status(&span, Side::Client, code, message);
        return response;
    }
    response.map(|body| tonic::body::Body::new(TracedBody::new(body, span)))
}

pin_project_lite::pin_project! {
    /// A response body that records its call's status on a client span when its trailers
    /// arrive (or the body fails) and ends the span with the body.
    pub struct TracedBody {
        #[pin]
        inner: tonic::body::Body,
        span: Option<Span>,
    }
}

impl TracedBody {
    /// Wraps `inner`, ending `span` with it.
    pub fn new(inner: tonic::body::Body, span: Span) -> Self {
        Self {
            inner,
            span: Some(span),
        }
    }
}

impl http_body::Body for TracedBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, tonic::Status>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(trailers) = frame.trailers_ref()
                    && let Some(span) = this.span.take()
                {
                    let message = trailers.get("grpc-message").and_then(|v| v.to_str().ok());
                    record_status(&span, Side::Client, status_code(Some(trailers)), message);
                }
            }
            Some(Err(status)) => {
                if let Some(span) = this.span.take() {
                    record_status(&span, Side::Client, status.code(), Some(status.message()));
                }
            }
            None => {
                if let Some(span) = this.span.take() {
                    record_status(&span, Side::Client, Code::Unknown, Some("no trailers"));
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_errors_are_only_the_servers_own_failures() {
        for code in [Code::NotFound, Code::InvalidArgument, Code::Unauthenticated] {
            assert!(!is_error(Side::Server, code), "{code:?}");
            assert!(is_error(Side::Client, code), "{code:?}");
        }
        for code in [Code::Internal, Code::Unavailable, Code::Unknown] {
            assert!(is_error(Side::Server, code), "{code:?}");
        }
        assert!(!is_error(Side::Client, Code::Ok));
    }

    #[test]
    fn a_single_address_names_its_host_and_port_several_the_peer() {
        assert_eq!(
            PeerTarget::new("user", &["http://127.0.0.1:50051".to_owned()]),
            PeerTarget {
                address: "127.0.0.1".to_owned(),
                port: Some(50051)
            }
        );
        assert_eq!(
            PeerTarget::new("user", &["http://a:1".to_owned(), "http://b:1".to_owned()]),
            PeerTarget {
                address: "user".to_owned(),
                port: None
            }
        );
        assert_eq!(split_path("/pkg.Svc/Do"), ("pkg.Svc", "Do"));
    }
}

//! One `tracing` span per RPC — `rpc{rpc.service rpc.method request_id}` — and one event
//! when it finishes, carrying the gRPC status code and the latency in ms.
//!
//! With tracing on, the span is also the call's OpenTelemetry server span
//! ([`crate::telemetry::rpc`]): named `package.Service/Method`, a child of the caller's
//! `traceparent` (extracted before the span is entered), with `rpc.system`, the local and
//! peer addresses (tonic's `TcpConnectInfo`, which the accept path keeps), and
//! `rpc.grpc.status_code` when the response ends. The span ends with the response body,
//! so a stream's span lasts as long as the stream.
//!
//! The code is read where the gRPC spec puts it: in the response headers of a
//! trailers-only response (most errors), otherwise in the trailers, so a streaming RPC is
//! logged when its stream ends, not when its headers are sent.

use std::time::Duration;

use http::{HeaderMap, Request, Response};
use tower_http::classify::{GrpcErrorsAsFailures, SharedClassifier};
use tower_http::trace::{MakeSpan, OnEos, OnResponse, TraceLayer};
use tracing::Span;

use tonic::transport::server::TcpConnectInfo;

use crate::context::REQUEST_ID_HEADER;
use crate::telemetry::{self, propagation, rpc};

/// The tracing layer the server installs.
pub type RpcTraceLayer = TraceLayer<
    SharedClassifier<GrpcErrorsAsFailures>,
    MakeRpcSpan,
    (),
    RecordResponse,
    (),
    RecordEos,
    (),
>;

/// Builds the layer.
pub fn layer() -> RpcTraceLayer {
    TraceLayer::new_for_grpc()
        .make_span_with(MakeRpcSpan)
        .on_request(())
        .on_response(RecordResponse)
        .on_body_chunk(())
        .on_eos(RecordEos)
        .on_failure(())
}

/// Makes the per-RPC span from the request path `/package.Service/Method`.
#[derive(Debug, Clone, Copy)]
pub struct MakeRpcSpan;

impl<B> MakeSpan<B> for MakeRpcSpan {
    fn make_span(&mut self, request: &Request<B>) -> Span {
        let path = request.uri().path();
        let (service, method) = rpc::split_path(path);
        let request_id = request
            .headers()
            .get(REQUEST_ID_HEADER)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default();
        // One callsite per level (a span's level is static).
        macro_rules! rpc_span {
            ($level:expr) => {
                tracing::span!(
                    $level,
                    "rpc",
                    rpc.service = %service,
                    rpc.method = %method,
                    request_id = %request_id,
                    otel.name = tracing::field::Empty,
                    otel.kind = tracing::field::Empty,
                )
            };
        }
        // Health checks arrive every few seconds from orchestrators: keep them at DEBUG.
        let span = if service == "grpc.health.v1.Health" {
            rpc_span!(tracing::Level::DEBUG)
        } else {
            rpc_span!(tracing::Level::INFO)
        };
        if telemetry::tracing_enabled() && !span.is_disabled() {
            span.record("otel.name", path.trim_start_matches('/'));
            span.record("otel.kind", "server");
            let connection = request.extensions().get::<TcpConnectInfo>();
            rpc::record_server_attributes(
                &span,
                connection.and_then(TcpConnectInfo::local_addr),
                connection.and_then(TcpConnectInfo::remote_addr),
            );
            propagation::set_parent_from_headers(&span, request.headers());
        }
        span
    }
}

/// Logs a trailers-only response (its status is in the headers).
#[derive(Debug, Clone, Copy)]
pub struct RecordResponse;

impl<B> OnResponse<B> for RecordResponse {
    fn on_response(self, response: &Response<B>, latency: Duration, span: &Span) {
        if response.headers().contains_key("grpc-status") {
            finished(Some(response.headers()), latency, span);
        }
    }
}

/// Logs a response whose status arrives in the trailers.
#[derive(Debug, Clone, Copy)]
pub struct RecordEos;

impl OnEos for RecordEos {
    fn on_eos(self, trailers: Option<&HeaderMap>, stream_duration: Duration, span: &Span) {
        finished(trailers, stream_duration, span);
    }
}

fn finished(headers: Option<&HeaderMap>, latency: Duration, span: &Span) {
    let code = rpc::status_code(headers);
    let message = headers
        .and_then(|h| h.get("grpc-message"))
        .and_then(|v| v.to_str().ok());
    rpc::record_status(span, rpc::Side::Server, code, message);
    // Microsecond precision is plenty; it keeps log lines short.
    let latency_ms = (latency.as_micros() as f64) / 1e3;
    // A DEBUG (or disabled) span is a health check: its outcome is DEBUG too.
    let quiet = span
        .metadata()
        .is_none_or(|m| *m.level() == tracing::Level::DEBUG);
    let _entered = span.enter();
    match code {
        tonic::Code::Ok if quiet => tracing::debug!(grpc.code = ?code, latency_ms, "rpc finished"),
        tonic::Code::Unknown
        | tonic::Code::Internal
        | tonic::Code::DataLoss
        | tonic::Code::Unimplemented => {
            tracing::warn!(grpc.code = ?code, latency_ms, "rpc finished");
        }
        _ => tracing::info!(grpc.code = ?code, latency_ms, "rpc finished"),
    }
}

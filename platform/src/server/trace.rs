//! One `tracing` span per RPC — `rpc{rpc.service rpc.method request_id}` — and one event
//! when it finishes, carrying the gRPC status code and the latency in ms.
//!
//! The code is read where the gRPC spec puts it: in the response headers of a
//! trailers-only response (most errors), otherwise in the trailers, so a streaming RPC is
//! logged when its stream ends, not when its headers are sent.

use std::time::Duration;

use http::{HeaderMap, Request, Response};
use tower_http::classify::{GrpcErrorsAsFailures, SharedClassifier};
use tower_http::trace::{MakeSpan, OnEos, OnResponse, TraceLayer};
use tracing::Span;

use crate::context::REQUEST_ID_HEADER;

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
        let path = request.uri().path().trim_start_matches('/');
        let (service, method) = path.split_once('/').unwrap_or((path, ""));
        let request_id = request
            .headers()
            .get(REQUEST_ID_HEADER)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default();
        // Health checks arrive every few seconds from orchestrators: keep them at DEBUG.
        if service == "grpc.health.v1.Health" {
            return tracing::debug_span!(
                "rpc",
                rpc.service = %service,
                rpc.method = %method,
                request_id = %request_id,
            );
        }
        tracing::info_span!(
            "rpc",
            rpc.service = %service,
            rpc.method = %method,
            request_id = %request_id,
        )
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
    let code = headers
        .and_then(|h| h.get("grpc-status"))
        .map_or(tonic::Code::Unknown, |v| {
            tonic::Code::from_bytes(v.as_bytes())
        });
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

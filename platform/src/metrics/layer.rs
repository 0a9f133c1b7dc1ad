//! Where calls are measured: [`MetricsLayer`] on the server, [`ClientMetrics::observe`] in
//! peer channels.
//!
//! A call is counted as started when it is made, its messages are counted as their bytes
//! pass (request and response bodies), and it is counted as handled — with its code and
//! latency — where the gRPC spec puts the status: in the response headers of a
//! trailers-only response (most errors), otherwise in the trailers, so a stream counts
//! when it ends. A body dropped before its end counts as `Canceled` (the client went
//! away); a body that ends without any status counts as `Unknown`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use prometheus::IntCounter;
use tonic::Code;
use tower::{Layer, Service};

use super::grpc::{Call, FrameCounter, RpcMetrics};
use crate::status::grpc_status;

/// The server layer: `grpc_server_*` for every call the server answers, health,
/// reflection and rejected calls included. Install it outermost, so it sees them all.
#[derive(Debug, Clone)]
pub struct MetricsLayer {
    rpc: Arc<RpcMetrics>,
}

impl MetricsLayer {
    /// A layer recording into `rpc` (the server side's families).
    pub(crate) fn new(rpc: Arc<RpcMetrics>) -> Self {
        Self { rpc }
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MetricsService {
            inner,
            rpc: Arc::clone(&self.rpc),
        }
    }
}

/// The service made by [`MetricsLayer`].
#[derive(Debug, Clone)]
pub struct MetricsService<S> {
    inner: S,
    rpc: Arc<RpcMetrics>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for MetricsService<S>
where
    S: Service<Request<CountingBody<ReqBody>>, Response = Response<ResBody>>,
    ResBody: Body,
{
    type Response = Response<CountingBody<ResBody>>;
    type Error = S::Error;
    type Future = MetricsFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let method = self.rpc.method(request.uri().path());
        // The one lookup of the path: later layers name the method from this.
        if let Some(known) = method.known() {
            request.extensions_mut().insert(known.clone());
        }
        let received = method.received();
        let sent = method.sent();
        let call = Call::start(Arc::clone(method));
        let request = request.map(|body| CountingBody::new(body, received));
        MetricsFuture::new(
            self.inner.call(request),
            call,
            sent,
            self.rpc.transport_error_code(),
        )
    }
}

/// The calls of one service to its peers: `grpc_client_*`. Cheap to clone; the default
/// records nothing (channels made without [`crate::metrics::Metrics`]).
#[derive(Debug, Clone, Default)]
pub struct ClientMetrics {
    rpc: Option<Arc<RpcMetrics>>,
}

/// The future of a peer call, as a channel's `tower::Service` returns it.
pub type BoxResponseFuture<E> =
    Pin<Box<dyn Future<Output = Result<Response<tonic::body::Body>, E>> + Send>>;

impl ClientMetrics {
    /// Records into `rpc` (the client side's families).
    pub(crate) fn new(rpc: Arc<RpcMetrics>) -> Self {
        Self { rpc: Some(rpc) }
    }

    /// Makes the call `send` makes with `request`, counted: started now, its request
    /// messages as sent, its response messages as received, handled with the status it
    /// ends with (a transport error as `Unavailable`, a response body dropped unfinished
    /// as `Canceled`).
    pub fn observe<F, Fut, E>(
        &self,
        request: Request<tonic::body::Body>,
        send: F,
    ) -> BoxResponseFuture<E>
    where
        F: FnOnce(Request<tonic::body::Body>) -> Fut,
        Fut: Future<Output = Result<Response<tonic::body::Body>, E>> + Send + 'static,
    {
        let Some(rpc) = &self.rpc else {
            return Box::pin(send(request));
        };
        let method = rpc.method(request.uri().path());
        let sent = method.sent();
        let received = method.received();
        let call = Call::start(Arc::clone(method));
        let request = request.map(|body| tonic::body::Body::new(CountingBody::new(body, sent)));
        let response =
            MetricsFuture::new(send(request), call, received, rpc.transport_error_code());
        Box::pin(async move {
            response
                .await
                .map(|response| response.map(tonic::body::Body::new))
        })
    }
}

pin_project_lite::pin_project! {
    /// The response future of a measured call: a trailers-only response is handled when
    /// it arrives; otherwise the call moves into the response body.
    pub struct MetricsFuture<F> {
        #[pin]
        inner: F,
        call: Option<Call>,
        messages: IntCounter,
        error_code: Code,
    }
}

impl<F> MetricsFuture<F> {
    fn new(inner: F, call: Call, messages: IntCounter, error_code: Code) -> Self {
        Self {
            inner,
            call: Some(call),
            messages,
            error_code,
        }
    }
}

impl<F, B, E> Future for MetricsFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body,
{
    type Output = Result<Response<CountingBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let mut call = this.call.take();
        let response = match result {
            Ok(response) => response,
            Err(err) => {
                if let Some(call) = &mut call {
                    call.finish(*this.error_code);
                }
                return Poll::Ready(Err(err));
            }
        };
        if let Some(call) = &mut call {
            if let Some(code) = grpc_status(response.headers()) {
                call.finish(code);
            } else if response.body().is_end_stream() {
                // No status in the headers and no trailers to come.
                call.finish(Code::Unknown);
            }
        }
        let messages = this.messages.clone();
        Poll::Ready(Ok(
            response.map(|inner| CountingBody::ending(inner, messages, call))
        ))
    }
}

pin_project_lite::pin_project! {
    /// A body whose gRPC messages are counted as they pass; a response body also records
    /// its call's end: at the trailers, at an end without trailers (`Unknown`), or — when
    /// dropped before either — as `Canceled`.
    pub struct CountingBody<B> {
        #[pin]
        inner: B,
        frames: FrameCounter,
        messages: IntCounter,
        call: Option<Call>,
    }
}

impl<B> CountingBody<B> {
    /// A request body: counts its messages only.
    fn new(inner: B, messages: IntCounter) -> Self {
        Self::ending(inner, messages, None)
    }

    /// A response body, ending `call` unless it already ended.
    fn ending(inner: B, messages: IntCounter, call: Option<Call>) -> Self {
        Self {
            inner,
            frames: FrameCounter::default(),
            messages,
            call,
        }
    }
}

impl<B: Body<Data = Bytes>> Body for CountingBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        if let Some(Ok(frame)) = &frame
            && let Some(data) = frame.data_ref()
        {
            let completed = this.frames.feed(data);
            if completed > 0 {
                this.messages.inc_by(completed);
            }
        }
        if let Some(call) = this.call.as_mut() {
            match &frame {
                Some(Ok(frame)) => {
                    if let Some(trailers) = frame.trailers_ref() {
                        call.finish(grpc_status(trailers).unwrap_or(Code::Unknown));
                    } else if this.inner.is_end_stream() {
                        // The last data frame, and no trailers will follow.
                        call.finish(Code::Unknown);
                    }
                }
                Some(Err(_)) | None => call.finish(Code::Unknown),
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::convert::Infallible;

    use http_body_util::BodyExt as _;

    use super::super::grpc::{MethodInfo, RpcType, Side};
    use super::*;

    const SERVICE: &str = "test.v1.Echo";

    fn rpc() -> (Arc<RpcMetrics>, prometheus::Registry) {
        let registry = prometheus::Registry::new();
        let table = HashMap::from([
            (
                format!("/{SERVICE}/Say"),
                MethodInfo {
                    rpc_type: RpcType::Unary,
                    service: SERVICE.to_owned(),
                    method: "Say".to_owned(),
                },
            ),
            (
                format!("/{SERVICE}/Watch"),
                MethodInfo {
                    rpc_type: RpcType::ServerStream,
                    service: SERVICE.to_owned(),
                    method: "Watch".to_owned(),
                },
            ),
        ]);
        let rpc = RpcMetrics::new(Side::Server, table, &registry, true).expect("registered");
        (Arc::new(rpc), registry)
    }

    /// The value of the series of `name` whose labels include all of `labels`.
    fn value(registry: &prometheus::Registry, name: &str, labels: &[(&str, &str)]) -> f64 {
        let family = registry
            .gather()
            .into_iter()
            .find(|family| family.name() == name)
            .unwrap_or_else(|| panic!("no family {name}"));
        let matching: Vec<_> = family
            .get_metric()
            .iter()
            .filter(|metric| {
                labels.iter().all(|(key, value)| {
                    metric
                        .get_label()
                        .iter()
                        .any(|pair| pair.name() == *key && pair.value() == *value)
                })
            })
            .collect();
        assert_eq!(matching.len(), 1, "one series of {name} with {labels:?}");
        let metric = matching[0];
        if family.get_field_type() == prometheus::proto::MetricType::HISTOGRAM {
            metric.get_histogram().get_sample_count() as f64
        } else {
            metric.get_counter().get_value()
        }
    }

    /// `grpc_server_handled_total` of `method` with `code`.
    fn handled(registry: &prometheus::Registry, method: &str, code: &str) -> f64 {
        value(
            registry,
            "grpc_server_handled_total",
            &[("grpc_method", method), ("grpc_code", code)],
        )
    }

    fn message(len: u32) -> Vec<u8> {
        let mut bytes = vec![0];
        bytes.extend_from_slice(&len.to_be_bytes());
        bytes.extend(std::iter::repeat_n(1, len as usize));
        bytes
    }

    fn trailers(code: Code) -> http::HeaderMap {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from(code as i32));
        trailers
    }

    /// A body fed by a channel, so a test decides when each frame arrives.
    type TestBody = http_body_util::StreamBody<
        tokio_stream::wrappers::UnboundedReceiverStream<Result<Frame<Bytes>, Infallible>>,
    >;

    fn channel_body() -> (
        tokio::sync::mpsc::UnboundedSender<Result<Frame<Bytes>, Infallible>>,
        TestBody,
    ) {
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
        (
            sender,
            http_body_util::StreamBody::new(tokio_stream::wrappers::UnboundedReceiverStream::new(
                receiver,
            )),
        )
    }

    /// Calls `path` on a server whose handler answers with `response`.
    async fn serve(
        rpc: &Arc<RpcMetrics>,
        path: &str,
        response: Response<TestBody>,
    ) -> Response<CountingBody<TestBody>> {
        let response = std::sync::Mutex::new(Some(response));
        let handler = tower::service_fn(move |_request: Request<CountingBody<String>>| {
            let response = response
                .lock()
                .expect("unpoisoned")
                .take()
                .expect("one call");
            async move { Ok::<_, Infallible>(response) }
        });
        let mut service = MetricsLayer::new(Arc::clone(rpc)).layer(handler);
        let request = Request::builder()
            .uri(format!("http://test{path}"))
            .body(String::new())
            .expect("a request");
        service.call(request).await.expect("infallible")
    }

    async fn next_frame(response: &mut Response<CountingBody<TestBody>>) {
        response
            .body_mut()
            .frame()
            .await
            .expect("a frame")
            .expect("ok");
    }

    #[tokio::test]
    async fn a_server_stream_counts_each_message_and_is_handled_once_at_its_end() {
        let (rpc, registry) = rpc();
        let labels = [("grpc_method", "Watch"), ("grpc_type", "server_stream")];
        let (sender, stream) = channel_body();
        let mut response = serve(&rpc, &format!("/{SERVICE}/Watch"), Response::new(stream)).await;
        assert_eq!(value(&registry, "grpc_server_started_total", &labels), 1.0);

        // Five messages, the third split over two chunks.
        for len in [1, 2] {
            sender
                .send(Ok(Frame::data(message(len).into())))
                .expect("open");
        }
        let third = message(9);
        sender
            .send(Ok(Frame::data(Bytes::copy_from_slice(&third[..4]))))
            .expect("open");
        sender
            .send(Ok(Frame::data(Bytes::copy_from_slice(&third[4..]))))
            .expect("open");
        let mut two = message(3);
        two.extend(message(0));
        sender.send(Ok(Frame::data(two.into()))).expect("open");
        for _ in 0..5 {
            next_frame(&mut response).await;
        }
        assert_eq!(value(&registry, "grpc_server_msg_sent_total", &labels), 5.0);
        let handled = |code: &str| handled(&registry, "Watch", code);
        assert_eq!(handled("OK"), 0.0, "not handled before the stream ends");

        sender
            .send(Ok(Frame::trailers(trailers(Code::Ok))))
            .expect("open");
        drop(sender);
        let rest = response.into_body().collect().await.expect("ok");
        assert!(rest.trailers().is_some());
        assert_eq!(handled("OK"), 1.0);
        assert_eq!(
            handled("Canceled"),
            0.0,
            "dropping a finished body records nothing"
        );
        assert_eq!(
            value(&registry, "grpc_server_handling_seconds", &labels),
            1.0
        );
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_is_canceled() {
        let (rpc, registry) = rpc();
        let (sender, stream) = channel_body();
        let mut response = serve(&rpc, &format!("/{SERVICE}/Watch"), Response::new(stream)).await;
        sender
            .send(Ok(Frame::data(message(4).into())))
            .expect("open");
        next_frame(&mut response).await;
        drop(response);
        let handled = |code: &str| handled(&registry, "Watch", code);
        assert_eq!(handled("Canceled"), 1.0);
        assert_eq!(handled("OK"), 0.0);
    }

    #[tokio::test]
    async fn a_trailers_only_response_is_handled_when_it_arrives() {
        let (rpc, registry) = rpc();
        let (_sender, stream) = channel_body();
        let mut response = Response::new(stream);
        *response.headers_mut() = trailers(Code::PermissionDenied);
        let response = serve(&rpc, &format!("/{SERVICE}/Say"), response).await;
        let labels = [("grpc_method", "Say"), ("grpc_code", "PermissionDenied")];
        assert_eq!(value(&registry, "grpc_server_handled_total", &labels), 1.0);
        drop(response);
        assert_eq!(
            value(
                &registry,
                "grpc_server_handled_total",
                &[("grpc_method", "Say"), ("grpc_code", "Canceled")]
            ),
            0.0
        );
    }

    #[tokio::test]
    async fn unknown_paths_share_one_series() {
        let (rpc, registry) = rpc();
        for path in ["/scanner.Probe/One", "/test.v1.Echo/Nope", "/", "/x"] {
            let (_sender, stream) = channel_body();
            let mut response = Response::new(stream);
            *response.headers_mut() = trailers(Code::Unimplemented);
            serve(&rpc, path, response).await;
        }
        let labels = [
            ("grpc_service", "unknown"),
            ("grpc_method", "unknown"),
            ("grpc_code", "Unimplemented"),
        ];
        assert_eq!(value(&registry, "grpc_server_handled_total", &labels), 4.0);
        let services: std::collections::BTreeSet<_> = registry
            .gather()
            .iter()
            .flat_map(|family| family.get_metric().to_vec())
            .flat_map(|metric| metric.get_label().to_vec())
            .filter(|pair| pair.name() == "grpc_service")
            .map(|pair| pair.value().to_owned())
            .collect();
        assert_eq!(
            services.into_iter().collect::<Vec<_>>(),
            ["test.v1.Echo", "unknown"]
        );
    }

    #[test]
    fn every_method_and_code_is_present_at_zero_from_the_start() {
        let (_rpc, registry) = rpc();
        let families = registry.gather();
        let handled = families
            .iter()
            .find(|family| family.name() == "grpc_server_handled_total")
            .expect("handled_total");
        // Two methods and the unknown one, each with all 17 codes.
        assert_eq!(handled.get_metric().len(), 3 * 17);
        assert!(
            handled
                .get_metric()
                .iter()
                .all(|metric| metric.get_counter().get_value() == 0.0)
        );
        for name in [
            "grpc_server_started_total",
            "grpc_server_msg_received_total",
            "grpc_server_msg_sent_total",
            "grpc_server_handling_seconds",
        ] {
            let family = families
                .iter()
                .find(|family| family.name() == name)
                .unwrap_or_else(|| panic!("{name}"));
            assert_eq!(family.get_metric().len(), 3, "{name}");
        }
    }

    #[tokio::test]
    async fn client_calls_count_sent_and_received_messages_and_their_status() {
        let registry = prometheus::Registry::new();
        let table = HashMap::from([(
            format!("/{SERVICE}/Say"),
            MethodInfo {
                rpc_type: RpcType::Unary,
                service: SERVICE.to_owned(),
                method: "Say".to_owned(),
            },
        )]);
        let rpc = RpcMetrics::new(Side::Client, table, &registry, false).expect("registered");
        let client = ClientMetrics::new(Arc::new(rpc));
        assert!(
            registry
                .gather()
                .iter()
                .all(|family| family.get_metric().is_empty()),
            "client series appear on first use"
        );
        let request = Request::builder()
            .uri(format!("http://peer/{SERVICE}/Say"))
            .body(tonic::body::Body::new(http_body_util::Full::new(
                Bytes::from(message(3)),
            )))
            .expect("a request");
        let response = client
            .observe(request, |request| async move {
                // The peer reads the request, then answers one message and OK.
                let body = request.into_body().collect().await.expect("a body");
                assert_eq!(body.to_bytes().len(), 8);
                let (sender, stream) = channel_body();
                sender
                    .send(Ok(Frame::data(message(2).into())))
                    .expect("open");
                sender
                    .send(Ok(Frame::trailers(trailers(Code::Ok))))
                    .expect("open");
                Ok::<_, Infallible>(Response::new(tonic::body::Body::new(stream)))
            })
            .await
            .expect("a response");
        response.into_body().collect().await.expect("a body");
        let labels = [("grpc_method", "Say")];
        assert_eq!(value(&registry, "grpc_client_started_total", &labels), 1.0);
        assert_eq!(value(&registry, "grpc_client_msg_sent_total", &labels), 1.0);
        assert_eq!(
            value(&registry, "grpc_client_msg_received_total", &labels),
            1.0
        );
        assert_eq!(
            value(
                &registry,
                "grpc_client_handled_total",
                &[("grpc_method", "Say"), ("grpc_code", "OK")]
            ),
            1.0
        );
    }

    #[tokio::test]
    async fn a_client_transport_error_is_unavailable() {
        let registry = prometheus::Registry::new();
        let rpc =
            RpcMetrics::new(Side::Client, HashMap::new(), &registry, false).expect("registered");
        let client = ClientMetrics::new(Arc::new(rpc));
        let request = Request::builder()
            .uri("http://peer/any.Service/Method")
            .body(tonic::body::Body::empty())
            .expect("a request");
        let result = client
            .observe(request, |_| async {
                Err::<Response<tonic::body::Body>, _>("refused")
            })
            .await;
        assert!(result.is_err());
        assert_eq!(
            value(
                &registry,
                "grpc_client_handled_total",
                &[("grpc_service", "unknown"), ("grpc_code", "Unavailable")]
            ),
            1.0
        );
    }
}

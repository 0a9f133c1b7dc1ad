//! Traces across the whole system: the three services in this process export their spans
//! over OTLP to an in-process collector (opentelemetry-proto's `TraceService` on
//! 127.0.0.1:0), and a sign-up → login → GetUser → Subscribe flow must come out as one
//! connected graph with the RPC semantic conventions' attributes: the test's client spans
//! in its trace, and every call it made the root of a trace of its own, linked to the
//! client span that made it (an end user's trace context is a link, never a parent:
//! only Trellis services continue a trace), with every hop between the services inside.
//!
//! Its own test binary: the global subscriber and tracer provider are this process's. The
//! three services share that one provider, so every span's resource `service.name` is the
//! same here (`trellis-tests`); which service made a span shows in `rpc.service` and its
//! kind (server or client).

// Tests panic on purpose: a failed expectation is the test failing.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use integration_tests::client::PASSWORD;
use integration_tests::{System, assert_eventually, with_token};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use tokio_stream::StreamExt as _;
use tracing::Instrument as _;
use trellis_platform::peer::{PeerConfig, Peers};
use trellis_platform::telemetry::{self, TelemetryConfig, TraceContext};
use trellis_proto::auth_v1 as auth;
use trellis_proto::notification_v1 as notification;
use trellis_proto::user_v1 as user;

/// Records every span exported to it.
#[derive(Debug, Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Collector {
    /// Serves on a free port; returns the collector and its URI.
    async fn start() -> (Self, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let collector = Self::default();
        let service = TraceServiceServer::new(collector.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        (collector, format!("http://{addr}"))
    }

    fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }
}

fn attribute<'a>(span: &'a Span, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn string_attribute<'a>(span: &'a Span, key: &str) -> Option<&'a str> {
    match attribute(span, key) {
        Some(Value::StringValue(s)) => Some(s),
        _ => None,
    }
}

fn int_attribute(span: &Span, key: &str) -> Option<i64> {
    match attribute(span, key) {
        Some(Value::IntValue(i)) => Some(*i),
        _ => None,
    }
}

fn status_code(span: &Span) -> StatusCode {
    span.status
        .as_ref()
        .map_or(StatusCode::Unset, |status| status.code())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The exported spans, by span id.
struct Trace {
    spans: Vec<Span>,
}

impl Trace {
    fn named(&self, name: &str, kind: SpanKind) -> Vec<&Span> {
        self.spans
            .iter()
            .filter(|s| s.name == name && s.kind() == kind)
            .collect()
    }

    fn parent(&self, span: &Span) -> Option<&Span> {
        self.spans
            .iter()
            .find(|s| !span.parent_span_id.is_empty() && s.span_id == span.parent_span_id)
    }

    /// The caller's span a root names in its link, if it was exported.
    fn linked(&self, span: &Span) -> Option<&Span> {
        let link = span.links.first()?;
        self.spans
            .iter()
            .find(|s| s.trace_id == link.trace_id && s.span_id == link.span_id)
    }

    /// The names and kinds from `span` up to its root, and on from a root across its link
    /// to the caller's span.
    fn ancestry(&self, span: &Span) -> Vec<(String, SpanKind)> {
        let mut chain = vec![(span.name.clone(), span.kind())];
        let mut current = span;
        while let Some(next) = self.parent(current).or_else(|| self.linked(current)) {
            chain.push((next.name.clone(), next.kind()));
            current = next;
        }
        chain
    }
}

const ROOT: &str = "test sign-in flow";
const LOGIN: &str = "trellis.auth.v1.AuthService/Login";
const CREATE: &str = "trellis.user.v1.UserService/CreateUser";
const KEYS: &str = "trellis.auth.v1.AuthService/ListSigningKeys";
const SERVICE_TOKEN: &str = "trellis.auth.v1.AuthService/IssueServiceToken";
const GET: &str = "trellis.user.v1.UserService/GetUser";
const SUBSCRIBE: &str = "trellis.notification.v1.NotificationService/Subscribe";
const VERIFY: &str = "trellis.user.v1.UserInternalService/VerifyCredentials";
const SEND: &str = "trellis.notification.v1.NotificationInternalService/SendNotification";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_in_is_one_trace_across_the_three_services_and_the_outbox() {
    let (collector, endpoint) = Collector::start().await;
    let guard = Arc::new(telemetry::init(
        &TelemetryConfig {
            otlp_endpoint: Some(endpoint),
            log_filter: "warn".to_owned(),
            ..TelemetryConfig::default()
        },
        "trellis-tests",
        "0.0.0",
    ));
    assert!(guard.tracing(), "tracing is on with an endpoint");
    let system = System::start().await;
    let user_port = system.user_addr.port();

    // The test's own calls go through platform peer channels, so they are client spans
    // that send their traceparent, children of one root span.
    let peer = |addr: std::net::SocketAddr| PeerConfig {
        timeout: std::time::Duration::from_millis(30_000),
        ..PeerConfig::with_address(format!("http://{addr}"))
    };
    let peers = Peers::new(HashMap::from([
        ("user".to_owned(), peer(system.user_addr)),
        ("auth".to_owned(), peer(system.auth_addr)),
        ("notification".to_owned(), peer(system.notification_addr)),
    ]));
    let mut users =
        user::user_service_client::UserServiceClient::new(peers.anonymous_channel("user").unwrap());
    let mut sessions =
        auth::auth_service_client::AuthServiceClient::new(peers.anonymous_channel("auth").unwrap());
    let mut inbox = notification::notification_service_client::NotificationServiceClient::new(
        peers.anonymous_channel("notification").unwrap(),
    );

    let root = tracing::info_span!("test sign-in flow");
    let root_traceparent = TraceContext::of(&root)
        .fields()
        .find(|(k, _)| *k == "traceparent")
        .map(|(_, v)| v.to_owned())
        .expect("the root span has a trace context");
    let trace_id = root_traceparent.split('-').nth(1).unwrap().to_owned();
    let email = "ada@example.com";
    let login = |password: &str| auth::LoginRequest {
        email: email.to_owned(),
        password: password.to_owned(),
    };
    let failed_login = async {
        let created = users
            .create_user(user::CreateUserRequest {
                email: email.to_owned(),
                display_name: "Ada".to_owned(),
                password: PASSWORD.to_owned(),
            })
            .await
            .expect("sign-up succeeds")
            .into_inner()
            .user
            .expect("user");
        let tokens = sessions
            .login(login(PASSWORD))
            .await
            .expect("login succeeds")
            .into_inner()
            .tokens
            .expect("tokens");
        users
            .get_user(with_token(
                user::GetUserRequest {
                    id: created.id.clone(),
                },
                &tokens.access_token,
            ))
            .await
            .expect("GetUser succeeds");
        let mut stream = inbox
            .subscribe(with_token(
                notification::SubscribeRequest::default(),
                &tokens.access_token,
            ))
            .await
            .expect("subscribe succeeds")
            .into_inner();
        // The welcome and the first sign-in (replayed or live), then a sign-in made while
        // subscribed, which arrives live through auth's outbox.
        for _ in 0..2 {
            stream.next().await.expect("open").expect("notification");
        }
        sessions
            .login(login(PASSWORD))
            .await
            .expect("login succeeds");
        let live = stream.next().await.expect("open").expect("notification");
        assert_eq!(
            live.notification.map(|n| n.kind).as_deref(),
            Some("new_sign_in")
        );
        drop(stream);
        sessions
            .login(login("not the password"))
            .await
            .expect_err("a wrong password fails")
            .code()
    }
    .instrument(root.clone())
    .await;
    assert_eq!(failed_login, tonic::Code::Unauthenticated);
    drop(root);

    // Flushing blocks: off the runtime's workers.
    let spans = {
        let collector = collector.clone();
        let guard = Arc::clone(&guard);
        move || {
            let collector = collector.clone();
            let guard = Arc::clone(&guard);
            async move {
                tokio::task::spawn_blocking(move || guard.flush())
                    .await
                    .unwrap()
                    .unwrap();
                collector.spans()
            }
        }
    };
    // Everything of the flow, up to the live delivery and the root, has been exported.
    assert_eventually(|| {
        let spans = spans.clone();
        async move {
            let spans = spans().await;
            spans.iter().any(|s| s.name == ROOT)
                && spans.iter().any(|s| s.name == "notification delivery")
                && spans.iter().filter(|s| s.name == "outbox delivery").count() >= 3
        }
    })
    .await;
    system.stop().await;
    let trace = Trace {
        spans: spans().await,
    };

    // The test's own spans are its trace; every server span of a call it made is the root
    // of a new trace, linked to the client span that made it, and everything the call
    // caused (peer calls, outbox deliveries, live deliveries) is inside that new trace.
    for span in &trace.spans {
        let chain = trace.ancestry(span);
        // Key and service-token fetches are shared by every call waiting for them and run
        // in tasks of their own (single-flight): they belong to no one call's trace.
        let origin = chain.last().map(|(name, kind)| (name.as_str(), *kind));
        assert!(
            origin == Some((ROOT, SpanKind::Internal))
                || origin == Some((KEYS, SpanKind::Client))
                || origin == Some((SERVICE_TOKEN, SpanKind::Client)),
            "{:?} leads nowhere: {chain:?}",
            span.name
        );
        let in_test_trace = hex(&span.trace_id) == trace_id;
        if in_test_trace {
            assert!(
                span.name == ROOT || span.kind() == SpanKind::Client,
                "only the test's own spans are in its trace: {:?} {:?}",
                span.name,
                span.kind()
            );
        } else if span.parent_span_id.is_empty() && span.kind() != SpanKind::Client {
            // A root: a server span linked to the client span that called it.
            assert_eq!(span.kind(), SpanKind::Server, "{:?}", span.name);
            let caller = trace.linked(span).expect("a root links to its caller");
            assert_eq!(
                (caller.name.as_str(), caller.kind()),
                (span.name.as_str(), SpanKind::Client)
            );
        }
    }
    for name in [CREATE, LOGIN, GET, SUBSCRIBE] {
        let calls = trace.named(name, SpanKind::Client);
        assert!(!calls.is_empty(), "the test's {name} calls");
        assert!(
            calls
                .iter()
                .all(|call| hex(&call.trace_id) == trace_id && trace.parent(call).is_some()),
            "the test's {name} calls are children of its root"
        );
    }

    // The test's Login client span ⇢ (link) auth's Login server span, a new root → its
    // VerifyCredentials client span → user's VerifyCredentials server span.
    let verify = trace.named(VERIFY, SpanKind::Server);
    assert_eq!(verify.len(), 3, "three logins");
    for span in &verify {
        assert_eq!(
            trace.ancestry(span),
            [
                (VERIFY.to_owned(), SpanKind::Server),
                (VERIFY.to_owned(), SpanKind::Client),
                (LOGIN.to_owned(), SpanKind::Server),
                (LOGIN.to_owned(), SpanKind::Client),
                (ROOT.to_owned(), SpanKind::Internal),
            ]
        );
    }

    // The live notification: its Subscribe delivery span is a child of the
    // SendNotification server span, whose client span the outbox delivery made, which
    // continues (as a child) the Login that enqueued it.
    let delivered_live = trace
        .named("notification delivery", SpanKind::Internal)
        .into_iter()
        .map(|span| trace.ancestry(span))
        .find(|chain| chain.get(4).is_some_and(|(name, _)| name == LOGIN));
    assert_eq!(
        delivered_live.expect("a live delivery of a sign-in notification"),
        [
            ("notification delivery".to_owned(), SpanKind::Internal),
            (SEND.to_owned(), SpanKind::Server),
            (SEND.to_owned(), SpanKind::Client),
            ("outbox delivery".to_owned(), SpanKind::Internal),
            (LOGIN.to_owned(), SpanKind::Server),
            (LOGIN.to_owned(), SpanKind::Client),
            (ROOT.to_owned(), SpanKind::Internal),
        ]
    );

    // The semantic conventions' attributes, on a server and a client span.
    let server = verify[0];
    let client = trace.parent(server).unwrap();
    for span in [server, client] {
        assert_eq!(string_attribute(span, "rpc.system"), Some("grpc"));
        assert_eq!(
            string_attribute(span, "rpc.service"),
            Some("trellis.user.v1.UserInternalService")
        );
        assert_eq!(
            string_attribute(span, "rpc.method"),
            Some("VerifyCredentials")
        );
        assert_eq!(int_attribute(span, "rpc.grpc.status_code"), Some(0));
        assert_eq!(string_attribute(span, "server.address"), Some("127.0.0.1"));
        assert_eq!(
            int_attribute(span, "server.port"),
            Some(i64::from(user_port))
        );
        assert_eq!(status_code(span), StatusCode::Unset);
    }
    assert_eq!(
        string_attribute(server, "network.peer.address"),
        Some("127.0.0.1")
    );
    assert!(int_attribute(server, "network.peer.port").is_some_and(|port| port > 0));

    // The failed login: UNAUTHENTICATED (16) on both ends; an error for the client, not
    // for the server (the conventions count only the server's own failures there).
    let failed: Vec<_> = trace
        .spans
        .iter()
        .filter(|s| s.name == LOGIN && int_attribute(s, "rpc.grpc.status_code") == Some(16))
        .collect();
    assert_eq!(failed.len(), 2, "the failed login's client and server span");
    for span in failed {
        let expected = match span.kind() {
            SpanKind::Client => StatusCode::Error,
            _ => StatusCode::Unset,
        };
        assert_eq!(status_code(span), expected, "{:?}", span.kind());
    }
}

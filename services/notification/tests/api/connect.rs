//! NotificationService.Connect: the bidirectional stream on which the client acknowledges
//! each notification; unacknowledged ones are pushed again on the next Connect.

use std::sync::{Arc, Mutex, OnceLock};
use std::thread::ThreadId;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::codegen::http::uri::PathAndQuery;
use tonic_prost::ProstCodec;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{self, Layer, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;
use trellis_proto::notification_v1 as pb;

use crate::helpers::{
    TestApp, new_user_id, spawn_app, spawn_app_with, violated_fields, with_token,
};

/// One open Connect stream: acknowledgements go out on `acks`, notifications come in.
struct Connection {
    acks: mpsc::Sender<pb::ConnectRequest>,
    pushed: tonic::Streaming<pb::ConnectResponse>,
}

impl Connection {
    async fn open(app: &mut TestApp, user_id: &str) -> Self {
        let (acks, outgoing) = mpsc::channel(16);
        let token = app.user_token(user_id);
        let pushed = app
            .notifications
            .connect(with_token(ReceiverStream::new(outgoing), &token))
            .await
            .expect("the stream opens")
            .into_inner();
        Self { acks, pushed }
    }

    async fn next(&mut self) -> pb::Notification {
        self.pushed
            .message()
            .await
            .expect("the stream is healthy")
            .expect("the stream is still open")
            .notification
            .expect("each message carries a notification")
    }

    async fn ack(&self, id: &str) {
        self.acks
            .send(pb::ConnectRequest {
                ack_id: id.to_owned(),
            })
            .await
            .expect("the request stream is open");
    }

    /// Closes the client's side and reads the server's to its end: once it has ended,
    /// every acknowledgement sent before has been handled.
    async fn close(self) {
        let Self { acks, mut pushed } = self;
        drop(acks);
        let end = pushed.message().await.expect("the stream ends cleanly");
        assert_eq!(end, None, "nothing more is pushed after the client closes");
    }
}

#[tokio::test]
async fn connect_pushes_unacknowledged_notifications_then_new_ones() {
    let mut app = spawn_app().await;
    let ada = new_user_id();
    let first = app.send(&ada, "First").await;
    let second = app.send(&ada, "Second").await;

    let mut connection = Connection::open(&mut app, &ada).await;
    assert_eq!(connection.next().await, first);
    assert_eq!(connection.next().await, second);
    let live = app.send(&ada, "Live").await;
    assert_eq!(connection.next().await, live);
    connection.close().await;
}

#[tokio::test]
async fn acknowledged_notifications_are_not_pushed_on_the_next_connect() {
    let mut app = spawn_app().await;
    let ada = new_user_id();
    let n1 = app.send(&ada, "One").await;
    let n2 = app.send(&ada, "Two").await;
    let n3 = app.send(&ada, "Three").await;

    let mut connection = Connection::open(&mut app, &ada).await;
    assert_eq!(connection.next().await, n1);
    assert_eq!(connection.next().await, n2);
    assert_eq!(connection.next().await, n3);
    let n4 = app.send(&ada, "Four, live").await;
    assert_eq!(connection.next().await, n4);
    connection.ack(&n1.id).await;
    connection.ack(&n3.id).await;
    connection.close().await;

    // Only the unacknowledged ones, oldest first; then live ones again.
    let mut again = Connection::open(&mut app, &ada).await;
    assert_eq!(again.next().await, n2, "n1 was acknowledged");
    assert_eq!(again.next().await, n4, "n3 was acknowledged");
    let n5 = app.send(&ada, "Five").await;
    assert_eq!(again.next().await, n5, "nothing else was replayed");
    again.ack(&n2.id).await;
    again.ack(&n4.id).await;
    again.ack(&n5.id).await;
    again.close().await;

    // Everything acknowledged: the next Connect starts with the next new one.
    let mut third = Connection::open(&mut app, &ada).await;
    let n6 = app.send(&ada, "Six").await;
    assert_eq!(third.next().await, n6);
    third.close().await;

    // Acknowledging is not reading: all six are still unread.
    assert_eq!(app.list_all(&ada, true).await.len(), 6);
}

#[tokio::test]
async fn acks_of_other_users_ids_change_nothing() {
    let mut app = spawn_app().await;
    let ada = new_user_id();
    let grace = new_user_id();
    let adas = app.send(&ada, "For Ada").await;
    let graces = app.send(&grace, "For Grace").await;

    let mut connection = Connection::open(&mut app, &ada).await;
    assert_eq!(connection.next().await, adas);
    connection.ack(&graces.id).await;
    let live = app.send(&ada, "Live").await;
    assert_eq!(connection.next().await, live);
    connection.close().await;

    let mut graces_connection = Connection::open(&mut app, &grace).await;
    assert_eq!(
        graces_connection.next().await,
        graces,
        "Ada cannot acknowledge Grace's notification"
    );
    graces_connection.close().await;
}

#[tokio::test]
async fn a_malformed_ack_id_ends_the_stream_with_invalid_argument_naming_it() {
    let mut app = spawn_app().await;
    let ada = new_user_id();
    let adas = app.send(&ada, "For Ada").await;
    let mut connection = Connection::open(&mut app, &ada).await;
    assert_eq!(connection.next().await, adas);
    connection.ack("not-a-uuid").await;
    let status = connection
        .pushed
        .message()
        .await
        .expect_err("a malformed ack is refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(violated_fields(&status), ["ack_id"]);
}

/// A `ConnectRequest` whose `ack_id` (field 1, a string) may carry any bytes: invalid
/// UTF-8 there does not decode as a `ConnectRequest`.
#[derive(Clone, PartialEq, prost::Message)]
struct RawConnectRequest {
    #[prost(bytes = "vec", tag = "1")]
    ack_id: Vec<u8>,
}

#[tokio::test]
async fn a_message_that_does_not_decode_ends_the_stream_with_invalid_argument() {
    let app = spawn_app().await;
    let token = app.user_token(&new_user_id());
    let mut grpc = tonic::client::Grpc::new(app.channel.clone());
    grpc.ready().await.expect("the channel is ready");
    let request = with_token(
        tokio_stream::iter([RawConnectRequest {
            ack_id: vec![0xff, 0xfe, 0xfd],
        }]),
        &token,
    );
    let mut pushed = grpc
        .streaming(
            request,
            PathAndQuery::from_static("/trellis.notification.v1.NotificationService/Connect"),
            ProstCodec::<RawConnectRequest, pb::ConnectResponse>::default(),
        )
        .await
        .expect("the stream opens")
        .into_inner();
    let status = pushed
        .message()
        .await
        .expect_err("an undecodable message is refused, not ignored");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
}

/// Opens Subscribe as `user_id`, expecting a refusal.
async fn subscribe_refused(app: &mut TestApp, user_id: &str) -> tonic::Status {
    let token = app.user_token(user_id);
    app.notifications
        .subscribe(with_token(pb::SubscribeRequest::default(), &token))
        .await
        .expect_err("the stream is refused")
}

#[tokio::test]
async fn a_user_over_the_stream_cap_is_resource_exhausted_until_a_stream_ends() {
    let mut app = spawn_app_with(|config| config.service.streams.max_per_user = 2).await;
    let ada = new_user_id();
    let first = Connection::open(&mut app, &ada).await;
    let _second = app.subscribe(&ada, "").await;

    // Subscribe and Connect count alike.
    let status = subscribe_refused(&mut app, &ada).await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("at most 2"), "{status:?}");
    let token = app.user_token(&ada);
    let (_acks, outgoing) = mpsc::channel::<pb::ConnectRequest>(1);
    let status = app
        .notifications
        .connect(with_token(ReceiverStream::new(outgoing), &token))
        .await
        .expect_err("a third stream is refused");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");

    // Another user is not affected.
    let _graces = Connection::open(&mut app, &new_user_id()).await;

    // Once a stream has ended, its place is free again.
    first.close().await;
    let again = Connection::open(&mut app, &ada).await;
    again.close().await;
}

#[tokio::test]
async fn streams_over_the_servers_cap_are_resource_exhausted() {
    let mut app = spawn_app_with(|config| {
        config.service.streams.max_per_user = 2;
        config.service.streams.max_total = 2;
    })
    .await;
    let _adas = Connection::open(&mut app, &new_user_id()).await;
    let _graces = app.subscribe(&new_user_id(), "").await;
    let status = subscribe_refused(&mut app, &new_user_id()).await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("on this server"), "{status:?}");
}

/// Events as a test sees them: each event's message with the `rpc.method` of every
/// platform `rpc` span it was emitted in.
#[derive(Clone, Default)]
struct CapturedEvents(Arc<Mutex<Vec<CapturedEvent>>>);

/// The thread an event was logged on, its message and the `rpc.method` of each `rpc`
/// span around it.
type CapturedEvent = (ThreadId, String, Vec<String>);

/// The events of this test binary, captured by a global subscriber installed once; `None`
/// when another global subscriber came first (`TEST_LOG` set).
///
/// Global, not `set_default` per test: tracing caches each callsite's interest across
/// threads, so a thread-scoped subscriber misses events whose callsite another test's
/// thread registered first while no subscriber was interested.
fn captured_events() -> Option<&'static CapturedEvents> {
    static CAPTURE: OnceLock<Option<CapturedEvents>> = OnceLock::new();
    CAPTURE
        .get_or_init(|| {
            let events = CapturedEvents::default();
            tracing::subscriber::set_global_default(
                tracing_subscriber::registry().with(events.clone()),
            )
            .ok()
            .map(|()| events)
        })
        .as_ref()
}

/// The `rpc.method` field of an `rpc` span, kept in the span's extensions.
struct RpcMethod(String);

#[derive(Default)]
struct FieldText {
    wanted: &'static str,
    value: Option<String>,
}

impl Visit for FieldText {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == self.wanted {
            self.value = Some(format!("{value:?}"));
        }
    }
}

impl<S> Layer<S> for CapturedEvents
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: layer::Context<'_, S>) {
        let mut method = FieldText {
            wanted: "rpc.method",
            value: None,
        };
        attrs.record(&mut method);
        if let (Some(method), Some(span)) = (method.value, ctx.span(id)) {
            span.extensions_mut().insert(RpcMethod(method));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: layer::Context<'_, S>) {
        let mut message = FieldText {
            wanted: "message",
            value: None,
        };
        event.record(&mut message);
        let methods = ctx
            .event_scope(event)
            .map(|scope| {
                scope
                    .filter(|span| span.name() == "rpc")
                    .filter_map(|span| span.extensions().get::<RpcMethod>().map(|m| m.0.clone()))
                    .collect()
            })
            .unwrap_or_default();
        self.0.lock().unwrap().push((
            std::thread::current().id(),
            message.value.unwrap_or_default(),
            methods,
        ));
    }
}

#[tokio::test]
async fn the_stream_task_logs_inside_the_rpcs_span() {
    // The test runtime has one thread, and the server runs on it: the events logged on
    // this thread are the service's, and no other test's.
    let Some(events) = captured_events() else {
        eprintln!("skipped: another global subscriber is installed (TEST_LOG)");
        return;
    };
    let this_thread = std::thread::current().id();
    let mut app = spawn_app().await;
    let ada = new_user_id();
    let connection = Connection::open(&mut app, &ada).await;
    // Once the client has seen the stream end, the task has logged its end.
    connection.close().await;

    let events: Vec<_> = events
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|(thread, _, _)| *thread == this_thread)
        .map(|(_, message, methods)| (message.clone(), methods.clone()))
        .collect();
    let ended: Vec<_> = events
        .iter()
        .filter(|(message, _)| message == "notification stream ended")
        .collect();
    assert_eq!(
        ended.len(),
        1,
        "{} events, none the stream's end",
        events.len()
    );
    assert_eq!(ended[0].1, ["Connect"], "the rpc spans the task logged in");
}

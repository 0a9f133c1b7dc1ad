//! A probe service for the suite: `NotificationInternalService` with an internal-caller
//! allowlist, built by the platform like any service; a notification handler whose
//! `SendNotification` answers as a test tells it to; and a greeter that always answers.

use std::sync::Arc;

use sea_orm_migration::{MigrationTrait, MigratorTrait};
use tokio::sync::Notify;
use tonic::{Request, Response, Status};
use trellis_platform::auth::{Access, AccessPolicy};
use trellis_platform::service::NoSettings;
use trellis_platform::{BuildError, Config, ConfigError, Context, ServiceInfo};
use trellis_proto::notification_v1 as pb;
use trellis_proto::notification_v1::notification_internal_service_server::{
    NotificationInternalService, NotificationInternalServiceServer,
};

/// A service whose `SendNotification` only `user` and `auth` may call.
#[derive(Debug)]
pub struct Probe;

/// The outbox's table, so the probe's database can hold outbox messages.
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(trellis_platform::outbox::migration::CreateOutbox),
            Box::new(trellis_platform::outbox::migration::AddOutboxTraceContext),
        ]
    }
}

impl trellis_platform::Service for Probe {
    const INFO: ServiceInfo = ServiceInfo {
        name: "probe",
        env_prefix: "TRELLIS_PROBE",
    };
    const DEFAULT_PORT: u16 = 50099;
    type Settings = NoSettings;
    type Migrator = Migrator;

    fn access_policy() -> AccessPolicy {
        AccessPolicy::new(Access::Authenticated)
            .internal(trellis_proto::paths::SEND_NOTIFICATION, &["user", "auth"])
    }

    async fn build(ctx: &mut Context<Self>) -> Result<(), BuildError> {
        ctx.add_service(NotificationInternalServiceServer::new(
            Notifications::default(),
        ));
        Ok(())
    }
}

/// How [`Notifications`] answers.
#[derive(Debug, Clone, Default)]
pub enum Answer {
    /// OK.
    #[default]
    Ok,
    /// This status.
    Fail(Status),
    /// Never: signals `started` and waits forever.
    Hang { started: Arc<Notify> },
    /// OK after `delay`, recording each request's idempotency key in `keys`.
    Record {
        keys: Arc<parking_lot::Mutex<Vec<String>>>,
        delay: std::time::Duration,
    },
}

/// A `NotificationInternalService` answering with [`Answer`].
#[derive(Debug, Clone, Default)]
pub struct Notifications(pub Answer);

#[tonic::async_trait]
impl NotificationInternalService for Notifications {
    async fn send_notification(
        &self,
        request: Request<pb::SendNotificationRequest>,
    ) -> Result<Response<pb::SendNotificationResponse>, Status> {
        match &self.0 {
            Answer::Record { keys, delay } => {
                tokio::time::sleep(*delay).await;
                keys.lock().push(request.into_inner().idempotency_key);
                Ok(Response::new(pb::SendNotificationResponse::default()))
            }
            Answer::Ok => Ok(Response::new(pb::SendNotificationResponse::default())),
            Answer::Fail(status) => Err(status.clone()),
            Answer::Hang { started } => {
                started.notify_one();
                std::future::pending().await
            }
        }
    }
}

/// Serves `handler` on 127.0.0.1 with plain tonic (no platform layers); returns its
/// address. The server lives as long as the test's runtime.
pub async fn serve_notifications(handler: Notifications) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(NotificationInternalServiceServer::new(handler))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr
}

/// The probe's config from the defaults and `env` (no file).
pub fn load(env: &[(&str, &str)]) -> Result<Config<Probe>, ConfigError> {
    Config::<Probe>::load_from(
        None,
        env.iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned())),
    )
}

/// A SendNotificationRequest that keeps the contract's field rules, so a call reaches the
/// policy's and the handler's answer (an empty one is INVALID_ARGUMENT before either).
pub fn send_request() -> pb::SendNotificationRequest {
    pb::SendNotificationRequest {
        user_id: "0190f1c2-0000-7000-8000-000000000001".to_owned(),
        kind: "probe".to_owned(),
        title: "Probe".to_owned(),
        body: "A probe.".to_owned(),
        idempotency_key: "probe".to_owned(),
    }
}

/// A greeter that answers every SayHello and streams nothing.
#[derive(Debug, Clone, Copy)]
pub struct Hello;

#[tonic::async_trait]
impl trellis_proto::greeter_v1::greeter_service_server::GreeterService for Hello {
    async fn say_hello(
        &self,
        _: Request<trellis_proto::greeter_v1::SayHelloRequest>,
    ) -> Result<Response<trellis_proto::greeter_v1::SayHelloResponse>, Status> {
        Ok(Response::new(
            trellis_proto::greeter_v1::SayHelloResponse::default(),
        ))
    }

    type StreamGreetingsStream =
        tokio_stream::Empty<Result<trellis_proto::greeter_v1::StreamGreetingsResponse, Status>>;

    async fn stream_greetings(
        &self,
        _: Request<trellis_proto::greeter_v1::StreamGreetingsRequest>,
    ) -> Result<Response<Self::StreamGreetingsStream>, Status> {
        Ok(Response::new(tokio_stream::empty()))
    }
}

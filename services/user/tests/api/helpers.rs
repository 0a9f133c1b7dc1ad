//! The test harness: [`spawn_app`] starts a service and returns typed clients.

use std::net::SocketAddr;
use std::time::Duration;

use pb::user_internal_service_client::UserInternalServiceClient;
use pb::user_service_client::UserServiceClient;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use trellis_platform::auth::testing::TestIssuer;
use trellis_platform::data::DatabaseConfig;
use trellis_platform::peer::PeerConfig;
use trellis_platform::server::ServerConfig;
use trellis_proto::user_v1 as pb;
use user_service::Config;

/// The drain bound the test server uses, in ms.
pub(crate) const DRAIN_MS: u64 = 300;

/// A running service and clients for it.
pub(crate) struct TestApp {
    pub(crate) users: UserServiceClient<Channel>,
    pub(crate) internal: UserInternalServiceClient<Channel>,
    pub(crate) health: HealthClient<Channel>,
    pub(crate) channel: Channel,
    /// Signs tokens the service accepts.
    pub(crate) issuer: TestIssuer,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<Result<(), trellis_platform::app::AppError>>>,
}

/// Starts the user service on 127.0.0.1:0 with a fresh in-memory database and waits
/// until it reports SERVING.
pub(crate) async fn spawn_app() -> TestApp {
    if std::env::var_os("TEST_LOG").is_some() {
        trellis_platform::telemetry::init(&trellis_platform::telemetry::TelemetryConfig::default());
    }
    let config = Config {
        server: ServerConfig {
            listen_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            drain_timeout_ms: DRAIN_MS,
            readiness_interval_ms: 50,
            ..ServerConfig::default()
        },
        database: DatabaseConfig::with_url("sqlite::memory:"),
        // Nothing listens on the discard port: welcome deliveries stay pending, and no
        // other Trellis process on this machine is reached.
        peers: [
            ("auth", "http://127.0.0.1:9"),
            ("notification", "http://127.0.0.1:9"),
        ]
        .into_iter()
        .map(|(name, address)| (name.to_owned(), PeerConfig::with_address(address)))
        .collect(),
        ..Config::default()
    };
    let issuer = TestIssuer::new();
    let keys = std::sync::Arc::new(issuer.key_source());
    let app = user_service::build_with_keys(config, Some(keys))
        .await
        .expect("service builds");
    let addr = app.local_addr();
    let (shutdown, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async {
        drop(stopped.await);
    }));
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("valid uri")
        .connect()
        .await
        .expect("connects");
    let mut app = TestApp {
        users: UserServiceClient::new(channel.clone()),
        internal: UserInternalServiceClient::new(channel.clone()),
        health: HealthClient::new(channel.clone()),
        channel,
        issuer,
        shutdown: Some(shutdown),
        server: Some(server),
    };
    assert_eventually(|| {
        let mut health = app.health.clone();
        async move { health_status(&mut health, "").await == Some(ServingStatus::Serving) }
    })
    .await;
    app.health = HealthClient::new(app.channel.clone());
    app
}

impl TestApp {
    /// Creates a user with a valid password, asserting success.
    pub(crate) async fn create_user(&mut self, email: &str, display_name: &str) -> pb::User {
        self.users
            .create_user(pb::CreateUserRequest {
                email: email.to_owned(),
                display_name: display_name.to_owned(),
                password: PASSWORD.to_owned(),
            })
            .await
            .expect("user is created")
            .into_inner()
            .user
            .expect("response carries the user")
    }

    /// Signals shutdown and returns the server task's result.
    pub(crate) async fn stop(&mut self) -> JoinHandle<Result<(), trellis_platform::app::AppError>> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        self.server.take().expect("server still running")
    }
}

/// `message` as a request carrying `token` as its bearer credential.
pub(crate) fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let value = format!("Bearer {token}").parse().expect("ascii token");
    request.metadata_mut().insert("authorization", value);
    request
}

impl TestApp {
    /// A token for `user`.
    pub(crate) fn token_for(&self, user: &pb::User) -> String {
        self.issuer.user_token(&user.id, &[])
    }

    /// A token with the admin role.
    pub(crate) fn admin_token(&self) -> String {
        self.issuer
            .user_token(&uuid::Uuid::now_v7().to_string(), &["admin"])
    }

    /// A service token.
    pub(crate) fn service_token(&self) -> String {
        self.issuer.service_token("auth")
    }
}

/// A password that passes validation.
pub(crate) const PASSWORD: &str = "correct horse battery";

/// The status `Check` reports for `service`, `None` on an error status.
pub(crate) async fn health_status(
    client: &mut HealthClient<Channel>,
    service: &str,
) -> Option<ServingStatus> {
    client
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .ok()
        .map(|r| r.into_inner().status())
}

/// Retries `condition` every 20 ms until it holds; panics after 10 s.
pub(crate) async fn assert_eventually<F, Fut>(mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The fields named in a status's `google.rpc.BadRequest` detail.
pub(crate) fn violated_fields(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt as _;
    status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

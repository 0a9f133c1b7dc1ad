//! The harness of the cross-service suites: [`System`] runs the user, auth and
//! notification services in this process on 127.0.0.1, wired to each other as in
//! production (peer channels, service credentials, outboxes), each on its own SQLite
//! file in a temporary directory so a service can be stopped and started again with its
//! data intact.

// The harness panics on purpose: a failed expectation is the test failing.
#![allow(clippy::expect_used)]

pub mod client;
pub mod docker;
pub mod scenarios;

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use secrecy::SecretString;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use trellis_platform::data::DatabaseConfig;
use trellis_platform::outbox::OutboxConfig;
use trellis_platform::peer::PeerConfig;
use trellis_platform::server::ServerConfig;

/// The user service's client secret in the harness.
const USER_CLIENT_SECRET: &str = "user-client-secret-for-tests";
/// Emails whose sign-ins get the admin role in the harness.
pub const ADMIN_EMAIL: &str = "admin@example.com";
/// Failed sign-ins allowed per account per hour in the harness (small, to test it).
pub const ACCOUNT_FAILURE_BUDGET: u32 = 6;

/// A running Trellis system, however it runs: channels to its three services.
pub trait Trellis {
    /// A channel to the user service.
    fn user_channel(&self) -> Channel;
    /// A channel to the auth service.
    fn auth_channel(&self) -> Channel;
    /// A channel to the notification service.
    fn notification_channel(&self) -> Channel;
}

impl Trellis for System {
    fn user_channel(&self) -> Channel {
        channel(self.user_addr)
    }

    fn auth_channel(&self) -> Channel {
        channel(self.auth_addr)
    }

    fn notification_channel(&self) -> Channel {
        channel(self.notification_addr)
    }
}

/// Database URLs of the three services.
#[derive(Debug, Clone)]
pub struct Databases {
    /// The user service's.
    pub user: String,
    /// The auth service's.
    pub auth: String,
    /// The notification service's.
    pub notification: String,
}

struct Running {
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<Result<(), trellis_platform::app::AppError>>,
}

/// The three services, running.
pub struct System {
    /// The user service's address.
    pub user_addr: SocketAddr,
    /// The auth service's address.
    pub auth_addr: SocketAddr,
    /// The notification service's address.
    pub notification_addr: SocketAddr,
    dir: tempfile::TempDir,
    databases: Option<Databases>,
    user: Option<Running>,
    auth: Option<Running>,
    notification: Option<Running>,
}

/// A free port on 127.0.0.1 (bound, read, released). Ports must be known before the
/// services start, because each one's config names the others.
fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("bound address")
}

fn server_config(addr: SocketAddr) -> ServerConfig {
    ServerConfig {
        listen_addr: addr,
        drain_timeout_ms: 300,
        readiness_interval_ms: 50,
        ..ServerConfig::default()
    }
}

fn fast_outbox() -> OutboxConfig {
    OutboxConfig {
        poll_interval_ms: 100,
        initial_backoff_ms: 50,
        max_backoff_ms: 400,
        batch_size: 100,
    }
}

fn peers(entries: &[(&str, SocketAddr)]) -> std::collections::HashMap<String, PeerConfig> {
    entries
        .iter()
        .map(|(name, addr)| {
            (
                (*name).to_owned(),
                PeerConfig::with_address(format!("http://{addr}")),
            )
        })
        .collect()
}

fn spawn<F>(run: impl FnOnce(oneshot::Receiver<()>) -> F) -> Running
where
    F: std::future::Future<Output = Result<(), trellis_platform::app::AppError>> + Send + 'static,
{
    let (shutdown, stopped) = oneshot::channel();
    Running {
        shutdown,
        task: tokio::spawn(run(stopped)),
    }
}

impl System {
    /// Starts all three services on SQLite files and waits until each reports SERVING.
    pub async fn start() -> Self {
        Self::start_on(None).await
    }

    /// Starts all three services on `databases` (SQLite files in a temporary directory
    /// when `None`) and waits until each reports SERVING.
    pub async fn start_on(databases: Option<Databases>) -> Self {
        if std::env::var_os("TEST_LOG").is_some() {
            trellis_platform::telemetry::init(
                &trellis_platform::telemetry::TelemetryConfig::default(),
            );
        }
        let mut system = Self {
            user_addr: free_addr(),
            auth_addr: free_addr(),
            notification_addr: free_addr(),
            dir: tempfile::tempdir().expect("a temporary directory"),
            databases,
            user: None,
            auth: None,
            notification: None,
        };
        system.start_notification().await;
        system.start_auth().await;
        system.start_user().await;
        for addr in [system.notification_addr, system.auth_addr, system.user_addr] {
            wait_serving(addr).await;
        }
        system
    }

    fn database(&self, name: &str) -> DatabaseConfig {
        DatabaseConfig::with_url(self.database_url(name))
    }

    /// The database URL of a service (`user`, `auth` or `notification`).
    pub fn database_url(&self, name: &str) -> String {
        match (&self.databases, name) {
            (Some(dbs), "user") => dbs.user.clone(),
            (Some(dbs), "auth") => dbs.auth.clone(),
            (Some(dbs), "notification") => dbs.notification.clone(),
            _ => format!("sqlite://{}/{name}.db?mode=rwc", self.dir.path().display()),
        }
    }

    /// Starts the notification service (again) on its address.
    pub async fn start_notification(&mut self) {
        let mut config = notification_service::Config {
            server: server_config(self.notification_addr),
            database: self.database("notification"),
            peers: peers(&[("auth", self.auth_addr)]),
            ..notification_service::Config::default()
        };
        config.auth.min_refresh_interval_ms = 200;
        let app = notification_service::build(config)
            .await
            .expect("notification builds");
        self.notification = Some(spawn(|stopped| {
            app.run_until(async { drop(stopped.await) })
        }));
        wait_serving(self.notification_addr).await;
    }

    /// Stops the notification service gracefully and waits until it has stopped.
    pub async fn stop_notification(&mut self) {
        stop(self.notification.take()).await;
    }

    async fn start_auth(&mut self) {
        let config = auth_service::Config {
            server: server_config(self.auth_addr),
            database: self.database("auth"),
            peers: peers(&[
                ("user", self.user_addr),
                ("notification", self.notification_addr),
            ]),
            service_clients: [("user".to_owned(), SecretString::from(USER_CLIENT_SECRET))].into(),
            admin_emails: ADMIN_EMAIL.to_owned(),
            login_throttle: auth_service::config::ThrottleConfig {
                max_failures_per_account_per_hour: ACCOUNT_FAILURE_BUDGET,
                max_failures_per_source_per_hour: 10_000,
            },
            outbox: fast_outbox(),
            ..auth_service::Config::default()
        };
        let app = auth_service::build(config).await.expect("auth builds");
        self.auth = Some(spawn(|stopped| {
            app.run_until(async { drop(stopped.await) })
        }));
    }

    async fn start_user(&mut self) {
        let mut config = user_service::Config {
            server: server_config(self.user_addr),
            database: self.database("user"),
            peers: peers(&[
                ("auth", self.auth_addr),
                ("notification", self.notification_addr),
            ]),
            outbox: fast_outbox(),
            ..user_service::Config::default()
        };
        config.auth.client_secret = Some(SecretString::from(USER_CLIENT_SECRET));
        config.auth.min_refresh_interval_ms = 200;
        let app = user_service::build(config).await.expect("user builds");
        self.user = Some(spawn(|stopped| {
            app.run_until(async { drop(stopped.await) })
        }));
    }

    /// Stops every service gracefully.
    pub async fn stop(mut self) {
        stop(self.user.take()).await;
        stop(self.auth.take()).await;
        stop(self.notification.take()).await;
    }
}

async fn stop(running: Option<Running>) {
    if let Some(running) = running {
        let _ = running.shutdown.send(());
        let result = tokio::time::timeout(Duration::from_secs(10), running.task)
            .await
            .expect("service stops within 10 s");
        assert!(
            matches!(result, Ok(Ok(()))),
            "service stopped with {result:?}"
        );
    }
}

/// A lazy channel to `addr`.
pub fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("valid uri")
        .connect_lazy()
}

/// Waits until the service at `addr` reports SERVING (10 s at most).
pub async fn wait_serving(addr: SocketAddr) {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let client = HealthClient::new(channel(addr));
    assert_eventually(|| {
        let mut client = client.clone();
        async move {
            client
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .is_ok_and(|r| r.into_inner().status == 1)
        }
    })
    .await;
}

/// Retries `condition` every 25 ms until it holds; panics after 15 s.
pub async fn assert_eventually<F, Fut>(mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// `message` as a request carrying `token` as its bearer credential.
pub fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Ok(value) = format!("Bearer {token}").parse() {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

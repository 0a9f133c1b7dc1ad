//! The harness of the cross-service suites: [`System`] runs the user, auth and
//! notification services in this process on 127.0.0.1, wired to each other as in
//! production (peer channels, service credentials, outboxes), each on its own SQLite
//! file in a temporary directory so a service can be stopped and started again with its
//! data intact. Metrics endpoints are off unless started with
//! [`System::start_with_metrics`] (each on its own 127.0.0.1 port, never the defaults).
//! [`System::start_tls`] runs every hop over mutual TLS with a test CA's certificates;
//! the suites' clients then connect as end users and grpcurl do, with server-only TLS.

// The harness panics on purpose: a failed expectation is the test failing.
#![allow(clippy::expect_used)]

pub mod client;
pub mod docker;
pub mod feed_check;
pub mod json;
pub mod scenarios;

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use secrecy::SecretString;
use tonic::transport::Channel;
use trellis_platform::data::DatabaseConfig;
use trellis_platform::metrics::MetricsConfig;
use trellis_platform::outbox::OutboxConfig;
use trellis_platform::peer::PeerConfig;
use trellis_platform::server::ServerConfig;
use trellis_platform::service::Launch;
use trellis_platform::testing::{TEST_DRAIN, TestCa, TestServer, local_listener, tls_channel};

pub use trellis_platform::testing::{assert_eventually, channel, wait_serving, with_token};

/// The user service's client secret in the harness.
const USER_CLIENT_SECRET: &str = "user-client-secret-for-tests";
/// The account suites make an admin with [`System::grant_admin`].
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
        self.channel_to(self.user_addr)
    }

    fn auth_channel(&self) -> Channel {
        self.channel_to(self.auth_addr)
    }

    fn notification_channel(&self) -> Channel {
        self.channel_to(self.notification_addr)
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

/// The three services, running.
pub struct System {
    /// The user service's address.
    pub user_addr: SocketAddr,
    /// The auth service's address.
    pub auth_addr: SocketAddr,
    /// The notification service's address.
    pub notification_addr: SocketAddr,
    /// The metrics endpoints (user, auth, notification), when started with them.
    metrics_addrs: Option<[SocketAddr; 3]>,
    dir: tempfile::TempDir,
    databases: Option<Databases>,
    user: Option<TestServer>,
    auth: Option<TestServer>,
    notification: Option<TestServer>,
    /// The CA of a system over mutual TLS.
    tls: Option<TestCa>,
}

/// The name of the test client's own certificate under mutual TLS (a workload no
/// policy names).
const CLIENT: &str = "client";

/// The origin of the web page the harness's services allow (`server.cors`).
pub const PAGE_ORIGIN: &str = "http://page.test:50050";

fn server_config(addr: SocketAddr) -> ServerConfig {
    ServerConfig {
        listen_addr: addr,
        cors: trellis_platform::server::cors::CorsConfig {
            allowed_origins: vec![PAGE_ORIGIN.to_owned()],
        },
        drain_timeout: TEST_DRAIN,
        readiness_interval: Duration::from_millis(50),
        ..ServerConfig::default()
    }
}

/// A listener on `addr`: the one held since start-up when given, else bound again (a
/// service restarted on the address it had).
fn listener_on(held: Option<TcpListener>, addr: SocketAddr) -> TcpListener {
    held.unwrap_or_else(|| TcpListener::bind(addr).expect("the service's address is free again"))
}

fn addr_of(listener: &TcpListener) -> SocketAddr {
    listener.local_addr().expect("a bound address")
}

fn fast_outbox() -> OutboxConfig {
    OutboxConfig {
        poll_interval: Duration::from_millis(100),
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(400),
        batch_size: 100,
        ..OutboxConfig::default()
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

impl System {
    /// Starts all three services on SQLite files and waits until each reports SERVING.
    pub async fn start() -> Self {
        Self::start_on(None).await
    }

    /// Starts all three services on `databases` (SQLite files in a temporary directory
    /// when `None`) and waits until each reports SERVING.
    pub async fn start_on(databases: Option<Databases>) -> Self {
        Self::start_with(databases, false, false).await
    }

    /// Starts all three services over mutual TLS: a test CA issues each its certificate
    /// with its SPIFFE ID; the clients of [`Trellis`] trust the CA and present none.
    pub async fn start_tls() -> Self {
        Self::start_with(None, false, true).await
    }

    /// Starts all three services on SQLite files with their metrics endpoints, each on a
    /// port of 127.0.0.1 the system chose ([`Self::metrics_addr`]).
    pub async fn start_with_metrics() -> Self {
        Self::start_with(None, true, false).await
    }

    /// [`Self::start_tls`] with the metrics endpoints of [`Self::start_with_metrics`]
    /// (which stay plaintext, as Prometheus scrapes them).
    pub async fn start_tls_with_metrics() -> Self {
        Self::start_with(None, true, true).await
    }

    async fn start_with(databases: Option<Databases>, metrics: bool, tls: bool) -> Self {
        let tls = tls.then(|| {
            let ca = TestCa::new();
            for name in ["user", "auth", "notification", CLIENT] {
                ca.workload(name);
            }
            ca
        });
        // Every listener is bound before any service starts: each config names the
        // others' addresses, and nothing can take a port between bind and serve.
        let (user, auth, notification) = (local_listener(), local_listener(), local_listener());
        let metrics_listeners =
            metrics.then(|| [local_listener(), local_listener(), local_listener()]);
        let mut system = Self {
            user_addr: addr_of(&user),
            auth_addr: addr_of(&auth),
            notification_addr: addr_of(&notification),
            metrics_addrs: metrics_listeners
                .as_ref()
                .map(|listeners| listeners.each_ref().map(addr_of)),
            dir: tempfile::tempdir().expect("a temporary directory"),
            databases,
            user: None,
            auth: None,
            notification: None,
            tls,
        };
        let [user_metrics, auth_metrics, notification_metrics] =
            metrics_listeners.map_or([None, None, None], |listeners| listeners.map(Some));
        system
            .start_notification_on(Some(notification), notification_metrics)
            .await;
        // Auth and user call each other: start both before waiting for either.
        let auth = system.with_metrics(
            Launch::new(system.auth_config()).listener(auth),
            1,
            auth_metrics,
        );
        let user = system.with_metrics(
            Launch::new(system.user_config()).listener(user),
            0,
            user_metrics,
        );
        let (auth, user) = tokio::join!(system.serve(auth), system.serve(user));
        system.auth = Some(auth);
        system.user = Some(user);
        system
    }

    /// A channel to `addr`: plaintext, or server-only TLS trusting the system's CA.
    fn channel_to(&self, addr: SocketAddr) -> Channel {
        match &self.tls {
            Some(ca) => tls_channel(addr, &ca.files(CLIENT).ca, None),
            None => channel(addr),
        }
    }

    /// Starts `launch` with the `tls` section of service `name` when the system runs
    /// over mutual TLS, and waits until it is SERVING.
    async fn serve<S: trellis_platform::Service>(&self, mut launch: Launch<S>) -> TestServer {
        match &self.tls {
            Some(ca) => {
                launch = launch.tls(ca.files(S::INFO.name).config());
                TestServer::start_tls(launch, &ca.files(CLIENT)).await
            }
            None => TestServer::start(launch).await,
        }
    }

    /// The metrics endpoint of a service (`user`, `auth` or `notification`), when the
    /// system was started with them.
    pub fn metrics_addr(&self, name: &str) -> Option<SocketAddr> {
        let index = ["user", "auth", "notification"]
            .iter()
            .position(|service| *service == name)?;
        self.metrics_addrs.map(|addrs| addrs[index])
    }

    /// `launch` serving metrics on `held` (or on the address it had, restarted) when the
    /// system runs with metrics; `index` is the service's place in `metrics_addrs`.
    fn with_metrics<S: trellis_platform::Service>(
        &self,
        launch: Launch<S>,
        index: usize,
        held: Option<TcpListener>,
    ) -> Launch<S> {
        match self.metrics_addrs {
            Some(addrs) => launch.metrics_listener(listener_on(held, addrs[index])),
            None => launch,
        }
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

    /// Starts the notification service again on the address it had.
    pub async fn start_notification(&mut self) {
        self.start_notification_on(None, None).await;
    }

    async fn start_notification_on(
        &mut self,
        listener: Option<TcpListener>,
        metrics: Option<TcpListener>,
    ) {
        let mut config = notification_service::Config {
            server: server_config(self.notification_addr),
            metrics: MetricsConfig::disabled(),
            database: self.database("notification"),
            peers: peers(&[("auth", self.auth_addr)]),
            ..notification_service::Config::default()
        };
        config.auth.min_refresh_interval = Duration::from_millis(200);
        let listener = listener_on(listener, self.notification_addr);
        let launch = self.with_metrics(Launch::new(config).listener(listener), 2, metrics);
        self.notification = Some(self.serve(launch).await);
    }

    /// Stops the notification service gracefully and waits until it has stopped.
    pub async fn stop_notification(&mut self) {
        if let Some(server) = self.notification.take() {
            server.stop().await;
        }
    }

    fn auth_config(&self) -> auth_service::Config {
        auth_service::Config {
            server: server_config(self.auth_addr),
            metrics: MetricsConfig::disabled(),
            database: self.database("auth"),
            peers: peers(&[
                ("user", self.user_addr),
                ("notification", self.notification_addr),
            ]),
            outbox: fast_outbox(),
            service: auth_service::config::Settings {
                service_clients: [("user".to_owned(), SecretString::from(USER_CLIENT_SECRET))]
                    .into(),
                login_throttle: auth_service::config::ThrottleConfig {
                    max_failures_per_account_per_hour: ACCOUNT_FAILURE_BUDGET,
                    max_failures_per_source_per_hour: 10_000,
                },
                ..auth_service::config::Settings::default()
            },
            ..auth_service::Config::default()
        }
    }

    fn user_config(&self) -> user_service::Config {
        let mut config = user_service::Config {
            server: server_config(self.user_addr),
            metrics: MetricsConfig::disabled(),
            database: self.database("user"),
            peers: peers(&[
                ("auth", self.auth_addr),
                ("notification", self.notification_addr),
            ]),
            outbox: fast_outbox(),
            ..user_service::Config::default()
        };
        config.auth.client_secret = Some(SecretString::from(USER_CLIENT_SECRET));
        config.auth.min_refresh_interval = Duration::from_millis(200);
        config
    }

    /// Gives the account with `email` the admin role the way an operator does: the user
    /// service's `admin grant EMAIL` command, run in this process against the user
    /// service's database. Its access tokens carry the role from the next login.
    pub async fn grant_admin(&self, email: &str) {
        use trellis_platform::Commands as _;
        use user_service::admin::{AdminCommand, Command};

        let db = trellis_platform::data::connect::<user_service::storage::migration::Migrator>(
            &self.database("user"),
        )
        .await
        .expect("the user service's database opens");
        // `grant` without `--create` reads nothing from standard input.
        Command::Admin(AdminCommand::Grant {
            email: email.to_owned(),
            create: false,
            display_name: String::new(),
        })
        .run(self.user_config(), db)
        .await
        .expect("the admin role is granted");
    }

    /// Signs `email` up, makes it an admin ([`Self::grant_admin`]) and logs it in, so
    /// its access token carries the role.
    pub async fn sign_up_admin(&self, email: &str) -> client::Session {
        let user = client::sign_up(self, email).await;
        self.grant_admin(email).await;
        let tokens = client::log_in(self, email).await;
        client::Session { user, tokens }
    }

    /// Stops every service gracefully.
    pub async fn stop(mut self) {
        for server in [self.user.take(), self.auth.take(), self.notification.take()]
            .into_iter()
            .flatten()
        {
            server.stop().await;
        }
    }
}

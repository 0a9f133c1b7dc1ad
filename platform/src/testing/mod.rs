//! The testkit (feature `testing`), one for every suite: start any service in-process
//! ([`TestServer`]), ask it what grpcurl would ([`reflection`]) and check that it shows
//! health and reflection as grpcurl and probes expect
//! ([`assert_serves_health_and_reflection`]), sign tokens for users, admins and services
//! ([`TestIssuer`]), serve those keys as a fake identity peer ([`FakeAuth`]), read its
//! metrics endpoint ([`metrics`]), send calls whose body never arrives
//! ([`call_without_body`]), run a real etcd ([`EtcdServer`]), and wait on
//! observable state instead of sleeping ([`assert_eventually`]).
//!
//! Helpers panic on failure: a failed expectation is the test failing.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod etcd;
mod fake_auth;
mod issuer;
pub mod metrics;
pub mod reflection;
mod slowloris;
mod surface;
mod tls;

pub use etcd::EtcdServer;
pub use fake_auth::FakeAuth;
pub use issuer::{StaticKeySource, TestIssuer};
pub use slowloris::{answers_of, call_without_body};
pub use surface::assert_serves_health_and_reflection;
pub use tls::{TestCa, WorkloadFiles, write_replacing};

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::app::AppError;
use crate::service::{Config, Launch, Service};

/// A password every Trellis service's rules accept.
pub const TEST_PASSWORD: &str = "correct horse battery";

/// How long [`assert_eventually`] waits before failing.
pub const EVENTUALLY: Duration = Duration::from_secs(15);

/// The drain bound of test servers: short, so stopping a test is quick.
pub const TEST_DRAIN: Duration = Duration::from_millis(300);

/// Retries `condition` every 20 ms until it holds.
///
/// # Panics
/// When it does not hold within [`EVENTUALLY`] (15 s).
pub async fn assert_eventually<F, Fut>(condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    assert_eventually_that("condition", condition).await;
}

/// As [`assert_eventually`], saying `what` was awaited when it fails, e.g.
/// `assert_eventually_that("every replica reports SERVING", || ready(all_serving()))`.
///
/// # Panics
/// When `condition` does not hold within [`EVENTUALLY`] (15 s).
pub async fn assert_eventually_that<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + EVENTUALLY;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} not met within {} s",
            EVENTUALLY.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The installed tool `name` (`/usr/bin/<name>`, else the first on `PATH`), which
/// Debian's `package` provides; `None`, after saying on standard error that the test is
/// skipped, when it is not installed.
///
/// # Panics
/// When it is not installed and `CI` is set: CI must run every test.
pub fn installed_tool(name: &str, package: &str) -> Option<PathBuf> {
    let candidates = std::iter::once(PathBuf::from("/usr/bin"))
        .chain(
            std::env::var_os("PATH")
                .map_or_else(Vec::new, |path| std::env::split_paths(&path).collect()),
        )
        .map(|dir| dir.join(name));
    for candidate in candidates {
        if candidate.is_file() {
            return Some(candidate);
        }
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "`{name}` is not installed, and CI must run this test (Debian: apt-get install {package})"
    );
    eprintln!(
        "SKIPPED: `{name}` is not installed (Debian: apt-get install {package}); \
         set CI to make this a failure"
    );
    None
}

/// The fields named in a status's `google.rpc.BadRequest` detail, in order (AIP-193).
pub fn violated_fields(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt as _;
    status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

/// The code of a failed call, or `Ok(())`: compare outcomes without their messages.
pub fn code<T>(result: Result<T, tonic::Status>) -> Result<(), tonic::Code> {
    result.map(drop).map_err(|status| status.code())
}

/// Installs the services' log output when `TEST_LOG` is set (once per process; later
/// calls keep the first). [`TestServer::start`] calls it.
pub fn init_test_log() {
    if std::env::var_os("TEST_LOG").is_some() {
        // No collector: the guard holds nothing to flush.
        drop(crate::telemetry::init(
            &crate::telemetry::TelemetryConfig::default(),
            "test",
            env!("CARGO_PKG_VERSION"),
        ));
    }
}

/// `message` as a request carrying `token` as its bearer credential (no header at all
/// when `token` cannot be a header value).
pub fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Ok(value) = format!("Bearer {token}").parse() {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

/// A lazy channel to `addr` (connects on first use).
///
/// # Panics
/// Never for a socket address.
pub fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("a socket address is a valid URI")
        .connect_lazy()
}

/// A lazy channel to `addr` over TLS, trusting `files`' CA and, with `client`,
/// presenting that certificate (the server's name checked: `localhost`).
///
/// # Panics
/// When the files cannot be read.
pub fn tls_channel(
    addr: SocketAddr,
    ca: &std::path::Path,
    client: Option<&WorkloadFiles>,
) -> Channel {
    let mut tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(
            std::fs::read(ca).expect("the CA certificate"),
        ))
        .domain_name("localhost");
    if let Some(client) = client {
        tls = tls.identity(tonic::transport::Identity::from_pem(
            std::fs::read(&client.cert).expect("the client certificate"),
            std::fs::read(&client.key).expect("the client key"),
        ));
    }
    Channel::from_shared(format!("https://{addr}"))
        .expect("a socket address is a valid URI")
        .tls_config(tls)
        .expect("a TLS client config")
        .connect_lazy()
}

/// A listener on 127.0.0.1 with a port the system chose, held until a server takes it
/// (so the port is known before the server starts, with no bind-release-rebind race).
///
/// # Panics
/// When no port can be bound.
pub fn local_listener() -> std::net::TcpListener {
    std::net::TcpListener::bind("127.0.0.1:0").expect("a port on 127.0.0.1")
}

/// The status `Check` reports for `service` (`""` is the server), `None` on an error
/// status.
pub async fn health_status(
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

/// Waits until the server at `addr` reports SERVING.
///
/// # Panics
/// When it does not within [`EVENTUALLY`].
pub async fn wait_serving(addr: SocketAddr) {
    wait_serving_on(channel(addr)).await;
}

/// [`wait_serving`] over `channel` (e.g. a TLS one).
pub async fn wait_serving_on(channel: Channel) {
    let client = HealthClient::new(channel);
    assert_eventually(|| {
        let mut client = client.clone();
        async move { health_status(&mut client, "").await == Some(ServingStatus::Serving) }
    })
    .await;
}

/// The config tests start from: `S`'s defaults on 127.0.0.1 (port chosen by the system),
/// in-memory SQLite, a short drain and readiness interval, no metrics endpoint (give
/// [`Launch::metrics_listener`] one), every default peer pointed at the discard port
/// (nothing listens there, so no other process is reached).
pub fn test_config<S: Service>() -> Config<S> {
    let mut config = Config::<S>::default();
    config.server.listen_addr = SocketAddr::from(([127, 0, 0, 1], 0));
    config.metrics = crate::metrics::MetricsConfig::disabled();
    config.server.drain_timeout = TEST_DRAIN;
    config.server.readiness_interval = Duration::from_millis(50);
    config.database = crate::data::DatabaseConfig::with_url("sqlite::memory:");
    for peer in config.peers.values_mut() {
        peer.addresses = "http://127.0.0.1:9".to_owned();
    }
    config
}

/// A service running in this process until [`Self::stop`].
#[derive(Debug)]
pub struct TestServer {
    /// The address it serves on.
    pub addr: SocketAddr,
    /// Its metrics endpoint's address, when it has one ([`Launch::metrics_listener`]);
    /// read it with [`metrics::scrape`].
    pub metrics_addr: Option<SocketAddr>,
    /// A channel to it, for generated clients.
    pub channel: Channel,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), AppError>>>,
}

impl TestServer {
    /// Builds and starts `launch`, and waits until it reports SERVING.
    ///
    /// # Panics
    /// When the service does not build or become SERVING.
    pub async fn start<S: Service>(launch: Launch<S>) -> Self {
        Self::start_on(launch, channel).await
    }

    /// Like [`Self::start`] for a service with `tls` set: its [`Self::channel`] trusts
    /// `client`'s CA and presents `client`'s certificate.
    ///
    /// # Panics
    /// As [`Self::start`].
    pub async fn start_tls<S: Service>(launch: Launch<S>, client: &WorkloadFiles) -> Self {
        let client = client.clone();
        Self::start_on(launch, move |addr| {
            tls_channel(addr, &client.ca, Some(&client))
        })
        .await
    }

    async fn start_on<S: Service>(
        launch: Launch<S>,
        connect: impl FnOnce(SocketAddr) -> Channel,
    ) -> Self {
        init_test_log();
        let app = launch
            .build()
            .await
            .unwrap_or_else(|err| panic!("{} does not build: {err}", S::INFO.name));
        let addr = app.local_addr();
        let metrics_addr = app.metrics_addr();
        let (shutdown, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until(async {
            drop(stopped.await);
        }));
        let channel = connect(addr);
        wait_serving_on(channel.clone()).await;
        Self {
            addr,
            metrics_addr,
            channel,
            shutdown: Some(shutdown),
            task: Some(task),
        }
    }

    /// Starts shutdown without waiting for it; [`Self::stopped`] waits.
    fn begin_stop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }

    /// Starts shutdown and returns the server's task, to await its result.
    ///
    /// # Panics
    /// When called twice.
    pub fn stopped(&mut self) -> JoinHandle<Result<(), AppError>> {
        self.begin_stop();
        self.task.take().expect("the server is still running")
    }

    /// Shuts down gracefully and waits, asserting a clean stop within 10 s.
    ///
    /// # Panics
    /// When the stop is not clean or takes longer.
    pub async fn stop(mut self) {
        let result = tokio::time::timeout(Duration::from_secs(10), self.stopped())
            .await
            .expect("the service stops within 10 s");
        assert!(
            matches!(result, Ok(Ok(()))),
            "service stopped with {result:?}"
        );
    }
}

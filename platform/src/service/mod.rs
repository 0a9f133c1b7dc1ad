//! The service builder: everything a service needs that is not its own, wired once.
//!
//! A service implements [`Service`] — its name and defaults, its own settings, its
//! migrations, its access policy, and [`Service::build`], which adds its handlers (and
//! any background task) to a [`Context`]. The platform does the rest, in this order:
//!
//! 1. opens the database and applies the service's migrations ([`crate::data`]);
//! 2. makes peer channels from `peers` ([`crate::peer`]), with this service's credentials
//!    (OAuth 2.0 client credentials, RFC 6749 §4.4) when `auth.client_secret` is set;
//! 3. calls [`Service::build`];
//! 4. when the access policy needs tokens, a verifier of the identity peer's published
//!    keys, or of the key source the service chose ([`Context::use_key_source`])
//!    ([`crate::auth`]);
//! 5. adds the access policy and, inside it, the rate limits of its classes
//!    ([`crate::rate_limit`]), the message limits of every gRPC service, readiness (a
//!    database ping), health and reflection, binds the listener and the metrics
//!    endpoint ([`crate::metrics`]: the gRPC families, process, database pool, outbox and
//!    whatever the service registered through [`Context::metrics`]), and starts the
//!    outbox dispatcher (if the service enqueued through [`Context::outbox`]) and every
//!    background task, all stopped by graceful shutdown ([`crate::app::App`]).
//!
//! A service binary may add its own subcommands (management tasks such as granting a
//! role) through [`Commands`].

mod config;

pub use config::{Config, KNOWN_DEFAULT_SECRETS, MIN_PAGE_TOKEN_SECRET_BYTES, NoSettings};

use std::future::Future;
use std::sync::Arc;

use sea_orm::DatabaseConnection;
use sea_orm_migration::MigratorTrait;
use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::auth::{
    Access, AccessPolicy, AuthLayer, ClientCredentials, KeySource, RemoteKeySource, TokenVerifier,
};
use crate::config::{ServiceInfo, Validate};
use crate::discovery::{Registration, Registry};
use crate::faults::{FaultLayer, FaultMetrics, Faults};
use crate::metrics::{Metrics, MetricsEndpoint};
use crate::outbox::{Dispatcher, OutboxWaker};
use crate::pagination::PageTokenCodec;
use crate::peer::{CredentialSource, PeerChannel, PeerError, Peers};
use crate::rate_limit::RateLimitLayer;
use crate::server::{GrpcService, ServerBuilder};
use crate::tls::TlsSource;

/// Why a service could not be built. Services' own [`Service::build`] errors (anything
/// convertible, `anyhow::Error` included) pass through with their source chain.
pub type BuildError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What makes a service a service: its identity and defaults, its settings, its
/// migrations, its access policy, and its handlers.
pub trait Service: Sized + Send + Sync + 'static {
    /// Name (logs, the SQLite file, the OAuth client id) and environment prefix.
    const INFO: ServiceInfo;
    /// The default gRPC port, e.g. 50051.
    const DEFAULT_PORT: u16;
    /// The default port of the Prometheus endpoint (`metrics.port`): the gRPC port +
    /// 1000, e.g. 51051.
    const DEFAULT_METRICS_PORT: u16 = Self::DEFAULT_PORT.saturating_add(1000);
    /// Peers and their default addresses, e.g. `[("auth", "http://127.0.0.1:50052")]`;
    /// `peers.<name>.*` overrides them.
    const DEFAULT_PEERS: &'static [(&'static str, &'static str)] = &[];
    /// The encoded descriptor set reflection serves (it may describe more services than
    /// this one: reflection lists only those added).
    const FILE_DESCRIPTOR_SET: &'static [u8] = trellis_proto::FILE_DESCRIPTOR_SET;

    /// The service's own config keys, beside the platform's sections. Declare it
    /// `#[serde(default, deny_unknown_fields)]` so a misspelt key stops the process;
    /// [`NoSettings`] for none.
    type Settings: DeserializeOwned
        + Default
        + Validate
        + Clone
        + std::fmt::Debug
        + Send
        + Sync
        + 'static;
    /// The service's migrations (include `crate::outbox::migration::CreateOutbox` when
    /// it uses the outbox).
    type Migrator: MigratorTrait;

    /// Who may call what (see [`AccessPolicy`]). Default: every method needs a valid
    /// access token.
    fn access_policy() -> AccessPolicy {
        AccessPolicy::new(Access::Authenticated)
    }

    /// Adds the service's handlers and background tasks to `ctx`.
    ///
    /// # Errors
    /// Whatever keeps the service from starting; the process exits 1 with the chain.
    fn build(ctx: &mut Context<Self>) -> impl Future<Output = Result<(), BuildError>> + Send;
}

/// Builds service `S` from `config` (see the module docs).
///
/// # Errors
/// [`BuildError`] when the database, a peer, the service's own build or the listener
/// cannot be set up.
pub async fn build<S: Service>(config: Config<S>) -> Result<App, BuildError> {
    Launch::new(config).build().await
}

/// A service binary's own subcommands, beside the platform's `serve` and `healthcheck`
/// (e.g. the user service's `admin grant EMAIL`, the way Django's `createsuperuser` is a
/// management command of the project it manages).
///
/// Declare them as a `clap::Subcommand` enum and run the binary with
/// [`crate::runtime::run_with`]`::<S, C>()`; a service without any calls
/// [`crate::run`]`::<S>()`, which uses [`NoCommands`]. The platform parses the command
/// line, loads and validates the same config `serve` would (`--config`, then the
/// environment), opens the database and applies the service's migrations, then calls
/// [`Commands::run`]. No telemetry is installed, no port is bound and no background task
/// (the outbox dispatcher included) runs: a command's outbox messages are delivered by the
/// running service.
pub trait Commands<S: Service>: clap::Subcommand + Send + 'static {
    /// Runs the command against `config` and `db` (migrated). Write what a person needs to
    /// read to standard output; an error is printed to standard error with its source
    /// chain and the process exits 1.
    ///
    /// # Errors
    /// Whatever made the command fail (anything convertible, `anyhow::Error` included).
    fn run(
        self,
        config: Config<S>,
        db: DatabaseConnection,
    ) -> impl Future<Output = Result<(), BuildError>> + Send;
}

/// The subcommands of a service that has none of its own: an empty set, so the binary
/// accepts only the platform's `serve`, `healthcheck` and `outbox`.
#[derive(Debug, Clone, Copy, clap::Subcommand)]
pub enum NoCommands {}

impl<S: Service> Commands<S> for NoCommands {
    async fn run(self, _: Config<S>, _: DatabaseConnection) -> Result<(), BuildError> {
        match self {}
    }
}

/// [`build`] with the choices tests make: pre-bound listeners, a static key source.
pub struct Launch<S: Service> {
    config: Config<S>,
    keys: Option<Arc<dyn KeySource>>,
    listener: Option<std::net::TcpListener>,
    metrics_listener: Option<std::net::TcpListener>,
}

impl<S: Service> std::fmt::Debug for Launch<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Launch")
            .field("config", &self.config)
            .field("listener", &self.listener)
            .field("metrics_listener", &self.metrics_listener)
            .finish_non_exhaustive()
    }
}

impl<S: Service> Launch<S> {
    /// A launch of `config` with the production choices.
    pub fn new(config: Config<S>) -> Self {
        Self {
            config,
            keys: None,
            listener: None,
            metrics_listener: None,
        }
    }

    /// Verifies tokens against `keys` instead of the identity peer's published keys.
    #[must_use]
    pub fn key_source(mut self, keys: Arc<dyn KeySource>) -> Self {
        self.keys = Some(keys);
        self
    }

    /// Sets the `tls` section (e.g. a test CA's files for this service).
    #[must_use]
    pub fn tls(mut self, tls: crate::tls::TlsConfig) -> Self {
        self.config.tls = tls;
        self
    }

    /// Serves on `listener` instead of binding `server.listen_addr`.
    #[must_use]
    pub fn listener(mut self, listener: std::net::TcpListener) -> Self {
        self.listener = Some(listener);
        self
    }

    /// Serves the metrics endpoint on `listener` (e.g. a test's `127.0.0.1:0`) instead of
    /// binding `metrics.host:metrics.port`, even when `metrics.port` is 0.
    #[must_use]
    pub fn metrics_listener(mut self, listener: std::net::TcpListener) -> Self {
        self.metrics_listener = Some(listener);
        self
    }

    /// Builds the service (see the module docs).
    ///
    /// # Errors
    /// As [`build`].
    pub async fn build(self) -> Result<App, BuildError> {
        let Self {
            config,
            keys,
            listener,
            metrics_listener,
        } = self;
        let db = crate::data::connect::<S::Migrator>(&config.database).await?;
        let metrics = Metrics::new()?;
        metrics.watch_database(&db)?;
        let recording = records_metrics(&config, metrics_listener.as_ref());
        let registry = config.discovery.registry()?;
        let mut peers = Peers::with_registry(config.peers.clone(), Arc::clone(&registry));
        // Trellis's own protos are read already; a service's own are added once.
        if !std::ptr::eq(S::FILE_DESCRIPTOR_SET, trellis_proto::FILE_DESCRIPTOR_SET) {
            peers = peers.with_descriptor_set(S::FILE_DESCRIPTOR_SET);
        }
        if recording {
            peers = peers.with_metrics(&metrics)?;
        }
        let fault_metrics = (recording && config.faults.enabled)
            .then(|| FaultMetrics::new(&metrics))
            .transpose()?;
        if config.faults.enabled {
            tracing::warn!(
                server_rules = config.faults.server.len(),
                peers = ?config.faults.peers.keys().collect::<Vec<_>>(),
                headers = config.faults.allow_headers,
                "faults.enabled: delays and aborts are injected on purpose"
            );
        }
        peers = peers.with_faults(config.faults.clone(), fault_metrics.clone());
        let tls = TlsSource::load(&config.tls, S::INFO.name)?;
        if let Some(tls) = &tls {
            peers = peers.with_tls(tls.clone());
            if recording {
                tls.register_metrics(&metrics)?;
            }
        }
        let identity = config.auth.peer.clone();
        let credentials: Option<Arc<dyn CredentialSource>> = match &config.auth.client_secret {
            Some(secret) => Some(Arc::new(
                ClientCredentials::new(
                    S::INFO.name,
                    secret.clone(),
                    peers.pinned_channel(&identity)?,
                )
                .bound_to(tls.clone()),
            )),
            None => None,
        };
        let mut server = ServerBuilder::new(config.server.clone());
        if let Some(tls) = &tls {
            server = server.tls(tls.clone());
        }
        if recording {
            server = server.metrics(metrics.clone());
        }
        if let Some(listener) = listener {
            server = server.listener(listener);
        }
        // Given first, so every other route layer (the service's own, rate limits,
        // authentication) wraps it: only calls they let through are faulted.
        if let Some(faults) = Faults::for_server(&config.faults, fault_metrics.as_ref()) {
            server = server.route_layer(FaultLayer::new(faults));
        }
        let mut ctx = Context {
            page_tokens: config.page_tokens(),
            config,
            db,
            peers,
            credentials,
            server,
            background: Vec::new(),
            outbox: None,
            keys,
            metrics,
            metrics_listener,
            registry,
            tls,
        };
        S::build(&mut ctx).await?;
        ctx.finish(S::access_policy()).await
    }
}

/// How this instance registers: under the service's name, at `discovery.advertise_host`
/// (else `POD_IP`, else the listen IP when it is specific, else 127.0.0.1) and the bound
/// port, with the platform's version and the metrics port as metadata.
fn registration<S: Service>(
    config: &Config<S>,
    bound: std::net::SocketAddr,
    metrics: Option<&MetricsEndpoint>,
) -> Registration {
    let host = config
        .discovery
        .advertise_host
        .clone()
        .filter(|host| !host.is_empty())
        .or_else(|| std::env::var("POD_IP").ok().filter(|ip| !ip.is_empty()))
        .unwrap_or_else(|| {
            let ip = bound.ip();
            if ip.is_unspecified() {
                "127.0.0.1".to_owned()
            } else {
                ip.to_string()
            }
        });
    let mut metadata = std::collections::BTreeMap::new();
    metadata.insert(
        "platform_version".to_owned(),
        env!("CARGO_PKG_VERSION").to_owned(),
    );
    if let Some(endpoint) = metrics {
        metadata.insert(
            "metrics_port".to_owned(),
            endpoint.local_addr().port().to_string(),
        );
    }
    Registration {
        service: S::INFO.name.to_owned(),
        id: format!("{}-{host}-{}", S::INFO.name, bound.port()),
        host,
        port: bound.port(),
        health_service: String::new(),
        metadata,
    }
}

/// Whether calls are measured: only when an endpoint serves the metrics (`metrics.port`
/// set, or a listener given). With `metrics.port = 0` no layer is installed, so the
/// metrics cost nothing per call; what a service registers itself stays unread.
fn records_metrics<S: Service>(
    config: &Config<S>,
    listener: Option<&std::net::TcpListener>,
) -> bool {
    listener.is_some() || config.metrics.enabled()
}

/// A task started once the server is bound; it must end when the token is cancelled
/// (graceful shutdown).
type Background = Box<dyn FnOnce(CancellationToken) -> JoinHandle<()> + Send>;

/// What [`Service::build`] builds with: the config, the database, peers, the outbox,
/// and the server that its handlers are added to.
pub struct Context<S: Service> {
    config: Config<S>,
    db: DatabaseConnection,
    peers: Peers,
    credentials: Option<Arc<dyn CredentialSource>>,
    page_tokens: PageTokenCodec,
    server: ServerBuilder,
    background: Vec<Background>,
    outbox: Option<OutboxWaker>,
    keys: Option<Arc<dyn KeySource>>,
    metrics: Metrics,
    metrics_listener: Option<std::net::TcpListener>,
    registry: Arc<dyn Registry>,
    tls: Option<TlsSource>,
}

impl<S: Service> std::fmt::Debug for Context<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("config", &self.config)
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl<S: Service> Context<S> {
    /// The whole config.
    pub fn config(&self) -> &Config<S> {
        &self.config
    }

    /// The service's own settings.
    pub fn settings(&self) -> &S::Settings {
        &self.config.service
    }

    /// The database, migrated.
    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    /// This service's metrics, served on its metrics endpoint: register the service's
    /// own there, named `trellis_<service>_…`.
    ///
    /// ```ignore
    /// use trellis_platform::metrics::prometheus::IntCounter;
    /// // A counter the handlers keep (clones share the value):
    /// let sent = ctx.metrics().register(IntCounter::new(
    ///     "trellis_example_emails_sent_total",
    ///     "Emails handed to the mail relay.",
    /// )?)?;
    /// // A value the service already keeps, read at each scrape:
    /// let hub = hub.clone();
    /// ctx.metrics().gauge_fn("trellis_example_open_streams", "Open streams.", move || {
    ///     hub.open_streams() as i64
    /// })?;
    /// ```
    ///
    /// [`Metrics::on_scrape`] refreshes gauges from a slower source (a database count)
    /// before each scrape.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The page-token codec (keyed by `page_token_secret`, else random per process).
    pub fn page_tokens(&self) -> PageTokenCodec {
        self.page_tokens.clone()
    }

    /// Cancelled when graceful shutdown begins: long-lived streams watch it to end
    /// promptly (with UNAVAILABLE, so clients reconnect).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.server.shutdown_token()
    }

    /// Replaces the credentials peer calls carry (e.g. the identity provider signs its
    /// own service tokens). Affects channels made after this call.
    pub fn use_credentials(&mut self, credentials: Arc<dyn CredentialSource>) {
        self.credentials = Some(credentials);
    }

    /// Verifies access tokens against `keys` instead of the identity peer's published
    /// keys (e.g. the identity provider verifies with its own key ring). A key source
    /// given to [`Launch::key_source`] (a test's) takes precedence.
    pub fn use_key_source(&mut self, keys: Arc<dyn KeySource>) {
        self.keys.get_or_insert(keys);
    }

    /// This workload's TLS material when `tls` is set (e.g. to bind the tokens a service
    /// signs itself to its certificate).
    pub fn tls(&self) -> Option<&TlsSource> {
        self.tls.as_ref()
    }

    /// The peers, carrying this service's credentials when it has any.
    pub fn peers(&self) -> Peers {
        match &self.credentials {
            Some(credentials) => self.peers.clone().with_credentials(Arc::clone(credentials)),
            None => self.peers.clone(),
        }
    }

    /// A channel to `peer` carrying this service's credentials when it has any.
    ///
    /// # Errors
    /// [`PeerError`] when no `peers.<peer>` is configured or its address is invalid.
    pub fn peer(&self, peer: &str) -> Result<PeerChannel, PeerError> {
        self.peers().channel(peer)
    }

    /// The waker of this service's outbox: enqueue with [`crate::outbox::enqueue`] in the
    /// transaction that makes a change, then wake. The dispatcher starts with the server
    /// and delivers through [`Self::peers`].
    pub fn outbox(&mut self) -> OutboxWaker {
        self.outbox.get_or_insert_with(OutboxWaker::default).clone()
    }

    /// Adds a generated gRPC server; the server's message limits
    /// (`server.max_message_bytes`) are applied to it.
    pub fn add_service<T: GrpcService>(&mut self, service: T) {
        self.server.add_service(service);
    }

    /// Runs `task` once the server is bound; the future it makes must end when its
    /// token is cancelled (graceful shutdown waits for it).
    pub fn spawn<F, Fut>(&mut self, task: F)
    where
        F: FnOnce(CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.background
            .push(Box::new(move |stop| tokio::spawn(task(stop))));
    }

    async fn finish(self, policy: AccessPolicy) -> Result<App, BuildError> {
        let peers = self.peers();
        let Self {
            config,
            db,
            peers: anonymous,
            credentials,
            mut server,
            background,
            outbox,
            keys,
            metrics,
            metrics_listener,
            registry,
            tls,
            ..
        } = self;
        // Given first, so the authentication layer (given next) wraps it: the limits
        // see the verified principal.
        if let Some(mut limits) = RateLimitLayer::new(&policy, &config.rate_limits) {
            if records_metrics(&config, metrics_listener.as_ref()) {
                limits = limits.with_metrics(&metrics, &[S::FILE_DESCRIPTOR_SET])?;
            }
            server = server.route_layer(limits);
        }
        if policy.requires_token() {
            let keys = match keys {
                Some(keys) => keys,
                None => Arc::new(RemoteKeySource::new(
                    anonymous.pinned_channel(&config.auth.peer)?,
                )),
            };
            let verifier = TokenVerifier::new(&config.auth, S::INFO.name, keys);
            let mut layer = AuthLayer::new(verifier, policy.clone())
                .requiring_certificates(tls.as_ref().map(|tls| tls.current().identity().clone()));
            if records_metrics(&config, metrics_listener.as_ref()) {
                layer = layer.with_metrics(&metrics)?;
            }
            server = server.caller_trust(layer.caller_trust()).route_layer(layer);
        }
        let shutdown = server.shutdown_token();
        let server = server
            .api_description(format!("Trellis {} service", S::INFO.name), move |path| {
                use crate::http_json::openapi::Audience;
                match policy.access(path) {
                    Access::Public => Audience::Public,
                    Access::Internal => Audience::Internal,
                    Access::Authenticated => Audience::Authenticated,
                }
            })
            .file_descriptor_set(S::FILE_DESCRIPTOR_SET)
            .database_readiness(db.clone())
            .bind()
            .await?;
        let mut tasks: Vec<JoinHandle<()>> = background
            .into_iter()
            .map(|start| start(shutdown.clone()))
            .collect();
        if let Some(tls) = tls {
            tasks.push(tokio::spawn(tls.run_reloader(shutdown.clone())));
        }
        if let Some(waker) = outbox {
            if credentials.is_none() {
                tracing::warn!("auth.client_secret is not set: outbox messages wait until it is");
            }
            crate::outbox::watch(&metrics, &db)?;
            let dispatcher = Dispatcher::new(db.clone(), peers, config.outbox.clone(), waker);
            tasks.push(tokio::spawn(dispatcher.run(shutdown)));
        }
        let endpoint = MetricsEndpoint::bind(&config.metrics, metrics_listener, metrics)
            .await?
            .map(|endpoint| endpoint.with_readiness(server.readiness()));
        let registration = registration::<S>(&config, server.local_addr(), endpoint.as_ref());
        Ok(App::new(server, db, tasks)
            .with_metrics_endpoint(endpoint)
            .with_registration(registry, registration))
    }
}

//! The one gRPC server builder every Trellis service uses.
//!
//! [`ServerBuilder`] collects the service's gRPC services and descriptor sets; [`ServerBuilder::bind`]
//! adds health (`grpc.health.v1`, Check and Watch, for `""` and each service, which follow
//! the readiness probe, and for [`LIVENESS`], which does not), reflection
//! (`grpc.reflection.v1` and `v1alpha`), per-RPC metrics ([`crate::metrics`]) and tracing,
//! limits and the drain layer, HTTP/JSON ([`crate::http_json`]), gRPC-Web ([`grpc_web`])
//! and the CORS policy for browsers ([`cors`]), and
//! binds the listener; [`BoundServer::run_until`] serves until a shutdown future completes,
//! then shuts down gracefully:
//!
//! 1. every health status but [`LIVENESS`] becomes NOT_SERVING (so load balancers stop
//!    sending calls);
//! 2. the listener stops accepting and connections are told to go away (HTTP/2 GOAWAY);
//! 3. in-flight calls get up to `server.drain_timeout_ms` to finish;
//! 4. streams still open then end with UNAVAILABLE ([`drain`]), and the server returns.

pub mod admission;
pub mod client_address;
pub mod connection;
pub mod cors;
pub mod deadline;
pub mod drain;
pub mod grpc_web;
pub mod handshake;
pub mod request_id;
pub mod trace;
pub mod validate;

mod config;
mod health;

pub use client_address::{ClientAddress, client_address};
pub use config::ServerConfig;
pub use drain::shutdown_signal;
pub use health::{LIVENESS, ReadinessProbe};

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use tonic::service::Routes;
use tonic_health::ServingStatus;
use trellis_proto::MessageLimits;

use crate::metrics::{Metrics, MetricsError, MetricsLayer};
use health::{Health, run_readiness};

/// How long connections may stay open after the drain bound, before they are dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O failure.
        #[source]
        source: std::io::Error,
    },
    /// A descriptor set given for reflection could not be decoded.
    #[error("cannot build the reflection service")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The gRPC metrics could not be set up.
    #[error("cannot set up the gRPC metrics")]
    Metrics(#[from] MetricsError),
    /// The transport failed while serving.
    #[error("server failed")]
    Transport(#[from] tonic::transport::Error),
    /// The descriptor sets could not be read for transcoding and validation.
    #[error("cannot read the descriptor sets")]
    Descriptors(#[from] prost_reflect::DescriptorError),
    /// An RPC's `google.api.http` rule cannot be served.
    #[error("cannot serve an HTTP/JSON route")]
    Route(#[from] crate::http_json::RouteError),
}

/// A generated gRPC server the builder accepts: routable by name, and limitable
/// ([`MessageLimits`], so the configured message size applies to every service).
pub trait GrpcService:
    MessageLimits
    + tower::Service<
        http::Request<tonic::body::Body>,
        Response = http::Response<tonic::body::Body>,
        Error = Infallible,
        Future: Send + 'static,
    > + NamedService
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<T> GrpcService for T where
    T: MessageLimits
        + tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
            Future: Send + 'static,
        > + NamedService
        + Clone
        + Send
        + Sync
        + 'static
{
}

/// Collects a service's parts; [`ServerBuilder::bind`] turns them into a [`BoundServer`].
pub struct ServerBuilder {
    config: ServerConfig,
    routes: Routes,
    service_names: Vec<&'static str>,
    descriptor_sets: Vec<&'static [u8]>,
    readiness: Option<ReadinessProbe>,
    route_layers: Vec<RouteLayer>,
    listener: Option<std::net::TcpListener>,
    shutdown: CancellationToken,
    metrics: Option<Metrics>,
    caller_trust: trace::CallerTrust,
    tls: Option<crate::tls::TlsSource>,
    api: Option<(String, Audience)>,
}

/// Who may call a gRPC path (`/package.Service/Method`), as the OpenAPI document says.
type Audience = Box<dyn Fn(&str) -> crate::http_json::openapi::Audience + Send + Sync>;

/// A layer applied to the service's routes, type-erased so the builder stays one type.
type RouteLayer = Box<dyn FnOnce(axum::Router) -> axum::Router + Send>;

impl std::fmt::Debug for ServerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerBuilder")
            .field("config", &self.config)
            .field("service_names", &self.service_names)
            .finish_non_exhaustive()
    }
}

impl ServerBuilder {
    /// A server with `config` and no services yet.
    pub fn new(config: ServerConfig) -> Self {
        Self {
            config,
            routes: Routes::default(),
            service_names: Vec::new(),
            descriptor_sets: Vec::new(),
            readiness: None,
            route_layers: Vec::new(),
            listener: None,
            shutdown: CancellationToken::new(),
            metrics: None,
            caller_trust: trace::CallerTrust::nobody(),
            tls: None,
            api: None,
        }
    }

    /// Describes the HTTP/JSON routes in the OpenAPI document under `title`, each
    /// operation's security and audience from `audience` (the access policy's answer
    /// for its gRPC path; the policy itself is enforced by the authentication layer, not
    /// here). Without it the title is "Trellis API" and every operation is documented
    /// as needing a bearer token.
    #[must_use]
    pub fn api_description(
        mut self,
        title: impl Into<String>,
        audience: impl Fn(&str) -> crate::http_json::openapi::Audience + Send + Sync + 'static,
    ) -> Self {
        self.api = Some((title.into(), Box::new(audience)));
        self
    }

    /// Serves TLS only, with `source`'s current certificate for each new handshake and
    /// client certificates requested (see [`crate::tls`]).
    #[must_use]
    pub fn tls(mut self, source: crate::tls::TlsSource) -> Self {
        self.tls = Some(source);
        self
    }

    /// Records the `grpc_server_*` metrics of every call into `metrics` (the service's
    /// handle); without it, into a handle of the server's own that nothing serves.
    #[must_use]
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Wraps every service added so far *and later* — but not health or reflection,
    /// which stay open to probes and tools — in `layer`, e.g. the platform's
    /// authentication layer. Any tower layer over the router's services fits; layers
    /// given later wrap the earlier ones.
    #[must_use]
    pub fn route_layer<L>(mut self, layer: L) -> Self
    where
        L: tower::Layer<axum::routing::Route> + Clone + Send + Sync + 'static,
        L::Service: tower::Service<http::Request<axum::body::Body>, Error = Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
        <L::Service as tower::Service<http::Request<axum::body::Body>>>::Response:
            axum::response::IntoResponse + 'static,
        <L::Service as tower::Service<http::Request<axum::body::Body>>>::Future: Send + 'static,
    {
        self.route_layers
            .push(Box::new(move |router| router.layer(layer)));
        self
    }

    /// Continues the trace context of the callers `trust` vouches for (Trellis services;
    /// see [`trace`]); without it, every caller's context becomes a span link.
    #[must_use]
    pub fn caller_trust(mut self, trust: trace::CallerTrust) -> Self {
        self.caller_trust = trust;
        self
    }

    /// Serves on `listener`, already bound (e.g. by a test that must know the port
    /// before the server starts), instead of binding `server.listen_addr`.
    #[must_use]
    pub fn listener(mut self, listener: std::net::TcpListener) -> Self {
        self.listener = Some(listener);
        self
    }

    /// A token cancelled when graceful shutdown begins: long-lived streams and background
    /// tasks watch it to end promptly (streams with UNAVAILABLE, so clients reconnect).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Adds a generated gRPC server, with `server.max_message_bytes` applied as both its
    /// decoding and encoding limit; its name gets its own health status.
    pub fn add_service<S: GrpcService>(&mut self, service: S) -> &mut Self {
        self.service_names.push(S::NAME);
        let service = service.limit_messages(self.config.max_message_bytes);
        self.routes = std::mem::take(&mut self.routes).add_service(service);
        self
    }

    /// Registers an encoded `FileDescriptorSet` for reflection (health's and
    /// reflection's own are always registered).
    #[must_use]
    pub fn file_descriptor_set(mut self, encoded: &'static [u8]) -> Self {
        self.descriptor_sets.push(encoded);
        self
    }

    /// Sets the readiness probe, run every `server.readiness_interval_ms`. Without one,
    /// the server reports SERVING as soon as it runs.
    #[must_use]
    pub fn readiness<F, Fut>(mut self, probe: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = bool> + Send + 'static,
    {
        self.readiness = Some(Arc::new(move || Box::pin(probe())));
        self
    }

    /// Reports SERVING while `db` answers a ping (see [`Self::readiness`]).
    #[must_use]
    pub fn database_readiness(self, db: sea_orm::DatabaseConnection) -> Self {
        self.readiness(move || {
            let db = db.clone();
            async move { db.ping().await.is_ok() }
        })
    }

    /// Binds the listen address and assembles health, reflection, field validation
    /// ([`validate`]) and HTTP/JSON transcoding ([`crate::http_json`]).
    ///
    /// # Errors
    /// [`ServerError::Bind`] when the address is taken or not allowed;
    /// [`ServerError::Reflection`], [`ServerError::Descriptors`] or
    /// [`ServerError::Metrics`] when a descriptor set is malformed;
    /// [`ServerError::Route`] for an HTTP rule the gateway cannot serve;
    /// [`ServerError::Metrics`] when `metrics` already served a server.
    pub async fn bind(self) -> Result<BoundServer, ServerError> {
        let Self {
            config,
            routes,
            service_names,
            descriptor_sets,
            readiness,
            route_layers,
            listener,
            shutdown,
            metrics,
            caller_trust,
            tls,
            api,
        } = self;
        let metrics = match metrics {
            Some(metrics) => metrics,
            None => Metrics::new()?,
        };
        let mut pool = prost_reflect::DescriptorPool::new();
        for set in &descriptor_sets {
            pool.decode_file_descriptor_set(*set)?;
        }
        let (title, audience) = api.unwrap_or_else(|| {
            let authenticated: Audience =
                Box::new(|_: &str| crate::http_json::openapi::Audience::Authenticated);
            ("Trellis API".to_owned(), authenticated)
        });
        let (http_json, openapi) = crate::http_json::HttpJsonLayer::from_descriptors(
            &pool,
            &service_names,
            &title,
            &*audience,
            config.max_message_bytes,
        )?;
        let http_json = http_json
            .body_timeout(config.request_body_timeout)
            .with_metrics(&metrics)?;
        let validation =
            validate::ValidateLayer::new(&pool, &service_names, config.max_message_bytes);
        let admission =
            admission::Admission::new(&config, &service_names, &descriptor_sets, &metrics)?;
        let metrics = metrics.server_layer(&service_names, &descriptor_sets)?;

        // Field validation, the JSON of transcoded calls, then the route layers (limits,
        // authentication), wrap the service's own routes only: validation innermost, so
        // only callers the policy admits reach it, and JSON is parsed only for them.
        let routes = {
            let mut router = routes
                .into_axum_router()
                .layer(validation)
                .layer(crate::http_json::TranscodeLayer);
            for layer in route_layers {
                router = layer(router);
            }
            Routes::from(router)
        };

        // Reflection lists exactly the services this server runs: the descriptor sets
        // may describe other services too (the shared proto crate holds every contract).
        let reflection = || {
            let mut builder = tonic_reflection::server::Builder::configure()
                .include_reflection_service(false)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(
                    tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
                )
                .with_service_name("grpc.health.v1.Health")
                .with_service_name("grpc.reflection.v1.ServerReflection")
                .with_service_name("grpc.reflection.v1alpha.ServerReflection");
            for set in &descriptor_sets {
                builder = builder.register_encoded_file_descriptor_set(set);
            }
            for name in &service_names {
                builder = builder.with_service_name(*name);
            }
            builder
        };
        let routes = routes
            .add_service(reflection().build_v1()?)
            .add_service(reflection().build_v1alpha()?);
        let (health, health_service) = Health::start(service_names).await;
        let routes = routes.add_service(health_service);

        let bind_error = |source| ServerError::Bind {
            addr: config.listen_addr,
            source,
        };
        let listener = match listener {
            Some(listener) => {
                listener.set_nonblocking(true).map_err(bind_error)?;
                TcpListener::from_std(listener).map_err(bind_error)?
            }
            None => TcpListener::bind(config.listen_addr)
                .await
                .map_err(bind_error)?,
        };
        let local_addr = listener.local_addr().map_err(bind_error)?;
        Ok(BoundServer {
            config,
            listener,
            local_addr,
            routes,
            health,
            readiness,
            shutdown,
            metrics,
            admission,
            caller_trust,
            tls,
            http_json,
            openapi,
        })
    }
}

/// A server bound to its address, ready to serve.
pub struct BoundServer {
    config: ServerConfig,
    listener: TcpListener,
    local_addr: SocketAddr,
    routes: Routes,
    health: Health,
    readiness: Option<ReadinessProbe>,
    shutdown: CancellationToken,
    metrics: MetricsLayer,
    admission: admission::Admission,
    caller_trust: trace::CallerTrust,
    tls: Option<crate::tls::TlsSource>,
    http_json: crate::http_json::HttpJsonLayer,
    openapi: serde_json::Value,
}

impl std::fmt::Debug for BoundServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoundServer")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl BoundServer {
    /// The address actually bound (the real port when the config said 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The OpenAPI 3.1 document of the server's HTTP/JSON routes, as served at
    /// [`crate::http_json::OPENAPI_PATH`].
    pub fn openapi(&self) -> &serde_json::Value {
        &self.openapi
    }

    /// True while the server reports SERVING for `""` (readiness), for probes that
    /// cannot speak gRPC over TLS (the metrics endpoint's `/readyz`).
    pub fn readiness(&self) -> Arc<std::sync::atomic::AtomicBool> {
        self.health.ready()
    }

    /// Serves until SIGINT or SIGTERM, then shuts down gracefully.
    ///
    /// # Errors
    /// As [`Self::run_until`].
    pub async fn run_until_stopped(self) -> Result<(), ServerError> {
        self.run_until(shutdown_signal()).await
    }

    /// Serves until `shutdown` completes, then shuts down gracefully (see the module
    /// docs) within `server.drain_timeout_ms` plus a short grace to close connections.
    ///
    /// # Errors
    /// [`ServerError::Transport`] when serving fails.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
        let Self {
            config,
            listener,
            local_addr,
            routes,
            health,
            readiness,
            shutdown: shutdown_started,
            metrics,
            admission,
            caller_trust,
            tls,
            http_json,
            openapi: _,
        } = self;
        let health = Arc::new(health);
        let scheme = if tls.is_some() { "TLS" } else { "plaintext" };
        let stop_accepting = CancellationToken::new();
        let drained = CancellationToken::new();

        let readiness_task = tokio::spawn(run_readiness(
            Arc::clone(&health),
            readiness,
            config.readiness_interval,
            stop_accepting.clone(),
        ));

        let server = tonic::transport::Server::builder()
            .max_concurrent_streams(config.http2_max_concurrent_streams)
            .http2_keepalive_interval(Some(config.http2_keepalive_interval))
            .http2_keepalive_timeout(Some(config.http2_keepalive_timeout))
            .http2_max_pending_accept_reset_streams(Some(
                config.http2_max_pending_accept_reset_streams,
            ))
            .http2_max_local_error_reset_streams(Some(config.http2_max_local_error_reset_streams))
            // The GOAWAY at the age; the grace is bounded on the accept path
            // ([`connection`]), since tonic's own grace skips the GOAWAY.
            .max_connection_age(config.max_connection_age)
            // HTTP/1.1 beside HTTP/2, for HTTP/JSON and gRPC-Web clients.
            .accept_http1(true)
            // Outermost: a preflight from a page that may not call costs nothing more.
            .layer(cors::layer(&config.cors))
            // gRPC-Web becomes the gRPC call it stands for; HTTP/JSON passes it on.
            .layer(grpc_web::GrpcWebLayer)
            // A transcoded call goes through every layer below as the gRPC call it
            // becomes ([`crate::http_json`]).
            .layer(http_json)
            .layer(metrics)
            .layer(request_id::RequestIdLayer)
            .layer(client_address::ClientAddressLayer::new(
                &config.trusted_proxies,
                config.forwarded_header,
            ))
            // Health and reflection pass; other calls are answered at once over the
            // limits, never queued ([`admission`]). Outside the span: a shed call costs
            // no span, no trust check and no log line (the metrics layer counts it), so
            // a flood past capacity neither floods the logs nor spends the CPU the
            // admitted calls need.
            .layer(admission.layer())
            .layer(trace::layer_trusting(caller_trust))
            .layer(drain::DrainLayer::new(drained.clone()))
            // Innermost, so its DEADLINE_EXCEEDED is seen by every layer above; the
            // request-id layer records the arrival it counts from.
            .layer(deadline::DeadlineLayer::new(config.request_timeout))
            .add_routes(routes)
            .serve_with_incoming_shutdown(
                handshake::secured(
                    connection::incoming(
                        listener,
                        config.max_connection_lifetime(),
                        connection::AddressCap::new(
                            config.max_connections_per_address,
                            &config.trusted_proxies,
                            admission.connections_refused(),
                        ),
                    ),
                    tls,
                    connection::AddressCap::new(
                        handshake::MAX_HANDSHAKES_PER_ADDRESS,
                        &config.trusted_proxies,
                        admission.connections_refused(),
                    ),
                ),
                stop_accepting.clone().cancelled_owned(),
            );
        tokio::pin!(server);
        tracing::info!(%local_addr, transport = scheme, "serving gRPC");

        tokio::select! {
            result = &mut server => {
                shutdown_started.cancel();
                stop_accepting.cancel();
                return result.map_err(ServerError::from);
            }
            () = shutdown => {}
        }

        let drain_timeout = config.drain_timeout;
        tracing::info!(
            drain_timeout_ms = drain_timeout.as_millis() as u64,
            "shutting down: NOT_SERVING, draining in-flight calls"
        );
        shutdown_started.cancel();
        stop_accepting.cancel();
        // The readiness task must be gone before the final NOT_SERVING, or it could
        // overwrite it.
        drop(readiness_task.await);
        health.set_all(ServingStatus::NotServing).await;

        if let Ok(result) = tokio::time::timeout(drain_timeout, &mut server).await {
            tracing::info!("shutdown complete");
            return result.map_err(ServerError::from);
        }
        tracing::warn!("drain bound reached: ending open streams with UNAVAILABLE");
        drained.cancel();
        match tokio::time::timeout(CLOSE_GRACE, &mut server).await {
            Ok(result) => {
                tracing::info!("shutdown complete");
                result.map_err(ServerError::from)
            }
            Err(_) => {
                tracing::warn!("closing connections that outlived the drain bound");
                Ok(())
            }
        }
    }
}

//! A built service: its bound server, its metrics endpoint, its database and its
//! background tasks (outbox dispatchers, key maintenance), run and stopped together.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use sea_orm::DatabaseConnection;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::discovery::{Registered, Registration, Registry, StaticRegistry};
use crate::metrics::MetricsEndpoint;
use crate::server::{BoundServer, ServerError};

/// How long background tasks may run on once the server has stopped; they were told to
/// stop when shutdown began, so this only bounds one that does not listen.
const BACKGROUND_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Longest wait for the registry at shutdown; past it the registration expires on its own
/// (lease TTL, critical-check deregistration).
const DEREGISTER_BOUND: std::time::Duration = std::time::Duration::from_secs(2);

/// A service ready to serve. Background tasks must stop when the server's shutdown token
/// ([`crate::server::ServerBuilder::shutdown_token`]) is cancelled.
pub struct App {
    server: BoundServer,
    db: DatabaseConnection,
    background: Vec<JoinHandle<()>>,
    metrics: Option<MetricsEndpoint>,
    registry: Arc<dyn Registry>,
    registration: Option<Registration>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("server", &self.server)
            .field("registry", &self.registry.name())
            .field("registration", &self.registration)
            .finish_non_exhaustive()
    }
}

/// Why a service stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Serving failed.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// The database did not close cleanly.
    #[error("cannot close the database")]
    Close(#[source] sea_orm::DbErr),
}

impl App {
    /// Assembles a service from its parts.
    pub fn new(
        server: BoundServer,
        db: DatabaseConnection,
        background: Vec<JoinHandle<()>>,
    ) -> Self {
        Self {
            server,
            db,
            background,
            metrics: None,
            registry: Arc::new(StaticRegistry),
            registration: None,
        }
    }

    /// Registers the running service as `registration` in `registry` once it serves,
    /// and deregisters it when shutdown begins, before the drain.
    #[must_use]
    pub fn with_registration(
        mut self,
        registry: Arc<dyn Registry>,
        registration: Registration,
    ) -> Self {
        self.registry = registry;
        self.registration = Some(registration);
        self
    }

    /// Serves `endpoint` (when there is one) while the service runs.
    #[must_use]
    pub fn with_metrics_endpoint(mut self, endpoint: Option<MetricsEndpoint>) -> Self {
        self.metrics = endpoint;
        self
    }

    /// The bound address (the real port when configured with 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// The OpenAPI 3.1 document of the service's HTTP/JSON routes (see
    /// [`crate::http_json`]).
    pub fn openapi(&self) -> &serde_json::Value {
        self.server.openapi()
    }

    /// The metrics endpoint's bound address, `None` when it is disabled
    /// (`metrics.port = 0` and no listener given).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(MetricsEndpoint::local_addr)
    }

    /// Serves until SIGINT/SIGTERM, then shuts down gracefully.
    ///
    /// # Errors
    /// As [`Self::run_until`].
    pub async fn run_until_stopped(self) -> Result<(), AppError> {
        self.run_until(crate::server::shutdown_signal()).await
    }

    /// Serves until `shutdown` completes, then drains, waits for the background tasks
    /// (aborting any still running a second after the server stopped), stops the metrics
    /// endpoint (it answers throughout the drain) and closes the database.
    ///
    /// # Errors
    /// [`AppError`] when serving fails or the database does not close.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> Result<(), AppError> {
        let Self {
            server,
            db,
            background,
            metrics,
            registry,
            registration,
        } = self;
        let stop_metrics = CancellationToken::new();
        let metrics = metrics.map(|endpoint| endpoint.serve(stop_metrics.clone()));
        let registered: Arc<parking_lot::Mutex<Option<Box<dyn Registered>>>> = Arc::default();
        let stopping = CancellationToken::new();
        let shutdown = {
            let registered = Arc::clone(&registered);
            let stopping = stopping.clone();
            async move {
                shutdown.await;
                stopping.cancel();
                // Leave the registry before the drain, so peers stop picking this
                // instance while it still answers.
                let taken = registered.lock().take();
                deregister(taken).await;
            }
        };
        let register = async {
            let Some(registration) = registration else {
                return;
            };
            tokio::select! {
                () = stopping.cancelled() => {}
                result = registry.register(&registration) => match result {
                    Ok(handle) => {
                        tracing::info!(
                            registry = registry.name(),
                            id = %registration.id,
                            instance = %registration.instance(),
                            "registered"
                        );
                        *registered.lock() = Some(handle);
                    }
                    Err(err) => tracing::error!(
                        registry = registry.name(),
                        error = %err,
                        "cannot register: peers using the registry will not find this instance"
                    ),
                },
            }
        };
        let (served, ()) = tokio::join!(server.run_until(shutdown), register);
        // A registration that completed as shutdown began.
        let late = registered.lock().take();
        deregister(late).await;
        let deadline = tokio::time::Instant::now() + BACKGROUND_GRACE;
        for mut task in background {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                tracing::warn!("a background task ignored shutdown; aborting it");
                task.abort();
            }
        }
        stop_metrics.cancel();
        if let Some(endpoint) = metrics {
            drop(endpoint.await);
        }
        served?;
        db.close().await.map_err(AppError::Close)
    }
}

/// Removes `registered` from its registry, waiting at most [`DEREGISTER_BOUND`].
async fn deregister(registered: Option<Box<dyn Registered>>) {
    let Some(registered) = registered else {
        return;
    };
    match tokio::time::timeout(DEREGISTER_BOUND, registered.deregister()).await {
        Ok(Ok(())) => tracing::info!("deregistered"),
        Ok(Err(err)) => {
            tracing::warn!(error = %err, "cannot deregister; the registration will expire")
        }
        Err(_) => {
            tracing::warn!("the registry did not answer the deregistration in time; it will expire")
        }
    }
}

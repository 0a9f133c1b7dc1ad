//! A built service: its bound server, its metrics endpoint, its database and its
//! background tasks (outbox dispatchers, key maintenance), run and stopped together.

use std::future::Future;
use std::net::SocketAddr;

use sea_orm::DatabaseConnection;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::metrics::MetricsEndpoint;
use crate::server::{BoundServer, ServerError};

/// How long background tasks may run on once the server has stopped; they were told to
/// stop when shutdown began, so this only bounds one that does not listen.
const BACKGROUND_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// A service ready to serve. Background tasks must stop when the server's shutdown token
/// ([`crate::server::ServerBuilder::shutdown_token`]) is cancelled.
#[derive(Debug)]
pub struct App {
    server: BoundServer,
    db: DatabaseConnection,
    background: Vec<JoinHandle<()>>,
    metrics: Option<MetricsEndpoint>,
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
        }
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
        } = self;
        let stop_metrics = CancellationToken::new();
        let metrics = metrics.map(|endpoint| endpoint.serve(stop_metrics.clone()));
        let served = server.run_until(shutdown).await;
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

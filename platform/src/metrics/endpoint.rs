//! The HTTP endpoint Prometheus scrapes: `GET /metrics` answers a service's [`Metrics`]
//! in the text format 0.0.4 (`Content-Type: text/plain; version=0.0.4`), after running
//! its scrape-time refreshes. HTTP/1.1 only, as Prometheus scrapes.
//!
//! With [`MetricsEndpoint::with_readiness`], also the probes of orchestrators that cannot
//! speak gRPC over TLS (Kubernetes' `grpc` probes cannot): `GET /livez` is 200 while the
//! process serves, `GET /readyz` 200 while the server reports SERVING (the same readiness
//! as `grpc.health.v1` for `""`), 503 otherwise. Any other path is 404.

use std::future::IntoFuture as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Metrics, MetricsConfig, MetricsError};

/// How long a stopped endpoint may take to finish the scrapes in progress.
const STOP_GRACE: Duration = Duration::from_secs(1);

/// A bound metrics endpoint, not serving yet.
#[derive(Debug)]
pub struct MetricsEndpoint {
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    metrics: Metrics,
    ready: Option<Arc<AtomicBool>>,
}

impl MetricsEndpoint {
    /// Binds `listener` when given (a test's pre-bound port), else `config`'s address;
    /// `None` when neither is given (`metrics.port = 0`).
    ///
    /// # Errors
    /// [`MetricsError::Bind`] when the address is taken or not allowed.
    pub async fn bind(
        config: &MetricsConfig,
        listener: Option<std::net::TcpListener>,
        metrics: Metrics,
    ) -> Result<Option<Self>, MetricsError> {
        let configured = SocketAddr::new(config.host, config.port);
        let bind_error = |source| MetricsError::Bind {
            addr: configured,
            source,
        };
        let listener = match listener {
            Some(listener) => {
                listener.set_nonblocking(true).map_err(bind_error)?;
                tokio::net::TcpListener::from_std(listener).map_err(bind_error)?
            }
            None if config.enabled() => tokio::net::TcpListener::bind(configured)
                .await
                .map_err(bind_error)?,
            None => return Ok(None),
        };
        let addr = listener.local_addr().map_err(bind_error)?;
        Ok(Some(Self {
            listener,
            addr,
            metrics,
            ready: None,
        }))
    }

    /// Serves `/livez` and `/readyz` too, the latter 200 while `ready` is true.
    #[must_use]
    pub fn with_readiness(mut self, ready: Arc<AtomicBool>) -> Self {
        self.ready = Some(ready);
        self
    }

    /// The address bound (the real port when the config said 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `stop` is cancelled, then finishes the scrapes in progress (at most
    /// a second). Logs `serving metrics` with the endpoint's URL.
    pub fn serve(self, stop: CancellationToken) -> JoinHandle<()> {
        let Self {
            listener,
            addr,
            metrics,
            ready,
        } = self;
        let mut router = axum::Router::new()
            .route("/metrics", axum::routing::get(scrape))
            .with_state(metrics);
        if let Some(ready) = ready {
            router = router
                .route("/livez", axum::routing::get(|| async { "ok\n" }))
                .route(
                    "/readyz",
                    axum::routing::get(move || {
                        let serving = ready.load(Ordering::Relaxed);
                        async move {
                            if serving {
                                (http::StatusCode::OK, "SERVING\n")
                            } else {
                                (http::StatusCode::SERVICE_UNAVAILABLE, "NOT_SERVING\n")
                            }
                        }
                    }),
                );
        }
        tracing::info!(url = %format!("http://{addr}/metrics"), "serving metrics");
        tokio::spawn(async move {
            let stopped = stop.clone();
            let server = axum::serve(listener, router)
                .with_graceful_shutdown(async move { stopped.cancelled().await })
                .into_future();
            tokio::pin!(server);
            let result = tokio::select! {
                result = &mut server => result,
                () = async {
                    stop.cancelled().await;
                    tokio::time::sleep(STOP_GRACE).await;
                } => Ok(()),
            };
            if let Err(err) = result {
                tracing::warn!(error = %err, "the metrics endpoint failed");
            }
        })
    }
}

async fn scrape(State(metrics): State<Metrics>) -> Response {
    match metrics.scrape().await {
        Ok(text) => (
            [(http::header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
            text,
        )
            .into_response(),
        Err(err) => {
            tracing::warn!(error = %err, "cannot encode the metrics");
            (
                http::StatusCode::INTERNAL_SERVER_ERROR,
                "cannot encode the metrics\n",
            )
                .into_response()
        }
    }
}

//! Health of one server (`grpc.health.v1`): the statuses of `""` and each service, which
//! follow the readiness probe, and of [`LIVENESS`], which does not.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::{self, HealthServer};
use tonic_health::server::HealthReporter;

/// The `grpc.health.v1` service name for liveness probes: SERVING from the moment the
/// server serves until the process ends, whatever the readiness probe (the database)
/// says, so a Kubernetes `livenessProbe` (`grpc: {port, service: liveness}`) restarts a
/// process that stopped answering, never one whose database is down. `""` and the
/// service names follow readiness, for readiness probes and load balancers.
pub const LIVENESS: &str = "liveness";

/// A check of whether the service can serve (e.g. its database answers). `true` means
/// SERVING.
pub type ReadinessProbe = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync>;

/// The health statuses of one server: `""` and each service's name.
pub(super) struct Health {
    reporter: HealthReporter,
    names: Vec<&'static str>,
    /// Whether `""` is SERVING, for the plaintext `/readyz` beside the metrics.
    ready: Arc<AtomicBool>,
}

impl Health {
    /// The statuses of a server running the services `names`, and the `grpc.health.v1`
    /// service that answers them: [`LIVENESS`] SERVING, every other NOT_SERVING until
    /// the readiness probe says otherwise (tonic-health starts `""` as SERVING).
    pub(super) async fn start(
        names: Vec<&'static str>,
    ) -> (Self, HealthServer<impl health_server::Health>) {
        let (reporter, service) = tonic_health::server::health_reporter();
        let health = Self {
            reporter,
            names,
            ready: Arc::default(),
        };
        health.set_all(ServingStatus::NotServing).await;
        health
            .reporter
            .set_service_status(LIVENESS, ServingStatus::Serving)
            .await;
        (health, service)
    }

    /// True while `""` is SERVING.
    pub(super) fn ready(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.ready)
    }

    /// Sets `""` and every service's status to `status`.
    pub(super) async fn set_all(&self, status: ServingStatus) {
        self.ready
            .store(status == ServingStatus::Serving, Ordering::Relaxed);
        self.reporter.set_service_status("", status).await;
        for name in &self.names {
            self.reporter.set_service_status(*name, status).await;
        }
    }
}

/// Runs `probe` every `interval` until `stop`, setting every status but [`LIVENESS`] to
/// what it answers; without a probe, sets them SERVING once.
pub(super) async fn run_readiness(
    health: Arc<Health>,
    probe: Option<ReadinessProbe>,
    interval: Duration,
    stop: CancellationToken,
) {
    let Some(probe) = probe else {
        health.set_all(ServingStatus::Serving).await;
        return;
    };
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = None;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let ready = tokio::select! {
            () = stop.cancelled() => return,
            ready = probe() => ready,
        };
        if last != Some(ready) {
            if ready {
                tracing::info!("ready: SERVING");
            } else {
                tracing::warn!("readiness probe failed: NOT_SERVING");
            }
            let status = if ready {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            health.set_all(status).await;
            last = Some(ready);
        }
    }
}

//! gRPC client-side health checking of the balancer's endpoints: each instance's
//! `grpc.health.v1.Health/Watch` for the server (`""`) puts it in or takes it out of
//! rotation, and a SERVING report ends its ejection early.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use rand::Rng as _;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use super::{Endpoint, HEALTH_NOT_SERVING, HEALTH_SERVING, HEALTH_UNREACHABLE};

/// Backoff of a failing health watch: from the first, doubling, to the last, jittered.
const HEALTH_BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(1));

/// gRPC client-side health checking of one endpoint: follows its `Health/Watch` for
/// `""`; a broken stream or NOT_SERVING takes it out of rotation, and the watch is
/// opened again after a jittered backoff.
pub(super) async fn watch_health(peer: Arc<str>, endpoint: Weak<Endpoint>) {
    let mut backoff = HEALTH_BACKOFF.0;
    loop {
        let Some(channel) = endpoint.upgrade().map(|e| e.channel()) else {
            return;
        };
        let mut client = HealthClient::new(channel);
        let set = |health: u8| {
            if let Some(endpoint) = endpoint.upgrade() {
                let before = endpoint.health.swap(health, Ordering::Relaxed);
                if before != health {
                    tracing::debug!(%peer, instance = %endpoint.instance, health, "peer instance health");
                }
            }
        };
        match client
            .watch(HealthCheckRequest {
                service: String::new(),
            })
            .await
        {
            Ok(response) => {
                let mut stream = response.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(message)) if message.status() == ServingStatus::Serving => {
                            backoff = HEALTH_BACKOFF.0;
                            if let Some(endpoint) = endpoint.upgrade() {
                                *endpoint.suspect_until.lock() = None;
                                // A passing health check un-ejects (Envoy's
                                // `successful_active_health_check_uneject_host`): a
                                // restarted instance is back at once.
                                *endpoint.ejected_until.lock() = None;
                            }
                            set(HEALTH_SERVING);
                        }
                        Ok(Some(_)) => {
                            // Not serving (e.g. draining): let go of the stream so the
                            // peer's shutdown need not wait for it; ask again later.
                            set(HEALTH_NOT_SERVING);
                            break;
                        }
                        Ok(None) | Err(_) => {
                            set(HEALTH_UNREACHABLE);
                            break;
                        }
                    }
                }
            }
            Err(status) if status.code() == tonic::Code::Unimplemented => {
                set(HEALTH_SERVING);
                return;
            }
            Err(_) => set(HEALTH_UNREACHABLE),
        }
        let jittered = backoff.mul_f64(rand::rng().random_range(0.5..1.0));
        tokio::time::sleep(jittered).await;
        backoff = (backoff * 2).min(HEALTH_BACKOFF.1);
    }
}

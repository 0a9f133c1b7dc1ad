//! The resilience metrics of peer calls, beside the `grpc_client_*` families:
//!
//! | family | labels | what |
//! |---|---|---|
//! | `trellis_peer_retries_total` | `peer` | attempts after the first |
//! | `trellis_peer_retry_budget_exhausted_total` | `peer` | retries not made because the budget was spent |
//! | `trellis_peer_ejections_total` | `peer` | instances ejected after consecutive failures |
//! | `trellis_peer_instances` | `peer`, `state` | instances known, by state (`serving`, `unknown`, `not_serving`, `unreachable`, `ejected`), read at each scrape |
//! | `trellis_peer_circuit_state` | `peer` | 0 closed, 1 open, 2 half-open, read at each scrape |
//! | `trellis_peer_circuit_rejections_total` | `peer` | calls the open circuit refused without I/O |

use std::collections::HashMap;
use std::sync::Arc;

use prometheus::{IntCounter, IntCounterVec, IntGaugeVec, Opts};

use super::PeerShared;
use super::balance::EndpointState;
use crate::metrics::{Metrics, MetricsError};

/// One peer's counters (none when metrics are off).
#[derive(Debug, Clone, Default)]
pub(crate) struct PeerCounters {
    pub(crate) retries: Option<IntCounter>,
    pub(crate) budget_exhausted: Option<IntCounter>,
    pub(crate) ejections: Option<IntCounter>,
}

/// The families, registered once per service.
#[derive(Debug, Clone)]
pub(crate) struct ResilienceMetrics {
    retries: IntCounterVec,
    budget_exhausted: IntCounterVec,
    ejections: IntCounterVec,
}

const STATES: [EndpointState; 5] = [
    EndpointState::Serving,
    EndpointState::Unknown,
    EndpointState::NotServing,
    EndpointState::Unreachable,
    EndpointState::Ejected,
];

impl ResilienceMetrics {
    /// Registers the families in `metrics`; the instance gauge reads `peers` at each
    /// scrape.
    pub(crate) fn register(
        metrics: &Metrics,
        peers: Arc<parking_lot::Mutex<HashMap<String, Arc<PeerShared>>>>,
    ) -> Result<Self, MetricsError> {
        let counter = |name: &str, help: &str| {
            metrics.register(IntCounterVec::new(Opts::new(name, help), &["peer"])?)
        };
        let retries = counter(
            "trellis_peer_retries_total",
            "Peer call attempts after the first (retries of idempotent calls on UNAVAILABLE, and of calls that never reached a server).",
        )?;
        let budget_exhausted = counter(
            "trellis_peer_retry_budget_exhausted_total",
            "Peer call retries not made because the peer's retry budget was spent.",
        )?;
        let ejections = counter(
            "trellis_peer_ejections_total",
            "Peer instances ejected after consecutive failed calls.",
        )?;
        let circuit_state = metrics.register(IntGaugeVec::new(
            Opts::new(
                "trellis_peer_circuit_state",
                "State of the peer's circuit breaker: 0 closed, 1 open, 2 half-open.",
            ),
            &["peer"],
        )?)?;
        let circuit_rejections = counter(
            "trellis_peer_circuit_rejections_total",
            "Peer calls the open circuit breaker answered UNAVAILABLE without sending them.",
        )?;
        let instances = metrics.register(IntGaugeVec::new(
            Opts::new(
                "trellis_peer_instances",
                "Peer instances known to the balancer, by state.",
            ),
            &["peer", "state"],
        )?)?;
        metrics.on_every_scrape("peer instances", move || {
            let snapshot: Vec<(String, Vec<EndpointState>, i64, u64)> = peers
                .lock()
                .iter()
                .map(|(peer, shared)| {
                    let states = shared.balancer.status().into_iter().map(|s| s.state);
                    (
                        peer.clone(),
                        states.collect(),
                        shared.breaker.state().gauge_value(),
                        shared.breaker.rejections(),
                    )
                })
                .collect();
            let (instances, circuit_state, circuit_rejections) = (
                instances.clone(),
                circuit_state.clone(),
                circuit_rejections.clone(),
            );
            async move {
                for (peer, states, circuit, rejections) in snapshot {
                    circuit_state
                        .with_label_values(&[peer.as_str()])
                        .set(circuit);
                    // The breaker counts its rejections; the counter catches up with it.
                    let counter = circuit_rejections.with_label_values(&[peer.as_str()]);
                    counter.inc_by(rejections.saturating_sub(counter.get()));
                    for state in STATES {
                        let count = states.iter().filter(|s| **s == state).count();
                        instances
                            .with_label_values(&[peer.as_str(), state.as_str()])
                            .set(i64::try_from(count).unwrap_or(i64::MAX));
                    }
                }
                Ok(())
            }
        });
        Ok(Self {
            retries,
            budget_exhausted,
            ejections,
        })
    }

    /// `peer`'s counters, at zero until something happens.
    pub(crate) fn counters(&self, peer: &str) -> PeerCounters {
        PeerCounters {
            retries: Some(self.retries.with_label_values(&[peer])),
            budget_exhausted: Some(self.budget_exhausted.with_label_values(&[peer])),
            ejections: Some(self.ejections.with_label_values(&[peer])),
        }
    }
}

/// Adds one to `counter` when there is one.
pub(crate) fn inc(counter: Option<&IntCounter>) {
    if let Some(counter) = counter {
        counter.inc();
    }
}

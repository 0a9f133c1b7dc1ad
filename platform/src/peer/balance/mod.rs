//! Client-side load balancing over the instances discovery finds for one peer.
//!
//! - **Connections**: one lazily connected HTTP/2 channel per instance, kept while the
//!   instance is in the set; instances that leave are dropped with their channel.
//! - **Picking**: power of two choices (Mitzenmacher) — two instances at random, the one
//!   with the lower load wins. A unary call's load is its peak-EWMA latency times
//!   (outstanding calls + 1), Finagle's and linkerd's default (peak: a slower answer
//!   raises the estimate at once; faster ones lower it with a 10 s decay; 30 ms before
//!   the first answer; a call the caller's deadline ended unanswered raises it to the
//!   time it waited, and never lowers it, so an instance that hangs — paused, or
//!   black-holed — is avoided even when no failure may be counted against it); a
//!   stream's load is its outstanding calls.
//! - **Health**: each instance's `grpc.health.v1.Health/Watch` for the server (`""`), as
//!   gRPC's client-side health checking does: NOT_SERVING or a broken stream takes the
//!   instance out of rotation until it reports SERVING again (a server answering
//!   UNIMPLEMENTED is taken as healthy). A transport error on a call does the same at
//!   once and asks discovery to resolve again.
//! - **Outlier ejection** (Envoy's `outlier_detection` defaults): an instance whose
//!   calls fail `consecutive_failures` times in a row (UNAVAILABLE, DEADLINE_EXCEEDED,
//!   INTERNAL or a transport error; not RESOURCE_EXHAUSTED, load shed on purpose) is
//!   ejected for
//!   `base_ejection_ms` × the number of its ejections (at most `max_ejection_ms`), with at
//!   most `max_ejection_percent` of the instances (but at least one) ejected at once; a
//!   SERVING report from its health watch ends an ejection early (Envoy's default);
//!   when no instance is in rotation, calls go to any of them (Envoy's panic routing).
//! - **Failing fast**: with no instance at all a call fails at once with UNAVAILABLE;
//!   with only failed ones it fails within the connect timeout (a refused connection: at
//!   once); before discovery's first answer it waits for it at most the connect timeout.
//!   It never hangs.
//!
//! tower's `p2c::Balance` picks by load too, but owns its services behind `&mut self`,
//! knows no health or ejection, and waits forever on an empty set: the policy here is
//! the platform's own composition of those rules.

mod connect;
mod health;

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use rand::Rng as _;
use serde::Deserialize;
use serde_with::{DurationMilliSeconds, serde_as};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::config::{ConfigError, NonZeroMilliSeconds, require_positive};
use crate::discovery::{Instance, Watch};
use crate::tls::PeerTls;
use connect::{connect, make_channel};
use health::watch_health;

/// Latency assumed for an instance before its first answer (linkerd's default).
const DEFAULT_RTT: Duration = Duration::from_millis(30);
/// Time constant of the latency estimate's decay (Finagle's and linkerd's default).
const DECAY: Duration = Duration::from_secs(10);
/// How long a transport error on a call takes an instance out of rotation, unless its
/// health watch reports SERVING sooner.
const SUSPECT: Duration = Duration::from_secs(1);

/// `peers.<name>.outlier.*`: outlier ejection (defaults: Envoy's).
#[serde_as]
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutlierConfig {
    /// Failed calls in a row that eject an instance. Default 5.
    pub consecutive_failures: u32,
    /// `base_ejection_ms`: ejection time of a first ejection, ms; the n-th lasts n times as long.
    /// Default 30000.
    #[serde(rename = "base_ejection_ms")]
    #[serde_as(as = "NonZeroMilliSeconds")]
    pub base_ejection: Duration,
    /// `max_ejection_ms`: longest ejection, ms. Default 300000.
    #[serde(rename = "max_ejection_ms")]
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    pub max_ejection: Duration,
    /// Most instances ejected at once, percent of the set (at least one). Default 10.
    pub max_ejection_percent: u8,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(5 * 60),
            max_ejection_percent: 10,
        }
    }
}

impl OutlierConfig {
    /// Checks the values; `prefix` is the section's key.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the key.
    pub fn validate(&self, prefix: &str) -> Result<(), ConfigError> {
        require_positive(
            &format!("{prefix}.consecutive_failures"),
            u64::from(self.consecutive_failures),
        )?;
        if self.max_ejection < self.base_ejection {
            return Err(ConfigError::invalid(
                format!("{prefix}.max_ejection_ms"),
                "must be at least base_ejection_ms",
            ));
        }
        if self.max_ejection_percent > 100 {
            return Err(ConfigError::invalid(
                format!("{prefix}.max_ejection_percent"),
                "must be at most 100",
            ));
        }
        Ok(())
    }
}

/// Where an instance stands in the rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointState {
    /// No health report yet: in rotation.
    Unknown,
    /// Its health service reports SERVING: in rotation.
    Serving,
    /// It reports NOT_SERVING (not ready, or shutting down): out of rotation.
    NotServing,
    /// It cannot be reached: out of rotation until its health watch reconnects.
    Unreachable,
    /// Ejected after consecutive failures, until the ejection time passes.
    Ejected,
}

impl EndpointState {
    /// Whether calls may go to an instance in this state.
    pub fn in_rotation(self) -> bool {
        matches!(self, Self::Unknown | Self::Serving)
    }

    /// The state's name, as in logs and the `trellis_peer_endpoints{state}` metric.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Serving => "serving",
            Self::NotServing => "not_serving",
            Self::Unreachable => "unreachable",
            Self::Ejected => "ejected",
        }
    }
}

/// One instance as the balancer sees it (for tests and diagnostics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointStatus {
    /// Its base URI.
    pub uri: String,
    /// Its state.
    pub state: EndpointState,
    /// Calls sent and not yet answered (streams: not yet ended).
    pub outstanding: usize,
    /// How often it has been ejected (decays by one per success).
    pub ejections: u32,
}

const HEALTH_UNKNOWN: u8 = 0;
const HEALTH_SERVING: u8 = 1;
const HEALTH_NOT_SERVING: u8 = 2;
const HEALTH_UNREACHABLE: u8 = 3;

/// One instance: its channel, its load and its health.
#[derive(Debug)]
pub(crate) struct Endpoint {
    pub(crate) instance: Instance,
    /// The channel, and the generation of this workload's TLS material it presents
    /// (0: plaintext).
    channel: parking_lot::Mutex<(u64, Channel)>,
    connect_timeout: Duration,
    tls: Option<PeerTls>,
    health: AtomicU8,
    outstanding: AtomicUsize,
    consecutive_failures: AtomicU32,
    ejections: AtomicU32,
    /// (estimate, last update) of the peak-EWMA latency.
    rtt: parking_lot::Mutex<(f64, Instant)>,
    ejected_until: parking_lot::Mutex<Option<Instant>>,
    /// Out of rotation until then after a transport error on a call.
    suspect_until: parking_lot::Mutex<Option<Instant>>,
    health_task: parking_lot::Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        if let Some(task) = self.health_task.get_mut().take() {
            task.abort();
        }
    }
}

impl Endpoint {
    /// The channel new calls go on. Under mutual TLS, once this workload's certificate
    /// has changed, a new one (new connections, the new certificate): the tokens bound
    /// to the new certificate must not travel on connections that present the old one.
    /// Calls already on the old channel finish on it; it closes when they have.
    pub(crate) fn channel(&self) -> Channel {
        let mut channel = self.channel.lock();
        if let Some(tls) = &self.tls {
            let generation = tls.generation();
            if channel.0 != generation
                && let Ok(fresh) = make_channel(&self.instance, self.connect_timeout, Some(tls))
            {
                *channel = (generation, fresh);
            }
        }
        channel.1.clone()
    }

    fn state(&self, now: Instant) -> EndpointState {
        if self.ejected_until.lock().is_some_and(|until| now < until) {
            return EndpointState::Ejected;
        }
        if self.suspect_until.lock().is_some_and(|until| now < until) {
            return EndpointState::Unreachable;
        }
        match self.health.load(Ordering::Relaxed) {
            HEALTH_SERVING => EndpointState::Serving,
            HEALTH_NOT_SERVING => EndpointState::NotServing,
            HEALTH_UNREACHABLE => EndpointState::Unreachable,
            _ => EndpointState::Unknown,
        }
    }

    /// Load of a unary call: decayed peak-EWMA latency (ns) × (outstanding + 1).
    fn unary_load(&self, now: Instant) -> f64 {
        let (estimate, at) = *self.rtt.lock();
        let elapsed = now.saturating_duration_since(at).as_secs_f64();
        let decayed = estimate * (-elapsed / DECAY.as_secs_f64()).exp();
        decayed.max(1.0) * (self.outstanding.load(Ordering::Relaxed) + 1) as f64
    }

    fn observe_rtt(&self, rtt: Duration, now: Instant) {
        let rtt = rtt.as_nanos() as f64;
        let mut guard = self.rtt.lock();
        let (estimate, at) = *guard;
        let next = if rtt > estimate {
            rtt
        } else {
            let elapsed = now.saturating_duration_since(at).as_secs_f64();
            let weight = (-elapsed / DECAY.as_secs_f64()).exp();
            estimate * weight + rtt * (1.0 - weight)
        };
        *guard = (next, now);
    }

    /// Raises the estimate to `rtt` if that is higher; never lowers it.
    fn observe_peak(&self, rtt: Duration, now: Instant) {
        let rtt = rtt.as_nanos() as f64;
        let mut guard = self.rtt.lock();
        let (estimate, at) = *guard;
        let elapsed = now.saturating_duration_since(at).as_secs_f64();
        let decayed = estimate * (-elapsed / DECAY.as_secs_f64()).exp();
        if rtt > decayed {
            *guard = (rtt, now);
        }
    }

    pub(crate) fn start_call(self: &Arc<Self>) -> Outstanding {
        self.outstanding.fetch_add(1, Ordering::Relaxed);
        Outstanding(Arc::clone(self))
    }
}

/// One outstanding call on an endpoint; dropping it ends the call.
#[derive(Debug)]
pub(crate) struct Outstanding(Arc<Endpoint>);

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How a call to an endpoint ended, for the balancer's bookkeeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Answered, with a status that is not a failure.
    Success,
    /// Answered with a failure status (see the module docs).
    Failure,
    /// No answer: the connection failed or broke.
    TransportError,
}

/// The endpoints of one peer, kept in step with discovery.
#[derive(Debug)]
pub(crate) struct Balancer {
    peer: Arc<str>,
    outlier: OutlierConfig,
    connect_timeout: Duration,
    endpoints: watch::Receiver<Option<Arc<Vec<Arc<Endpoint>>>>>,
    discovery: Watch,
    ejections_total: Option<prometheus::IntCounter>,
    task: JoinHandle<()>,
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Settings of one peer's balancer.
#[derive(Debug, Clone)]
pub(crate) struct BalancerSettings {
    pub(crate) connect_timeout: Duration,
    pub(crate) health_check: bool,
    pub(crate) outlier: OutlierConfig,
    pub(crate) ejections_total: Option<prometheus::IntCounter>,
    /// Mutual TLS to the peer; `None`: plaintext.
    pub(crate) tls: Option<PeerTls>,
}

impl Balancer {
    /// A balancer over the instances `discovery` reports for `peer`. Must be called
    /// within a tokio runtime (it spawns the task that follows discovery).
    pub(crate) fn new(peer: &str, discovery: Watch, settings: BalancerSettings) -> Arc<Self> {
        let (sender, receiver) = watch::channel(None);
        let peer: Arc<str> = Arc::from(peer);
        let task = tokio::spawn(follow(
            Arc::clone(&peer),
            discovery.clone(),
            sender,
            settings.connect_timeout,
            settings.health_check,
            settings.tls,
        ));
        Arc::new(Self {
            peer,
            outlier: settings.outlier,
            connect_timeout: settings.connect_timeout,
            endpoints: receiver,
            discovery,
            ejections_total: settings.ejections_total,
            task,
        })
    }

    /// The peer's name.
    pub(crate) fn peer(&self) -> &Arc<str> {
        &self.peer
    }

    /// Picks an endpoint in rotation, avoiding `tried` when another is available.
    ///
    /// # Errors
    /// UNAVAILABLE naming the peer when no endpoint is in rotation (after waiting at most
    /// the connect timeout for discovery's first answer).
    pub(crate) async fn pick(
        &self,
        streaming: bool,
        tried: &[Arc<Endpoint>],
    ) -> Result<Arc<Endpoint>, tonic::Status> {
        let mut endpoints = self.endpoints.clone();
        let current = endpoints.borrow().clone();
        let set = match current {
            Some(set) => set,
            None => {
                let first =
                    tokio::time::timeout(self.connect_timeout, endpoints.wait_for(Option::is_some))
                        .await;
                match first {
                    Ok(Ok(set)) => set.clone().unwrap_or_default(),
                    _ => {
                        return Err(tonic::Status::unavailable(format!(
                            "discovery found no instance of {} within {} ms",
                            self.peer,
                            self.connect_timeout.as_millis()
                        )));
                    }
                }
            }
        };
        let now = Instant::now();
        let in_rotation: Vec<&Arc<Endpoint>> = set
            .iter()
            .filter(|endpoint| endpoint.state(now).in_rotation())
            .collect();
        let fresh: Vec<&Arc<Endpoint>> = in_rotation
            .iter()
            .copied()
            .filter(|endpoint| !tried.iter().any(|t| Arc::ptr_eq(t, endpoint)))
            .collect();
        let mut candidates = if fresh.is_empty() { in_rotation } else { fresh };
        if candidates.is_empty() {
            // Envoy's panic routing: with none in rotation, try every instance rather
            // than refuse — a lone instance that failed a burst, or one that came back
            // before its health watch saw it, still gets calls; a dead one fails at once
            // (connection refused) or within the connect timeout.
            let untried: Vec<&Arc<Endpoint>> = set
                .iter()
                .filter(|endpoint| !tried.iter().any(|t| Arc::ptr_eq(t, endpoint)))
                .collect();
            candidates = if untried.is_empty() {
                set.iter().collect()
            } else {
                untried
            };
        }
        let chosen = match candidates.len() {
            0 => {
                if set.is_empty() {
                    self.discovery.refresh();
                }
                return Err(tonic::Status::unavailable(format!(
                    "no instance of {} is available ({} known, none in rotation)",
                    self.peer,
                    set.len()
                )));
            }
            1 => candidates[0],
            n => {
                let mut rng = rand::rng();
                let a = rng.random_range(0..n);
                let mut b = rng.random_range(0..n - 1);
                if b >= a {
                    b += 1;
                }
                let load = |e: &Arc<Endpoint>| {
                    if streaming {
                        e.outstanding.load(Ordering::Relaxed) as f64
                    } else {
                        e.unary_load(now)
                    }
                };
                if load(candidates[b]) < load(candidates[a]) {
                    candidates[b]
                } else {
                    candidates[a]
                }
            }
        };
        Ok(Arc::clone(chosen))
    }

    /// Records that a call to `endpoint` went unanswered for `waited` until its caller's
    /// deadline: evidence of latency for picking, never of failure (see the module docs).
    pub(crate) fn waited(&self, endpoint: &Arc<Endpoint>, waited: Duration) {
        endpoint.observe_peak(waited, Instant::now());
    }

    /// Records how a call to `endpoint` ended and how long its answer took.
    pub(crate) fn record(&self, endpoint: &Arc<Endpoint>, outcome: Outcome, rtt: Duration) {
        let now = Instant::now();
        match outcome {
            Outcome::Success => {
                endpoint.observe_rtt(rtt, now);
                // An answer proves the instance reachable, before its health watch says.
                *endpoint.suspect_until.lock() = None;
                let _ = endpoint.health.compare_exchange(
                    HEALTH_UNREACHABLE,
                    HEALTH_UNKNOWN,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
                endpoint.consecutive_failures.store(0, Ordering::Relaxed);
                // Envoy lowers the ejection multiplier while an instance stays healthy.
                let _ =
                    endpoint
                        .ejections
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
                return;
            }
            Outcome::TransportError => {
                let previous = endpoint.suspect_until.lock().replace(now + SUSPECT);
                if previous.is_none_or(|until| until <= now) {
                    tracing::warn!(
                        peer = %self.peer,
                        instance = %endpoint.instance,
                        "peer instance unreachable: out of rotation until it reports SERVING"
                    );
                }
                self.discovery.refresh();
            }
            Outcome::Failure => endpoint.observe_rtt(rtt, now),
        }
        let failures = endpoint
            .consecutive_failures
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        if failures >= self.outlier.consecutive_failures {
            self.try_eject(endpoint, now);
        }
    }

    fn try_eject(&self, endpoint: &Arc<Endpoint>, now: Instant) {
        let Some(set) = self.endpoints.borrow().clone() else {
            return;
        };
        let ejected = set
            .iter()
            .filter(|e| e.state(now) == EndpointState::Ejected)
            .count();
        let limit = (set.len() * usize::from(self.outlier.max_ejection_percent) / 100).max(1);
        if ejected >= limit || endpoint.state(now) == EndpointState::Ejected {
            return;
        }
        let times = endpoint.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let duration = self
            .outlier
            .base_ejection
            .saturating_mul(times)
            .min(self.outlier.max_ejection);
        *endpoint.ejected_until.lock() = Some(now + duration);
        endpoint.consecutive_failures.store(0, Ordering::Relaxed);
        if let Some(counter) = &self.ejections_total {
            counter.inc();
        }
        tracing::warn!(
            peer = %self.peer,
            instance = %endpoint.instance,
            ejection_ms = duration.as_millis() as u64,
            "peer instance ejected after consecutive failures"
        );
    }

    /// Every known endpoint and its state.
    pub(crate) fn status(&self) -> Vec<EndpointStatus> {
        let now = Instant::now();
        self.endpoints
            .borrow()
            .as_deref()
            .map(|set| {
                set.iter()
                    .map(|e| EndpointStatus {
                        uri: e.instance.uri.clone(),
                        state: e.state(now),
                        outstanding: e.outstanding.load(Ordering::Relaxed),
                        ejections: e.ejections.load(Ordering::Relaxed),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Follows discovery: keeps one endpoint per instance, making new ones and dropping
/// those that left.
async fn follow(
    peer: Arc<str>,
    mut discovery: Watch,
    endpoints: watch::Sender<Option<Arc<Vec<Arc<Endpoint>>>>>,
    connect_timeout: Duration,
    health_check: bool,
    tls: Option<PeerTls>,
) {
    loop {
        if let Some(instances) = discovery.current() {
            let previous = endpoints.borrow().clone().unwrap_or_default();
            // Keyed, so applying an answer is linear in its size.
            let kept: std::collections::HashMap<&Instance, &Arc<Endpoint>> = previous
                .iter()
                .map(|endpoint| (&endpoint.instance, endpoint))
                .collect();
            let next: Vec<Arc<Endpoint>> = instances
                .iter()
                .filter_map(|instance| {
                    if let Some(kept) = kept.get(instance) {
                        return Some(Arc::clone(kept));
                    }
                    match connect(instance, connect_timeout, tls.as_ref()) {
                        Ok(endpoint) => {
                            if health_check {
                                let task = tokio::spawn(watch_health(
                                    Arc::clone(&peer),
                                    Arc::downgrade(&endpoint),
                                ));
                                *endpoint.health_task.lock() = Some(task);
                            }
                            Some(endpoint)
                        }
                        Err(err) => {
                            tracing::warn!(%peer, %instance, error = %err, "ignoring an instance with an invalid address");
                            None
                        }
                    }
                })
                .collect();
            let uris: Vec<&str> = next.iter().map(|e| e.instance.uri.as_str()).collect();
            tracing::info!(%peer, instances = ?uris, "peer instances");
            endpoints.send_replace(Some(Arc::new(next)));
        }
        discovery.mark_seen();
        if !discovery.changed().await {
            return;
        }
    }
}

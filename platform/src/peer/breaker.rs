//! The per-peer circuit breaker: when a peer keeps failing, calls to it fail fast with
//! UNAVAILABLE, without any I/O, until a probe shows it has recovered.
//!
//! The state machine is `tower-resilience-circuitbreaker`'s (closed → open → half-open →
//! closed or open again; the Resilience4j design, as Martin Fowler's "CircuitBreaker"
//! describes it). That crate already does what a peer client needs: its state lives
//! behind an `Arc`, so every clone of a [`BreakerService`] shares one circuit; its
//! classifier sees the whole `Result`, so a gRPC status in the response headers can be
//! a failure; an open circuit answers `poll_ready` and `call` without touching the
//! inner service; and half-open admits a bounded number of probes through a semaphore.
//! This module adds what is gRPC's: the classification ([`GrpcClassifier`]), the local
//! answer (a trailers-only UNAVAILABLE response, so callers see a gRPC status rather
//! than a transport error), a rejection counter and a state for metrics, logs, and a
//! configuration section ([`BreakerConfig`]).
//!
//! What counts as a failure follows the gRPC status codes that say the *peer* is in
//! trouble (gRPC spec, `doc/statuscodes.md`): UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL,
//! and transport errors. Every other code is the peer working as designed (NOT_FOUND,
//! INVALID_ARGUMENT, UNAUTHENTICATED, ...) and counts as a success — RESOURCE_EXHAUSTED
//! included: it is a peer shedding load it was built to shed (a full password-hashing
//! queue, a quota), at once and cheaply, and Envoy's outlier detection does not count
//! its HTTP form (429) either. Counting it turned a burst of logins that filled the user
//! service's hashing queue into ten seconds of "sign-in is unavailable" for everyone
//! (found by `cargo xtask bench`'s login scenario). The code is read when response headers arrive: from `grpc-status` of
//! a trailers-only response, or — without it — from a non-200 HTTP status mapped as
//! `doc/http-grpc-status-mapping.md` says. A 200 response without `grpc-status` (a
//! message, or a stream, is coming) counts as a success: a status sent later in
//! trailers is not seen by the breaker.
//!
//! Two failure models are offered. The default trips after `consecutive_failures`
//! failures in a row, in O(1) per call, like sony/gobreaker's default. The `rate` model
//! trips when at least `failure_rate_percent` of the calls in the last `window_ms`
//! failed (once `minimum_calls` were made); the crate scans the window's records on each
//! call, so its cost per call grows with `window_ms` × call rate. The crate's
//! count-based window is not used: it counts every call since the last state change
//! rather than the last N, so a long healthy run would hide a later outage.
//!
//! Per-instance failures are the balancer's job (ejecting an instance); the breaker
//! guards the peer as a whole.
//!
//! **Outcomes that count for nothing.** A call the peer's answer says nothing about — the
//! caller's own deadline ran out, or the call was cancelled — must be neither a failure
//! (a client choosing 8 ms deadlines would open the circuit for everyone) nor a success
//! (its short calls would reset the run of consecutive failures, or dilute the failure
//! rate, of a peer that is really down). The crate records every call that completes,
//! as one or the other, and nothing in between; it records nothing for a call whose
//! future is dropped (cancelled) and gives its half-open permit back. So the inner
//! service marks such an answer [`Uncounted`] (a response extension; the peer call of
//! [`super::call`] does), and [`BreakerService`] hands it to its caller past the
//! circuit: the inner service sends it out through a per-call side channel and never
//! completes, and the breaker's own future is dropped before it could record anything.
//! A circuit then moves only on outcomes the peer caused.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use serde::Deserialize;
use serde_with::serde_as;
use tokio::sync::oneshot;
use tonic::Code;
use tower::Service;
use tower_resilience_circuitbreaker::{
    CircuitBreaker, CircuitBreakerError, CircuitBreakerHandle, CircuitBreakerLayer,
    FailureClassifier, SlidingWindowType,
};

use crate::config::{ConfigError, NonZeroMilliSeconds, require_positive};

/// The breaker of one peer: `peers.<name>.breaker`.
#[serde_as]
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerConfig {
    /// Whether calls go through the breaker at all. Default `true`.
    pub enabled: bool,
    /// When the circuit opens. Default [`FailureModel::Consecutive`].
    pub failure_model: FailureModel,
    /// `consecutive` model: open after this many failed calls in a row. Default 5.
    pub consecutive_failures: u32,
    /// `rate` model: open when at least this percentage (1–100) of the calls in the
    /// window failed. Default 50.
    pub failure_rate_percent: u8,
    /// `window_ms`: `rate` model: the sliding window, ms. Default 10000.
    #[serde(rename = "window_ms")]
    #[serde_as(as = "NonZeroMilliSeconds")]
    pub window: Duration,
    /// `rate` model: the fewest calls in the window before the rate is judged.
    /// Default 20.
    pub minimum_calls: u32,
    /// `open_ms`: how long an open circuit rejects calls before the next call is let through as a
    /// probe (half-open), ms. Default 10000.
    #[serde(rename = "open_ms")]
    #[serde_as(as = "NonZeroMilliSeconds")]
    pub open: Duration,
    /// Probes let through at once while half-open; the circuit closes after this many
    /// succeed and re-opens on the first that fails. Other calls are rejected meanwhile.
    /// Default 1.
    pub half_open_calls: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            failure_model: FailureModel::Consecutive,
            consecutive_failures: 5,
            failure_rate_percent: 50,
            window: Duration::from_secs(10),
            minimum_calls: 20,
            open: Duration::from_secs(10),
            half_open_calls: 1,
        }
    }
}

/// What opens a circuit (`peers.<name>.breaker.failure_model`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureModel {
    /// `consecutive`: a run of `consecutive_failures` failed calls.
    #[default]
    Consecutive,
    /// `rate`: `failure_rate_percent` of the calls within `window_ms` failed.
    Rate,
}

impl BreakerConfig {
    /// Checks the values; `prefix` is the section's key, e.g. `peers.user.breaker`.
    /// Every value is checked, even with `enabled = false`, so a typo does not wait for
    /// the day the breaker is switched on.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the first bad key: a count of 0, or a
    /// `failure_rate_percent` above 100 (a duration of 0 fails loading already).
    pub fn validate(&self, prefix: &str) -> Result<(), ConfigError> {
        require_positive(
            &format!("{prefix}.consecutive_failures"),
            self.consecutive_failures.into(),
        )?;
        if !(1..=100).contains(&self.failure_rate_percent) {
            return Err(ConfigError::invalid(
                format!("{prefix}.failure_rate_percent"),
                "must be between 1 and 100",
            ));
        }
        require_positive(
            &format!("{prefix}.minimum_calls"),
            self.minimum_calls.into(),
        )?;
        require_positive(
            &format!("{prefix}.half_open_calls"),
            self.half_open_calls.into(),
        )
    }
}

/// The state of a circuit, for the `trellis_peer_circuit_state{peer}` gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    /// Calls flow; outcomes are counted.
    Closed,
    /// Calls are rejected locally. It stays `Open` past `open_ms` until the next call
    /// arrives and becomes a probe.
    Open,
    /// Up to `half_open_calls` probes are in flight; other calls are rejected.
    HalfOpen,
}

impl CircuitState {
    /// The gauge value: 0 closed, 1 open, 2 half-open (the numbering of
    /// `tower-resilience-circuitbreaker` and Resilience4j's state gauge).
    pub fn gauge_value(self) -> i64 {
        match self {
            Self::Closed => 0,
            Self::Open => 1,
            Self::HalfOpen => 2,
        }
    }

    /// The lower-case name: `closed`, `open` or `half_open`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

impl From<tower_resilience_circuitbreaker::CircuitState> for CircuitState {
    fn from(state: tower_resilience_circuitbreaker::CircuitState) -> Self {
        use tower_resilience_circuitbreaker::CircuitState as Lib;
        match state {
            Lib::Closed => Self::Closed,
            Lib::Open => Self::Open,
            Lib::HalfOpen => Self::HalfOpen,
        }
    }
}

/// Whether a call's outcome is a failure for the breaker: any error of the inner service
/// (transport), or a response whose gRPC status says the peer is in trouble (see
/// [`is_failure_code`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcClassifier;

impl<B, E> FailureClassifier<http::Response<B>, E> for GrpcClassifier {
    fn classify(&self, result: &Result<http::Response<B>, E>) -> bool {
        match result {
            Err(_) => true,
            Ok(response) => response_code(response).is_some_and(is_failure_code),
        }
    }
}

/// Whether `code` counts against the peer: UNAVAILABLE, DEADLINE_EXCEEDED and INTERNAL
/// (gRPC spec, `doc/statuscodes.md`: the codes of a server that cannot serve). Every
/// other code, OK and RESOURCE_EXHAUSTED (load shed on purpose) included, is a success.
pub fn is_failure_code(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable | Code::DeadlineExceeded | Code::Internal
    )
}

/// The gRPC status a response's headers carry: `grpc-status` if present, else the HTTP
/// status mapped as gRPC's `doc/http-grpc-status-mapping.md` says (502, 503, 504 and
/// 429 are UNAVAILABLE; 400 is INTERNAL; ...); `None` for a 200 without `grpc-status`,
/// whose status will come in trailers.
fn response_code<B>(response: &http::Response<B>) -> Option<Code> {
    if let Some(code) = crate::status::grpc_status(response.headers()) {
        return Some(code);
    }
    Some(match response.status() {
        http::StatusCode::OK => return None,
        http::StatusCode::BAD_REQUEST => Code::Internal,
        http::StatusCode::UNAUTHORIZED => Code::Unauthenticated,
        http::StatusCode::FORBIDDEN => Code::PermissionDenied,
        http::StatusCode::NOT_FOUND => Code::Unimplemented,
        http::StatusCode::TOO_MANY_REQUESTS
        | http::StatusCode::BAD_GATEWAY
        | http::StatusCode::SERVICE_UNAVAILABLE
        | http::StatusCode::GATEWAY_TIMEOUT => Code::Unavailable,
        _ => Code::Unknown,
    })
}

/// One peer's circuit breaker. Clones share the circuit and the counters; wrap the
/// peer's channel with it as a tower [`tower::Layer`] (every service it makes shares
/// the circuit too) and read [`Self::state`] and [`Self::rejections`] for metrics.
#[derive(Clone)]
pub struct Breaker {
    shared: Arc<Shared>,
    /// `None` when the breaker is disabled.
    circuit: Option<(
        CircuitBreakerLayer<GrpcClassifier>,
        CircuitBreakerHandle<GrpcClassifier>,
    )>,
}

/// What every clone of a breaker and of its services shares.
#[derive(Debug)]
struct Shared {
    peer: Arc<str>,
    open: Duration,
    rejections: AtomicU64,
}

impl std::fmt::Debug for Breaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaker")
            .field("peer", &self.shared.peer)
            .field("enabled", &self.circuit.is_some())
            .field("state", &self.state())
            .field("rejections", &self.rejections())
            .finish()
    }
}

impl Breaker {
    /// The breaker of `peer` (its name in `peers.<name>`, used in logs and in the
    /// rejection message) as `config` says.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the key under `peers.<peer>.breaker` when
    /// `config` does not pass [`BreakerConfig::validate`].
    pub fn new(peer: &str, config: &BreakerConfig) -> Result<Self, ConfigError> {
        let prefix = format!("peers.{peer}.breaker");
        config.validate(&prefix)?;
        let shared = Arc::new(Shared {
            peer: Arc::from(peer),
            open: config.open,
            rejections: AtomicU64::new(0),
        });
        if !config.enabled {
            return Ok(Self {
                shared,
                circuit: None,
            });
        }
        let logged_peer = Arc::clone(&shared.peer);
        let builder = CircuitBreakerLayer::builder()
            .name(peer)
            .wait_duration_in_open(config.open)
            .permitted_calls_in_half_open(to_usize(config.half_open_calls))
            .on_state_transition(move |from, to| {
                let (from, to) = (CircuitState::from(from), CircuitState::from(to));
                if to == CircuitState::Open {
                    tracing::warn!(peer = %logged_peer, from = from.as_str(), "circuit breaker opened: calls to the peer are rejected locally");
                } else {
                    tracing::info!(peer = %logged_peer, from = from.as_str(), to = to.as_str(), "circuit breaker state changed");
                }
            });
        let builder = match config.failure_model {
            FailureModel::Consecutive => {
                builder.consecutive_failures(to_usize(config.consecutive_failures))
            }
            FailureModel::Rate => builder
                .sliding_window_type(SlidingWindowType::TimeBased)
                .sliding_window_duration(config.window)
                .minimum_number_of_calls(to_usize(config.minimum_calls))
                .failure_rate_threshold(f64::from(config.failure_rate_percent) / 100.0),
        };
        let circuit = builder
            .failure_classifier_type(GrpcClassifier)
            .build_with_handle()
            .map_err(|err| ConfigError::invalid(prefix, err.to_string()))?;
        Ok(Self {
            shared,
            circuit: Some(circuit),
        })
    }

    /// The peer's name.
    pub fn peer(&self) -> &str {
        &self.shared.peer
    }

    /// The circuit's current state; always [`CircuitState::Closed`] when disabled.
    pub fn state(&self) -> CircuitState {
        self.circuit
            .as_ref()
            .map_or(CircuitState::Closed, |(_, handle)| handle.state().into())
    }

    /// Calls rejected locally since the breaker was made (the
    /// `trellis_peer_circuit_rejections_total{peer}` counter).
    pub fn rejections(&self) -> u64 {
        self.shared.rejections.load(Ordering::Relaxed)
    }
}

fn to_usize(n: u32) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

impl<S> tower::Layer<S> for Breaker {
    type Service = BreakerService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BreakerService {
            inner: match &self.circuit {
                Some((layer, _)) => Inner::Enabled(tower::Layer::layer(layer, Bypass(inner))),
                None => Inner::Disabled(inner),
            },
            shared: Arc::clone(&self.shared),
        }
    }
}

/// A response extension: this answer says nothing about the peer, so the circuit must
/// count it neither as a failure nor as a success (see the module docs). The peer call
/// marks the DEADLINE_EXCEEDED of a deadline its caller chose, and its refusal of a
/// call with no time left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Uncounted;

/// The per-call way out for an [`Uncounted`] answer, from [`Bypass`] (inside the circuit)
/// to [`BreakerService::call`] (outside it); carried in the request's extensions.
struct Slot<B>(Arc<parking_lot::Mutex<Option<oneshot::Sender<http::Response<B>>>>>);

impl<B> Clone for Slot<B> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

/// The inner service as the circuit sees it: an [`Uncounted`] answer leaves through the
/// call's [`Slot`], and this future then never completes, so the circuit never records
/// it (its future is dropped instead).
#[derive(Clone)]
struct Bypass<S>(S);

impl<S, ReqB, B> Service<http::Request<ReqB>> for Bypass<S>
where
    S: Service<http::Request<ReqB>, Response = http::Response<B>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<B>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<B>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqB>) -> Self::Future {
        let slot = request.extensions_mut().remove::<Slot<B>>();
        let call = self.0.call(request);
        Box::pin(async move {
            let response = call.await?;
            if response.extensions().get::<Uncounted>().is_none() {
                return Ok(response);
            }
            let Some(sender) = slot.and_then(|slot| slot.0.lock().take()) else {
                return Ok(response);
            };
            match sender.send(response) {
                // Out past the circuit: wait to be dropped.
                Ok(()) => std::future::pending().await,
                // Nobody is waiting outside any more; nothing to protect.
                Err(response) => Ok(response),
            }
        })
    }
}

/// A peer's channel behind its [`Breaker`]: a `tower::Service` over gRPC requests
/// (`http::Request<_>` → `http::Response<B>`) with the inner service's error type. A
/// rejected call is answered `Ok` with a trailers-only UNAVAILABLE response and never
/// reaches the inner service. Clones share the circuit.
#[derive(Clone)]
pub struct BreakerService<S> {
    inner: Inner<S>,
    shared: Arc<Shared>,
}

#[derive(Clone)]
enum Inner<S> {
    Enabled(CircuitBreaker<Bypass<S>, GrpcClassifier>),
    Disabled(S),
}

impl<S> std::fmt::Debug for BreakerService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BreakerService")
            .field("peer", &self.shared.peer)
            .field("enabled", &matches!(self.inner, Inner::Enabled(_)))
            .finish_non_exhaustive()
    }
}

impl<S, ReqB, B> Service<http::Request<ReqB>> for BreakerService<S>
where
    S: Service<http::Request<ReqB>, Response = http::Response<B>> + Clone + Send + 'static,
    S::Error: Send + 'static,
    S::Future: Send + 'static,
    ReqB: Send + 'static,
    B: Default + Send + 'static,
{
    type Response = http::Response<B>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<B>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match &mut self.inner {
            Inner::Disabled(inner) => <S as Service<http::Request<ReqB>>>::poll_ready(inner, cx),
            Inner::Enabled(breaker) => {
                match <CircuitBreaker<Bypass<S>, GrpcClassifier> as Service<
                    http::Request<ReqB>,
                >>::poll_ready(breaker, cx)
                {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
                    Poll::Ready(Err(CircuitBreakerError::Inner(err))) => Poll::Ready(Err(err)),
                    // Not returned by readiness; should it be, `call` asks the circuit again
                    // and answers the rejection there.
                    Poll::Ready(Err(CircuitBreakerError::OpenCircuit)) => Poll::Ready(Ok(())),
                }
            }
        }
    }

    fn call(&mut self, mut request: http::Request<ReqB>) -> Self::Future {
        match &mut self.inner {
            Inner::Disabled(inner) => Box::pin(inner.call(request)),
            Inner::Enabled(breaker) => {
                let (sender, uncounted) = oneshot::channel();
                request
                    .extensions_mut()
                    .insert(Slot(Arc::new(parking_lot::Mutex::new(Some(sender)))));
                let call = breaker.call(request);
                let shared = Arc::clone(&self.shared);
                Box::pin(async move {
                    tokio::pin!(call);
                    tokio::select! {
                        biased;
                        // The circuit's future is dropped unrecorded; so is its half-open
                        // permit, which goes back to the pool.
                        Ok(response) = uncounted => Ok(response),
                        counted = &mut call => match counted {
                            Ok(response) => Ok(response),
                            Err(CircuitBreakerError::Inner(err)) => Err(err),
                            Err(CircuitBreakerError::OpenCircuit) => Ok(shared.reject()),
                        },
                    }
                })
            }
        }
    }
}

impl Shared {
    /// Counts and logs a rejected call and makes its answer.
    fn reject<B: Default>(&self) -> http::Response<B> {
        self.rejections.fetch_add(1, Ordering::Relaxed);
        // One line per rejection at debug: the transition to open is the warning, and
        // the rejection counter shows the volume.
        tracing::debug!(peer = %self.peer, "call rejected by the open circuit breaker");
        tonic::Status::unavailable(format!(
            "circuit breaker for {} is open after repeated failures; a probe is let through every {} ms",
            self.peer,
            self.open.as_millis()
        ))
        .into_http()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_codes_of_a_server_in_trouble_are_failures() {
        let failures: Vec<Code> = (0..=16)
            .map(Code::from_i32)
            .filter(|code| is_failure_code(*code))
            .collect();
        assert_eq!(
            failures,
            [Code::DeadlineExceeded, Code::Internal, Code::Unavailable]
        );
    }

    fn classify(response: http::Response<()>) -> bool {
        FailureClassifier::<_, ()>::classify(&GrpcClassifier, &Ok(response))
    }

    #[test]
    fn a_trailers_only_status_is_read_from_the_headers() {
        assert!(classify(tonic::Status::unavailable("down").into_http()));
        assert!(classify(tonic::Status::internal("bug").into_http()));
        assert!(!classify(
            tonic::Status::not_found("no such user").into_http()
        ));
        assert!(!classify(
            tonic::Status::invalid_argument("bad").into_http()
        ));
        assert!(!classify(tonic::Status::unauthenticated("who").into_http()));
    }

    #[test]
    fn headers_without_grpc_status_are_a_success_unless_the_http_status_maps_to_a_failure() {
        assert!(!classify(http::Response::new(())));
        let with_status = |status: http::StatusCode| {
            let mut response = http::Response::new(());
            *response.status_mut() = status;
            response
        };
        assert!(classify(with_status(http::StatusCode::SERVICE_UNAVAILABLE)));
        assert!(classify(with_status(http::StatusCode::BAD_GATEWAY)));
        assert!(!classify(with_status(http::StatusCode::UNAUTHORIZED)));
    }

    #[test]
    fn transport_errors_are_failures() {
        assert!(FailureClassifier::<http::Response<()>, &str>::classify(
            &GrpcClassifier,
            &Err("connection refused")
        ));
    }

    // That loading names each bad breaker key is the platform's API suite's
    // (platform/tests/api/config.rs): loading is the service module's job, above this one.
    #[test]
    fn the_default_section_is_valid() {
        assert!(
            BreakerConfig::default()
                .validate("peers.user.breaker")
                .is_ok()
        );
    }

    #[test]
    fn the_section_rejects_unknown_keys_and_reads_the_model() {
        let config: BreakerConfig =
            serde_json::from_str(r#"{"failure_model": "rate", "open_ms": 250}"#).unwrap();
        assert_eq!(config.failure_model, FailureModel::Rate);
        assert_eq!(config.open, Duration::from_millis(250));
        assert!(config.enabled);
        assert!(serde_json::from_str::<BreakerConfig>(r#"{"open_msec": 250}"#).is_err());
    }
}

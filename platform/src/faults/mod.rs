//! Fault injection on purpose: delays and aborts for a share of calls, on the server and
//! on peer clients, with the semantics of gRFC A33 (gRPC's xDS fault injection) and
//! Envoy's HTTP fault filter. Off by default; on only by configuration
//! (`faults.enabled`, see [`FaultsConfig`]), so chaos suites and staging can make a
//! service slow or failing without changing its code.
//!
//! For each call, in order (A33):
//!
//! 1. **Which faults.** The first rule, in name order, that picks the call's method and
//!    whose `delay_percent` draw hits gives the delay; likewise `abort_percent` for the
//!    abort. With `faults.allow_headers`, the call's own `x-envoy-fault-*` headers can ask
//!    for either (see [`FaultsConfig::allow_headers`]); a rule's fault comes first.
//! 2. **The cap.** A call with a fault is an *active fault* until it ends; with
//!    `faults.max_active_faults` active already, the call goes on unharmed (counted in
//!    `trellis_faults_skipped_total{side}`), so a fault can never hold every slot.
//! 3. **Delay, then abort.** The delay is spent inside the call's deadline (a delay past
//!    it ends as DEADLINE_EXCEEDED at the deadline); then an abort answers the call with
//!    its code without running it. Every fault counts in
//!    `trellis_faults_injected_total{side,rule,fault}` (`fault` is `delay` or `abort`;
//!    `rule` is the rule's name or `headers`), and `trellis_faults_active{side}` counts
//!    calls with a fault in progress.
//!
//! On the server ([`FaultLayer`]) faults apply to the service's own methods after
//! authentication and rate limits (health and reflection are never faulted): a delayed
//! call is a slow handler to everything above it — admission, metrics, spans. On a peer
//! client ([`crate::peer::Peers::with_faults`]) they apply per call before balancing,
//! breaker and retries (as A33's filter sits above them): an injected abort is the
//! call's answer, never retried and never counted against the peer's instances.

mod config;
mod layer;

pub use config::{FaultRule, FaultsConfig, MAX_DELAY_MS, code_named};
pub use layer::{FaultLayer, Faulted};

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::HeaderMap;
use prometheus::{IntCounterVec, IntGaugeVec, Opts};
use rand::Rng as _;
use tonic::{Code, Status};

use crate::metrics::{Metrics, MetricsError};

/// A33's header asking for a delay, in ms.
pub const DELAY_HEADER: &str = "x-envoy-fault-delay-request";
/// A33's header giving the share of calls the header's delay applies to, 0–100.
pub const DELAY_PERCENT_HEADER: &str = "x-envoy-fault-delay-request-percentage";
/// A33's header asking for an abort, as a gRPC code number.
pub const ABORT_HEADER: &str = "x-envoy-fault-abort-grpc-request";
/// A33's header giving the share of calls the header's abort applies to, 0–100.
pub const ABORT_PERCENT_HEADER: &str = "x-envoy-fault-abort-request-percentage";

/// The rule name header-asked faults are counted under.
const HEADERS_RULE: &str = "headers";

/// Which end of a call faults are injected at: the `side` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Calls this service serves.
    Server,
    /// Calls this service makes to a peer.
    Client,
}

impl Side {
    fn label(self) -> &'static str {
        match self {
            Self::Server => "server",
            Self::Client => "client",
        }
    }
}

/// The fault metrics of one process, shared by its server and its peer clients.
#[derive(Debug, Clone)]
pub struct FaultMetrics {
    injected: IntCounterVec,
    skipped: IntCounterVec,
    active: IntGaugeVec,
}

impl FaultMetrics {
    /// Registers `trellis_faults_injected_total{side,rule,fault}`,
    /// `trellis_faults_skipped_total{side}` and `trellis_faults_active{side}` in `metrics`.
    ///
    /// # Errors
    /// [`MetricsError::Register`] when a family is registered already.
    pub fn new(metrics: &Metrics) -> Result<Self, MetricsError> {
        Ok(Self {
            injected: metrics.register(IntCounterVec::new(
                Opts::new(
                    "trellis_faults_injected_total",
                    "Faults injected on purpose (faults.*), by side, rule and kind (delay, abort).",
                ),
                &["side", "rule", "fault"],
            )?)?,
            skipped: metrics.register(IntCounterVec::new(
                Opts::new(
                    "trellis_faults_skipped_total",
                    "Calls a fault rule picked that went on unharmed because \
                     faults.max_active_faults were active, by side.",
                ),
                &["side"],
            )?)?,
            active: metrics.register(IntGaugeVec::new(
                Opts::new(
                    "trellis_faults_active",
                    "Calls with an injected fault in progress, by side.",
                ),
                &["side"],
            )?)?,
        })
    }
}

/// A rule ready to apply: its name and its parsed abort code.
#[derive(Debug)]
struct Armed {
    name: String,
    rule: FaultRule,
    code: Option<Code>,
}

/// The faults of one side: the server's rules, or one peer's (see the module docs).
#[derive(Debug)]
pub struct Faults {
    side: Side,
    rules: Vec<Armed>,
    allow_headers: bool,
    max_active: Option<usize>,
    active: AtomicUsize,
    metrics: Option<FaultMetrics>,
}

impl Faults {
    /// The server's faults under `config`, counted in `metrics` when given; `None` when
    /// nothing could be injected (off, or no rule and no headers), so no layer need be
    /// installed.
    pub fn for_server(config: &FaultsConfig, metrics: Option<&FaultMetrics>) -> Option<Arc<Self>> {
        config
            .serves_faults()
            .then(|| Self::new(Side::Server, config, config.server.iter(), metrics))
    }

    /// The faults of calls to `peer` under `config`, counted in `metrics` when given;
    /// `None` when nothing could be injected.
    pub fn for_peer(
        config: &FaultsConfig,
        peer: &str,
        metrics: Option<&FaultMetrics>,
    ) -> Option<Arc<Self>> {
        let rules = config.peers.get(peer);
        (config.enabled && (config.allow_headers || rules.is_some_and(|r| !r.is_empty())))
            .then(|| Self::new(Side::Client, config, rules.into_iter().flatten(), metrics))
    }

    fn new<'a>(
        side: Side,
        config: &FaultsConfig,
        rules: impl Iterator<Item = (&'a String, &'a FaultRule)>,
        metrics: Option<&FaultMetrics>,
    ) -> Arc<Self> {
        Arc::new(Self {
            side,
            rules: rules
                .map(|(name, rule)| Armed {
                    name: name.clone(),
                    code: rule.code(),
                    rule: rule.clone(),
                })
                .collect(),
            allow_headers: config.allow_headers,
            max_active: config.max_active_faults,
            active: AtomicUsize::new(0),
            metrics: metrics.cloned(),
        })
    }

    /// What to do to the call to `path` with `headers`: `None` leaves it alone (no fault
    /// picked, or the cap is reached). The returned plan holds an active-fault slot until
    /// it is dropped.
    pub fn plan(self: &Arc<Self>, path: &str, headers: &HeaderMap) -> Option<Plan> {
        let mut random = rand::rng();
        let mut hit = |percent: f64| percent >= 100.0 || random.random::<f64>() * 100.0 < percent;
        let mut delay = None;
        let mut abort = None;
        for armed in self.rules.iter().filter(|armed| armed.rule.picks(path)) {
            if delay.is_none()
                && let Some(d) = armed.rule.delay
                && hit(armed.rule.delay_percent)
            {
                delay = Some((d, armed.name.as_str()));
            }
            if abort.is_none()
                && let Some(code) = armed.code
                && hit(armed.rule.abort_percent)
            {
                abort = Some((code, armed.name.as_str()));
            }
        }
        if self.allow_headers {
            if delay.is_none()
                && let Some(ms) = header_number(headers, DELAY_HEADER)
                && hit(header_percent(headers, DELAY_PERCENT_HEADER))
            {
                delay = Some((Duration::from_millis(ms.min(MAX_DELAY_MS)), HEADERS_RULE));
            }
            if abort.is_none()
                && let Some(code) = header_number(headers, ABORT_HEADER)
                    .filter(|n| (1..=16).contains(n))
                    .and_then(|n| i32::try_from(n).ok())
                    .map(Code::from_i32)
                && hit(header_percent(headers, ABORT_PERCENT_HEADER))
            {
                abort = Some((code, HEADERS_RULE));
            }
        }
        if delay.is_none() && abort.is_none() {
            return None;
        }
        let taken = self.active.fetch_add(1, Ordering::AcqRel);
        if self.max_active.is_some_and(|max| taken >= max) {
            self.active.fetch_sub(1, Ordering::AcqRel);
            if let Some(metrics) = &self.metrics {
                metrics
                    .skipped
                    .with_label_values(&[self.side.label()])
                    .inc();
            }
            return None;
        }
        let side = self.side.label();
        if let Some(metrics) = &self.metrics {
            metrics.active.with_label_values(&[side]).inc();
            for (rule, fault) in [
                delay.map(|(_, rule)| (rule, "delay")),
                abort.map(|(_, rule)| (rule, "abort")),
            ]
            .into_iter()
            .flatten()
            {
                metrics
                    .injected
                    .with_label_values(&[side, rule, fault])
                    .inc();
            }
        }
        tracing::debug!(
            side,
            path,
            delay_ms = delay.map(|(d, _)| d.as_millis() as u64),
            abort = abort.map(|(code, _)| code as i32),
            "injecting a fault"
        );
        Some(Plan {
            delay: delay.map(|(d, _)| d),
            abort: abort.map(|(code, rule)| {
                Status::new(
                    code,
                    format!("fault injected by rule `{rule}` (faults.{side} configuration)"),
                )
            }),
            _slot: Slot(Arc::clone(self)),
        })
    }
}

/// The faults picked for one call: wait [`Plan::delay`], then answer [`Plan::abort`] if
/// any, else run the call; keep the plan until the call ends (it is an active fault).
#[derive(Debug)]
pub struct Plan {
    /// How long to hold the call before it goes on.
    pub delay: Option<Duration>,
    /// The status to answer instead of running the call.
    pub abort: Option<Status>,
    /// Held, never read: dropping it gives the slot back.
    _slot: Slot,
}

/// An active-fault slot, given back when dropped.
#[derive(Debug)]
struct Slot(Arc<Faults>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
        if let Some(metrics) = &self.0.metrics {
            metrics
                .active
                .with_label_values(&[self.0.side.label()])
                .dec();
        }
    }
}

/// A header's value as a whole number; `None` when absent or not one.
fn header_number(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// A percentage header's value, 0–100; 100 when absent or unreadable (A33's default).
fn header_percent(headers: &HeaderMap, name: &str) -> f64 {
    header_number(headers, name).map_or(100.0, |n| n.min(100) as f64)
}

#[cfg(test)]
mod tests;

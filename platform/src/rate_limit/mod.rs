//! Rate limits per caller: a keyed GCRA limiter (`governor`) per [`RateClass`], as the
//! service's [`AccessPolicy`] assigns methods to classes.
//!
//! An authenticated method counts against the verified caller's subject (the
//! [`Principal`] the authentication layer attaches, so it runs inside that layer); a
//! public one against the client's address ([`super::client_address`]: the TCP peer, or
//! the address a trusted proxy names), IPv6 per /64 prefix (RFC 6177: one site's subnet,
//! which one host can rotate through). Internal methods are not limited unless declared:
//! their callers are services, carrying every user's traffic. Health and reflection are
//! not routes of the service, so no limit reaches them.
//!
//! A call over its budget is answered RESOURCE_EXHAUSTED at once, with a
//! `google.rpc.RetryInfo` (when the bucket has room again) and a `google.rpc.QuotaFailure`
//! (the class and who was counted), and counted in
//! `trellis_rate_limited_total{grpc_service,grpc_method}`.
//!
//! Memory is bounded: every [`PRUNE_EVERY`] checks of a class (at most once per
//! [`PRUNE_INTERVAL`]), callers whose bucket has filled up again are forgotten (their
//! state is the same as a new caller's); and a class tracks at most `rate_limits.max_keys`
//! callers — past that, callers it does not know yet share one overflow budget until
//! pruning makes room.
//!
//! Configuration (`rate_limits.*`, see [`RateLimitsConfig`]): `enabled`, `max_keys`,
//! and per class `<class>.per_second` and `<class>.burst` over the class's defaults.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use governor::Quota;
use governor::clock::{Clock as _, DefaultClock};
use governor::nanos::Nanos;
use governor::state::keyed::{DashMapStateStore, ShrinkableKeyedStateStore};
use governor::state::{RateLimiter, StateStore};
use http::{Request, Response};
use prometheus::{IntCounterVec, Opts};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, QuotaViolation, StatusExt as _};
use tower::{Layer, Service};

mod config;

pub use config::{DEFAULT_MAX_KEYS, MAX_PER_SECOND, RateLimitsConfig, RateOverride};

use crate::auth::{Access, AccessPolicy, Principal, RateClass};
use crate::context::source_bucket;
use crate::metrics::grpc::{MethodInfo, UNKNOWN, method_table};
use crate::metrics::{Metrics, MetricsError};
use crate::server::client_address::client_address_of;

/// Idle callers are forgotten once per this many checks of a class…
pub const PRUNE_EVERY: u64 = 1024;
/// …but not more often than this.
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(1);

/// Who a call counts against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    /// The verified caller's subject.
    Subject(Box<str>),
    /// The client's address (IPv6: its /64), `::` when the transport has none.
    Address(IpAddr),
    /// Every caller a full class does not know yet.
    Overflow,
}

impl Key {
    /// The `QuotaFailure` subject: `subject:<sub>` or `clientip:<address>` (the form of
    /// Google's own examples).
    fn describe(&self) -> String {
        match self {
            Self::Subject(subject) => format!("subject:{subject}"),
            Self::Address(IpAddr::V6(prefix)) => format!("clientip:{prefix}/64"),
            Self::Address(ip) => format!("clientip:{ip}"),
            Self::Overflow => "overflow".to_owned(),
        }
    }
}

/// governor's DashMap store with a cap: past `cap` keys, a key it does not hold is
/// measured as [`Key::Overflow`].
#[derive(Debug)]
struct CappedStore {
    map: DashMapStateStore<Key>,
    cap: usize,
}

impl StateStore for CappedStore {
    type Key = Key;

    fn measure_and_replace<T, F, E>(&self, key: &Key, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        if self.map.len() >= self.cap && !self.map.contains_key(key) {
            return self.map.measure_and_replace(&Key::Overflow, f);
        }
        self.map.measure_and_replace(key, f)
    }
}

impl ShrinkableKeyedStateStore<Key> for CappedStore {
    fn retain_recent(&self, drop_below: Nanos) {
        ShrinkableKeyedStateStore::retain_recent(&self.map, drop_below);
    }

    fn shrink_to_fit(&self) {
        ShrinkableKeyedStateStore::shrink_to_fit(&self.map);
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// One class's limiter and its housekeeping.
struct ClassLimiter {
    class: RateClass,
    limiter: RateLimiter<Key, CappedStore, DefaultClock>,
    checks: AtomicU64,
    started: Instant,
    /// Milliseconds after `started` of the last pruning.
    pruned_at_ms: AtomicU64,
    /// [`PRUNE_INTERVAL`], or less in tests.
    prune_interval: Duration,
}

impl ClassLimiter {
    /// `None` when the class is off (`per_second` 0).
    fn new(class: RateClass, max_keys: usize) -> Option<Self> {
        let burst = NonZeroU32::new(class.burst)?;
        if class.per_second <= 0.0 {
            return None;
        }
        let period = Duration::from_secs_f64(1.0 / class.per_second.min(MAX_PER_SECOND));
        let quota = Quota::with_period(period)?.allow_burst(burst);
        let store = CappedStore {
            map: DashMapStateStore::default(),
            cap: max_keys.max(1),
        };
        Some(Self {
            class,
            limiter: RateLimiter::new(quota, store, DefaultClock::default()),
            checks: AtomicU64::new(0),
            started: Instant::now(),
            pruned_at_ms: AtomicU64::new(0),
            prune_interval: PRUNE_INTERVAL,
        })
    }

    /// Counts one call of `key`; the wait until it could pass when over budget.
    fn check(&self, key: &Key) -> Result<(), Duration> {
        if self
            .checks
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(PRUNE_EVERY)
        {
            self.prune();
        }
        self.limiter
            .check_key(key)
            .map_err(|not_until| not_until.wait_time_from(self.limiter.clock().now()))
    }

    /// Forgets callers whose bucket is full again, at most once per [`PRUNE_INTERVAL`].
    fn prune(&self) {
        let now_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.pruned_at_ms.load(Ordering::Relaxed);
        let interval = u64::try_from(self.prune_interval.as_millis()).unwrap_or(u64::MAX);
        let due = last == 0 || now_ms.saturating_sub(last) >= interval;
        if due
            && self
                .pruned_at_ms
                .compare_exchange(last, now_ms.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
    }
}

/// `trellis_rate_limited_total` and the method labels.
struct Limited {
    family: IntCounterVec,
    methods: HashMap<String, MethodInfo>,
}

impl Limited {
    fn count(&self, path: &str) {
        let (service, method) = self.methods.get(path).map_or((UNKNOWN, UNKNOWN), |info| {
            (info.service.as_str(), info.method.as_str())
        });
        self.family.with_label_values(&[service, method]).inc();
    }
}

struct Limits {
    policy: AccessPolicy,
    classes: HashMap<&'static str, ClassLimiter>,
    limited: Option<Limited>,
}

/// Enforces the rate classes of an [`AccessPolicy`]. A route layer: install it inside
/// the authentication layer (it reads the [`Principal`] that layer attaches).
#[derive(Clone)]
pub struct RateLimitLayer {
    limits: Arc<Limits>,
}

impl std::fmt::Debug for RateLimitLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let classes: Vec<_> = self
            .limits
            .classes
            .values()
            .map(|limiter| limiter.class)
            .collect();
        f.debug_struct("RateLimitLayer")
            .field("classes", &classes)
            .finish_non_exhaustive()
    }
}

impl RateLimitLayer {
    /// The limits of `policy`'s classes as `config` overrides them; `None` when
    /// `config.enabled` is false or every class is off.
    pub fn new(policy: &AccessPolicy, config: &RateLimitsConfig) -> Option<Self> {
        if !config.enabled {
            return None;
        }
        let classes: HashMap<_, _> = policy
            .rate_classes()
            .into_iter()
            .filter_map(|class| {
                let class = config.effective(class);
                ClassLimiter::new(class, config.max_keys).map(|limiter| (class.name, limiter))
            })
            .collect();
        if classes.is_empty() {
            return None;
        }
        Some(Self {
            limits: Arc::new(Limits {
                policy: policy.clone(),
                classes,
                limited: None,
            }),
        })
    }

    /// Counts refused calls in `metrics` as
    /// `trellis_rate_limited_total{grpc_service,grpc_method}`, labelled from the methods
    /// the encoded descriptor sets describe (any other path as `unknown`).
    ///
    /// # Errors
    /// [`MetricsError`] when `metrics` already has the family or a set is malformed.
    pub fn with_metrics(
        self,
        metrics: &Metrics,
        descriptor_sets: &[&[u8]],
    ) -> Result<Self, MetricsError> {
        let family = metrics.register(IntCounterVec::new(
            Opts::new(
                "trellis_rate_limited_total",
                "Calls refused RESOURCE_EXHAUSTED by a rate limit, by method.",
            ),
            &["grpc_service", "grpc_method"],
        )?)?;
        let methods = method_table(descriptor_sets, None)?;
        let Limits {
            policy, classes, ..
        } = Arc::into_inner(self.limits).ok_or_else(|| {
            MetricsError::Register(prometheus::Error::Msg(
                "the rate-limit layer is already in use".to_owned(),
            ))
        })?;
        Ok(Self {
            limits: Arc::new(Limits {
                policy,
                classes,
                limited: Some(Limited { family, methods }),
            }),
        })
    }

    /// Callers tracked in class `name` (tests watch memory stay bounded with it).
    pub fn tracked(&self, name: &str) -> usize {
        self.limits
            .classes
            .get(name)
            .map_or(0, |limiter| limiter.limiter.len())
    }
}

impl Limits {
    /// `Err` with the status to answer when the call is over its class's budget.
    fn check<B>(&self, request: &Request<B>) -> Result<(), Status> {
        let path = request.uri().path();
        let Some(limiter) = self
            .policy
            .rate_class(path)
            .and_then(|class| self.classes.get(class.name))
        else {
            return Ok(());
        };
        let principal = request.extensions().get::<Principal>();
        let key = match principal {
            Some(principal) if self.policy.access(path) != Access::Public => {
                Key::Subject(principal.subject.as_str().into())
            }
            _ => Key::Address(
                client_address_of(request.extensions())
                    .map_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED), source_bucket),
            ),
        };
        let Err(wait) = limiter.check(&key) else {
            return Ok(());
        };
        if let Some(limited) = &self.limited {
            limited.count(path);
        }
        tracing::debug!(class = limiter.class.name, caller = %key.describe(), "rate limited");
        Err(exhausted(limiter.class, &key, wait))
    }
}

/// RESOURCE_EXHAUSTED with `RetryInfo` (`wait`) and a `QuotaFailure` naming the class.
fn exhausted(class: RateClass, key: &Key, wait: Duration) -> Status {
    let description = format!(
        "at most {} calls at once and {}/s after that for `{}` calls",
        class.burst, class.per_second, class.name
    );
    let mut details = ErrorDetails::with_retry_info(Some(wait));
    details.set_quota_failure(vec![QuotaViolation {
        quota_id: class.name.to_owned(),
        quota_value: i64::from(class.burst),
        ..QuotaViolation::new(key.describe(), description)
    }]);
    Status::with_error_details(
        Code::ResourceExhausted,
        format!(
            "rate limit exceeded for `{}` calls; retry in {} ms",
            class.name,
            wait.as_millis().max(1)
        ),
        details,
    )
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimited<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimited {
            inner,
            limits: Arc::clone(&self.limits),
        }
    }
}

/// The service made by [`RateLimitLayer`].
#[derive(Clone)]
pub struct RateLimited<S> {
    inner: S,
    limits: Arc<Limits>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for RateLimited<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimited")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimited<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        match self.limits.check(&request) {
            Ok(()) => Box::pin(self.inner.call(request)),
            Err(status) => Box::pin(std::future::ready(Ok(status.into_http()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_second: f64, burst: u32, max_keys: usize) -> ClassLimiter {
        ClassLimiter::new(RateClass::new("test", per_second, burst), max_keys)
            .unwrap_or_else(|| panic!("the class is on"))
    }

    fn address(i: u32) -> Key {
        Key::Address(IpAddr::from(i.to_be_bytes()))
    }

    #[test]
    fn a_caller_gets_its_burst_then_a_wait_of_at_most_one_refill() {
        let limiter = limiter(0.5, 3, 10);
        for _ in 0..3 {
            assert_eq!(limiter.check(&address(1)), Ok(()));
        }
        let wait = limiter.check(&address(1)).err().unwrap_or_default();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(2),
            "{wait:?}"
        );
        assert_eq!(limiter.check(&Key::Subject("ada".into())), Ok(()));
    }

    #[test]
    fn past_the_key_cap_new_callers_share_one_overflow_budget() {
        let limiter = limiter(0.001, 1, 2);
        assert_eq!(limiter.check(&address(1)), Ok(()));
        assert_eq!(limiter.check(&address(2)), Ok(()));
        // Full: a third caller takes the overflow budget, a fourth finds it spent.
        assert_eq!(limiter.check(&address(3)), Ok(()));
        assert!(limiter.check(&address(4)).is_err());
        // Known callers keep their own (spent) budgets.
        assert!(limiter.check(&address(1)).is_err());
        assert!(limiter.limiter.len() <= 3);
    }

    #[test]
    fn callers_whose_bucket_has_refilled_are_forgotten() {
        // A refill of a microsecond: every bucket is full again by the next check.
        let mut limiter = limiter(MAX_PER_SECOND, 1, 1_000_000);
        limiter.prune_interval = Duration::ZERO;
        for i in 0..u32::try_from(PRUNE_EVERY).unwrap_or(1024) {
            assert_eq!(limiter.check(&address(i)), Ok(()));
        }
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(limiter.check(&address(u32::MAX)), Ok(()));
        assert_eq!(limiter.limiter.len(), 1);
    }

    #[test]
    fn a_class_at_zero_per_second_is_off_and_config_overrides_defaults() {
        assert!(ClassLimiter::new(RateClass::new("off", 0.0, 5), 10).is_none());
        let config = RateLimitsConfig::default().with_class("read", 1.5, 7);
        assert_eq!(
            config.effective(RateClass::READ),
            RateClass::new("read", 1.5, 7)
        );
        assert_eq!(config.effective(RateClass::WRITE), RateClass::WRITE);
        let policy = AccessPolicy::default().rate("a.B/Get", RateClass::READ);
        assert!(RateLimitLayer::new(&policy, &RateLimitsConfig::off()).is_none());
        let all_off = RateLimitsConfig::default()
            .with_class("read", 0.0, 1)
            .with_class("write", 0.0, 1);
        assert!(RateLimitLayer::new(&policy, &all_off).is_none());
    }

    #[test]
    fn the_status_carries_retry_info_and_quota_failure() {
        let status = exhausted(
            RateClass::SIGN_IN,
            &Key::Address("2001:db8:1:2::".parse().unwrap_or(IpAddr::from([0; 4]))),
            Duration::from_millis(1500),
        );
        assert_eq!(status.code(), Code::ResourceExhausted);
        let details = status.get_error_details();
        assert_eq!(
            details.retry_info().and_then(|info| info.retry_delay),
            Some(Duration::from_millis(1500))
        );
        let violation = details
            .quota_failure()
            .and_then(|failure| failure.violations.first().cloned())
            .unwrap_or_default();
        assert_eq!(violation.subject, "clientip:2001:db8:1:2::/64");
        assert_eq!(violation.quota_id, "sign_in");
    }
}

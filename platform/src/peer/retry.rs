//! Retries of peer calls, as gRPC's retry design (gRFC A6) has them: only methods the
//! protos declare safe to repeat ([`super::methods`]), only on UNAVAILABLE, at most
//! `max_attempts` attempts in all, a jittered exponential backoff between them, never
//! past the call's deadline, and a retry budget so a struggling peer is not hit with
//! three times its load (linkerd's defaults: 20 % of calls plus 10 per second, over
//! 10 s). A call that never reached a server (connection refused) is retried whatever
//! the method — A6's transparent retry — since nothing can have happened twice.
//!
//! An attempt is committed once response headers arrive (A6): a stream that already
//! answered is never retried.

use std::time::Duration;

use serde::Deserialize;
use serde_with::{DurationMilliSeconds, serde_as};
use tower::retry::backoff::{ExponentialBackoff, ExponentialBackoffMaker, MakeBackoff as _};
use tower::retry::budget::{Budget as _, TpsBudget};
use tower::util::rng::HasherRng;

use crate::config::{ConfigError, NonZeroMilliSeconds};

/// How long the budget remembers calls.
const BUDGET_WINDOW: Duration = Duration::from_secs(10);

/// `peers.<name>.retry.*`.
#[serde_as]
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts in all, the first included; 1 turns retries off. Default 3 (at most 5,
    /// gRPC's cap).
    pub max_attempts: u32,
    /// `initial_backoff_ms`: backoff before the first retry, ms; it doubles per retry, plus up to
    /// as much again at random. Default 10.
    #[serde(rename = "initial_backoff_ms")]
    #[serde_as(as = "NonZeroMilliSeconds")]
    pub initial_backoff: Duration,
    /// `max_backoff_ms`: longest backoff, ms. Default 200.
    #[serde(rename = "max_backoff_ms")]
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    pub max_backoff: Duration,
    /// Retries allowed as a percentage of calls over the last 10 s. Default 20.
    pub budget_percent: u32,
    /// Retries per second allowed whatever the traffic. Default 10.
    pub budget_min_per_second: u32,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(200),
            budget_percent: 20,
            budget_min_per_second: 10,
        }
    }
}

impl RetryConfig {
    /// Checks the values; `prefix` is the section's key.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the key.
    pub fn validate(&self, prefix: &str) -> Result<(), ConfigError> {
        if !(1..=5).contains(&self.max_attempts) {
            return Err(ConfigError::invalid(
                format!("{prefix}.max_attempts"),
                "must be 1 to 5",
            ));
        }
        if self.max_backoff < self.initial_backoff {
            return Err(ConfigError::invalid(
                format!("{prefix}.max_backoff_ms"),
                "must be at least initial_backoff_ms",
            ));
        }
        if self.budget_percent > 1000 {
            return Err(ConfigError::invalid(
                format!("{prefix}.budget_percent"),
                "must be at most 1000",
            ));
        }
        Ok(())
    }
}

/// One peer's retry rules and budget, shared by every call to it.
#[derive(Debug)]
pub(crate) struct RetryPolicy {
    pub(crate) max_attempts: u32,
    budget: TpsBudget,
    backoff: ExponentialBackoffMaker,
}

impl RetryPolicy {
    pub(crate) fn new(config: &RetryConfig) -> Self {
        let initial = config.initial_backoff.max(Duration::from_millis(1));
        let max = config.max_backoff.max(initial);
        Self {
            max_attempts: config.max_attempts.clamp(1, 5),
            budget: TpsBudget::new(
                BUDGET_WINDOW,
                config.budget_min_per_second,
                config.budget_percent as f32 / 100.0,
            ),
            // Validated above (min ≤ max, max > 0, jitter in 0..=100): cannot fail.
            backoff: ExponentialBackoffMaker::new(initial, max, 1.0, HasherRng::default())
                .unwrap_or_default(),
        }
    }

    /// Counts a call (each call earns the budget its share of retries).
    pub(crate) fn deposit(&self) {
        self.budget.deposit();
    }

    /// Takes one retry from the budget; `false` when it is spent.
    pub(crate) fn withdraw(&self) -> bool {
        self.budget.withdraw()
    }

    /// The backoff sequence of one call.
    pub(crate) fn backoff(&self) -> ExponentialBackoff {
        self.backoff.clone().make_backoff()
    }
}

/// `err` and every error under it: its `source()` chain, looking inside I/O errors that
/// wrap another (their `source()` skips the wrapped error itself).
fn chain<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(err), |err| {
        err.downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
            .map(|inner| inner as &(dyn std::error::Error + 'static))
            .or_else(|| err.source())
    })
}

/// Whether `err` (a failed attempt) certainly never reached a server: the connection was
/// refused, so the request was not sent.
pub(crate) fn never_sent(err: &(dyn std::error::Error + 'static)) -> bool {
    chain(err).any(|err| {
        err.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
    })
}

/// Whether `err` is tonic's client-side timeout (`TimeoutExpired`), anywhere in its
/// chain: the channel's own timer, set from the `grpc-timeout` the attempt sent.
pub(crate) fn timed_out(err: &(dyn std::error::Error + 'static)) -> bool {
    chain(err).any(|err| err.is::<tonic::TimeoutExpired>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_allows_its_floor_then_a_share_of_calls() {
        let policy = RetryPolicy::new(&RetryConfig {
            budget_min_per_second: 1,
            budget_percent: 50,
            ..RetryConfig::default()
        });
        let mut allowed = 0;
        while policy.withdraw() {
            allowed += 1;
            assert!(allowed < 100, "the budget never runs out");
        }
        assert!(
            allowed >= 1,
            "the floor allows some retries with no traffic"
        );
        for _ in 0..10 {
            policy.deposit();
        }
        let mut more = 0;
        while policy.withdraw() {
            more += 1;
        }
        assert!(
            (4..=6).contains(&more),
            "10 calls at 50 % buy ~5 retries, got {more}"
        );
    }

    #[test]
    fn a_refused_connection_is_known_unsent() {
        #[derive(Debug)]
        struct Connect(std::io::Error);
        impl std::fmt::Display for Connect {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("connect failed")
            }
        }
        impl std::error::Error for Connect {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let refused = || std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(never_sent(&Connect(refused())));
        assert!(never_sent(&std::io::Error::other(refused())));
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(!never_sent(&reset));
    }

    #[test]
    fn config_rejects_out_of_range_values() {
        let bad = RetryConfig {
            max_attempts: 6,
            ..RetryConfig::default()
        };
        assert!(bad.validate("peers.user.retry").is_err());
        assert!(RetryConfig::default().validate("peers.user.retry").is_ok());
    }
}

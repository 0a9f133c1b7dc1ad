//! Throttling of failed sign-ins per account and per source address (OWASP ASVS 5.0
//! V6.3.1 / 4.0 V2.2.1: at most 100 failed attempts per hour per account), with
//! governor's GCRA limiter. Capacity comes back steadily, so a victim is never locked
//! out for good.
//!
//! The state is behind `parking_lot` locks, which cannot be poisoned: a panic elsewhere
//! while a lock was held never turns the throttle off (fail open) or wedges it.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use parking_lot::Mutex;

/// One failure budget: at most `max_per_hour` failures in any one-hour window.
struct Budget<K: Hash + Eq + Clone> {
    limiter: DefaultKeyedRateLimiter<K>,
    blocked_until: Mutex<HashMap<K, Instant>>,
    failures: AtomicU64,
}

/// Expired state is dropped once per this many failures.
const PRUNE_EVERY: u64 = 256;

impl<K: Hash + Eq + Clone> Budget<K> {
    /// A burst of half the budget plus a steady refill of the other half per hour keeps
    /// any one-hour window at or under `max_per_hour` (burst + rate × 1 h).
    fn new(max_per_hour: u32) -> Self {
        let half = NonZeroU32::new((max_per_hour / 2).max(1)).unwrap_or(NonZeroU32::MIN);
        let period = Duration::from_secs(3600) / half.get();
        let quota = Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_hour(half))
            .allow_burst(half);
        Self {
            limiter: DefaultKeyedRateLimiter::keyed(quota),
            blocked_until: Mutex::new(HashMap::new()),
            failures: AtomicU64::new(0),
        }
    }

    fn retry_after(&self, key: &K) -> Option<Duration> {
        let now = Instant::now();
        self.blocked_until
            .lock()
            .get(key)
            .and_then(|until| until.checked_duration_since(now))
    }

    fn record_failure(&self, key: &K) {
        let now = Instant::now();
        // Pruning walks every key: do it now and then, not on each failure, which is
        // exactly the path an attack makes hot.
        let prune = self
            .failures
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(PRUNE_EVERY);
        if let Err(not_until) = self.limiter.check_key(key) {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            self.blocked_until.lock().insert(key.clone(), now + wait);
        }
        if prune {
            self.limiter.retain_recent();
            self.blocked_until.lock().retain(|_, until| *until > now);
        }
    }
}

/// The sign-in throttle.
pub struct LoginThrottle {
    accounts: Budget<String>,
    sources: Budget<IpAddr>,
}

impl std::fmt::Debug for LoginThrottle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LoginThrottle")
    }
}

impl LoginThrottle {
    /// A throttle allowing `per_account` failures per hour per account and `per_source`
    /// per source address.
    pub fn new(per_account: u32, per_source: u32) -> Self {
        Self {
            accounts: Budget::new(per_account),
            sources: Budget::new(per_source),
        }
    }

    /// How long `account` or `source` must wait, when either is over its budget.
    pub fn retry_after(&self, account: &str, source: Option<IpAddr>) -> Option<Duration> {
        let account = self.accounts.retry_after(&account_key(account));
        let source = source.and_then(|ip| self.sources.retry_after(&ip));
        account.into_iter().chain(source).max()
    }

    /// Counts one failed sign-in.
    pub fn record_failure(&self, account: &str, source: Option<IpAddr>) {
        self.accounts.record_failure(&account_key(account));
        if let Some(ip) = source {
            self.sources.record_failure(&ip);
        }
    }
}

/// Case variants of one address share a budget.
fn account_key(account: &str) -> String {
    account.trim().to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_account_is_throttled_after_its_budget_and_others_are_not() {
        let throttle = LoginThrottle::new(10, 1000);
        for _ in 0..5 {
            assert_eq!(throttle.retry_after("ada@example.com", None), None);
            throttle.record_failure("Ada@Example.com", None);
        }
        // The burst is half the hourly budget; the next failure trips it.
        throttle.record_failure("ada@example.com", None);
        let wait = throttle.retry_after("ada@example.com", None);
        assert!(
            wait.is_some_and(|w| w <= Duration::from_secs(3600 / 5)),
            "{wait:?}"
        );
        assert_eq!(throttle.retry_after("grace@example.com", None), None);
    }

    #[test]
    fn a_panic_while_a_lock_is_held_does_not_turn_the_throttle_off() {
        let throttle = LoginThrottle::new(2, 1000);
        // A budget of 2 per hour is a burst of 1: the second failure trips it.
        throttle.record_failure("ada@example.com", None);
        throttle.record_failure("ada@example.com", None);
        assert!(throttle.retry_after("ada@example.com", None).is_some());
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _held = throttle.accounts.blocked_until.lock();
            panic!("a bug while the lock is held");
        }));
        assert!(panicked.is_err());
        // A std mutex would now be poisoned, and the throttle used to fail open here.
        assert!(throttle.retry_after("ada@example.com", None).is_some());
        throttle.record_failure("grace@example.com", None);
        throttle.record_failure("grace@example.com", None);
        assert!(throttle.retry_after("grace@example.com", None).is_some());
    }

    #[test]
    fn a_source_is_throttled_across_accounts() {
        let throttle = LoginThrottle::new(1000, 4);
        let ip: IpAddr = [192, 0, 2, 1].into();
        for i in 0..3 {
            throttle.record_failure(&format!("user{i}@example.com"), Some(ip));
        }
        assert!(throttle.retry_after("new@example.com", Some(ip)).is_some());
        assert_eq!(
            throttle.retry_after("new@example.com", Some([192, 0, 2, 2].into())),
            None
        );
    }
}

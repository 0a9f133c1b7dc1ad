//! The sign-up rate limit: `CreateUser` calls per client address (the TCP peer's, or
//! the one a trusted proxy names: `trellis_platform::server::client_address`), with governor's keyed
//! GCRA limiter (see [`SignUpRate`] for the rule and its settings).
//!
//! The limiter keeps one small entry per address seen. Entries whose bucket has filled
//! up again are dropped every [`PRUNE_EVERY`] calls, so memory is bounded by the
//! addresses seen within one refill of a bucket (`burst / per_minute` minutes), not by
//! every address ever seen.

use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use trellis_platform::context::source_bucket;

use crate::config::SignUpRate;

/// Expired entries are dropped once per this many checks.
pub const PRUNE_EVERY: u64 = 1024;

/// Counts sign-ups per source address.
pub struct SignUpLimiter {
    limiter: Option<DefaultKeyedRateLimiter<IpAddr>>,
    checks: AtomicU64,
}

impl std::fmt::Debug for SignUpLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignUpLimiter")
            .field("enabled", &self.limiter.is_some())
            .finish_non_exhaustive()
    }
}

impl SignUpLimiter {
    /// A limiter at `rate`; `per_minute == 0` (or `burst == 0`) turns it off.
    pub fn new(rate: SignUpRate) -> Self {
        let limiter = NonZeroU32::new(rate.per_minute)
            .zip(NonZeroU32::new(rate.burst))
            .map(|(per_minute, burst)| {
                DefaultKeyedRateLimiter::keyed(Quota::per_minute(per_minute).allow_burst(burst))
            });
        Self {
            limiter,
            checks: AtomicU64::new(0),
        }
    }

    /// A limiter that allows everything.
    pub fn disabled() -> Self {
        Self::new(SignUpRate::OFF)
    }

    /// Counts one sign-up from `source` (the client's address; `None` when the transport
    /// has none, and all such calls share one bucket).
    ///
    /// # Errors
    /// How long to wait when `source` has no sign-up left.
    pub fn check(&self, source: Option<IpAddr>) -> Result<(), Duration> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        if self
            .checks
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(PRUNE_EVERY)
        {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        let key = source.map_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED), source_bucket);
        limiter
            .check_key(&key)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// Addresses (or /64 prefixes) the limiter holds state for.
    #[cfg(test)]
    pub fn tracked(&self) -> usize {
        self.limiter
            .as_ref()
            .map_or(0, DefaultKeyedRateLimiter::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        s.parse().ok()
    }

    #[test]
    fn an_address_gets_its_burst_then_a_wait_of_at_most_one_refill() {
        let limiter = SignUpLimiter::new(SignUpRate {
            per_minute: 2,
            burst: 3,
        });
        for _ in 0..3 {
            assert!(limiter.check(ip("192.0.2.1")).is_ok());
        }
        let wait = limiter.check(ip("192.0.2.1")).err().unwrap_or_default();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(30),
            "{wait:?}"
        );
        // Another address has its own budget.
        assert!(limiter.check(ip("192.0.2.2")).is_ok());
    }

    #[test]
    fn ipv6_addresses_share_a_bucket_per_64_prefix() {
        let limiter = SignUpLimiter::new(SignUpRate {
            per_minute: 1,
            burst: 1,
        });
        assert!(limiter.check(ip("2001:db8:1:2::1")).is_ok());
        assert!(limiter.check(ip("2001:db8:1:2:ffff::9")).is_err());
        assert!(limiter.check(ip("2001:db8:1:3::1")).is_ok());
        // An IPv4-mapped address is its IPv4 address.
        assert!(limiter.check(ip("198.51.100.7")).is_ok());
        assert!(limiter.check(ip("::ffff:198.51.100.7")).is_err());
        assert_eq!(limiter.tracked(), 3);
    }

    #[test]
    fn zero_per_minute_turns_the_limit_off() {
        let limiter = SignUpLimiter::new(SignUpRate {
            per_minute: 0,
            burst: 1,
        });
        for _ in 0..100 {
            assert!(limiter.check(ip("192.0.2.1")).is_ok());
        }
        assert_eq!(limiter.tracked(), 0);
    }

    #[test]
    fn addresses_whose_bucket_has_refilled_are_forgotten() {
        // A refill of a few ns: every bucket is full again by the next check.
        let limiter = SignUpLimiter::new(SignUpRate {
            per_minute: u32::MAX,
            burst: 1,
        });
        for i in 0..PRUNE_EVERY {
            let source = IpAddr::V6(Ipv6Addr::from_bits(u128::from(i) << 64));
            assert!(limiter.check(Some(source)).is_ok());
        }
        assert_eq!(limiter.tracked() as u64, PRUNE_EVERY);
        assert!(limiter.check(ip("192.0.2.1")).is_ok());
        assert_eq!(limiter.tracked(), 1);
    }

    #[test]
    fn calls_without_an_address_share_one_bucket() {
        let limiter = SignUpLimiter::new(SignUpRate {
            per_minute: 1,
            burst: 1,
        });
        assert!(limiter.check(None).is_ok());
        assert!(limiter.check(None).is_err());
    }
}

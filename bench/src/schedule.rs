//! The open-loop arrival schedule: request `i` is due at `start + i / rate`, whatever
//! happened to the requests before it. Latency is measured from that intended time, so a
//! server that falls behind shows its queueing delay instead of slowing the generator
//! down ("coordinated omission", as wrk2 corrects it).

use std::time::Duration;

use tokio::time::Instant;

/// Constant-rate send times from a start instant.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    start: Instant,
    /// Seconds between two sends.
    period_secs: f64,
}

impl Schedule {
    /// `rate` requests per second from `start`.
    ///
    /// # Errors
    /// A rate that is not a positive, finite number.
    pub fn new(start: Instant, rate: f64) -> Result<Self, String> {
        if !(rate.is_finite() && rate > 0.0) {
            return Err(format!("rate must be a positive number, not {rate}"));
        }
        Ok(Self {
            start,
            period_secs: 1.0 / rate,
        })
    }

    /// When request `index` (0-based) is meant to be sent.
    #[must_use]
    pub fn intended(&self, index: u64) -> Instant {
        // Computed from the start each time, so rounding never accumulates.
        #[allow(clippy::cast_precision_loss)] // exact below 2^53 requests
        let offset = index as f64 * self.period_secs;
        self.start + Duration::from_secs_f64(offset)
    }

    /// How many requests are due in `[from, to)`.
    #[must_use]
    pub fn count_between(&self, from: Instant, to: Instant) -> u64 {
        self.first_at_or_after(to)
            .saturating_sub(self.first_at_or_after(from))
    }

    /// The index of the first request due at or after `t`.
    fn first_at_or_after(&self, t: Instant) -> u64 {
        let elapsed = t.saturating_duration_since(self.start).as_secs_f64();
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // non-negative
        let mut index = (elapsed / self.period_secs).ceil() as u64;
        // The float estimate may be one off either way: settle it on `intended`.
        while index > 0 && self.intended(index - 1) >= t {
            index -= 1;
        }
        while self.intended(index) < t {
            index += 1;
        }
        index
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_are_evenly_spaced_from_the_start() -> Result<(), String> {
        let start = Instant::now();
        let schedule = Schedule::new(start, 1000.0)?;
        assert_eq!(schedule.intended(0), start);
        assert_eq!(schedule.intended(1) - start, Duration::from_millis(1));
        assert_eq!(schedule.intended(2500) - start, Duration::from_millis(2500));
        Ok(())
    }

    #[test]
    fn rounding_does_not_drift_over_many_requests() -> Result<(), String> {
        let start = Instant::now();
        let schedule = Schedule::new(start, 3.0)?;
        let late = schedule.intended(3_000_000) - start;
        assert!(late.abs_diff(Duration::from_secs(1_000_000)) < Duration::from_micros(1));
        Ok(())
    }

    #[test]
    fn requests_due_in_a_window_are_counted_exactly() -> Result<(), String> {
        let start = Instant::now();
        let schedule = Schedule::new(start, 1000.0)?;
        let at = |ms| start + Duration::from_millis(ms);
        // Due at 100 ms … 399 ms: the window's start is in, its end is out.
        assert_eq!(schedule.count_between(at(100), at(400)), 300);
        assert_eq!(schedule.count_between(start, at(1)), 1);
        assert_eq!(schedule.count_between(at(5), at(5)), 0);
        let odd = Schedule::new(start, 3.0)?;
        assert_eq!(odd.count_between(start, at(1000)), 3);
        Ok(())
    }

    #[test]
    fn a_rate_that_is_not_positive_is_refused() {
        let start = Instant::now();
        assert!(Schedule::new(start, 0.0).is_err());
        assert!(Schedule::new(start, -5.0).is_err());
        assert!(Schedule::new(start, f64::NAN).is_err());
    }
}

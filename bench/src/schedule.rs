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
    fn a_rate_that_is_not_positive_is_refused() {
        let start = Instant::now();
        assert!(Schedule::new(start, 0.0).is_err());
        assert!(Schedule::new(start, -5.0).is_err());
        assert!(Schedule::new(start, f64::NAN).is_err());
    }
}

//! The `rate_limits` section of a service's configuration.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::auth::{AccessPolicy, RateClass};
use crate::config::ConfigError;

/// The default of `rate_limits.max_keys`: callers tracked per class.
pub const DEFAULT_MAX_KEYS: usize = 100_000;
/// The highest `per_second` a class may be given (one call a microsecond).
pub const MAX_PER_SECOND: f64 = 1_000_000.0;

/// The `rate_limits` section of a service's configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct RateLimitsConfig {
    /// Whether any rate limit applies. Default `true`.
    pub enabled: bool,
    /// Most callers (subjects or addresses) tracked per class; new callers past it share
    /// one budget. Default 100000.
    pub max_keys: usize,
    /// Overrides of the service's classes by name (`rate_limits.read.per_second = 100`).
    #[serde(flatten)]
    pub classes: BTreeMap<String, RateOverride>,
}

impl Default for RateLimitsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_keys: DEFAULT_MAX_KEYS,
            classes: BTreeMap::new(),
        }
    }
}

/// An override of one class's budget; unset fields keep the class's default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateOverride {
    /// Calls a second once the burst is spent; 0 turns the class's limit off.
    pub per_second: Option<f64>,
    /// Calls a caller may make at once.
    pub burst: Option<u32>,
}

impl RateLimitsConfig {
    /// No rate limits at all.
    pub fn off() -> Self {
        Self {
            enabled: false,
            ..Self::default()
        }
    }

    /// Overrides class `name` (e.g. in tests).
    #[must_use]
    pub fn with_class(mut self, name: &str, per_second: f64, burst: u32) -> Self {
        self.classes.insert(
            name.to_owned(),
            RateOverride {
                per_second: Some(per_second),
                burst: Some(burst),
            },
        );
        self
    }

    /// `class` with this config's overrides applied.
    pub fn effective(&self, class: RateClass) -> RateClass {
        let over = self.classes.get(class.name).copied().unwrap_or_default();
        RateClass {
            per_second: over.per_second.unwrap_or(class.per_second),
            burst: over.burst.unwrap_or(class.burst),
            ..class
        }
    }

    /// Checks the section against the classes `policy` declares.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the key: `rate_limits.max_keys` of 0, an override
    /// of a class no method is in (a misspelt name), a `per_second` that is negative, not
    /// finite or over [`MAX_PER_SECOND`], or a burst of 0 on a class that is on.
    pub fn validate(&self, policy: &AccessPolicy) -> Result<(), ConfigError> {
        crate::config::require_positive("rate_limits.max_keys", self.max_keys as u64)?;
        let classes = policy.rate_classes();
        for name in self.classes.keys() {
            if !classes.iter().any(|class| class.name == name) {
                let known: Vec<_> = classes.iter().map(|class| class.name).collect();
                return Err(ConfigError::invalid(
                    format!("rate_limits.{name}"),
                    format!(
                        "no method is in this rate class; the service's classes are {}, \
                         beside `enabled` and `max_keys`",
                        known.join(", ")
                    ),
                ));
            }
        }
        for class in classes.into_iter().map(|class| self.effective(class)) {
            if !(class.per_second.is_finite() && (0.0..=MAX_PER_SECOND).contains(&class.per_second))
            {
                return Err(ConfigError::invalid(
                    format!("rate_limits.{}.per_second", class.name),
                    format!("must be between 0 (off) and {MAX_PER_SECOND}"),
                ));
            }
            if class.per_second > 0.0 && class.burst == 0 {
                return Err(ConfigError::invalid(
                    format!("rate_limits.{}.burst", class.name),
                    "must be at least 1 (or set per_second to 0 to turn the class off)",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_key_at_fault() {
        let policy = AccessPolicy::default().rate("a.B/Get", RateClass::READ);
        let message = |config: RateLimitsConfig| {
            config
                .validate(&policy)
                .err()
                .map(|err| err.to_string())
                .unwrap_or_default()
        };
        assert!(RateLimitsConfig::default().validate(&policy).is_ok());
        assert!(
            message(RateLimitsConfig::default().with_class("raed", 1.0, 1))
                .contains("`rate_limits.raed`")
        );
        assert!(
            message(RateLimitsConfig::default().with_class("read", -1.0, 1))
                .contains("`rate_limits.read.per_second`")
        );
        assert!(
            message(RateLimitsConfig::default().with_class("read", f64::NAN, 1))
                .contains("`rate_limits.read.per_second`")
        );
        assert!(
            message(RateLimitsConfig::default().with_class("write", 1.0, 0))
                .contains("`rate_limits.write.burst`")
        );
        assert!(
            RateLimitsConfig::default()
                .with_class("write", 0.0, 0)
                .validate(&policy)
                .is_ok()
        );
        let no_keys = RateLimitsConfig {
            max_keys: 0,
            ..RateLimitsConfig::default()
        };
        assert!(message(no_keys).contains("`rate_limits.max_keys`"));
    }
}

//! The user service's own settings, beside the platform's sections: defaults in code,
//! then an optional file, then `TRELLIS_USER__*` environment variables (see
//! `docs/operating/configuration.md`).

use serde::Deserialize;
use trellis_platform::config::{ConfigError, Validate, require_positive};

use crate::domain::PasswordHasher;
use crate::domain::password::{HashCost, OWASP_MIN_ITERATIONS, OWASP_MIN_MEMORY_KIB};

/// The user service's own keys.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// argon2id cost, worker count and queue bound.
    pub password_hashing: HashCost,
    /// `CreateUser` calls allowed per client address.
    pub sign_up_rate: SignUpRate,
    /// A running hasher to use instead of starting one from `password_hashing`: never
    /// read from configuration; tests set it to hold the hashing workers.
    #[serde(skip)]
    pub shared_hasher: Option<PasswordHasher>,
}

impl Settings {
    /// The password hasher: [`Self::shared_hasher`] when set, else a new pool at
    /// `password_hashing`.
    ///
    /// # Errors
    /// As [`PasswordHasher::new`].
    pub fn password_hasher(&self) -> anyhow::Result<PasswordHasher> {
        match &self.shared_hasher {
            Some(hasher) => Ok(hasher.clone()),
            None => PasswordHasher::new(self.password_hashing),
        }
    }
}

/// The sign-up rate limit: a token bucket per client address (GCRA, as `governor`
/// implements it) holding `burst` sign-ups and refilled with `per_minute` a minute.
/// IPv6 sources share a bucket per /64 prefix, the block one host usually holds
/// (RFC 6177). Behind a proxy, list it in `server.trusted_proxies` so the address it
/// names is counted (otherwise every call counts against the proxy's own address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SignUpRate {
    /// Sign-ups a minute per address once the burst is spent; 0 turns the limit off.
    /// Default 10.
    pub per_minute: u32,
    /// Sign-ups one address may make at once. Default 60.
    pub burst: u32,
}

impl Default for SignUpRate {
    fn default() -> Self {
        Self {
            per_minute: 10,
            burst: 60,
        }
    }
}

impl SignUpRate {
    /// No limit.
    pub const OFF: Self = Self {
        per_minute: 0,
        burst: 0,
    };
}

impl Validate for Settings {
    fn validate(&self) -> Result<(), ConfigError> {
        let cost = &self.password_hashing;
        if cost.memory_kib < OWASP_MIN_MEMORY_KIB {
            return Err(ConfigError::invalid(
                "password_hashing.memory_kib",
                format!("must be at least {OWASP_MIN_MEMORY_KIB} (OWASP's argon2id minimum)"),
            ));
        }
        if cost.iterations < OWASP_MIN_ITERATIONS {
            return Err(ConfigError::invalid(
                "password_hashing.iterations",
                format!("must be at least {OWASP_MIN_ITERATIONS} (OWASP's argon2id minimum)"),
            ));
        }
        require_positive("password_hashing.parallelism", u64::from(cost.parallelism))?;
        require_positive(
            "password_hashing.max_concurrent",
            cost.max_concurrent as u64,
        )?;
        if self.sign_up_rate.per_minute > 0 {
            require_positive("sign_up_rate.burst", u64::from(self.sign_up_rate.burst))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    use crate::Config;

    fn load(env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::load_from(
            None,
            env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        )
    }

    #[test]
    fn defaults_listen_on_50051_with_a_sqlite_file() -> Result<(), ConfigError> {
        let config = load(&[])?;
        assert_eq!(config.server.listen_addr.port(), 50051);
        assert_eq!(config.service.password_hashing, HashCost::default());
        Ok(())
    }

    #[test]
    fn environment_overrides_nested_keys() -> Result<(), ConfigError> {
        let config = load(&[
            ("TRELLIS_USER__SERVER__LISTEN_ADDR", "127.0.0.1:6000"),
            ("TRELLIS_USER__SERVER__DRAIN_TIMEOUT_MS", "250"),
            ("TRELLIS_USER__TELEMETRY__LOG_FORMAT", "json"),
        ])?;
        assert_eq!(config.server.listen_addr.to_string(), "127.0.0.1:6000");
        assert_eq!(config.server.drain_timeout, Duration::from_millis(250));
        Ok(())
    }

    #[test]
    fn a_bad_value_names_its_key() {
        let err = load(&[("TRELLIS_USER__SERVER__DRAIN_TIMEOUT_MS", "soon")]).map(drop);
        let message = err.map_err(|e| e.to_string()).err().unwrap_or_default();
        assert!(message.contains("server.drain_timeout_ms"), "{message}");

        let err = load(&[("TRELLIS_USER__PASSWORD_HASHING__MEMORY_KIB", "1024")]).map(drop);
        let message = err.map_err(|e| e.to_string()).err().unwrap_or_default();
        assert!(message.contains("password_hashing.memory_kib"), "{message}");
    }

    #[test]
    fn hashing_queue_and_sign_up_rate_are_read_from_the_environment() -> Result<(), ConfigError> {
        let config = load(&[])?;
        assert_eq!(config.service.password_hashing.queue_bound(), 16);
        assert_eq!(config.service.sign_up_rate, SignUpRate::default());

        let config = load(&[
            ("TRELLIS_USER__PASSWORD_HASHING__MAX_QUEUED", "3"),
            ("TRELLIS_USER__SIGN_UP_RATE__PER_MINUTE", "0"),
        ])?;
        assert_eq!(config.service.password_hashing.max_queued, Some(3));
        assert_eq!(config.service.sign_up_rate.per_minute, 0);

        let err = load(&[("TRELLIS_USER__SIGN_UP_RATE__BURST", "0")]).map(drop);
        let message = err.map_err(|e| e.to_string()).err().unwrap_or_default();
        assert!(message.contains("sign_up_rate.burst"), "{message}");
        Ok(())
    }

    #[test]
    fn an_unknown_key_is_rejected_by_name() {
        let err = load(&[("TRELLIS_USER__SERVER__LISTEN_PORT", "1")]).map(drop);
        let message = err.map_err(|e| e.to_string()).err().unwrap_or_default();
        assert!(message.contains("listen_port"), "{message}");
    }

    #[test]
    fn a_partly_set_section_keeps_the_services_defaults() -> Result<(), ConfigError> {
        let config = load(&[
            ("TRELLIS_USER__SERVER__DRAIN_TIMEOUT_MS", "250"),
            ("TRELLIS_USER__PEERS__AUTH__TIMEOUT_MS", "700"),
        ])?;
        assert_eq!(config.server.listen_addr.port(), 50051);
        assert_eq!(config.peers["auth"].addresses, "http://127.0.0.1:50052");
        assert_eq!(config.peers["auth"].timeout, Duration::from_millis(700));
        assert_eq!(
            config.peers["notification"].addresses,
            "http://127.0.0.1:50053"
        );
        Ok(())
    }

    #[test]
    fn unknown_and_mistyped_top_level_keys_are_rejected_by_name() {
        let err = load(&[("TRELLIS_USER__LISTEN_PORT", "1")]).map(drop);
        let message = err.map_err(|e| e.to_string()).err().unwrap_or_default();
        assert!(message.contains("`listen_port`"), "{message}");
        // The hint names the keys there are: the platform's sections and the service's.
        assert!(message.contains("page_token_secret"), "{message}");
        assert!(message.contains("password_hashing"), "{message}");

        let err = load(&[("TRELLIS_USER__PASSWORD_HASHING__MEMORY_KIB", "lots")]).map(drop);
        let message = err.map_err(|e| e.to_string()).err().unwrap_or_default();
        assert!(message.contains("password_hashing.memory_kib"), "{message}");
    }
}

//! The notification service's own settings, beside the platform's sections: defaults in
//! code, then an optional file, then `TRELLIS_NOTIFICATION__*` environment variables (see
//! `docs/operating/configuration.md`).

use serde::Deserialize;
use trellis_platform::config::{ConfigError, Validate, require_positive};

pub use crate::domain::hub::StreamLimits;
pub use crate::domain::live::FeedSettings;

/// The notification service's own keys.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Caps on open `Subscribe`/`Connect` streams.
    pub streams: StreamLimits,
    /// How the live feed learns of commits (its poll and SQLite check intervals).
    pub feed: FeedSettings,
}

impl Validate for Settings {
    fn validate(&self) -> Result<(), ConfigError> {
        let streams = &self.streams;
        require_positive("streams.max_per_user", streams.max_per_user as u64)?;
        require_positive("streams.max_total", streams.max_total as u64)?;
        if streams.max_per_user > streams.max_total {
            return Err(ConfigError::invalid(
                "streams.max_per_user",
                format!("must not exceed streams.max_total ({})", streams.max_total),
            ));
        }
        require_positive("feed.poll_interval_ms", self.feed.poll_interval_ms)?;
        let check = self.feed.sqlite_check_interval_ms;
        if !(1..=100).contains(&check) {
            return Err(ConfigError::invalid(
                "feed.sqlite_check_interval_ms",
                format!(
                    "must be 1 to 100 (ms), not {check}: a commit by another process is delivered this late"
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::Config;

    fn load(env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::load_from(
            None,
            env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        )
    }

    fn error_of(env: &[(&str, &str)]) -> String {
        load(env)
            .map(drop)
            .map_err(|e| e.to_string())
            .err()
            .unwrap_or_default()
    }

    #[test]
    fn defaults_cap_streams_at_8_per_user_and_10000_in_all() -> Result<(), ConfigError> {
        let config = load(&[])?;
        assert_eq!(config.server.listen_addr.port(), 50053);
        assert_eq!(
            config.service.streams,
            StreamLimits {
                max_per_user: 8,
                max_total: 10_000
            }
        );
        Ok(())
    }

    #[test]
    fn environment_sets_the_stream_caps() -> Result<(), ConfigError> {
        let config = load(&[
            ("TRELLIS_NOTIFICATION__STREAMS__MAX_PER_USER", "2"),
            ("TRELLIS_NOTIFICATION__STREAMS__MAX_TOTAL", "50"),
        ])?;
        assert_eq!(config.service.streams.max_per_user, 2);
        assert_eq!(config.service.streams.max_total, 50);
        Ok(())
    }

    #[test]
    fn a_zero_or_inconsistent_cap_names_its_key() {
        let message = error_of(&[("TRELLIS_NOTIFICATION__STREAMS__MAX_PER_USER", "0")]);
        assert!(message.contains("streams.max_per_user"), "{message}");
        let message = error_of(&[("TRELLIS_NOTIFICATION__STREAMS__MAX_TOTAL", "0")]);
        assert!(message.contains("streams.max_total"), "{message}");
        let message = error_of(&[
            ("TRELLIS_NOTIFICATION__STREAMS__MAX_PER_USER", "20"),
            ("TRELLIS_NOTIFICATION__STREAMS__MAX_TOTAL", "10"),
        ]);
        assert!(message.contains("streams.max_per_user"), "{message}");
    }

    #[test]
    fn feed_intervals_default_to_a_second_and_50_ms_and_are_bounded() -> Result<(), ConfigError> {
        let config = load(&[])?;
        assert_eq!(
            config.service.feed,
            FeedSettings {
                poll_interval_ms: 1000,
                sqlite_check_interval_ms: 50
            }
        );
        let message = error_of(&[(
            "TRELLIS_NOTIFICATION__FEED__SQLITE_CHECK_INTERVAL_MS",
            "500",
        )]);
        assert!(
            message.contains("feed.sqlite_check_interval_ms"),
            "{message}"
        );
        let message = error_of(&[("TRELLIS_NOTIFICATION__FEED__POLL_INTERVAL_MS", "0")]);
        assert!(message.contains("feed.poll_interval_ms"), "{message}");
        Ok(())
    }

    #[test]
    fn an_unknown_or_mistyped_key_is_rejected_by_name() {
        let message = error_of(&[("TRELLIS_NOTIFICATION__STREAMS__MAX_PER_USR", "1")]);
        assert!(message.contains("max_per_usr"), "{message}");
        let message = error_of(&[("TRELLIS_NOTIFICATION__STREAMS__MAX_TOTAL", "many")]);
        assert!(message.contains("streams.max_total"), "{message}");
    }
}

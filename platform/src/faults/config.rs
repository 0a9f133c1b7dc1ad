//! The `faults` section of a service's configuration: rules of injected delays and
//! aborts, off unless `faults.enabled = true`.
//!
//! ```toml
//! [faults]
//! enabled = true
//! max_active_faults = 64            # none by default
//!
//! [faults.server.slow-get-user]      # calls this service serves
//! method = "trellis.user.v1.UserService/GetUser"
//! delay_ms = 200
//! delay_percent = 50
//!
//! [faults.peers.user.flaky]          # calls this service makes to its peer `user`
//! method = "trellis.user.v1.UserService/*"
//! abort_code = "UNAVAILABLE"
//! abort_percent = 10
//! ```
//!
//! As environment variables: `TRELLIS_AUTH__FAULTS__ENABLED=true`,
//! `TRELLIS_AUTH__FAULTS__PEERS__USER__FLAKY__ABORT_CODE=UNAVAILABLE`, … (a rule's name
//! is any key; it labels the rule's metrics).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde_with::{DurationMilliSeconds, serde_as};
use tonic::Code;

use crate::config::{ConfigError, Validate};
use crate::metrics::grpc::{ALL_CODES, code_name};

/// Longest delay a rule may give, in ms (an hour: a fault that outlives every deadline is
/// a blackhole, which a delay this long already is).
pub const MAX_DELAY_MS: u64 = 3_600_000;

/// The `faults` section (see the module docs). Default: off, no rules.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultsConfig {
    /// Whether any fault is injected. Default `false`: no rule applies and no fault
    /// header is read, whatever else is set (and the layers are not installed at all).
    pub enabled: bool,
    /// Most faults active at once on the server, and on the calls to each peer (calls
    /// being delayed or aborted; gRFC A33's `max_active_faults`): past it a call that a rule picks goes on unharmed.
    /// Default: no cap.
    pub max_active_faults: Option<usize>,
    /// Whether a call's own `x-envoy-fault-*` headers may ask for a fault (gRFC A33,
    /// Envoy's header-controlled faults): `x-envoy-fault-delay-request` (ms) with
    /// `x-envoy-fault-delay-request-percentage`, `x-envoy-fault-abort-grpc-request` (a
    /// code number) with `x-envoy-fault-abort-request-percentage` (percentages default to
    /// 100). Default `false`; only with `enabled`, in test environments: any caller could
    /// then delay its own calls, which hold a server slot while they wait (bounded by
    /// `max_active_faults` and the call's deadline).
    pub allow_headers: bool,
    /// Rules for calls this service serves, by rule name.
    pub server: BTreeMap<String, FaultRule>,
    /// Rules for calls this service makes, by peer name, then rule name.
    pub peers: BTreeMap<String, BTreeMap<String, FaultRule>>,
}

/// One rule: which calls it picks, and what it does to a share of them. A rule's delay
/// comes first, then its abort (gRFC A33's order); a call both delays pick is delayed
/// once, by the first rule in name order.
#[serde_as]
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultRule {
    /// The calls the rule picks: `package.Service/Method`, `package.Service/*` or `*`
    /// (every call; the default). Health and reflection are never faulted on a server.
    pub method: String,
    /// Delay before the call goes on, in ms. Default: none.
    #[serde_as(as = "Option<DurationMilliSeconds<u64>>")]
    #[serde(rename = "delay_ms")]
    pub delay: Option<Duration>,
    /// Share of picked calls delayed, 0–100. Default 100.
    pub delay_percent: f64,
    /// The gRPC code a call is aborted with, by its canonical name (`UNAVAILABLE`,
    /// `DEADLINE_EXCEEDED`, …; not `OK`). Default: none.
    pub abort_code: Option<String>,
    /// Share of picked calls aborted, 0–100. Default 100.
    pub abort_percent: f64,
}

impl Default for FaultRule {
    fn default() -> Self {
        Self {
            method: "*".to_owned(),
            delay: None,
            delay_percent: 100.0,
            abort_code: None,
            abort_percent: 100.0,
        }
    }
}

impl FaultRule {
    /// Whether the rule picks the call to `path` (`/package.Service/Method`).
    pub fn picks(&self, path: &str) -> bool {
        let path = path.strip_prefix('/').unwrap_or(path);
        match self.method.as_str() {
            "*" => true,
            method => match method.strip_suffix("/*") {
                Some(service) => path
                    .split_once('/')
                    .is_some_and(|(called, _)| called == service),
                None => path == method,
            },
        }
    }

    /// The rule's abort code, parsed (checked by [`FaultsConfig::validate`]).
    pub fn code(&self) -> Option<Code> {
        self.abort_code.as_deref().and_then(code_named)
    }

    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        let method = self.method.as_str();
        let shape_ok = method == "*"
            || method.split_once('/').is_some_and(|(service, name)| {
                service.contains('.')
                    && !service.contains(['/', '*'])
                    && !name.is_empty()
                    && (name == "*" || !name.contains(['/', '*']))
            });
        if !shape_ok {
            return Err(ConfigError::invalid(
                format!("{key}.method"),
                format!("`{method}` is not `package.Service/Method`, `package.Service/*` or `*`"),
            ));
        }
        for (name, percent) in [
            ("delay_percent", self.delay_percent),
            ("abort_percent", self.abort_percent),
        ] {
            if !(0.0..=100.0).contains(&percent) {
                return Err(ConfigError::invalid(
                    format!("{key}.{name}"),
                    format!("{percent} is not a percentage from 0 to 100"),
                ));
            }
        }
        if let Some(delay) = self.delay
            && delay > Duration::from_millis(MAX_DELAY_MS)
        {
            return Err(ConfigError::invalid(
                format!("{key}.delay_ms"),
                format!("at most {MAX_DELAY_MS} (an hour)"),
            ));
        }
        match self.abort_code.as_deref() {
            Some(name) if code_named(name).is_none() => Err(ConfigError::invalid(
                format!("{key}.abort_code"),
                format!(
                    "`{name}` is not a gRPC code other than OK (e.g. UNAVAILABLE, \
                     DEADLINE_EXCEEDED, INTERNAL)"
                ),
            )),
            None if self.delay.is_none() => Err(ConfigError::invalid(
                key.to_owned(),
                "a rule needs `delay_ms` or `abort_code`",
            )),
            _ => Ok(()),
        }
    }
}

/// The code named `name` in the gRPC spec's spelling (`UNAVAILABLE`), case-insensitive;
/// `None` for `OK` and unknown names.
pub fn code_named(name: &str) -> Option<Code> {
    ALL_CODES
        .iter()
        .copied()
        .filter(|code| *code != Code::Ok)
        .find(|code| code_name(*code).eq_ignore_ascii_case(name.trim()))
}

impl FaultsConfig {
    /// Whether a server side would inject anything (rules or headers), so a layer is
    /// worth installing.
    pub fn serves_faults(&self) -> bool {
        self.enabled && (self.allow_headers || !self.server.is_empty())
    }
}

impl Validate for FaultsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.max_active_faults == Some(0) {
            return Err(ConfigError::invalid(
                "faults.max_active_faults",
                "must be at least 1 (unset it for no cap; `faults.enabled = false` turns faults off)",
            ));
        }
        for (name, rule) in &self.server {
            rule.validate(&format!("faults.server.{name}"))?;
        }
        for (peer, rules) in &self.peers {
            for (name, rule) in rules {
                rule.validate(&format!("faults.peers.{peer}.{name}"))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(method: &str) -> FaultRule {
        FaultRule {
            method: method.to_owned(),
            abort_code: Some("UNAVAILABLE".to_owned()),
            ..FaultRule::default()
        }
    }

    #[test]
    fn a_rule_picks_one_method_a_service_or_everything() {
        let path = "/trellis.user.v1.UserService/GetUser";
        assert!(rule("*").picks(path));
        assert!(rule("trellis.user.v1.UserService/*").picks(path));
        assert!(rule("trellis.user.v1.UserService/GetUser").picks(path));
        assert!(!rule("trellis.user.v1.UserService/ListUsers").picks(path));
        assert!(!rule("trellis.user.v1.User/*").picks(path));
        assert!(!rule("trellis.auth.v1.AuthService/*").picks(path));
    }

    #[test]
    fn codes_are_read_by_their_spec_names_and_ok_is_not_a_fault() {
        assert_eq!(code_named("UNAVAILABLE"), Some(Code::Unavailable));
        assert_eq!(
            code_named("deadline_exceeded"),
            Some(Code::DeadlineExceeded)
        );
        assert_eq!(code_named("CANCELLED"), Some(Code::Cancelled));
        assert_eq!(code_named("OK"), None);
        assert_eq!(code_named("Unavailable "), Some(Code::Unavailable));
        assert_eq!(code_named("14"), None);
    }

    #[test]
    fn bad_rules_are_refused_naming_their_key() {
        let cases = [
            (rule("GetUser"), "faults.server.r.method"),
            (
                rule("trellis.user.v1.UserService/Get*"),
                "faults.server.r.method",
            ),
            (rule("*/GetUser"), "faults.server.r.method"),
            (
                FaultRule {
                    abort_percent: 101.0,
                    ..rule("*")
                },
                "faults.server.r.abort_percent",
            ),
            (
                FaultRule {
                    delay_percent: f64::NAN,
                    ..rule("*")
                },
                "faults.server.r.delay_percent",
            ),
            (
                FaultRule {
                    abort_code: Some("OK".to_owned()),
                    ..rule("*")
                },
                "faults.server.r.abort_code",
            ),
            (
                FaultRule {
                    abort_code: None,
                    ..rule("*")
                },
                "faults.server.r",
            ),
            (
                FaultRule {
                    delay: Some(Duration::from_millis(MAX_DELAY_MS + 1)),
                    ..rule("*")
                },
                "faults.server.r.delay_ms",
            ),
        ];
        for (rule, key) in cases {
            let config = FaultsConfig {
                server: BTreeMap::from([("r".to_owned(), rule.clone())]),
                ..FaultsConfig::default()
            };
            match config.validate() {
                Err(ConfigError::Invalid { key: got, .. }) => assert_eq!(got, key, "{rule:?}"),
                other => panic!("{rule:?} gave {other:?}"),
            }
        }
        let peers = FaultsConfig {
            peers: BTreeMap::from([(
                "user".to_owned(),
                BTreeMap::from([("r".to_owned(), rule("nope"))]),
            )]),
            ..FaultsConfig::default()
        };
        assert!(
            matches!(peers.validate(), Err(ConfigError::Invalid { key, .. }) if key == "faults.peers.user.r.method")
        );
        let zero = FaultsConfig {
            max_active_faults: Some(0),
            ..FaultsConfig::default()
        };
        assert!(zero.validate().is_err());
    }

    #[test]
    fn good_rules_pass() {
        let config = FaultsConfig {
            enabled: true,
            server: BTreeMap::from([
                ("a".to_owned(), rule("*")),
                (
                    "b".to_owned(),
                    FaultRule {
                        delay: Some(Duration::from_millis(100)),
                        abort_code: None,
                        delay_percent: 0.0,
                        ..rule("trellis.user.v1.UserService/*")
                    },
                ),
            ]),
            ..FaultsConfig::default()
        };
        assert!(config.validate().is_ok());
        assert!(config.serves_faults());
        assert!(!FaultsConfig::default().serves_faults());
    }
}

//! The whole configuration of a service: the sections every service has, declared once
//! here, with the service's own keys ([`Service::Settings`]) flattened beside them.
//!
//! | key | section |
//! |---|---|
//! | `server.*` | [`ServerConfig`]: listen address (default port: the service's), limits, shutdown |
//! | `telemetry.*` | [`TelemetryConfig`]: log format and filter, OTLP trace export (the `OTEL_*` variables win) |
//! | `database.*` | [`DatabaseConfig`]: default `sqlite://.data/<name>.db?mode=rwc` |
//! | `auth.*` | [`AuthConfig`]: token verification and this service's client secret |
//! | `tls.*` | [`TlsConfig`]: this workload's certificate, key and trust bundle (mutual TLS with SPIFFE IDs) |
//! | `peers.<name>.*` | [`PeerConfig`]: the service's peers, with its default addresses |
//! | `discovery.*` | [`DiscoveryConfig`]: how peers are found and the service registers (static, DNS, Consul, etcd) |
//! | `outbox.*` | [`OutboxConfig`]: delivery of outbox messages |
//! | `metrics.*` | [`MetricsConfig`]: the Prometheus endpoint (default port: the service's metrics port; 0 disables it) |
//! | `rate_limits.*` | [`RateLimitsConfig`]: the rate classes' budgets over their defaults, the key cap, the switch |
//! | `faults.*` | [`FaultsConfig`]: delays and aborts injected on purpose (off by default) |
//! | `page_token_secret` | the key that signs page tokens (random per process when unset) |
//! | `local_development` | `true` only on a developer's machine: known default secrets are accepted |
//! | anything else | the service's own [`Service::Settings`] |

use std::collections::HashMap;
use std::path::Path;

use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::Service;
use crate::auth::AuthConfig;
use crate::config::{self, ConfigError, Validate as _};
use crate::data::DatabaseConfig;
use crate::discovery::DiscoveryConfig;
use crate::faults::FaultsConfig;
use crate::metrics::MetricsConfig;
use crate::outbox::OutboxConfig;
use crate::pagination::PageTokenCodec;
use crate::peer::PeerConfig;
use crate::rate_limit::RateLimitsConfig;
use crate::server::ServerConfig;
use crate::telemetry::TelemetryConfig;
use crate::tls::TlsConfig;

/// The top-level keys of the platform's sections; every other key is the service's.
const PLATFORM_KEYS: [&str; 13] = [
    "server",
    "tls",
    "rate_limits",
    "faults",
    "metrics",
    "telemetry",
    "database",
    "auth",
    "peers",
    "discovery",
    "outbox",
    "page_token_secret",
    "local_development",
];

/// Secrets published with the project (the fallback of `deploy/compose.yaml`): anyone
/// can read them, so outside local development a service refuses to start with one
/// (OWASP ASVS V2.10.4: no default credentials).
pub const KNOWN_DEFAULT_SECRETS: &[&str] = &["compose-local-secret-change-me"];

/// Shortest accepted `page_token_secret`, in bytes (a 256-bit HMAC key).
pub const MIN_PAGE_TOKEN_SECRET_BYTES: usize = 32;

/// Every setting of service `S`. Built from [`Default`] in code (tests) or loaded with
/// [`Config::load`] (binaries).
///
/// Deserializing reads the platform's sections only: the service's own keys are
/// deserialized on their own, so a wrongly typed value still names its key (serde's
/// `flatten` would lose the key path).
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields, bound = "")]
pub struct Config<S: Service> {
    /// Listen address, limits, shutdown. Default port [`Service::DEFAULT_PORT`].
    pub server: ServerConfig,
    /// The Prometheus endpoint: `metrics.host` (default `0.0.0.0`) and `metrics.port`
    /// (default [`Service::DEFAULT_METRICS_PORT`]; 0 disables the endpoint).
    pub metrics: MetricsConfig,
    /// Log format and filter.
    pub telemetry: TelemetryConfig,
    /// Default `sqlite://.data/<name>.db?mode=rwc`.
    pub database: DatabaseConfig,
    /// Token verification and this service's client secret.
    pub auth: AuthConfig,
    /// Mutual TLS: unset (no `tls.cert`), every hop is plaintext.
    pub tls: TlsConfig,
    /// Peers by name, over [`Service::DEFAULT_PEERS`].
    pub peers: HashMap<String, PeerConfig>,
    /// How peers are found and this service registers: `discovery.backend` (default
    /// `static`: `peers.<name>.addresses` as given).
    pub discovery: DiscoveryConfig,
    /// Delivery of outbox messages (services that use the outbox).
    pub outbox: OutboxConfig,
    /// Rate limits per caller: `rate_limits.<class>.per_second` and `.burst` over the
    /// defaults of the classes the access policy declares, `rate_limits.max_keys`, and
    /// `rate_limits.enabled` (default `true`).
    pub rate_limits: RateLimitsConfig,
    /// Delays and aborts injected on purpose, on the server and on peer clients
    /// ([`crate::faults`]). Default off.
    pub faults: FaultsConfig,
    /// Key that signs page tokens. Unset: a random key per process, so tokens do not
    /// survive a restart or cross replicas; set it when running more than one. Secret.
    pub page_token_secret: Option<SecretString>,
    /// Whether this is a developer's own machine, where the published default secrets
    /// ([`KNOWN_DEFAULT_SECRETS`]) are accepted. Default `false`: anywhere else a known
    /// default in any secret key stops the process (exit 78) naming the key.
    pub local_development: bool,
    /// The service's own keys.
    #[serde(skip)]
    pub service: S::Settings,
}

impl<S: Service> Default for Config<S> {
    fn default() -> Self {
        Self {
            server: ServerConfig::with_port(S::DEFAULT_PORT),
            metrics: MetricsConfig::with_port(S::DEFAULT_METRICS_PORT),
            telemetry: TelemetryConfig::default(),
            database: DatabaseConfig::with_url(default_database_url::<S>()),
            auth: AuthConfig::default(),
            tls: TlsConfig::default(),
            peers: S::DEFAULT_PEERS
                .iter()
                .map(|(name, address)| ((*name).to_owned(), PeerConfig::with_address(*address)))
                .collect(),
            discovery: DiscoveryConfig::default(),
            outbox: OutboxConfig::default(),
            rate_limits: RateLimitsConfig::default(),
            faults: FaultsConfig::default(),
            page_token_secret: None,
            local_development: false,
            service: S::Settings::default(),
        }
    }
}

impl<S: Service> Clone for Config<S> {
    fn clone(&self) -> Self {
        Self {
            server: self.server.clone(),
            metrics: self.metrics.clone(),
            telemetry: self.telemetry.clone(),
            database: self.database.clone(),
            auth: self.auth.clone(),
            tls: self.tls.clone(),
            peers: self.peers.clone(),
            discovery: self.discovery.clone(),
            outbox: self.outbox.clone(),
            rate_limits: self.rate_limits.clone(),
            faults: self.faults.clone(),
            page_token_secret: self.page_token_secret.clone(),
            local_development: self.local_development,
            service: self.service.clone(),
        }
    }
}

impl<S: Service> std::fmt::Debug for Config<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("service", &S::INFO.name)
            .field("server", &self.server)
            .field("metrics", &self.metrics)
            .field("telemetry", &self.telemetry)
            .field("database", &self.database)
            .field("auth", &self.auth)
            .field("tls", &self.tls)
            .field("peers", &self.peers)
            .field("discovery", &self.discovery)
            .field("outbox", &self.outbox)
            .field("rate_limits", &self.rate_limits)
            .field("faults", &self.faults)
            .field("local_development", &self.local_development)
            .field("settings", &self.service)
            .finish_non_exhaustive()
    }
}

fn default_database_url<S: Service>() -> String {
    format!("sqlite://.data/{}.db?mode=rwc", S::INFO.name)
}

impl<S: Service> Config<S> {
    /// Loads the config from the process's environment: the defaults, overlaid by `file`
    /// when given, overlaid by the variables under `S::INFO.env_prefix`; then validates.
    ///
    /// # Errors
    /// [`ConfigError`] naming the key or file: a missing or malformed file, a value that
    /// does not fit its type, an unknown key, or a value [`Self::validate`] rejects.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(file, std::env::vars())
    }

    /// [`Self::load`] with the environment given explicitly, so tests need not touch the
    /// process's own.
    ///
    /// # Errors
    /// As [`Self::load`].
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        // Per-service defaults go in as the lowest layer, so a partly set section keeps
        // them (setting only `server.drain_timeout_ms` keeps the service's port).
        let mut defaults = vec![
            (
                "server.listen_addr".to_owned(),
                ServerConfig::with_port(S::DEFAULT_PORT)
                    .listen_addr
                    .to_string(),
            ),
            (
                "metrics.port".to_owned(),
                S::DEFAULT_METRICS_PORT.to_string(),
            ),
            ("database.url".to_owned(), default_database_url::<S>()),
        ];
        defaults.extend(
            S::DEFAULT_PEERS
                .iter()
                .map(|(name, address)| (format!("peers.{name}.addresses"), (*address).to_owned())),
        );
        let mut own = config::layered(&S::INFO, &defaults, file, env)?;
        let platform: ::config::Map<_, _> = PLATFORM_KEYS
            .iter()
            .filter_map(|key| own.remove_entry(*key))
            .collect();
        let mut config: Self = config::deserialize(platform)?;
        let unknown = unknown_key::<S::Settings>(&own);
        config.service = config::deserialize(own)
            .map_err(|err| unknown.map_or(err, unknown_key_error::<S::Settings>))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every rule the types cannot express, the platform's sections first, then
    /// the service's own.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the first key whose value is not acceptable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.server.validate()?;
        self.telemetry.validate()?;
        self.database.validate()?;
        self.auth.validate("auth")?;
        self.tls.validate()?;
        self.discovery.validate()?;
        self.faults.validate()?;
        if let Some(peer) = self
            .faults
            .peers
            .keys()
            .find(|peer| !self.peers.contains_key(*peer))
        {
            let mut known: Vec<_> = self.peers.keys().map(String::as_str).collect();
            known.sort_unstable();
            return Err(ConfigError::invalid(
                format!("faults.peers.{peer}"),
                format!("no peer is named `{peer}` (peers: {})", known.join(", ")),
            ));
        }
        let mut names: Vec<_> = self.peers.keys().collect();
        names.sort();
        for name in names {
            let peer = &self.peers[name];
            peer.validate(&format!("peers.{name}"), self.discovery.backend)?;
            if !self.tls.enabled() && peer.addresses.contains("https://") {
                return Err(ConfigError::invalid(
                    format!("peers.{name}.addresses"),
                    "an https:// address needs the tls section (tls.cert, tls.key, tls.ca): \
                     peers are reached over mutual TLS with this workload's certificate",
                ));
            }
        }
        if self.discovery.backend == crate::discovery::Backend::Consul
            && !self.local_development
            && !self.discovery.consul.has_token()
        {
            // Without ACLs, whoever reaches the agent registers instances of any service.
            return Err(ConfigError::invalid(
                "discovery.consul.token",
                "is required outside local development (or CONSUL_HTTP_TOKEN): without an \
                 ACL token, anyone who reaches the Consul agent can register instances of \
                 any service",
            ));
        }
        self.outbox.validate()?;
        self.rate_limits.validate(&S::access_policy())?;
        if let Some(secret) = &self.page_token_secret
            && secret.expose_secret().len() < MIN_PAGE_TOKEN_SECRET_BYTES
        {
            return Err(ConfigError::invalid(
                "page_token_secret",
                format!("must be at least {MIN_PAGE_TOKEN_SECRET_BYTES} bytes"),
            ));
        }
        self.service.validate()?;
        self.refuse_default_secrets()
    }

    /// Outside local development, refuses a secret that is a known default.
    fn refuse_default_secrets(&self) -> Result<(), ConfigError> {
        if self.local_development {
            return Ok(());
        }
        let mut secrets: Vec<(String, &SecretString)> = self.service.secrets();
        secrets.extend(
            [
                ("auth.client_secret", &self.auth.client_secret),
                ("page_token_secret", &self.page_token_secret),
            ]
            .into_iter()
            .filter_map(|(key, secret)| Some((key.to_owned(), secret.as_ref()?))),
        );
        match secrets
            .into_iter()
            .find(|(_, secret)| KNOWN_DEFAULT_SECRETS.contains(&secret.expose_secret()))
        {
            None => Ok(()),
            Some((key, _)) => {
                let variable = format!(
                    "{}__{}",
                    S::INFO.env_prefix,
                    key.replace('.', "__").to_uppercase()
                );
                Err(ConfigError::invalid(
                    key,
                    format!(
                        "is a published default secret; set a real one (e.g. the output of \
                         `openssl rand -hex 32`) in {variable}, or set local_development = \
                         true ({}__LOCAL_DEVELOPMENT=true) on a developer's machine only",
                        S::INFO.env_prefix
                    ),
                ))
            }
        }
    }

    /// The page-token codec: keyed by `page_token_secret`, or random when it is unset.
    pub fn page_tokens(&self) -> PageTokenCodec {
        self.page_token_secret
            .as_ref()
            .map_or_else(PageTokenCodec::random, PageTokenCodec::new)
    }
}

/// A top-level key of `table` that `T` does not declare (the least, so the answer does
/// not depend on the table's order); `None` when `T` declares every one, or is no struct.
fn unknown_key<T: DeserializeOwned>(
    table: &::config::Map<String, ::config::Value>,
) -> Option<String> {
    let declared = declared_fields::<T>()?;
    table
        .keys()
        .filter(|key| !declared.contains(&key.as_str()))
        .min()
        .cloned()
}

/// An unknown top-level key reaches the service's own settings, whose error knows only
/// their fields: name the platform's sections too.
fn unknown_key_error<T: DeserializeOwned>(key: String) -> ConfigError {
    let own = match declared_fields::<T>().unwrap_or_default() {
        [] => "none".to_owned(),
        fields => fields
            .iter()
            .map(|field| format!("`{field}`"))
            .collect::<Vec<_>>()
            .join(", "),
    };
    ConfigError::invalid(
        key,
        format!(
            "unknown key: the platform's are {}; the service's own: {own}",
            PLATFORM_KEYS.join(", ")
        ),
    )
}

/// The field names `T`'s derived `Deserialize` asks for (what it passes to
/// `deserialize_struct`); `None` when `T` does not deserialize as a struct. The method of
/// serde-aux's `serde_introspect`, written here because that crate brings a second major
/// version of `ordered-float` into the tree.
fn declared_fields<T: DeserializeOwned>() -> Option<&'static [&'static str]> {
    use serde::de::{self, Visitor};

    struct Fields<'a>(&'a mut Option<&'static [&'static str]>);

    impl<'de> de::Deserializer<'de> for Fields<'_> {
        type Error = de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("only the field names are wanted"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = Some(fields);
            Err(de::Error::custom("only the field names are wanted"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }

    let mut fields = None;
    // The error is the point: deserializing stops once the names are known.
    let _ = T::deserialize(Fields(&mut fields));
    fields
}

/// Settings for a service with no keys of its own: any key outside the platform's
/// sections is rejected.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoSettings {}

impl config::Validate for NoSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Own {
        #[allow(dead_code, reason = "only its name is read")]
        sign_up_rate: u32,
    }

    fn table(keys: &[&str]) -> ::config::Map<String, ::config::Value> {
        keys.iter()
            .map(|key| ((*key).to_owned(), ::config::Value::from(1)))
            .collect()
    }

    #[test]
    fn an_undeclared_top_level_key_is_named_with_the_keys_there_are() {
        assert_eq!(declared_fields::<Own>(), Some(&["sign_up_rate"][..]));
        assert_eq!(declared_fields::<NoSettings>(), Some(&[][..]));
        assert_eq!(declared_fields::<HashMap<String, u32>>(), None);

        assert_eq!(unknown_key::<Own>(&table(&["sign_up_rate"])), None);
        assert_eq!(
            unknown_key::<Own>(&table(&["sign_up_rate", "zeta", "listen_port"])).as_deref(),
            Some("listen_port")
        );
        assert_eq!(
            unknown_key::<NoSettings>(&table(&["x"])).as_deref(),
            Some("x")
        );
        assert_eq!(unknown_key::<HashMap<String, u32>>(&table(&["x"])), None);

        let message = unknown_key_error::<Own>("listen_port".to_owned()).to_string();
        assert!(
            message.starts_with("invalid value for key `listen_port`: unknown key"),
            "{message}"
        );
        assert!(message.contains("page_token_secret"), "{message}");
        assert!(
            message.ends_with("the service's own: `sign_up_rate`"),
            "{message}"
        );
        let message = unknown_key_error::<NoSettings>("x".to_owned()).to_string();
        assert!(message.ends_with("the service's own: none"), "{message}");
    }
}

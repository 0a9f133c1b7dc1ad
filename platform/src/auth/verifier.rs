//! Access-token verification against the auth service's published keys.
//!
//! **Key fetches a caller cannot drive.** Anyone can send a token whose `kid` no key has;
//! none of them may make a service hammer the auth service or trip its circuit to it:
//!
//! - *rate*: a fetch starts at most once per `auth.min_refresh_interval_ms`, whatever
//!   causes it (an unknown `kid`, keys older than `auth.max_key_age_ms`); after a failed
//!   fetch the next may start after 1 s if that is sooner, so
//!   a service that started before auth does not wait the whole interval. Between
//!   fetches an unknown `kid` is refused at once (UNAUTHENTICATED), with no I/O;
//! - *single flight*: while a fetch is running, every verification that needs it waits
//!   for that one, and none starts another;
//! - *detached*: the fetch runs in a task of its own, outside the request that caused
//!   it, bounded by the key source's own timeout (the identity peer's `timeout_ms`) and
//!   30 s at most. A caller's short deadline or cancellation ends only its own
//!   wait, never the fetch: the fetch's outcome is the auth service's alone, so only a
//!   failure auth caused counts for its breaker (see [`crate::peer::call`]), and a fetch
//!   a caller abandoned still loads the keys for everyone.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use secrecy::SecretString;
use serde::Deserialize;
use serde_with::serde_as;

use super::{Claims, DEFAULT_AUDIENCE, DEFAULT_IDENTITY_PEER, DEFAULT_ISSUER, Principal};
use crate::config::{ConfigError, NonZeroMilliSeconds};

/// Largest clock-skew leeway allowed, in seconds (RFC 8725 leaves it to us; we keep it
/// small).
pub const MAX_LEEWAY_SECS: u64 = 30;

/// How a service deals with the auth service (the `auth` section): the rules its token
/// verification applies, and its own client secret for obtaining service credentials.
#[serde_as]
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// This service's client secret (OAuth 2.0 client credentials; its client id is the
    /// service's name). Without one, calls to peers' internal methods fail with
    /// UNAVAILABLE and are retried where an outbox carries them. Secret: never printed.
    pub client_secret: Option<SecretString>,
    /// The peer that publishes signing keys and exchanges client secrets for service
    /// tokens (an entry of `peers`). Default `auth`.
    pub peer: String,
    /// Required `iss`. Default `trellis-auth`.
    pub issuer: String,
    /// Required `aud`. Default `trellis`.
    pub audience: String,
    /// Clock-skew leeway for `exp` and `nbf`, s. Default and maximum 30.
    pub leeway_secs: u64,
    /// `min_refresh_interval_ms`: least time between the starts of two key fetches, ms
    /// (1 s after a failed fetch when that is sooner): the most an unknown `kid`, sent
    /// by anyone, can make a service fetch. Default 10000.
    #[serde(rename = "min_refresh_interval_ms")]
    #[serde_as(as = "NonZeroMilliSeconds")]
    pub min_refresh_interval: Duration,
    /// `max_key_age_ms`: keys older than this are refetched before use, ms. Default 300000 (5 min).
    #[serde(rename = "max_key_age_ms")]
    #[serde_as(as = "NonZeroMilliSeconds")]
    pub max_key_age: Duration,
    /// How many verified tokens to remember, so a client that sends the same access
    /// token on every call costs one Ed25519 verification, not one per call. An entry
    /// lasts until the token's `exp` (plus the leeway), at most `max_key_age_ms`, and
    /// all are dropped when a key is withdrawn from the published set. 0 turns the cache
    /// off. Default 10000 (a few MiB at most).
    pub verified_token_cache: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            client_secret: None,
            peer: DEFAULT_IDENTITY_PEER.to_owned(),
            issuer: DEFAULT_ISSUER.to_owned(),
            audience: DEFAULT_AUDIENCE.to_owned(),
            leeway_secs: MAX_LEEWAY_SECS,
            min_refresh_interval: Duration::from_secs(10),
            max_key_age: Duration::from_secs(5 * 60),
            verified_token_cache: 10_000,
        }
    }
}

impl AuthConfig {
    /// Checks the values; `prefix` is the section's key, e.g. `auth`.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the key.
    pub fn validate(&self, prefix: &str) -> Result<(), ConfigError> {
        let key = |name: &str| format!("{prefix}.{name}");
        if self.leeway_secs > MAX_LEEWAY_SECS {
            return Err(ConfigError::invalid(
                key("leeway_secs"),
                format!("must be at most {MAX_LEEWAY_SECS}"),
            ));
        }
        if self.peer.is_empty() {
            return Err(ConfigError::invalid(key("peer"), "must not be empty"));
        }
        if self.issuer.is_empty() {
            return Err(ConfigError::invalid(key("issuer"), "must not be empty"));
        }
        if self.audience.is_empty() {
            return Err(ConfigError::invalid(key("audience"), "must not be empty"));
        }
        Ok(())
    }
}

/// A public Ed25519 key: its id and its raw bytes, base64url (RFC 8037's `x`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    /// The key id, as in tokens' `kid` header.
    pub kid: String,
    /// The 32-byte public key, base64url without padding.
    pub x: String,
}

/// Where verification keys come from.
pub trait KeySource: Send + Sync + 'static {
    /// Every currently published key.
    fn fetch(
        &self,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<PublicKey>, tonic::Status>> + Send + '_>>;
}

impl KeySource for Arc<dyn KeySource> {
    fn fetch(
        &self,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<PublicKey>, tonic::Status>> + Send + '_>> {
        (**self).fetch()
    }
}

/// Why a token was rejected. Callers answer every variant with the same
/// UNAUTHENTICATED; the variant is for the log.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// Not a JWT, bad signature, wrong algorithm, or a failed claim check.
    #[error("invalid token: {0}")]
    Invalid(#[from] jsonwebtoken::errors::Error),
    /// The header has no `kid`.
    #[error("token has no kid")]
    NoKeyId,
    /// No published key has the token's `kid`.
    #[error("unknown kid {0:?}")]
    UnknownKey(String),
    /// A service token whose `aud` is another service, or a user token whose `aud` is
    /// not `auth.audience`.
    #[error("token audience {0:?} is not this service's")]
    NotForThisService(String),
}

impl VerifyError {
    /// Every value [`Self::reason`] returns, plus `missing` (no bearer token at all).
    pub const REASONS: [&'static str; 13] = [
        "missing",
        "malformed",
        "no_key_id",
        "unknown_key",
        "bad_signature",
        "wrong_algorithm",
        "expired",
        "not_yet_valid",
        "wrong_issuer",
        "wrong_audience",
        "missing_claim",
        "invalid",
        "wrong_certificate",
    ];

    /// Why, as a short fixed label (for the metric
    /// `trellis_auth_token_verification_failures_total{reason}`): one of
    /// [`Self::REASONS`] but `missing` and `wrong_certificate` (a bound token on a
    /// connection presenting another certificate, or none: counted by the auth layer).
    pub fn reason(&self) -> &'static str {
        use jsonwebtoken::errors::ErrorKind;
        match self {
            Self::NoKeyId => "no_key_id",
            Self::UnknownKey(_) => "unknown_key",
            Self::NotForThisService(_) => "wrong_audience",
            Self::Invalid(err) => match err.kind() {
                ErrorKind::InvalidToken
                | ErrorKind::Base64(_)
                | ErrorKind::Json(_)
                | ErrorKind::Utf8(_)
                | ErrorKind::InvalidClaimFormat(_) => "malformed",
                ErrorKind::InvalidSignature => "bad_signature",
                ErrorKind::InvalidAlgorithm
                | ErrorKind::InvalidAlgorithmName
                | ErrorKind::MissingAlgorithm
                | ErrorKind::UnsupportedAlgorithm => "wrong_algorithm",
                ErrorKind::ExpiredSignature => "expired",
                ErrorKind::ImmatureSignature => "not_yet_valid",
                ErrorKind::InvalidIssuer => "wrong_issuer",
                ErrorKind::InvalidAudience => "wrong_audience",
                ErrorKind::MissingRequiredClaim(_) => "missing_claim",
                _ => "invalid",
            },
        }
    }
}

#[derive(Default)]
struct KeyCache {
    keys: HashMap<String, DecodingKey>,
    /// The keys as published at the last successful fetch: a withdrawn one clears the
    /// verified tokens.
    published: Vec<PublicKey>,
    /// When the last successful fetch ended: keys older than `max_key_age` are stale.
    fetched_at: Option<Instant>,
    /// When the last fetch started: the next starts `min_refresh_interval` later.
    attempted_at: Option<Instant>,
    last_fetch_failed: bool,
    /// The fetch running, if any: its sender is dropped when it ends.
    in_flight: Option<tokio::sync::watch::Receiver<()>>,
    /// Fetches started (for tests).
    fetches: u64,
}

impl KeyCache {
    /// The running fetch, if there is one (a fetch task that died counts as ended).
    fn running(&self) -> Option<tokio::sync::watch::Receiver<()>> {
        self.in_flight
            .as_ref()
            .filter(|done| done.has_changed().is_ok())
            .cloned()
    }
}

/// A token that verified: what it proved, until when.
#[derive(Debug)]
struct Verified {
    principal: Principal,
    /// The token's `exp`, Unix seconds.
    expires_at: i64,
}

/// Verifies access tokens. Cheap to clone; clones share the key cache and the verified
/// tokens.
///
/// The cache's lock is held only to read or replace keys, never across a fetch: a slow
/// or hanging key source delays only the verifications that need a key it has not got.
/// Fetches are rate-bounded, single-flight and detached from the callers (see the module
/// docs).
///
/// A token that verified is remembered (`auth.verified_token_cache` entries, keyed by
/// the whole token, so only the same bytes match) until its `exp` plus the leeway, at
/// most `auth.max_key_age_ms`; a key withdrawn from the published set forgets them all.
/// Clients send the same access token for its whole life, and an Ed25519 verification
/// costs tens of µs: more than the rest of a cached database read.
#[derive(Clone)]
pub struct TokenVerifier {
    source: Arc<dyn KeySource>,
    validation: Arc<Validation>,
    /// `auth.audience`: the `aud` of user tokens.
    user_audience: Arc<str>,
    /// This service's name: the `aud` of service tokens issued for calling it.
    service: Arc<str>,
    cache: Arc<parking_lot::Mutex<KeyCache>>,
    verified: Option<moka::sync::Cache<Box<str>, Arc<Verified>>>,
    leeway_secs: i64,
    min_refresh_interval: Duration,
    max_key_age: Duration,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier").finish_non_exhaustive()
    }
}

/// Now, in Unix seconds (as JWT's `exp`).
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// After a failed fetch, how soon another may start (unless
/// `auth.min_refresh_interval_ms` is shorter).
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// The longest a key fetch may take, whatever the key source's own timeout: a source
/// that hangs does not hold the single flight for good.
const KEY_FETCH_TIMEOUT: Duration = Duration::from_secs(30);

impl TokenVerifier {
    /// A verifier for the service named `service`, with `config`'s rules and keys from
    /// `source`. User tokens must name `auth.audience` as their `aud`; service tokens
    /// must name `service` — a token issued for calling another service is refused here,
    /// so a service that receives one cannot replay it elsewhere.
    pub fn new(config: &AuthConfig, service: &str, source: impl KeySource) -> Self {
        // The allowlist has one algorithm; the token's `alg` never chooses (RFC 8725 §3.1).
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.algorithms = vec![Algorithm::EdDSA];
        validation.leeway = config.leeway_secs.min(MAX_LEEWAY_SECS);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_audience(&[config.audience.as_str(), service]);
        validation.set_issuer(&[&config.issuer]);
        validation.set_required_spec_claims(&["exp", "nbf", "iat", "iss", "aud", "sub"]);
        let max_key_age = config.max_key_age;
        let leeway_secs = i64::try_from(validation.leeway).unwrap_or(0);
        let verified = (config.verified_token_cache > 0).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(config.verified_token_cache)
                .time_to_live(max_key_age)
                .build()
        });
        Self {
            source: Arc::new(source),
            validation: Arc::new(validation),
            user_audience: Arc::from(config.audience.as_str()),
            service: Arc::from(service),
            cache: Arc::default(),
            verified,
            leeway_secs,
            min_refresh_interval: config.min_refresh_interval,
            max_key_age,
        }
    }

    /// Verifies `token` and returns its principal.
    ///
    /// # Errors
    /// [`VerifyError`] for any failure.
    pub async fn verify(&self, token: &str) -> Result<Principal, VerifyError> {
        if let Some(verified) = &self.verified
            && let Some(hit) = verified.get(token)
        {
            if unix_now() <= hit.expires_at.saturating_add(self.leeway_secs) {
                return Ok(hit.principal.clone());
            }
            // Expired: verify in full, which says so.
            verified.invalidate(token);
        }
        let header = jsonwebtoken::decode_header(token)?;
        let kid = header.kid.ok_or(VerifyError::NoKeyId)?;
        let key = self.key(&kid).await?;
        let data = jsonwebtoken::decode::<Claims>(token, &key, &self.validation)?;
        let claims = data.claims;
        let audience = match claims.kind {
            super::PrincipalKind::User => &*self.user_audience,
            super::PrincipalKind::Service => &*self.service,
        };
        if claims.aud != audience {
            return Err(VerifyError::NotForThisService(claims.aud));
        }
        let principal = Principal {
            subject: claims.sub,
            kind: claims.kind,
            roles: claims.roles,
            expires_at: u64::try_from(claims.exp.saturating_add(self.leeway_secs))
                .ok()
                .map(|secs| std::time::UNIX_EPOCH + Duration::from_secs(secs)),
            bound_to: claims.cnf.map(|cnf| cnf.x5t_s256),
            workload: None,
        };
        if let Some(verified) = &self.verified {
            verified.insert(
                token.into(),
                Arc::new(Verified {
                    principal: principal.clone(),
                    expires_at: claims.exp,
                }),
            );
        }
        Ok(principal)
    }

    /// Whether `token` is among the remembered verified tokens (for tests).
    #[doc(hidden)]
    pub fn remembers(&self, token: &str) -> bool {
        self.verified
            .as_ref()
            .is_some_and(|verified| verified.contains_key(token))
    }

    /// Key fetches started so far (for tests).
    #[doc(hidden)]
    pub fn key_fetches(&self) -> u64 {
        self.cache.lock().fetches
    }

    async fn key(&self, kid: &str) -> Result<DecodingKey, VerifyError> {
        let unknown = || VerifyError::UnknownKey(kid.to_owned());
        let mut done = {
            let mut cache = self.cache.lock();
            let now = Instant::now();
            let running = cache.running();
            let gap = if cache.last_fetch_failed {
                RETRY_AFTER_FAILURE.min(self.min_refresh_interval)
            } else {
                self.min_refresh_interval
            };
            let may_start = running.is_none()
                && cache
                    .attempted_at
                    .is_none_or(|at| now.saturating_duration_since(at) >= gap);
            if let Some(key) = cache.keys.get(kid).cloned() {
                let stale = cache
                    .fetched_at
                    .is_none_or(|at| now.saturating_duration_since(at) >= self.max_key_age);
                if stale && may_start {
                    // The stale key serves meanwhile; nobody waits for the refresh.
                    drop(self.start_fetch(&mut cache, now));
                }
                return Ok(key);
            }
            match running {
                Some(done) => done,
                None if may_start => self.start_fetch(&mut cache, now),
                // Fetched lately: the key does not exist.
                None => return Err(unknown()),
            }
        };
        // Ends when the fetch does (its sender is dropped); this caller's deadline or
        // cancellation ends only this wait.
        while done.changed().await.is_ok() {}
        self.cache.lock().keys.get(kid).cloned().ok_or_else(unknown)
    }

    /// Starts a fetch in a task of its own; the receiver sees its sender dropped when it
    /// ends.
    fn start_fetch(&self, cache: &mut KeyCache, now: Instant) -> tokio::sync::watch::Receiver<()> {
        let (sender, done) = tokio::sync::watch::channel(());
        cache.attempted_at = Some(now);
        cache.in_flight = Some(done.clone());
        cache.fetches += 1;
        let verifier = self.clone();
        tokio::spawn(async move {
            verifier.refresh().await;
            drop(sender);
        });
        done
    }

    /// Fetches the keys with no lock on the cache held, then replaces them.
    async fn refresh(&self) {
        let fetched = tokio::time::timeout(KEY_FETCH_TIMEOUT, self.source.fetch())
            .await
            .unwrap_or_else(|_| {
                Err(tonic::Status::deadline_exceeded(format!(
                    "the key fetch took more than {} s",
                    KEY_FETCH_TIMEOUT.as_secs()
                )))
            });
        let mut cache = self.cache.lock();
        cache.in_flight = None;
        match fetched {
            Ok(keys) => {
                let withdrawn = cache.published.iter().any(|old| !keys.contains(old));
                if withdrawn && let Some(verified) = &self.verified {
                    // A token signed with a withdrawn key must not outlive it here.
                    verified.invalidate_all();
                }
                cache.published.clone_from(&keys);
                cache.keys = keys
                    .into_iter()
                    .filter_map(|key| match DecodingKey::from_ed_components(&key.x) {
                        Ok(decoding) => Some((key.kid, decoding)),
                        Err(err) => {
                            tracing::warn!(kid = %key.kid, error = %err, "ignoring malformed signing key");
                            None
                        }
                    })
                    .collect();
                cache.fetched_at = Some(Instant::now());
                cache.last_fetch_failed = false;
                tracing::debug!(keys = cache.keys.len(), "signing keys fetched");
            }
            Err(status) => {
                // Keep the keys we have: a peer being down must not reject valid tokens.
                cache.last_fetch_failed = true;
                tracing::warn!(code = ?status.code(), message = status.message(), "cannot fetch signing keys");
            }
        }
    }
}

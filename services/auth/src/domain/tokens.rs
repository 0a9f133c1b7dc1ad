//! What auth issues: Ed25519-signed JWT access and service tokens (RFC 7519, RFC 8037;
//! the claims are the platform's [`Claims`]), and opaque refresh tokens, of which only a
//! SHA-256 hash is stored.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};
use trellis_platform::auth::{Claims, Confirmation, PrincipalKind};
use uuid::Uuid;

use super::keys::KeyRing;

/// Token settings.
#[derive(Debug, Clone)]
pub struct TokenSettings {
    /// `iss` of issued tokens.
    pub issuer: String,
    /// `aud` of issued tokens.
    pub audience: String,
    /// Access-token lifetime (≤ 15 min).
    pub access_ttl: Duration,
    /// Service-token lifetime.
    pub service_ttl: Duration,
    /// Absolute lifetime of a refresh-token family.
    pub refresh_ttl: Duration,
}

/// A freshly issued pair.
#[derive(Debug, Clone)]
pub struct TokenPair {
    /// The JWT.
    pub access_token: String,
    /// Its lifetime.
    pub expires_in: Duration,
    /// The opaque refresh token.
    pub refresh_token: String,
    /// The family's absolute expiry.
    pub refresh_expire_time: DateTime<Utc>,
}

/// Signs JWTs with the key ring's current key.
#[derive(Debug, Clone)]
pub struct TokenIssuer {
    keys: KeyRing,
    settings: TokenSettings,
}

impl TokenIssuer {
    /// An issuer over `keys`.
    pub fn new(keys: KeyRing, settings: TokenSettings) -> Self {
        Self { keys, settings }
    }

    /// The key ring.
    pub fn keys(&self) -> &KeyRing {
        &self.keys
    }

    /// The settings tokens are issued with.
    pub fn settings(&self) -> &TokenSettings {
        &self.settings
    }

    /// Signs an access token for `subject`.
    ///
    /// # Errors
    /// When no key is active or signing fails.
    pub fn sign(
        &self,
        subject: &str,
        kind: PrincipalKind,
        roles: Vec<String>,
        ttl: Duration,
    ) -> anyhow::Result<String> {
        self.sign_for(subject, kind, roles, ttl, &self.settings.audience, None)
    }

    /// Signs an access token for `audience`, bound to the certificate thumbprint
    /// `bound_to` when given (RFC 8705 `cnf.x5t#S256`).
    ///
    /// # Errors
    /// When no signing key is active or signing fails.
    pub fn sign_for(
        &self,
        subject: &str,
        kind: PrincipalKind,
        roles: Vec<String>,
        ttl: Duration,
        audience: &str,
        bound_to: Option<String>,
    ) -> anyhow::Result<String> {
        let now = Utc::now();
        let key = self
            .keys
            .signing_key(now)
            .ok_or_else(|| anyhow::anyhow!("no active signing key"))?;
        let iat = now.timestamp();
        let claims = Claims {
            iss: self.settings.issuer.clone(),
            aud: audience.to_owned(),
            sub: subject.to_owned(),
            iat,
            nbf: iat,
            exp: iat + i64::try_from(ttl.as_secs()).unwrap_or(0),
            jti: Uuid::new_v4().to_string(),
            kind,
            roles,
            cnf: bound_to.map(|x5t_s256| Confirmation { x5t_s256 }),
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(key.kid.clone());
        jsonwebtoken::encode(
            &header,
            &claims,
            &EncodingKey::from_ed_der(&key.private_pkcs8),
        )
        .map_err(|err| anyhow::anyhow!("signing failed: {err}"))
    }

    /// Signs a service token for `client_id` to call `audience`, bound to the
    /// certificate thumbprint `bound_to` when given.
    ///
    /// # Errors
    /// As [`Self::sign`].
    pub fn sign_service(
        &self,
        client_id: &str,
        audience: &str,
        bound_to: Option<String>,
    ) -> anyhow::Result<(String, Duration)> {
        let ttl = self.settings.service_ttl;
        let token = self.sign_for(
            &format!("service:{client_id}"),
            PrincipalKind::Service,
            Vec::new(),
            ttl,
            audience,
            bound_to,
        )?;
        Ok((token, ttl))
    }
}

/// Makes an opaque refresh token: 256 random bits, base64url.
pub(crate) fn new_refresh_token() -> (String, Vec<u8>) {
    let mut bytes = [0_u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let token = URL_SAFE_NO_PAD.encode(bytes);
    let hash = hash_token(&token);
    (token, hash)
}

/// SHA-256 of a refresh token: what is stored. The token's 256 random bits make a slow
/// hash unnecessary.
pub fn hash_token(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

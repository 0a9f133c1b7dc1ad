//! The auth domain: sign-in, access and refresh tokens, service identities and signing
//! keys. No gRPC and no SQL: users are checked through [`CredentialChecker`] and state
//! is kept through [`AuthRepository`].

pub mod keys;
pub mod throttle;

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rand::RngCore as _;
use secrecy::{ExposeSecret as _, SecretString};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use trellis_platform::auth::{ADMIN_ROLE, Claims, PrincipalKind};
use uuid::Uuid;

use keys::KeyRing;
use throttle::LoginThrottle;

/// Longest access-token lifetime the issue allows: 15 minutes.
pub const MAX_ACCESS_TOKEN_TTL: Duration = Duration::from_secs(15 * 60);

/// A user whose credentials were accepted.
#[derive(Debug, Clone)]
pub struct VerifiedUser {
    /// The user's id.
    pub id: String,
    /// Their normalised email.
    pub email: String,
}

/// Everything that can go wrong in an auth operation.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Unknown email or wrong password: deliberately not saying which.
    #[error("invalid email or password")]
    InvalidCredentials,
    /// Too many failures for this account or source.
    #[error("too many failed sign-in attempts")]
    Throttled {
        /// When trying again may succeed.
        retry_after: Duration,
    },
    /// Unknown, expired, used or revoked refresh token.
    #[error("invalid refresh token")]
    InvalidRefreshToken,
    /// Unknown client or wrong client secret.
    #[error("invalid client credentials")]
    InvalidClient,
    /// A required field is empty.
    #[error("{0} is required")]
    Missing(&'static str),
    /// The user service cannot be reached.
    #[error("the user service is unavailable")]
    UserServiceUnavailable,
    /// Anything the caller cannot act on.
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

/// Checks an email and password with the user service.
pub trait CredentialChecker: Send + Sync + 'static {
    /// `Ok(None)` when the credentials are wrong; a returned [`VerifiedUser`] always has
    /// a non-empty id (it becomes the token's `sub`).
    ///
    /// # Errors
    /// [`AuthError::UserServiceUnavailable`] when the check could not be made;
    /// [`AuthError::Unexpected`] when the answer accepts the credentials but names no user.
    fn check(
        &self,
        email: &str,
        password: &str,
    ) -> impl Future<Output = Result<Option<VerifiedUser>, AuthError>> + Send;
}

/// A refresh token as stored: only its hash.
#[derive(Debug, Clone)]
pub struct RefreshRecord {
    /// Row id.
    pub id: Uuid,
    /// The family: every token descended from one sign-in.
    pub family_id: Uuid,
    /// The user.
    pub user_id: String,
    /// The user's roles at sign-in.
    pub roles: Vec<String>,
    /// SHA-256 of the token.
    pub token_hash: Vec<u8>,
    /// When it was issued.
    pub create_time: DateTime<Utc>,
    /// The family's absolute expiry; rotation never extends it.
    pub expire_time: DateTime<Utc>,
}

/// A successful sign-in, reported to the user as a notification.
#[derive(Debug, Clone)]
pub struct SignInEvent {
    /// The user.
    pub user_id: String,
    /// When.
    pub time: DateTime<Utc>,
    /// Where from, when known.
    pub source: Option<IpAddr>,
}

/// What presenting a refresh token did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rotation {
    /// The token was current: it is now used and `next` was stored in its family.
    Rotated {
        /// The user.
        user_id: String,
        /// Their roles.
        roles: Vec<String>,
        /// The family's absolute expiry.
        expire_time: DateTime<Utc>,
    },
    /// The token had been used before (or lost a race): its family is now revoked.
    Replayed,
    /// Unknown, expired or revoked.
    Invalid,
}

/// Auth state storage, implemented by the storage layer.
pub trait AuthRepository: Send + Sync + 'static {
    /// Stores the first token of a new family and, in the same transaction, the sign-in
    /// notification.
    fn start_family(
        &self,
        token: &RefreshRecord,
        event: &SignInEvent,
    ) -> impl Future<Output = Result<(), AuthError>> + Send;
    /// Atomically marks the token with `hash` used and stores its successor, whose hash
    /// is `next_hash`, in the same family (same user, roles and absolute expiry) — or,
    /// if it was already used, revokes the family. Exactly one of two concurrent calls
    /// with one hash rotates.
    fn rotate(
        &self,
        hash: &[u8],
        next_hash: &[u8],
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<Rotation, AuthError>> + Send;
    /// Revokes the family of the token with `hash`, if any.
    fn revoke_family(
        &self,
        hash: &[u8],
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<(), AuthError>> + Send;
}

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
        let now = Utc::now();
        let key = self
            .keys
            .signing_key(now)
            .ok_or_else(|| anyhow::anyhow!("no active signing key"))?;
        let iat = now.timestamp();
        let claims = Claims {
            iss: self.settings.issuer.clone(),
            aud: self.settings.audience.clone(),
            sub: subject.to_owned(),
            iat,
            nbf: iat,
            exp: iat + i64::try_from(ttl.as_secs()).unwrap_or(0),
            jti: Uuid::new_v4().to_string(),
            kind,
            roles,
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

    /// Signs a service token for `client_id`.
    ///
    /// # Errors
    /// As [`Self::sign`].
    pub fn sign_service(&self, client_id: &str) -> anyhow::Result<(String, Duration)> {
        let ttl = self.settings.service_ttl;
        let token = self.sign(
            &format!("service:{client_id}"),
            PrincipalKind::Service,
            Vec::new(),
            ttl,
        )?;
        Ok((token, ttl))
    }
}

/// Makes an opaque refresh token: 256 random bits, base64url.
fn new_refresh_token() -> (String, Vec<u8>) {
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

/// The auth operations.
#[derive(Debug)]
pub struct Auth<R, C> {
    repository: R,
    checker: C,
    issuer: TokenIssuer,
    throttle: LoginThrottle,
    clients: HashMap<String, SecretString>,
    admin_emails: Vec<String>,
}

impl<R: AuthRepository, C: CredentialChecker> Auth<R, C> {
    /// The operations. `clients` maps service client ids to secrets; users whose email
    /// is in `admin_emails` get the admin role.
    pub fn new(
        repository: R,
        checker: C,
        issuer: TokenIssuer,
        throttle: LoginThrottle,
        clients: HashMap<String, SecretString>,
        admin_emails: Vec<String>,
    ) -> Self {
        Self {
            repository,
            checker,
            issuer,
            throttle,
            clients,
            admin_emails: admin_emails
                .into_iter()
                .map(|e| e.trim().to_lowercase())
                .collect(),
        }
    }

    /// The token issuer.
    pub fn issuer(&self) -> &TokenIssuer {
        &self.issuer
    }

    /// Signs a user in from `source`.
    ///
    /// # Errors
    /// [`AuthError::Throttled`] over budget; [`AuthError::InvalidCredentials`];
    /// [`AuthError::UserServiceUnavailable`]; [`AuthError::Unexpected`] when the user
    /// service's answer names no user.
    pub async fn login(
        &self,
        email: &str,
        password: &str,
        source: Option<IpAddr>,
    ) -> Result<(TokenPair, String), AuthError> {
        if email.trim().is_empty() {
            return Err(AuthError::Missing("email"));
        }
        if password.is_empty() {
            return Err(AuthError::Missing("password"));
        }
        if let Some(retry_after) = self.throttle.retry_after(email, source) {
            return Err(AuthError::Throttled { retry_after });
        }
        let Some(user) = self.checker.check(email, password).await? else {
            self.throttle.record_failure(email, source);
            return Err(AuthError::InvalidCredentials);
        };
        let roles = if self.admin_emails.contains(&user.email.to_lowercase()) {
            vec![ADMIN_ROLE.to_owned()]
        } else {
            Vec::new()
        };
        let now = Utc::now();
        let (refresh_token, token_hash) = new_refresh_token();
        let record = RefreshRecord {
            id: Uuid::now_v7(),
            family_id: Uuid::now_v7(),
            user_id: user.id.clone(),
            roles: roles.clone(),
            token_hash,
            create_time: now,
            expire_time: now
                + chrono::Duration::from_std(self.issuer.settings.refresh_ttl).unwrap_or_default(),
        };
        let event = SignInEvent {
            user_id: user.id.clone(),
            time: now,
            source,
        };
        self.repository.start_family(&record, &event).await?;
        let pair = self.pair(&user.id, roles, refresh_token, record.expire_time)?;
        Ok((pair, user.id))
    }

    /// Exchanges a refresh token for a new pair (single use; reuse revokes the family).
    ///
    /// # Errors
    /// [`AuthError::InvalidRefreshToken`].
    pub async fn refresh(&self, refresh_token: &str) -> Result<TokenPair, AuthError> {
        if refresh_token.is_empty() {
            return Err(AuthError::Missing("refresh_token"));
        }
        let now = Utc::now();
        let (next_token, next_hash) = new_refresh_token();
        match self
            .repository
            .rotate(&hash_token(refresh_token), &next_hash, now)
            .await?
        {
            Rotation::Rotated {
                user_id,
                roles,
                expire_time,
            } => self.pair(&user_id, roles, next_token, expire_time),
            Rotation::Replayed => {
                tracing::warn!("refresh token reused: its family is revoked (RFC 9700 §4.14.2)");
                Err(AuthError::InvalidRefreshToken)
            }
            Rotation::Invalid => Err(AuthError::InvalidRefreshToken),
        }
    }

    /// Revokes the family of `refresh_token`. Unknown tokens succeed too.
    ///
    /// # Errors
    /// [`AuthError::Unexpected`] when storage fails.
    pub async fn logout(&self, refresh_token: &str) -> Result<(), AuthError> {
        if refresh_token.is_empty() {
            return Err(AuthError::Missing("refresh_token"));
        }
        self.repository
            .revoke_family(&hash_token(refresh_token), Utc::now())
            .await
    }

    /// Issues a service token to a client with the right secret (compared in constant
    /// time).
    ///
    /// # Errors
    /// [`AuthError::InvalidClient`].
    pub fn issue_service_token(
        &self,
        client_id: &str,
        client_secret: &str,
    ) -> Result<(String, Duration), AuthError> {
        let Some(expected) = self.clients.get(client_id) else {
            return Err(AuthError::InvalidClient);
        };
        let given = Sha256::digest(client_secret.as_bytes());
        let expected = Sha256::digest(expected.expose_secret().as_bytes());
        if !bool::from(given.ct_eq(&expected)) {
            return Err(AuthError::InvalidClient);
        }
        Ok(self.issuer.sign_service(client_id)?)
    }

    fn pair(
        &self,
        user_id: &str,
        roles: Vec<String>,
        refresh_token: String,
        refresh_expire_time: DateTime<Utc>,
    ) -> Result<TokenPair, AuthError> {
        let ttl = self.issuer.settings.access_ttl;
        let access_token = self.issuer.sign(user_id, PrincipalKind::User, roles, ttl)?;
        Ok(TokenPair {
            access_token,
            expires_in: ttl,
            refresh_token,
            refresh_expire_time,
        })
    }
}

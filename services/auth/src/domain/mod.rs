//! The auth domain: sign-in, refresh-token rotation, logout and service identities, over
//! [`tokens`] (what is issued and how it is signed), [`keys`] (the signing keys) and
//! [`throttle`] (the sign-in budgets). No gRPC and no SQL: users are asked about through
//! [`UserDirectory`], state is kept through [`AuthRepository`], and what other services
//! must hear of is stated as a [`SignInEvent`].

pub mod keys;
pub mod throttle;
pub mod tokens;

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret as _, SecretString};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use trellis_platform::auth::PrincipalKind;
use trellis_platform::validation::FieldViolation;
use uuid::Uuid;

use throttle::{AccountKey, LoginThrottle};
use tokens::new_refresh_token;
pub use tokens::{TokenIssuer, TokenPair, TokenSettings, hash_token};

/// Longest access-token lifetime the issue allows: 15 minutes.
pub const MAX_ACCESS_TOKEN_TTL: Duration = Duration::from_secs(15 * 60);

/// Longest email accepted at login, in bytes: a 64-byte local part, `@` and a 255-byte
/// domain (RFC 5321 §4.5.3.1.1 and §4.5.3.1.2). Longer input is refused before any
/// lookup, throttling or hashing.
pub const MAX_EMAIL_BYTES: usize = 320;

/// Longest password accepted at login, in bytes: the user service's own limit, so no
/// password it could have stored is refused.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// A user as the user service describes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The user's id (never empty: it becomes the token's `sub`).
    pub id: String,
    /// Their email.
    pub email: String,
    /// Their current roles, e.g. `admin`: the user service owns them; an access token
    /// carries them as they were when it was issued.
    pub roles: Vec<String>,
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
    /// Fields of the request are empty or too long.
    #[error("invalid request")]
    InvalidArgument(Vec<FieldViolation>),
    /// The user service could not be asked: unreachable, failing, its circuit open, its
    /// own timeout expired, or refusing this service's own credentials — a fault of the
    /// platform. Never charged to anyone's sign-in budget.
    #[error("the user service is unavailable")]
    UserServiceUnavailable,
    /// The caller's own deadline ran out before the user service answered (or left no
    /// time to ask it). The attempt is charged to the sign-in budgets like a wrong
    /// password: the credentials may have been checked, and a caller must not get free
    /// guesses by choosing a short deadline.
    #[error("the caller's deadline expired")]
    DeadlineExceeded,
    /// The user service is saturated (its password hashing queue is full) and asked
    /// callers to come back after `retry_after`. Never charged to anyone's budget.
    #[error("the user service is overloaded")]
    UserServiceOverloaded {
        /// The user service's `RetryInfo` delay (1 s when it sent none).
        retry_after: Duration,
    },
    /// Anything the caller cannot act on.
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

/// What auth asks the user service: whether credentials match, and who a user is now.
pub trait UserDirectory: Send + Sync + 'static {
    /// The user `email` and `password` belong to; `Ok(None)` when they do not match (an
    /// unknown email or a wrong password, indistinguishable).
    ///
    /// # Errors
    /// [`AuthError::DeadlineExceeded`] when the caller's own deadline ran out first;
    /// [`AuthError::UserServiceUnavailable`] when the check could not be made for any
    /// other reason (a fault is never a wrong password); [`AuthError::Unexpected`] when
    /// the answer names a user with an empty id.
    fn verify_credentials(
        &self,
        email: &str,
        password: &str,
    ) -> impl Future<Output = Result<Option<User>, AuthError>> + Send;

    /// The user with `id` and their current roles; `Ok(None)` when they no longer exist.
    ///
    /// # Errors
    /// [`AuthError::UserServiceUnavailable`] when the user service could not be asked;
    /// [`AuthError::Unexpected`] when it answers with no user or another user.
    fn lookup_user(&self, id: &str)
    -> impl Future<Output = Result<Option<User>, AuthError>> + Send;
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
    /// The user's roles when the token was issued (informational: every refresh asks the
    /// user service again).
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
    /// The user of the token with `hash` if it is current (unused, unrevoked and
    /// unexpired at `now`); `None` otherwise. Reads only.
    fn current_user(
        &self,
        hash: &[u8],
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<Option<String>, AuthError>> + Send;
    /// Atomically marks the token with `hash` used and stores its successor, whose hash
    /// is `next_hash`, in the same family (same user and absolute expiry, `roles` as
    /// they are now) — or, if it was already used, revokes the family. Exactly one of
    /// two concurrent calls with one hash rotates.
    fn rotate(
        &self,
        hash: &[u8],
        next_hash: &[u8],
        roles: &[String],
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<Rotation, AuthError>> + Send;
    /// Revokes the family of the token with `hash`, if any.
    fn revoke_family(
        &self,
        hash: &[u8],
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<(), AuthError>> + Send;
    /// Revokes every family of `user_id` that still has an active (unrevoked, unexpired)
    /// token; returns how many there were. Idempotent.
    fn revoke_user(
        &self,
        user_id: &str,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<u64, AuthError>> + Send;
}

/// INVALID_ARGUMENT for an empty `field`.
fn required(field: &str) -> AuthError {
    AuthError::InvalidArgument(vec![FieldViolation::new(field, "is required")])
}

/// The auth operations.
#[derive(Debug)]
pub struct Auth<R, U> {
    repository: R,
    users: U,
    issuer: TokenIssuer,
    throttle: LoginThrottle,
    clients: HashMap<String, SecretString>,
}

impl<R: AuthRepository, U: UserDirectory> Auth<R, U> {
    /// The operations. `clients` maps service client ids to secrets. Users' roles come
    /// from `users`, never from anything a user chose (such as their address).
    pub fn new(
        repository: R,
        users: U,
        issuer: TokenIssuer,
        throttle: LoginThrottle,
        clients: HashMap<String, SecretString>,
    ) -> Self {
        Self {
            repository,
            users,
            issuer,
            throttle,
            clients,
        }
    }

    /// The token issuer.
    pub fn issuer(&self) -> &TokenIssuer {
        &self.issuer
    }

    /// Signs a user in from `source`; the access token carries the roles the user
    /// service answers with.
    ///
    /// The input's lengths are the contract's rules (`LoginRequest`'s, enforced before
    /// the handler: [`MAX_EMAIL_BYTES`], [`MAX_PASSWORD_BYTES`]); a failure slot is
    /// reserved with the throttle before the user service is asked. The
    /// slot is given back on success and on a fault of the platform (the user service
    /// unavailable, overloaded or answering nonsense, its circuit open, its own timeout
    /// expired); it stays taken for wrong credentials and whenever the caller ended the
    /// attempt — its deadline ran out ([`AuthError::DeadlineExceeded`]) or it cancelled
    /// the call — whatever deadline it chose (see [`throttle`]).
    ///
    /// # Errors
    /// [`AuthError::Throttled`] over budget; [`AuthError::InvalidCredentials`];
    /// [`AuthError::DeadlineExceeded`]; [`AuthError::UserServiceUnavailable`];
    /// [`AuthError::UserServiceOverloaded`]; [`AuthError::Unexpected`] when the user
    /// service's answer breaks its contract or storage fails.
    pub async fn login(
        &self,
        email: &str,
        password: &str,
        source: Option<IpAddr>,
    ) -> Result<(TokenPair, String), AuthError> {
        let reservation = self
            .throttle
            .reserve(AccountKey::of(email), source)
            .map_err(|retry_after| AuthError::Throttled { retry_after })?;
        let user = match self.users.verify_credentials(email, password).await {
            Ok(Some(user)) => {
                self.throttle.succeeded(reservation);
                user
            }
            // The slot stays taken: this is the failure it was reserved for.
            Ok(None) => return Err(AuthError::InvalidCredentials),
            // So it does when the caller's deadline ended the check: a short deadline
            // buys no free guesses.
            Err(AuthError::DeadlineExceeded) => {
                drop(reservation);
                return Err(AuthError::DeadlineExceeded);
            }
            Err(err) => {
                self.throttle.refund(reservation);
                return Err(err);
            }
        };
        let now = Utc::now();
        let (refresh_token, token_hash) = new_refresh_token();
        let record = RefreshRecord {
            id: Uuid::now_v7(),
            family_id: Uuid::now_v7(),
            user_id: user.id.clone(),
            roles: user.roles.clone(),
            token_hash,
            create_time: now,
            expire_time: now
                + chrono::Duration::from_std(self.issuer.settings().refresh_ttl)
                    .unwrap_or_default(),
        };
        let event = SignInEvent {
            user_id: user.id.clone(),
            time: now,
            source,
        };
        self.repository.start_family(&record, &event).await?;
        let pair = self.pair(&user.id, user.roles, refresh_token, record.expire_time)?;
        Ok((pair, user.id))
    }

    /// Exchanges a refresh token for a new pair (single use; reuse revokes the family).
    ///
    /// The user service is asked about the token's user first: the new access token
    /// carries their current roles, and a user that no longer exists gets nothing (the
    /// family is revoked). When the user service cannot be asked, the token is left
    /// unused, so the client can retry with it.
    ///
    /// # Errors
    /// [`AuthError::InvalidArgument`] for an empty token; [`AuthError::InvalidRefreshToken`]
    /// for an unknown, used, revoked or expired token or a deleted user;
    /// [`AuthError::UserServiceUnavailable`]; [`AuthError::Unexpected`].
    pub async fn refresh(&self, refresh_token: &str) -> Result<TokenPair, AuthError> {
        if refresh_token.is_empty() {
            return Err(required("refresh_token"));
        }
        let hash = hash_token(refresh_token);
        let now = Utc::now();
        let current = self.repository.current_user(&hash, now).await?;
        let roles = match &current {
            Some(user_id) => match self.users.lookup_user(user_id).await? {
                Some(user) => user.roles,
                None => {
                    tracing::info!(%user_id, "refresh refused: the user no longer exists; family revoked");
                    self.repository.revoke_family(&hash, now).await?;
                    return Err(AuthError::InvalidRefreshToken);
                }
            },
            // Not current: rotation below tells a replay (and revokes) from the rest.
            None => Vec::new(),
        };
        let (next_token, next_hash) = new_refresh_token();
        match self
            .repository
            .rotate(&hash, &next_hash, &roles, now)
            .await?
        {
            Rotation::Rotated {
                user_id,
                expire_time,
            } if current.as_ref() == Some(&user_id) => {
                self.pair(&user_id, roles, next_token, expire_time)
            }
            Rotation::Rotated { .. } => Err(AuthError::Unexpected(anyhow::anyhow!(
                "a refresh token that was not current rotated"
            ))),
            Rotation::Replayed => {
                tracing::warn!("refresh token reused: its family is revoked (RFC 9700 §4.14.2)");
                Err(AuthError::InvalidRefreshToken)
            }
            Rotation::Invalid => Err(AuthError::InvalidRefreshToken),
        }
    }

    /// Revokes every refresh-token family of `user_id` (e.g. the user was deleted), so
    /// none of their sessions refreshes again; returns how many were active. Idempotent:
    /// again, or for an unknown user, it succeeds with 0.
    ///
    /// # Errors
    /// [`AuthError::Unexpected`] when storage fails.
    pub async fn revoke_user_tokens(&self, user_id: &str) -> Result<u64, AuthError> {
        let revoked = self.repository.revoke_user(user_id, Utc::now()).await?;
        tracing::info!(%user_id, revoked, "revoked the user's refresh tokens");
        Ok(revoked)
    }

    /// Revokes the family of `refresh_token`. Unknown tokens succeed too.
    ///
    /// # Errors
    /// [`AuthError::Unexpected`] when storage fails.
    pub async fn logout(&self, refresh_token: &str) -> Result<(), AuthError> {
        if refresh_token.is_empty() {
            return Err(required("refresh_token"));
        }
        self.repository
            .revoke_family(&hash_token(refresh_token), Utc::now())
            .await
    }

    /// Issues a service token for calling `audience` to a client with the right secret
    /// (compared in constant time), bound to the certificate whose thumbprint is
    /// `bound_to` when given (RFC 8705).
    ///
    /// # Errors
    /// [`AuthError::InvalidArgument`] when `audience` is empty or not a service name
    /// (lower-case letters, digits, `-`, `_`, `.`; at most 63); [`AuthError::InvalidClient`].
    pub fn issue_service_token(
        &self,
        client_id: &str,
        client_secret: &str,
        audience: &str,
        bound_to: Option<String>,
    ) -> Result<(String, Duration), AuthError> {
        if audience.is_empty() {
            return Err(required("audience"));
        }
        if audience.len() > 63
            || !audience.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
            })
        {
            return Err(AuthError::InvalidArgument(vec![FieldViolation::new(
                "audience",
                "must be a service name: lower-case letters, digits, `-`, `_` or `.`, at most 63",
            )]));
        }
        let Some(expected) = self.clients.get(client_id) else {
            return Err(AuthError::InvalidClient);
        };
        let given = Sha256::digest(client_secret.as_bytes());
        let expected = Sha256::digest(expected.expose_secret().as_bytes());
        if !bool::from(given.ct_eq(&expected)) {
            return Err(AuthError::InvalidClient);
        }
        Ok(self.issuer.sign_service(client_id, audience, bound_to)?)
    }

    fn pair(
        &self,
        user_id: &str,
        roles: Vec<String>,
        refresh_token: String,
        refresh_expire_time: DateTime<Utc>,
    ) -> Result<TokenPair, AuthError> {
        let ttl = self.issuer.settings().access_ttl;
        let access_token = self.issuer.sign(user_id, PrincipalKind::User, roles, ttl)?;
        Ok(TokenPair {
            access_token,
            expires_in: ttl,
            refresh_token,
            refresh_expire_time,
        })
    }
}

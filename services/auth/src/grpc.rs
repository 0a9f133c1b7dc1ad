//! The gRPC layer of the auth service: wire ⇄ domain, the one mapping from
//! [`AuthError`] to `Status`, and the key source that verifies calls to its internal
//! methods ([`LocalKeys`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use prost_types::Timestamp;
use tonic::{Request, Response, Status};
use trellis_platform::auth::{KeySource, PublicKey};
use trellis_platform::metrics::prometheus::IntCounter;
use trellis_platform::server::connection::ConnectionInfo;
use trellis_platform::status::{internal, invalid_argument, parse_id, resource_exhausted};
use trellis_platform::tls::SpiffeId;
use trellis_proto::auth_v1 as pb;

use crate::domain::keys::KeyRing;
use crate::domain::{Auth, AuthError, AuthRepository, TokenPair, UserDirectory};

/// Handlers of `trellis.auth.v1.AuthService` and `trellis.auth.v1.AuthInternalService`.
#[derive(Debug)]
pub struct AuthHandlers<R, C> {
    auth: Arc<Auth<R, C>>,
    throttled: Option<IntCounter>,
    /// Under mutual TLS, this workload's identity: service tokens go only to a client
    /// certificate naming the client in its trust domain and namespace, and are bound to it.
    require_certificates: Option<SpiffeId>,
}

impl<R, C> Clone for AuthHandlers<R, C> {
    fn clone(&self) -> Self {
        Self {
            auth: Arc::clone(&self.auth),
            throttled: self.throttled.clone(),
            require_certificates: self.require_certificates.clone(),
        }
    }
}

impl<R: AuthRepository, C: UserDirectory> AuthHandlers<R, C> {
    /// Handlers over the domain operations.
    pub fn new(auth: Arc<Auth<R, C>>) -> Self {
        Self {
            auth,
            throttled: None,
            require_certificates: None,
        }
    }

    /// Under mutual TLS (`own`: this workload's SPIFFE ID): `IssueServiceToken` answers
    /// only a client whose certificate's SPIFFE ID is `client_id` in `own`'s trust
    /// domain and namespace, and binds the token to that certificate (RFC 8705).
    #[must_use]
    pub fn requiring_certificates(mut self, own: Option<SpiffeId>) -> Self {
        self.require_certificates = own;
        self
    }

    /// Counts sign-ins the throttle refused in `throttled`
    /// (`trellis_auth_login_throttled_total`).
    #[must_use]
    pub fn count_throttled(mut self, throttled: IntCounter) -> Self {
        self.throttled = Some(throttled);
        self
    }
}

#[tonic::async_trait]
impl<R: AuthRepository, C: UserDirectory> pb::auth_service_server::AuthService
    for AuthHandlers<R, C>
{
    async fn login(
        &self,
        request: Request<pb::LoginRequest>,
    ) -> Result<Response<pb::LoginResponse>, Status> {
        let source = trellis_platform::server::client_address(&request);
        let request = request.into_inner();
        let (tokens, user_id) = self
            .auth
            .login(&request.email, &request.password, source)
            .await
            .inspect_err(|err| {
                if let (AuthError::Throttled { .. }, Some(throttled)) = (err, &self.throttled) {
                    throttled.inc();
                }
            })?;
        tracing::info!(%user_id, "signed in");
        Ok(Response::new(pb::LoginResponse {
            tokens: Some(to_proto(tokens)),
            user_id,
        }))
    }

    async fn refresh_token(
        &self,
        request: Request<pb::RefreshTokenRequest>,
    ) -> Result<Response<pb::RefreshTokenResponse>, Status> {
        let tokens = self.auth.refresh(&request.get_ref().refresh_token).await?;
        Ok(Response::new(pb::RefreshTokenResponse {
            tokens: Some(to_proto(tokens)),
        }))
    }

    async fn logout(
        &self,
        request: Request<pb::LogoutRequest>,
    ) -> Result<Response<pb::LogoutResponse>, Status> {
        self.auth.logout(&request.get_ref().refresh_token).await?;
        Ok(Response::new(pb::LogoutResponse {}))
    }

    async fn list_signing_keys(
        &self,
        _request: Request<pb::ListSigningKeysRequest>,
    ) -> Result<Response<pb::ListSigningKeysResponse>, Status> {
        let keys = self
            .auth
            .issuer()
            .keys()
            .published()
            .into_iter()
            .map(|key| pb::SigningKey {
                x: key.public_x(),
                kid: key.kid,
                kty: "OKP".to_owned(),
                crv: "Ed25519".to_owned(),
                alg: "EdDSA".to_owned(),
                activate_time: Some(Timestamp {
                    seconds: key.activate_time.timestamp(),
                    nanos: 0,
                }),
            })
            .collect();
        Ok(Response::new(pb::ListSigningKeysResponse { keys }))
    }

    async fn issue_service_token(
        &self,
        request: Request<pb::IssueServiceTokenRequest>,
    ) -> Result<Response<pb::IssueServiceTokenResponse>, Status> {
        let certificate = ConnectionInfo::peer_certificate(request.extensions());
        let bound_to = if let Some(own) = &self.require_certificates {
            let Some(certificate) = certificate else {
                return Err(Status::unauthenticated(
                    "service tokens need a client certificate (mutual TLS)",
                ));
            };
            let client_id = &request.get_ref().client_id;
            if certificate
                .spiffe_id
                .as_ref()
                .is_none_or(|id| id.service() != client_id || !id.is_neighbour(own))
            {
                tracing::warn!(
                    client_id = %client_id,
                    certificate = ?certificate.spiffe_id.as_ref().map(ToString::to_string),
                    "service token asked for with another workload's certificate"
                );
                return Err(Status::permission_denied(
                    "the client certificate does not name this client",
                ));
            }
            Some(certificate.thumbprint.clone())
        } else {
            None
        };
        let request = request.into_inner();
        let (access_token, ttl) = self.auth.issue_service_token(
            &request.client_id,
            &request.client_secret,
            &request.audience,
            bound_to,
        )?;
        Ok(Response::new(pb::IssueServiceTokenResponse {
            access_token,
            expires_in: i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX),
        }))
    }
}

#[tonic::async_trait]
impl<R: AuthRepository, C: UserDirectory> pb::auth_internal_service_server::AuthInternalService
    for AuthHandlers<R, C>
{
    async fn revoke_user_tokens(
        &self,
        request: Request<pb::RevokeUserTokensRequest>,
    ) -> Result<Response<pb::RevokeUserTokensResponse>, Status> {
        let user_id = parse_id("user_id", &request.get_ref().user_id)?;
        let revoked = self.auth.revoke_user_tokens(&user_id.to_string()).await?;
        Ok(Response::new(pb::RevokeUserTokensResponse {
            revoked_count: i32::try_from(revoked).unwrap_or(i32::MAX),
        }))
    }
}

fn to_proto(tokens: TokenPair) -> pb::TokenPair {
    pb::TokenPair {
        access_token: tokens.access_token,
        token_type: "Bearer".to_owned(),
        expires_in: i64::try_from(tokens.expires_in.as_secs()).unwrap_or(i64::MAX),
        refresh_token: tokens.refresh_token,
        refresh_expire_time: Some(Timestamp {
            seconds: tokens.refresh_expire_time.timestamp(),
            nanos: 0,
        }),
    }
}

/// The single mapping from auth errors to gRPC statuses.
impl From<AuthError> for Status {
    fn from(err: AuthError) -> Self {
        match err {
            AuthError::InvalidCredentials => Status::unauthenticated("invalid email or password"),
            AuthError::Throttled { retry_after } => resource_exhausted(
                "too many failed sign-in attempts; try again later",
                retry_after,
            ),
            AuthError::InvalidRefreshToken => Status::unauthenticated("invalid refresh token"),
            AuthError::InvalidClient => Status::unauthenticated("invalid client credentials"),
            AuthError::InvalidArgument(violations) => invalid_argument(&violations),
            AuthError::UserServiceUnavailable => {
                Status::unavailable("sign-in is unavailable; try again shortly")
            }
            AuthError::DeadlineExceeded => {
                Status::deadline_exceeded("the deadline expired before sign-in could finish")
            }
            AuthError::UserServiceOverloaded { retry_after } => {
                resource_exhausted("sign-in is overloaded; try again later", retry_after)
            }
            AuthError::Unexpected(err) => internal(err.as_ref()),
        }
    }
}

/// The auth service verifies the tokens sent to its own internal methods against its
/// key ring, instead of fetching its own published keys over the network.
#[derive(Debug)]
pub struct LocalKeys {
    ring: KeyRing,
}

impl LocalKeys {
    /// Keys read from `ring`.
    pub fn new(ring: KeyRing) -> Self {
        Self { ring }
    }
}

impl KeySource for LocalKeys {
    fn fetch(&self) -> Pin<Box<dyn Future<Output = Result<Vec<PublicKey>, Status>> + Send + '_>> {
        let keys = self
            .ring
            .published()
            .into_iter()
            .map(|key| PublicKey {
                x: key.public_x(),
                kid: key.kid,
            })
            .collect();
        Box::pin(async move { Ok(keys) })
    }
}

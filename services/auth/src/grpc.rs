//! The gRPC layer of the auth service: wire ⇄ domain, and the one mapping from
//! [`AuthError`] to `Status`.

use std::sync::Arc;
use std::time::Duration;

use prost_types::Timestamp;
use tonic::{Code, Request, Response, Status};
use tonic_types::StatusExt as _;
use trellis_platform::metrics::prometheus::IntCounter;
use trellis_platform::peer::PeerChannel;
use trellis_platform::status::{internal, invalid_argument, parse_id, resource_exhausted};
use trellis_proto::auth_v1 as pb;
use trellis_proto::user_v1 as user_pb;
use trellis_proto::user_v1::user_internal_service_client::UserInternalServiceClient;

use crate::domain::{Auth, AuthError, AuthRepository, TokenPair, User, UserDirectory};

/// Handlers of `trellis.auth.v1.AuthService` and `trellis.auth.v1.AuthInternalService`.
#[derive(Debug)]
pub struct AuthHandlers<R, C> {
    auth: Arc<Auth<R, C>>,
    throttled: Option<IntCounter>,
}

impl<R, C> Clone for AuthHandlers<R, C> {
    fn clone(&self) -> Self {
        Self {
            auth: Arc::clone(&self.auth),
            throttled: self.throttled.clone(),
        }
    }
}

impl<R: AuthRepository, C: UserDirectory> AuthHandlers<R, C> {
    /// Handlers over the domain operations.
    pub fn new(auth: Arc<Auth<R, C>>) -> Self {
        Self {
            auth,
            throttled: None,
        }
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
        let source = request.remote_addr().map(|addr| addr.ip());
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
        let request = request.into_inner();
        let (access_token, ttl) = self
            .auth
            .issue_service_token(&request.client_id, &request.client_secret)?;
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
            AuthError::UserServiceOverloaded { retry_after } => {
                resource_exhausted("sign-in is overloaded; try again later", retry_after)
            }
            AuthError::Unexpected(err) => internal(err.as_ref()),
        }
    }
}

/// The user service as auth asks it (`UserInternalService`'s `VerifyCredentials` and
/// `LookupUser`), over a peer channel carrying auth's own service credentials.
///
/// Only a successful answer says anything about a user: any error status of the call —
/// including UNAUTHENTICATED or PERMISSION_DENIED, which mean the user service refused
/// *auth's* credentials (clock skew, a key it could not fetch) — is a fault, logged here
/// and reported as [`AuthError::UserServiceUnavailable`], never as wrong credentials.
#[derive(Debug, Clone)]
pub struct UserServiceDirectory {
    client: UserInternalServiceClient<PeerChannel>,
}

impl UserServiceDirectory {
    /// A directory calling the user service over `channel`.
    pub fn new(channel: PeerChannel) -> Self {
        Self {
            client: UserInternalServiceClient::new(channel),
        }
    }
}

/// Logs a failed call to the user service and makes it [`AuthError::UserServiceUnavailable`]
/// — or [`AuthError::UserServiceOverloaded`] when the user service shed the call with
/// RESOURCE_EXHAUSTED, so its `RetryInfo` reaches the client.
fn unavailable(method: &str, status: &Status) -> AuthError {
    if status.code() == Code::ResourceExhausted {
        let retry_after = status
            .get_details_retry_info()
            .and_then(|info| info.retry_delay)
            .unwrap_or(Duration::from_secs(1));
        tracing::warn!(
            method,
            message = status.message(),
            "the user service is overloaded"
        );
        return AuthError::UserServiceOverloaded { retry_after };
    }
    if matches!(
        status.code(),
        Code::Unauthenticated | Code::PermissionDenied
    ) {
        tracing::error!(method, code = ?status.code(), message = status.message(), "the user service refused auth's service credentials");
    } else {
        tracing::warn!(method, code = ?status.code(), message = status.message(), "user service call failed");
    }
    AuthError::UserServiceUnavailable
}

/// A user from the user service's answer, which must name one with an id.
fn user_from(answer: Option<user_pb::User>, method: &str) -> Result<User, AuthError> {
    match answer {
        Some(user) if !user.id.trim().is_empty() => Ok(User {
            id: user.id,
            email: user.email,
            roles: user.roles,
        }),
        // The peer broke its contract. Going on would sign a token whose `sub` is empty;
        // a retry will not help, so this is INTERNAL (logged with the request's trace id
        // where it becomes a status), not UNAVAILABLE.
        Some(_) => Err(AuthError::Unexpected(anyhow::anyhow!(
            "user service answered {method} with a user with an empty id"
        ))),
        None => Err(AuthError::Unexpected(anyhow::anyhow!(
            "user service answered {method} with no user"
        ))),
    }
}

impl UserDirectory for UserServiceDirectory {
    async fn verify_credentials(
        &self,
        email: &str,
        password: &str,
    ) -> Result<Option<User>, AuthError> {
        let response = self
            .client
            .clone()
            .verify_credentials(user_pb::VerifyCredentialsRequest {
                email: email.to_owned(),
                password: password.to_owned(),
            })
            .await
            .map_err(|status| unavailable("VerifyCredentials", &status))?;
        match response.into_inner().user {
            // A mismatch is answered in the response, with no user.
            None => Ok(None),
            user => user_from(user, "VerifyCredentials").map(Some),
        }
    }

    async fn lookup_user(&self, id: &str) -> Result<Option<User>, AuthError> {
        let result = self
            .client
            .clone()
            .lookup_user(user_pb::LookupUserRequest { id: id.to_owned() })
            .await;
        let user = match result {
            Ok(response) => user_from(response.into_inner().user, "LookupUser")?,
            Err(status) if status.code() == Code::NotFound => return Ok(None),
            Err(status) => return Err(unavailable("LookupUser", &status)),
        };
        if user.id != id {
            return Err(AuthError::Unexpected(anyhow::anyhow!(
                "user service answered LookupUser with another user"
            )));
        }
        Ok(Some(user))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use tokio_stream::wrappers::TcpListenerStream;
    use trellis_platform::peer::{PeerConfig, Peers};
    use user_pb::user_internal_service_server::{UserInternalService, UserInternalServiceServer};

    use super::*;

    /// A user service that answers every call with `reply`: a user (or none) in an OK
    /// response, or an error status with this code.
    struct FixedReply(Result<Option<user_pb::User>, Code>);

    impl FixedReply {
        fn answer(&self) -> Result<Option<user_pb::User>, Status> {
            self.0
                .clone()
                .map_err(|code| Status::new(code, "the fixed reply"))
        }
    }

    #[tonic::async_trait]
    impl UserInternalService for FixedReply {
        async fn lookup_user(
            &self,
            _request: Request<user_pb::LookupUserRequest>,
        ) -> Result<Response<user_pb::LookupUserResponse>, Status> {
            let user = self.answer()?;
            Ok(Response::new(user_pb::LookupUserResponse { user }))
        }

        async fn verify_credentials(
            &self,
            _request: Request<user_pb::VerifyCredentialsRequest>,
        ) -> Result<Response<user_pb::VerifyCredentialsResponse>, Status> {
            let user = self.answer()?;
            Ok(Response::new(user_pb::VerifyCredentialsResponse { user }))
        }
    }

    /// A directory over an in-process user service on 127.0.0.1 that answers `reply`.
    async fn directory_answered_with(
        reply: Result<Option<user_pb::User>, Code>,
    ) -> anyhow::Result<UserServiceDirectory> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(UserInternalServiceServer::new(FixedReply(reply)))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        let peers = Peers::new(HashMap::from([(
            "user".to_owned(),
            PeerConfig::with_address(format!("http://{address}")),
        )]));
        Ok(UserServiceDirectory::new(peers.channel("user")?))
    }

    const ID: &str = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";

    fn user(id: &str) -> user_pb::User {
        user_pb::User {
            id: id.to_owned(),
            email: "ada@example.com".to_owned(),
            roles: vec!["admin".to_owned()],
            ..user_pb::User::default()
        }
    }

    #[tokio::test]
    async fn a_reply_with_a_user_gives_that_user_with_their_roles() -> anyhow::Result<()> {
        let directory = directory_answered_with(Ok(Some(user(ID)))).await?;
        let expected = User {
            id: ID.to_owned(),
            email: "ada@example.com".to_owned(),
            roles: vec!["admin".to_owned()],
        };
        let verified = directory
            .verify_credentials("ada@example.com", "correct horse")
            .await?;
        assert_eq!(verified.as_ref(), Some(&expected));
        assert_eq!(directory.lookup_user(ID).await?, Some(expected));
        Ok(())
    }

    #[tokio::test]
    async fn a_verify_reply_without_a_user_is_a_mismatch() -> anyhow::Result<()> {
        let directory = directory_answered_with(Ok(None)).await?;
        let result = directory
            .verify_credentials("ada@example.com", "correct horse")
            .await?;
        assert_eq!(result, None);
        Ok(())
    }

    #[tokio::test]
    async fn an_overloaded_user_service_is_resource_exhausted_with_retry_info() -> anyhow::Result<()>
    {
        let directory = directory_answered_with(Err(Code::ResourceExhausted)).await?;
        let result = directory
            .verify_credentials("ada@example.com", "correct horse")
            .await;
        let Err(err) = result else {
            anyhow::bail!("an overloaded user service answered {result:?}");
        };
        assert!(
            matches!(err, AuthError::UserServiceOverloaded { .. }),
            "{err:?}"
        );
        let status = Status::from(err);
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(
            status.get_details_retry_info().and_then(|i| i.retry_delay),
            Some(Duration::from_secs(1))
        );
        Ok(())
    }

    #[tokio::test]
    async fn every_error_status_of_the_call_is_unavailable_never_a_mismatch() -> anyhow::Result<()>
    {
        // UNAUTHENTICATED and PERMISSION_DENIED: the user service refused auth's own
        // service token, which says nothing about the user's password.
        for code in [
            Code::Unauthenticated,
            Code::PermissionDenied,
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::Internal,
        ] {
            let directory = directory_answered_with(Err(code)).await?;
            let result = directory
                .verify_credentials("ada@example.com", "correct horse")
                .await;
            assert!(
                matches!(result, Err(AuthError::UserServiceUnavailable)),
                "{code:?}: {result:?}"
            );
            let result = directory.lookup_user(ID).await;
            assert!(
                matches!(result, Err(AuthError::UserServiceUnavailable)),
                "{code:?}: {result:?}"
            );
        }
        Ok(())
    }

    #[tokio::test]
    async fn a_lookup_answered_not_found_is_no_user() -> anyhow::Result<()> {
        let directory = directory_answered_with(Err(Code::NotFound)).await?;
        assert_eq!(directory.lookup_user(ID).await?, None);
        Ok(())
    }

    #[tokio::test]
    async fn a_reply_with_an_empty_user_id_or_another_user_is_internal() -> anyhow::Result<()> {
        for id in ["", "  "] {
            let directory = directory_answered_with(Ok(Some(user(id)))).await?;
            let result = directory
                .verify_credentials("ada@example.com", "correct horse")
                .await;
            assert!(
                matches!(result, Err(AuthError::Unexpected(_))),
                "{id:?}: {result:?}"
            );
            let status = result.err().map(Status::from);
            assert_eq!(status.as_ref().map(Status::code), Some(Code::Internal));
            assert_eq!(status.as_ref().map(Status::message), Some("internal error"));
        }
        let directory = directory_answered_with(Ok(Some(user(ID)))).await?;
        let other = "0190a1b2-c3d4-7e5f-8a9b-000000000000";
        let result = directory.lookup_user(other).await;
        assert!(
            matches!(result, Err(AuthError::Unexpected(_))),
            "{result:?}"
        );
        let directory = directory_answered_with(Ok(None)).await?;
        let result = directory.lookup_user(ID).await;
        assert!(
            matches!(result, Err(AuthError::Unexpected(_))),
            "{result:?}"
        );
        Ok(())
    }
}

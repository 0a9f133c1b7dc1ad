//! The gRPC layer of the auth service: wire ⇄ domain, and the one mapping from
//! [`AuthError`] to `Status`.

use std::sync::Arc;

use prost_types::Timestamp;
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt as _};
use trellis_platform::peer::PeerChannel;
use trellis_platform::status::{FieldViolation, internal, invalid_argument};
use trellis_proto::auth_v1 as pb;
use trellis_proto::user_v1::VerifyCredentialsRequest;
use trellis_proto::user_v1::user_internal_service_client::UserInternalServiceClient;

use crate::domain::{Auth, AuthError, AuthRepository, CredentialChecker, TokenPair, VerifiedUser};

/// Handlers of `trellis.auth.v1.AuthService`.
#[derive(Debug)]
pub struct AuthHandlers<R, C> {
    auth: Arc<Auth<R, C>>,
}

impl<R, C> Clone for AuthHandlers<R, C> {
    fn clone(&self) -> Self {
        Self {
            auth: Arc::clone(&self.auth),
        }
    }
}

impl<R: AuthRepository, C: CredentialChecker> AuthHandlers<R, C> {
    /// Handlers over the domain operations.
    pub fn new(auth: Arc<Auth<R, C>>) -> Self {
        Self { auth }
    }
}

#[tonic::async_trait]
impl<R: AuthRepository, C: CredentialChecker> pb::auth_service_server::AuthService
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
            .await?;
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
            AuthError::Throttled { retry_after } => Status::with_error_details(
                Code::ResourceExhausted,
                "too many failed sign-in attempts; try again later",
                ErrorDetails::with_retry_info(Some(retry_after)),
            ),
            AuthError::InvalidRefreshToken => Status::unauthenticated("invalid refresh token"),
            AuthError::InvalidClient => Status::unauthenticated("invalid client credentials"),
            AuthError::Missing(field) => {
                invalid_argument(&[FieldViolation::new(field, "is required")])
            }
            AuthError::UserServiceUnavailable => {
                Status::unavailable("sign-in is unavailable; try again shortly")
            }
            AuthError::Unexpected(err) => internal(err.as_ref()),
        }
    }
}

/// Checks credentials with the user service's `VerifyCredentials` over a peer channel.
#[derive(Debug, Clone)]
pub struct UserServiceChecker {
    client: UserInternalServiceClient<PeerChannel>,
}

impl UserServiceChecker {
    /// A checker calling the user service over `channel`.
    pub fn new(channel: PeerChannel) -> Self {
        Self {
            client: UserInternalServiceClient::new(channel),
        }
    }
}

impl CredentialChecker for UserServiceChecker {
    async fn check(&self, email: &str, password: &str) -> Result<Option<VerifiedUser>, AuthError> {
        let result = self
            .client
            .clone()
            .verify_credentials(VerifyCredentialsRequest {
                email: email.to_owned(),
                password: password.to_owned(),
            })
            .await;
        match result {
            Ok(response) => match response.into_inner().user {
                Some(user) if !user.id.trim().is_empty() => Ok(Some(VerifiedUser {
                    id: user.id,
                    email: user.email,
                })),
                // The peer broke its contract. Going on would sign a token whose `sub` is
                // empty; a retry will not help, so this is INTERNAL (logged with the
                // request's trace id where it becomes a status), not UNAVAILABLE.
                user => Err(AuthError::Unexpected(anyhow::anyhow!(
                    "user service accepted the credentials but answered {}",
                    if user.is_some() {
                        "a user with an empty id"
                    } else {
                        "no user"
                    }
                ))),
            },
            Err(status) if status.code() == Code::Unauthenticated => Ok(None),
            Err(status) => {
                tracing::warn!(code = ?status.code(), message = status.message(), "user service call failed");
                Err(AuthError::UserServiceUnavailable)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use tokio_stream::wrappers::TcpListenerStream;
    use trellis_platform::peer::{PeerConfig, Peers};
    use trellis_proto::user_v1 as user_pb;
    use user_pb::user_internal_service_server::{UserInternalService, UserInternalServiceServer};

    use super::*;

    /// A user service whose `VerifyCredentials` accepts anything and answers `user`.
    struct FixedReply(Option<user_pb::User>);

    #[tonic::async_trait]
    impl UserInternalService for FixedReply {
        async fn lookup_user(
            &self,
            _request: Request<user_pb::LookupUserRequest>,
        ) -> Result<Response<user_pb::LookupUserResponse>, Status> {
            Err(Status::unimplemented("not faked yet"))
        }

        async fn verify_credentials(
            &self,
            _request: Request<VerifyCredentialsRequest>,
        ) -> Result<Response<user_pb::VerifyCredentialsResponse>, Status> {
            Ok(Response::new(user_pb::VerifyCredentialsResponse {
                user: self.0.clone(),
            }))
        }
    }

    /// A checker calling an in-process user service on 127.0.0.1 that answers `user`.
    async fn checker_answered_with(
        user: Option<user_pb::User>,
    ) -> anyhow::Result<UserServiceChecker> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(UserInternalServiceServer::new(FixedReply(user)))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        let peers = Peers::new(HashMap::from([(
            "user".to_owned(),
            PeerConfig::with_address(format!("http://{address}")),
        )]));
        Ok(UserServiceChecker::new(peers.channel("user")?))
    }

    fn user(id: &str) -> user_pb::User {
        user_pb::User {
            id: id.to_owned(),
            email: "ada@example.com".to_owned(),
            ..user_pb::User::default()
        }
    }

    #[tokio::test]
    async fn a_reply_with_a_user_gives_that_user() -> anyhow::Result<()> {
        let checker =
            checker_answered_with(Some(user("0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"))).await?;
        let verified = checker.check("ada@example.com", "correct horse").await?;
        assert_eq!(
            verified.map(|u| (u.id, u.email)),
            Some((
                "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b".to_owned(),
                "ada@example.com".to_owned()
            ))
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_reply_without_a_user_is_an_internal_error_not_an_empty_user_id() -> anyhow::Result<()>
    {
        let checker = checker_answered_with(None).await?;
        let result = checker.check("ada@example.com", "correct horse").await;
        assert!(
            matches!(result, Err(AuthError::Unexpected(_))),
            "{result:?}"
        );
        let status = result.err().map(Status::from);
        assert_eq!(status.as_ref().map(Status::code), Some(Code::Internal));
        assert_eq!(status.as_ref().map(Status::message), Some("internal error"));
        Ok(())
    }

    #[tokio::test]
    async fn a_reply_with_an_empty_user_id_is_an_error() -> anyhow::Result<()> {
        for id in ["", "  "] {
            let checker = checker_answered_with(Some(user(id))).await?;
            let result = checker.check("ada@example.com", "correct horse").await;
            assert!(
                matches!(result, Err(AuthError::Unexpected(_))),
                "{id:?}: {result:?}"
            );
        }
        Ok(())
    }
}

//! The auth service's calls out: the user service as [`UserDirectory`] (its internal
//! API's `VerifyCredentials` and `LookupUser`), the sign-in notice each [`SignInEvent`]
//! becomes (through the outbox), and the service's own credentials for those calls. With
//! [`crate::grpc`] and `lib.rs`, the only file of the service that knows protobuf types or
//! names a peer.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::StatusExt as _;
use trellis_platform::outbox::{EventOutbox, OutboxEntry, OutboxWaker};
use trellis_platform::peer::{CredentialSource, PeerChannel, caused_by_caller};
use trellis_platform::tls::TlsSource;
use trellis_proto::notification_v1::SendNotificationRequest;
use trellis_proto::user_v1 as user_pb;
use trellis_proto::user_v1::user_internal_service_client::UserInternalServiceClient;
use uuid::Uuid;

use crate::domain::{AuthError, SignInEvent, TokenIssuer, User, UserDirectory};

/// The peer that receives notifications, as named in the `peers` config.
pub const NOTIFICATION_PEER: &str = "notification";
/// The peer that owns users and checks their credentials, as named in the `peers` config.
pub const USER_PEER: &str = "user";

/// The outbox of sign-in events, waking the dispatcher through `waker` (storage takes
/// it: see `SeaOrmAuthRepository::new`).
pub fn sign_in_events(waker: OutboxWaker) -> EventOutbox<SignInEvent> {
    EventOutbox::new(waker, sign_in_notification)
}

/// The sign-in notice, as an outbox call to the notification service. Its id is the
/// idempotency key, so redelivery cannot duplicate it.
pub fn sign_in_notification(event: &SignInEvent) -> OutboxEntry {
    let id = Uuid::now_v7();
    let from = event
        .source
        .map(|ip| format!(" from {ip}"))
        .unwrap_or_default();
    let request = SendNotificationRequest {
        user_id: event.user_id.clone(),
        kind: "new_sign_in".to_owned(),
        title: "New sign-in".to_owned(),
        body: format!(
            "Your account was signed in to at {}{from}. If this was not you, change your password.",
            event.time.format("%Y-%m-%d %H:%M UTC")
        ),
        idempotency_key: id.to_string(),
    };
    OutboxEntry::new(
        id,
        NOTIFICATION_PEER,
        trellis_proto::paths::SEND_NOTIFICATION,
        &request,
    )
}

/// The auth service's own credentials for calling peers: it signs its service tokens
/// itself instead of asking itself over the network.
#[derive(Debug)]
pub struct LocalCredentials {
    issuer: TokenIssuer,
    client_id: &'static str,
    tls: Option<TlsSource>,
}

impl LocalCredentials {
    /// Service tokens for `client_id` (the service's own name), signed by `issuer`;
    /// under mutual TLS bound to `tls`'s current certificate, which the connections
    /// they travel on present.
    pub fn new(issuer: TokenIssuer, client_id: &'static str, tls: Option<TlsSource>) -> Self {
        Self {
            issuer,
            client_id,
            tls,
        }
    }
}

impl CredentialSource for LocalCredentials {
    fn token<'a>(
        &'a self,
        audience: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<String, Status>> + Send + 'a>> {
        Box::pin(async move {
            let bound_to = self
                .tls
                .as_ref()
                .map(|tls| tls.current().thumbprint().to_owned());
            self.issuer
                .sign_service(self.client_id, audience, bound_to)
                .map(|(token, _)| token)
                .map_err(|err| Status::internal(err.to_string()))
        })
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
/// RESOURCE_EXHAUSTED, so its `RetryInfo` reaches the client, or
/// [`AuthError::DeadlineExceeded`] when the caller's own deadline ran out (the peer
/// channel says so: [`caused_by_caller`]), which is no fault of the platform.
fn unavailable(method: &str, status: &Status) -> AuthError {
    if caused_by_caller(status) {
        tracing::debug!(
            method,
            "the caller's deadline ran out before the user service answered"
        );
        return AuthError::DeadlineExceeded;
    }
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

    use tonic::{Request, Response};

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

    #[test]
    fn a_sign_in_is_a_send_notification_naming_time_and_source() -> anyhow::Result<()> {
        use prost::Message as _;

        let time = chrono::DateTime::parse_from_rfc3339("2026-12-07T08:30:00Z")?.to_utc();
        let entry = sign_in_notification(&SignInEvent {
            user_id: ID.to_owned(),
            time,
            source: Some("192.0.2.7".parse()?),
        });
        assert_eq!(entry.peer, NOTIFICATION_PEER);
        assert_eq!(entry.method, trellis_proto::paths::SEND_NOTIFICATION);
        let request = SendNotificationRequest::decode(entry.payload.as_slice())?;
        assert_eq!(request.user_id, ID);
        assert_eq!(request.kind, "new_sign_in");
        assert_eq!(request.idempotency_key, entry.id.to_string());
        assert!(
            request.body.contains("2026-12-07 08:30 UTC from 192.0.2.7"),
            "{}",
            request.body
        );
        Ok(())
    }
}

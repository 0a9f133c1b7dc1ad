//! DeleteUser revokes the user's refresh tokens at the auth service, through the outbox:
//! the deletion and the revocation commit together, and the dispatcher delivers it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::{Request, Response, Status};
use trellis_platform::peer::PeerConfig;
use trellis_platform::service::Launch;
use trellis_platform::testing::{FakeAuth, TestIssuer, TestServer, assert_eventually, test_config};
use trellis_proto::auth_v1 as auth;
use trellis_proto::auth_v1::auth_internal_service_server::{
    AuthInternalService, AuthInternalServiceServer,
};
use trellis_proto::user_v1 as pb;
use trellis_proto::user_v1::user_service_client::UserServiceClient;

use crate::helpers::{sign_up, with_token};

/// `AuthInternalService` that records each revocation it is asked for, with whether the
/// call carried a bearer credential.
#[derive(Clone, Default)]
struct RecordingAuth {
    revoked: Arc<Mutex<Vec<(String, bool)>>>,
}

#[tonic::async_trait]
impl AuthInternalService for RecordingAuth {
    async fn revoke_user_tokens(
        &self,
        request: Request<auth::RevokeUserTokensRequest>,
    ) -> Result<Response<auth::RevokeUserTokensResponse>, Status> {
        let authenticated = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("Bearer "));
        self.revoked
            .lock()
            .expect("not poisoned")
            .push((request.into_inner().user_id, authenticated));
        Ok(Response::new(auth::RevokeUserTokensResponse {
            revoked_count: 1,
        }))
    }
}

impl RecordingAuth {
    /// Serves on 127.0.0.1 (a port the system chose); returns the base URI.
    async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port on 127.0.0.1");
        let addr = listener.local_addr().expect("a bound address");
        let service = AuthInternalServiceServer::new(self.clone());
        tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            drop(
                tonic::transport::Server::builder()
                    .add_service(service)
                    .serve_with_incoming(incoming)
                    .await,
            );
        });
        format!("http://{addr}")
    }

    fn revoked(&self) -> Vec<(String, bool)> {
        self.revoked.lock().expect("not poisoned").clone()
    }
}

#[tokio::test]
async fn deleting_a_user_has_the_auth_service_revoke_their_tokens() {
    let issuer = TestIssuer::new();
    // Service tokens come from a fake identity peer; revocations go to the `auth` peer,
    // here a recorder.
    let identity = FakeAuth::start(issuer.clone()).await;
    let recorder = RecordingAuth::default();
    let mut config = test_config::<user_service::Service>();
    config.auth.client_secret = Some("test secret".to_owned().into());
    config.auth.peer = "identity".to_owned();
    config.peers.insert(
        "identity".to_owned(),
        PeerConfig::with_address(identity.uri()),
    );
    config.peers.insert(
        "auth".to_owned(),
        PeerConfig::with_address(recorder.start().await),
    );
    config.outbox.poll_interval = Duration::from_millis(50);
    config.outbox.initial_backoff = Duration::from_millis(20);
    config.outbox.max_backoff = Duration::from_millis(100);
    let server =
        TestServer::start(Launch::new(config).key_source(Arc::new(issuer.key_source()))).await;
    let mut users = UserServiceClient::new(server.channel.clone());
    let ada = sign_up(&mut users, "ada@example.com", "Ada").await;
    assert!(
        recorder.revoked().is_empty(),
        "nothing is revoked on sign-up"
    );

    let token = issuer.user_token(&ada.id, &[]);
    users
        .delete_user(with_token(
            pb::DeleteUserRequest { id: ada.id.clone() },
            &token,
        ))
        .await
        .expect("deleted");
    assert_eventually(|| {
        let revoked = recorder.revoked();
        async move { !revoked.is_empty() }
    })
    .await;
    assert_eq!(recorder.revoked(), [(ada.id, true)]);
    server.stop().await;
}

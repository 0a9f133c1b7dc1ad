//! The whole system over mutual TLS: every call between the services (signing keys,
//! service tokens bound to certificates, credential checks, outbox deliveries) crosses a
//! TLS connection whose peer proved its SPIFFE ID, and the suites' flows still hold.

use integration_tests::{System, channel, client, scenarios, with_token};
use tonic::Code;
use trellis_proto::user_v1 as user;

#[tokio::test]
async fn accounts_welcomes_and_refresh_rotation_work_over_mutual_tls() {
    let mut system = System::start_tls().await;
    // Sign-up → user calls notification (outbox, a token bound to user's certificate);
    // login → auth calls user (VerifyCredentials, a token auth signs bound to its own).
    scenarios::accounts_and_pagination(&system).await;
    scenarios::refresh_rotation(&system).await;
    scenarios::welcome_exactly_once_across_an_outage(&mut system).await;

    // GetUser: the user service verifies the token with keys it fetched from auth over
    // mutual TLS.
    let session = client::sign_up_and_log_in(&system, "tls@example.com").await;
    let read = client::users(&system)
        .get_user(with_token(
            user::GetUserRequest {
                id: session.user.id.clone(),
            },
            session.access(),
        ))
        .await;
    assert!(read.is_ok(), "{read:?}");

    // Nothing is served in plaintext.
    let plaintext = user::user_service_client::UserServiceClient::new(channel(system.user_addr))
        .get_user(with_token(
            user::GetUserRequest {
                id: session.user.id.clone(),
            },
            session.access(),
        ))
        .await
        .expect_err("a plaintext client is refused");
    assert_ne!(plaintext.code(), Code::Ok);
    system.stop().await;
}

//! Refresh-token rotation, reuse detection (RFC 9700 §4.14.2), the concurrent-refresh
//! race, and logout.

use integration_tests::System;
use tonic::Code;
use trellis_proto::auth_v1::{LogoutRequest, RefreshTokenRequest};

use integration_tests::client::{auth, sign_up_and_log_in};

fn refresh(token: &str) -> RefreshTokenRequest {
    RefreshTokenRequest {
        refresh_token: token.to_owned(),
    }
}

#[tokio::test]
async fn logout_revokes_the_family() {
    let system = System::start().await;
    let ada = sign_up_and_log_in(&system, "ada@example.com").await;
    let mut auth = auth(&system);
    auth.logout(LogoutRequest {
        refresh_token: ada.tokens.refresh_token.clone(),
    })
    .await
    .expect("logout succeeds");
    let after = auth
        .refresh_token(refresh(&ada.tokens.refresh_token))
        .await
        .expect_err("revoked");
    assert_eq!(after.code(), Code::Unauthenticated);
    // Unknown tokens log out fine: nothing to tell an attacker.
    auth.logout(LogoutRequest {
        refresh_token: "unknown".into(),
    })
    .await
    .expect("idempotent");
    system.stop().await;
}

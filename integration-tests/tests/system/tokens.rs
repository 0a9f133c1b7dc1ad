//! Refresh-token rotation, reuse detection (RFC 9700 §4.14.2), the concurrent-refresh
//! race, and logout.

use integration_tests::{System, with_token};
use tonic::Code;
use trellis_proto::auth_v1::{LogoutRequest, RefreshTokenRequest};
use trellis_proto::user_v1 as user;

use crate::client::{auth, sign_up_and_log_in, users};

fn refresh(token: &str) -> RefreshTokenRequest {
    RefreshTokenRequest {
        refresh_token: token.to_owned(),
    }
}

#[tokio::test]
async fn refresh_rotates_and_reuse_revokes_the_family() {
    let system = System::start().await;
    let ada = sign_up_and_log_in(&system, "ada@example.com").await;
    let mut auth = auth(&system);

    let second = auth
        .refresh_token(refresh(&ada.tokens.refresh_token))
        .await
        .expect("first refresh succeeds")
        .into_inner()
        .tokens
        .expect("tokens");
    assert_ne!(second.refresh_token, ada.tokens.refresh_token);
    assert_eq!(
        second.refresh_expire_time, ada.tokens.refresh_expire_time,
        "rotation never extends the family"
    );
    // The new access token works.
    let own = users(&system)
        .get_user(with_token(
            user::GetUserRequest {
                id: ada.user.id.clone(),
            },
            &second.access_token,
        ))
        .await;
    assert!(own.is_ok(), "{own:?}");

    // Replaying the used token fails and revokes the family...
    let replay = auth
        .refresh_token(refresh(&ada.tokens.refresh_token))
        .await
        .expect_err("replay");
    assert_eq!(replay.code(), Code::Unauthenticated);
    // ...so the token issued by the legitimate refresh is dead too.
    let descendant = auth
        .refresh_token(refresh(&second.refresh_token))
        .await
        .expect_err("family revoked");
    assert_eq!(descendant.code(), Code::Unauthenticated);
    system.stop().await;
}

#[tokio::test]
async fn two_concurrent_refreshes_with_one_token_let_exactly_one_succeed() {
    let system = System::start().await;
    let ada = sign_up_and_log_in(&system, "ada@example.com").await;
    for _ in 0..3 {
        let pair = crate::client::log_in(&system, "ada@example.com").await;
        let (mut first, mut second) = (auth(&system), auth(&system));
        let (a, b) = tokio::join!(
            first.refresh_token(refresh(&pair.refresh_token)),
            second.refresh_token(refresh(&pair.refresh_token)),
        );
        let ok = [a.is_ok(), b.is_ok()].iter().filter(|ok| **ok).count();
        assert_eq!(ok, 1, "{a:?} / {b:?}");
        let failure = a.err().or(b.err()).expect("one failed");
        assert_eq!(failure.code(), Code::Unauthenticated);
    }
    drop(ada);
    system.stop().await;
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

//! AuthInternalService: `RevokeUserTokens` ends every session of a user, needs a service
//! identity, and is idempotent.

use tonic::Code;

use crate::helpers::{ADA, ADMIN, spawn_app, violated_fields};

#[tokio::test]
async fn revoke_user_tokens_revokes_every_family_of_the_user_and_no_one_elses() {
    let mut app = spawn_app().await;
    let first = app.sign_in(ADA).await;
    let first = app.refresh(&first.refresh_token).await.expect("rotates");
    let second = app.sign_in(ADA).await;
    let admin = app.sign_in(ADMIN).await;
    let ada_id = app.users.account(ADA).id;
    let token = app.user_service_token().await;

    let response = app
        .revoke_user_tokens(&ada_id, Some(token.as_str()))
        .await
        .expect("the user service may revoke");
    assert_eq!(response.revoked_count, 2);
    for tokens in [&first, &second] {
        let status = app
            .refresh(&tokens.refresh_token)
            .await
            .expect_err("a revoked family does not refresh");
        assert_eq!(status.code(), Code::Unauthenticated);
        assert_eq!(status.message(), "invalid refresh token");
    }
    app.refresh(&admin.refresh_token)
        .await
        .expect("another user's session still refreshes");

    // Idempotent: again, and for a user with no tokens at all.
    let again = app
        .revoke_user_tokens(&ada_id, Some(token.as_str()))
        .await
        .expect("revoking again succeeds");
    assert_eq!(again.revoked_count, 0);
    let unknown = app
        .revoke_user_tokens(&uuid::Uuid::now_v7().to_string(), Some(token.as_str()))
        .await
        .expect("an unknown user succeeds");
    assert_eq!(unknown.revoked_count, 0);
    app.stop().await;
}

#[tokio::test]
async fn revoke_user_tokens_needs_a_service_identity() {
    let mut app = spawn_app().await;
    let ada = app.sign_in(ADA).await;
    let ada_id = app.users.account(ADA).id;
    let none = app
        .revoke_user_tokens(&ada_id, None)
        .await
        .expect_err("no token");
    assert_eq!(none.code(), Code::Unauthenticated);
    let user = app
        .revoke_user_tokens(&ada_id, Some(ada.access_token.as_str()))
        .await
        .expect_err("an end user's token");
    assert_eq!(user.code(), Code::PermissionDenied);
    app.refresh(&ada.refresh_token)
        .await
        .expect("nothing was revoked");
    app.stop().await;
}

#[tokio::test]
async fn revoke_user_tokens_with_a_missing_or_malformed_user_id_is_invalid_argument() {
    let mut app = spawn_app().await;
    let token = app.user_service_token().await;
    for user_id in ["", "not-a-uuid"] {
        let status = app
            .revoke_user_tokens(user_id, Some(token.as_str()))
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{user_id:?}");
        assert_eq!(violated_fields(&status), ["user_id"], "{user_id:?}");
    }
    app.stop().await;
}

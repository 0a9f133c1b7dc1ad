//! RefreshToken and Logout: each refresh token works once, reuse revokes its family,
//! logout ends the session; sessions are independent; a refresh asks the user service
//! about the user every time.

use tonic::Code;

use crate::helpers::{ADA, spawn_app, violated_fields};

#[tokio::test]
async fn refresh_rotates_to_a_new_pair_for_the_same_user_without_extending_the_family() {
    let mut app = spawn_app().await;
    let first = app.sign_in(ADA).await;
    let second = app
        .refresh(&first.refresh_token)
        .await
        .expect("a fresh refresh token is exchanged");
    assert_ne!(second.refresh_token, first.refresh_token);
    assert_ne!(second.access_token, first.access_token);
    assert_eq!(second.token_type, "Bearer");
    assert_eq!(second.expires_in, first.expires_in);
    assert_eq!(
        second.refresh_expire_time, first.refresh_expire_time,
        "rotation never extends the family's lifetime"
    );
    let (_, before) = app.verify(&first.access_token).await;
    let (_, after) = app.verify(&second.access_token).await;
    assert_eq!(after.sub, before.sub);
    assert_eq!(after.sub, app.users.account(ADA).id);
    assert_ne!(after.jti, before.jti);

    // The successor rotates in turn.
    let third = app
        .refresh(&second.refresh_token)
        .await
        .expect("the successor is exchanged");
    assert_ne!(third.refresh_token, second.refresh_token);
    app.stop().await;
}

#[tokio::test]
async fn a_reused_refresh_token_is_unauthenticated_and_revokes_its_successor() {
    let mut app = spawn_app().await;
    let first = app.sign_in(ADA).await;
    let other_session = app.sign_in(ADA).await;
    let second = app
        .refresh(&first.refresh_token)
        .await
        .expect("first use succeeds");

    let reuse = app
        .refresh(&first.refresh_token)
        .await
        .expect_err("a used refresh token is refused");
    assert_eq!(reuse.code(), Code::Unauthenticated);
    assert_eq!(reuse.message(), "invalid refresh token");

    // Reuse means the token leaked: the whole family is revoked, successor included.
    let successor = app
        .refresh(&second.refresh_token)
        .await
        .expect_err("the successor of a reused token is revoked");
    assert_eq!(successor.code(), Code::Unauthenticated);
    assert_eq!(successor.message(), reuse.message());

    // Another sign-in's family is untouched.
    app.refresh(&other_session.refresh_token)
        .await
        .expect("another session still refreshes");
    app.stop().await;
}

#[tokio::test]
async fn an_unknown_refresh_token_is_unauthenticated() {
    let mut app = spawn_app().await;
    for token in ["not-a-token", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"] {
        let status = app
            .refresh(token)
            .await
            .expect_err("an unknown token is refused");
        assert_eq!(status.code(), Code::Unauthenticated, "{token}");
        assert_eq!(status.message(), "invalid refresh token");
    }
    app.stop().await;
}

#[tokio::test]
async fn an_empty_refresh_token_is_invalid_argument_for_refresh_and_logout() {
    let mut app = spawn_app().await;
    let refresh = app.refresh("").await.expect_err("empty is refused");
    assert_eq!(refresh.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&refresh), ["refresh_token"]);
    let logout = app.logout("").await.expect_err("empty is refused");
    assert_eq!(logout.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&logout), ["refresh_token"]);
    app.stop().await;
}

#[tokio::test]
async fn after_logout_the_sessions_refresh_tokens_are_unauthenticated_and_others_still_work() {
    let mut app = spawn_app().await;
    let first = app.sign_in(ADA).await;
    let other_session = app.sign_in(ADA).await;
    let second = app
        .refresh(&first.refresh_token)
        .await
        .expect("rotation before logout");

    app.logout(&second.refresh_token).await.expect("logout");
    for token in [&second.refresh_token, &first.refresh_token] {
        let status = app
            .refresh(token)
            .await
            .expect_err("a logged-out session does not refresh");
        assert_eq!(status.code(), Code::Unauthenticated);
        assert_eq!(status.message(), "invalid refresh token");
    }
    app.refresh(&other_session.refresh_token)
        .await
        .expect("another session still refreshes");
    app.stop().await;
}

#[tokio::test]
async fn logout_succeeds_for_an_unknown_or_already_revoked_token() {
    let mut app = spawn_app().await;
    app.logout("never-issued")
        .await
        .expect("unknown tokens too");
    let tokens = app.sign_in(ADA).await;
    app.logout(&tokens.refresh_token).await.expect("logout");
    app.logout(&tokens.refresh_token)
        .await
        .expect("logging out twice");
    app.stop().await;
}

#[tokio::test]
async fn a_deleted_users_refresh_is_unauthenticated_and_revokes_the_family() {
    let mut app = spawn_app().await;
    let tokens = app.sign_in(ADA).await;
    let ada = app.users.account(ADA);
    app.users.delete(ADA);
    let status = app
        .refresh(&tokens.refresh_token)
        .await
        .expect_err("a deleted user gets no tokens");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(status.message(), "invalid refresh token");
    assert_eq!(app.users.lookups(), std::slice::from_ref(&ada.id));

    // The family is revoked, not just refused once: were the user back, it stays dead.
    app.users.restore(ada);
    let status = app
        .refresh(&tokens.refresh_token)
        .await
        .expect_err("the family was revoked");
    assert_eq!(status.code(), Code::Unauthenticated);
    app.stop().await;
}

#[tokio::test]
async fn refresh_is_unavailable_while_the_user_service_is_down_and_the_same_token_works_after() {
    let mut app = spawn_app().await;
    let tokens = app.sign_in(ADA).await;
    for fault in ["down", "rejecting auth's token"] {
        match fault {
            "down" => app.users.set_down(true),
            _ => app.users.set_rejecting_callers(true),
        }
        let status = app
            .refresh(&tokens.refresh_token)
            .await
            .expect_err("no refresh without the user service");
        assert_eq!(status.code(), Code::Unavailable, "{fault}");
        assert!(!status.message().contains("fake"), "{}", status.message());
        app.users.set_down(false);
        app.users.set_rejecting_callers(false);
    }
    // The token was not used up: it rotates now, once.
    let next = app
        .refresh(&tokens.refresh_token)
        .await
        .expect("the same refresh token still works");
    app.refresh(&next.refresh_token)
        .await
        .expect("and its successor does, so the family was not revoked as a replay");
    app.stop().await;
}

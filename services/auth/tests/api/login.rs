//! Login: tokens for the right password; UNAUTHENTICATED, INVALID_ARGUMENT and
//! UNAVAILABLE otherwise.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tonic::Code;
use trellis_platform::auth::{PrincipalKind, UNAUTHENTICATED_MESSAGE};

use crate::helpers::{ADA, PASSWORD, bearer, spawn_app, spawn_app_with, violated_fields};

/// RFC 5321's longest address, 320 bytes: a 64-byte local part, `@`, a 255-byte domain.
const MAX_EMAIL_BYTES: usize = 320;
/// The user service's longest password, 1024 bytes.
const MAX_PASSWORD_BYTES: usize = 1024;

/// 15 minutes, the access-token lifetime (README's tour).
const ACCESS_TTL_SECS: i64 = 900;
/// 30 days, the refresh-token lifetime (docs/operating/configuration.md).
const REFRESH_TTL_SECS: i64 = 30 * 24 * 3600;

#[tokio::test]
async fn login_returns_an_eddsa_access_token_for_the_user_and_a_refresh_token() {
    let mut app = spawn_app().await;
    let ada = app.users.account(ADA);
    let response = app.login(ADA, PASSWORD).await.expect("Ada signs in");
    assert_eq!(response.user_id, ada.id);
    let tokens = response.tokens.expect("tokens");
    assert_eq!(tokens.token_type, "Bearer");
    assert_eq!(tokens.expires_in, ACCESS_TTL_SECS);

    let (header, claims) = app.verify(&tokens.access_token).await;
    assert_eq!(header.typ.as_deref(), Some("JWT"));
    assert_eq!(claims.sub, ada.id);
    assert_eq!(claims.kind, PrincipalKind::User);
    assert!(claims.roles.is_empty(), "{:?}", claims.roles);
    assert_eq!(claims.nbf, claims.iat);
    assert_eq!(claims.exp - claims.iat, ACCESS_TTL_SECS);
    assert!(!claims.jti.is_empty());

    // The refresh token is opaque: 256 random bits, base64url.
    let bits = URL_SAFE_NO_PAD
        .decode(&tokens.refresh_token)
        .expect("base64url");
    assert_eq!(bits.len(), 32);
    // Its family expires 30 days after sign-in (the instant the access token was issued
    // in, give or take the moment between the two).
    let refresh_expiry = tokens.refresh_expire_time.expect("refresh expiry").seconds;
    let lifetime = refresh_expiry - claims.iat;
    assert!(
        (REFRESH_TTL_SECS - 60..=REFRESH_TTL_SECS).contains(&lifetime),
        "refresh tokens live {lifetime} s"
    );

    // A second sign-in is a new session: new access token id, new refresh token.
    let again = app.sign_in(ADA).await;
    let (_, second) = app.verify(&again.access_token).await;
    assert_ne!(second.jti, claims.jti);
    assert_ne!(again.refresh_token, tokens.refresh_token);
    app.stop().await;
}

#[tokio::test]
async fn access_tokens_are_accepted_by_the_platform_verifier_other_services_run() {
    let mut app = spawn_app().await;
    let tokens = app.sign_in(ADA).await;
    let principal = app.principal_of(&tokens.access_token, "user").await;
    assert_eq!(principal.kind, PrincipalKind::User);
    assert_eq!(
        principal.user_id(),
        Some(app.users.account(ADA).id.as_str())
    );
    assert!(!principal.is_admin());
    app.stop().await;
}

#[tokio::test]
async fn unknown_email_and_wrong_password_are_the_same_unauthenticated() {
    let mut app = spawn_app().await;
    let mut answers = Vec::new();
    // The fake user service gives each case its own message; auth must not pass the
    // difference on.
    for (email, password) in [
        (ADA, "wrong password!"),
        ("nobody@example.com", PASSWORD),
        ("not an email", PASSWORD),
    ] {
        let status = app
            .login(email, password)
            .await
            .expect_err("credentials are rejected");
        answers.push((status.code(), status.message().to_owned()));
    }
    assert_eq!(answers[0].0, Code::Unauthenticated);
    assert_eq!(answers[0].1, "invalid email or password");
    assert!(answers.iter().all(|a| *a == answers[0]), "{answers:?}");
    assert_ne!(
        answers[0].1, UNAUTHENTICATED_MESSAGE,
        "not the bearer-token message"
    );
    app.stop().await;
}

#[tokio::test]
async fn an_empty_email_or_password_is_invalid_argument_naming_it_without_asking_the_user_service()
{
    let mut app = spawn_app().await;
    for (email, password, field) in [
        ("", PASSWORD, "email"),
        ("   ", PASSWORD, "email"),
        (ADA, "", "password"),
    ] {
        let status = app
            .login(email, password)
            .await
            .expect_err("an empty field is refused");
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{email:?}/{password:?}"
        );
        assert_eq!(violated_fields(&status), [field], "{email:?}/{password:?}");
    }
    assert!(app.users.calls().is_empty(), "the user service was asked");
    app.stop().await;
}

#[tokio::test]
async fn login_is_unavailable_while_the_user_service_is_down_and_works_once_it_is_back() {
    let mut app = spawn_app().await;
    app.users.set_down(true);
    let status = app
        .login(ADA, PASSWORD)
        .await
        .expect_err("no sign-in without the user service");
    assert_eq!(status.code(), Code::Unavailable);
    // The peer's own message is not passed on.
    assert!(!status.message().contains("fake"), "{}", status.message());

    app.users.set_down(false);
    app.sign_in(ADA).await;
    app.stop().await;
}

#[tokio::test]
async fn login_is_unavailable_when_the_user_service_cannot_be_reached() {
    let mut app = spawn_app_with(|config| {
        // The discard port: nothing listens there.
        config.peers.get_mut("user").expect("a user peer").addresses =
            "http://127.0.0.1:9".to_owned();
    })
    .await;
    let status = app
        .login(ADA, PASSWORD)
        .await
        .expect_err("no sign-in without the user service");
    assert_eq!(status.code(), Code::Unavailable);
    app.stop().await;
}

#[tokio::test]
async fn the_user_service_is_asked_with_a_service_token_auth_signs_itself() {
    let mut app = spawn_app().await;
    app.sign_in(ADA).await;
    let calls = app.users.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    let token = bearer(calls[0].as_deref()).to_owned();
    let (_, claims) = app.verify(&token).await;
    assert_eq!(claims.kind, PrincipalKind::Service);
    assert_eq!(claims.sub, "service:auth");
    let principal = app.principal_of(&token, "user").await;
    assert_eq!(principal.service_name(), Some("auth"));
    app.stop().await;
}

#[tokio::test]
async fn an_oversized_email_or_password_is_invalid_argument_before_the_user_service_or_throttle() {
    // A budget of one failure: were the refused calls charged, Ada would be throttled.
    let mut app = spawn_app_with(|config| {
        config
            .service
            .login_throttle
            .max_failures_per_account_per_hour = 1;
    })
    .await;
    let long_email = format!("{}@example.com", "a".repeat(MAX_EMAIL_BYTES));
    let padded_email = format!("{ADA}{}", " ".repeat(MAX_EMAIL_BYTES));
    let long_password = "p".repeat(MAX_PASSWORD_BYTES + 1);
    for (email, password, fields) in [
        (long_email.as_str(), PASSWORD, vec!["email"]),
        (padded_email.as_str(), PASSWORD, vec!["email"]),
        (ADA, long_password.as_str(), vec!["password"]),
        (
            long_email.as_str(),
            long_password.as_str(),
            vec!["email", "password"],
        ),
    ] {
        let status = app
            .login(email, password)
            .await
            .expect_err("oversized input is refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{fields:?}");
        assert_eq!(violated_fields(&status), fields);
        assert!(status.message().len() < 200, "{}", status.message());
    }
    assert!(app.users.calls().is_empty(), "the user service was asked");

    // At the limits, input is checked as usual: the one failure the budget allows.
    let status = app
        .login(ADA, &"p".repeat(MAX_PASSWORD_BYTES))
        .await
        .expect_err("a wrong password");
    assert_eq!(status.code(), Code::Unauthenticated);
    let longest_email = format!("{}@example.com", "a".repeat(MAX_EMAIL_BYTES - 12));
    assert_eq!(longest_email.len(), MAX_EMAIL_BYTES);
    let status = app
        .login(&longest_email, PASSWORD)
        .await
        .expect_err("an unknown address");
    assert_eq!(status.code(), Code::Unauthenticated);
    app.stop().await;
}
